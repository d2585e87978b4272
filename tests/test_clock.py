"""Time-dependent serving: the daily limit's day, the session gap, and a clock set back.

The webhook reads the time through `phischer.inbound.utcnow`; these tests set that clock
instead of sleeping. It starts two days ahead of the real one, so the recovery sweep (on the
real clock) never finds these texts idle.
"""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest
import sqlalchemy as sa

from phischer.dataset import build_examples
from phischer.importers.base import Conversation
from phischer.importers.base import Message as ChatMessage
from phischer.inbound import LIMIT_TEXT
from phischer.models import Contact, Message, utcnow
from phischer.personas import set_model
from phischer.thread import build_thread

SECOND = dt.timedelta(seconds=1)
HOUR = dt.timedelta(hours=1)
TICK = dt.timedelta(microseconds=1)


class Clock:
    """A settable naive-UTC clock for the webhook."""

    def __init__(self) -> None:
        tomorrow = utcnow().date() + dt.timedelta(days=2)
        self.at = dt.datetime.combine(tomorrow, dt.time(12))

    def __call__(self) -> dt.datetime:
        return self.at


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr("phischer.inbound.utcnow", fake)
    return fake


@pytest.fixture
def llm_app(make_app, personas, database, fake_openai):
    """Ada answers from the fake OpenAI server ("echo: " and the last turn)."""
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    return make_app


def stored(app) -> list[Message]:
    with app.extensions["phischer"].db.read() as session:
        return list(session.scalars(sa.select(Message).order_by(Message.id)))


def thread(fake_openai) -> list[tuple[str, str]]:
    """The last thread sent to the model, without its system prompt."""
    return [(m["role"], m["content"]) for m in fake_openai.chat_calls[-1]["messages"][1:]]


# -- SESSION_GAP_HOURS and --gap-hours: one rule ------------------------------------------


@pytest.mark.parametrize(("silence", "split"), [(6 * HOUR, False), (6 * HOUR + TICK, True)])
def test_the_thread_and_the_dataset_split_sessions_at_the_same_silence(silence, split):
    t0 = dt.datetime(2024, 3, 10, 1, 30)
    back = t0 + SECOND + silence
    chat = [("Bea", "hi", t0), ("Ana", "hey", t0 + SECOND), ("Bea", "back", back)]
    answered = [*chat, ("Ana", "welcome back", back + SECOND)]
    conv = Conversation("c", "c", ["Ana", "Bea"], [ChatMessage(*m) for m in answered])
    examples = list(build_examples([conv], "Ana", gap_hours=6))
    assert len({e.conversation_id for e in examples}) == (2 if split else 1)

    rows = [("in" if who == "Bea" else "out", text, at) for who, text, at in reversed(chat)]
    served = build_thread(rows, system_prompt=None, history_turns=20, gap_hours=6)
    assert [m["content"] for m in served] == (["back"] if split else ["hi", "hey", "back"])


@pytest.mark.parametrize(("silence", "split"), [(6 * HOUR, False), (6 * HOUR + TICK, True)])
def test_session_gap_boundary_through_the_webhook(
    llm_app, fake_openai, twilio_post, clock, silence, split
):
    app = llm_app(session_gap_hours=6)
    twilio_post("old news", target=app)
    clock.at = stored(app)[-1].created_at + silence  # after the reply, the thread's last row
    twilio_post("new day", target=app)
    if split:
        assert thread(fake_openai) == [("user", "new day")]
    else:
        assert thread(fake_openai) == [
            ("user", "old news"),
            ("assistant", "echo: old news"),
            ("user", "new day"),
        ]


# -- DAILY_LIMIT: the count starts again at midnight UTC ----------------------------------


def test_daily_limit_starts_again_at_utc_midnight(make_app, personas, twilio_post, clock):
    app = make_app(daily_limit=1)
    midnight = dt.datetime.combine(clock.at.date() + dt.timedelta(days=1), dt.time())
    answered = []
    for at in (midnight - SECOND, midnight - TICK, midnight, midnight + SECOND):
        clock.at = at
        answered.append(twilio_post("good night", target=app).replies != [LIMIT_TEXT])
    assert answered == [True, False, True, False]
    assert [m.status for m in stored(app) if m.direction == "in"] == [
        "replied", "limited", "replied", "limited"
    ]  # fmt: skip


# -- the server's time zone -----------------------------------------------------------------


@pytest.fixture(params=["America/New_York", "Asia/Kolkata"])
def server_tz(request):
    """The process's local time zone set to another one (daylight saving included)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    assert time.localtime().tm_gmtoff != 0
    yield request.param
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_the_server_time_zone_changes_nothing(make_app, personas, twilio_post, server_tz):
    # The real clock: stored times and the daily limit's day are UTC, whatever TZ says.
    app = make_app(daily_limit=1)
    start = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    twilio_post("good night", target=app)
    end = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert all(start <= m.created_at <= end for m in stored(app))
    with app.extensions["phischer"].db.read() as session:
        contact = session.scalar(sa.select(Contact))
    assert contact.reply_day in (start.date(), end.date())
