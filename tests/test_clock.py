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
from phischer.thread import build_thread
from tests.conftest import set_model
from tests.fake_openai import echo

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


# -- the clock set back (NTP) between two texts -------------------------------------------


def test_a_clock_set_back_keeps_the_thread_in_order(llm_app, fake_openai, twilio_post, clock):
    app = llm_app()
    twilio_post("first", target=app)
    clock.at -= dt.timedelta(minutes=1)
    assert twilio_post("second", target=app).replies == ["echo: second"]
    assert thread(fake_openai) == [
        ("user", "first"),
        ("assistant", "echo: first"),
        ("user", "second"),
    ]
    # Stored in the order they happened, so every later thread is in order too.
    times = [m.created_at for m in stored(app)]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_a_clock_set_back_while_the_model_answers_keeps_the_reply_after_its_text(
    llm_app, fake_openai, twilio_post, clock
):
    app = llm_app()

    def set_back_then_echo(body):
        clock.at -= dt.timedelta(minutes=1)
        return echo(body)

    fake_openai.responder = set_back_then_echo
    twilio_post("first", target=app)
    twilio_post("second", target=app)
    assert thread(fake_openai) == [
        ("user", "first"),
        ("assistant", "echo: first"),
        ("user", "second"),
    ]


def test_a_clock_set_back_after_reset_keeps_the_new_text(llm_app, fake_openai, twilio_post, clock):
    app = llm_app()
    twilio_post("the password is swordfish", target=app)
    clock.at += SECOND
    twilio_post("#reset", target=app)
    clock.at -= dt.timedelta(hours=1)
    assert twilio_post("what was it?", target=app).replies == ["echo: what was it?"]
    assert thread(fake_openai) == [("user", "what was it?")]


def test_a_reset_in_the_same_clock_tick_as_the_text_before_it_still_forgets_it(
    llm_app, fake_openai, twilio_post, clock
):
    # The clock does not move between these texts (a coarse clock, or a very fast texter).
    app = llm_app()
    twilio_post("the password is swordfish", target=app)
    twilio_post("#reset", target=app)
    twilio_post("what was it?", target=app)
    assert thread(fake_openai) == [("user", "what was it?")]


def test_a_twilio_retry_after_a_later_text_changes_nothing(
    llm_app, fake_openai, twilio_post, clock
):
    app = llm_app()
    twilio_post("first", sid="SM" + "1" * 32, target=app)
    clock.at += SECOND
    twilio_post("second", sid="SM" + "2" * 32, target=app)
    clock.at += SECOND
    rows = len(stored(app))
    # Twilio's retry of the first text, late: the same reply, nothing stored again.
    assert twilio_post("first", sid="SM" + "1" * 32, target=app).replies == ["echo: first"]
    assert len(stored(app)) == rows
    twilio_post("third", target=app)
    assert thread(fake_openai) == [
        ("user", "first"),
        ("assistant", "echo: first"),
        ("user", "second"),
        ("assistant", "echo: second"),
        ("user", "third"),
    ]


def test_a_clock_once_a_year_ahead_does_not_hold_the_daily_count(
    make_app, personas, twilio_post, clock
):
    # The clock was wrong, then set right: the number's messages stay in order (stamped
    # after the one from "next year"), but its count is by the clock's day.
    app = make_app(daily_limit=1)
    today = clock.at
    clock.at = today + dt.timedelta(days=365)
    assert twilio_post("good night", target=app).replies != [LIMIT_TEXT]
    clock.at = today
    assert twilio_post("good night", target=app).replies != [LIMIT_TEXT]


def test_a_clock_once_a_year_ahead_does_not_hold_the_daily_limit_notice(
    make_app, personas, twilio_post, clock
):
    # The notice of a day is stamped after the "next year" message too: the next day by the
    # clock, the first text over the limit still gets its notice.
    app = make_app(daily_limit=1)
    today = clock.at
    clock.at = today + dt.timedelta(days=365)
    twilio_post("good night", target=app)
    got = []
    for day in (today, today + dt.timedelta(days=1)):
        clock.at = day
        got += [twilio_post("good night", target=app).replies == [LIMIT_TEXT] for _ in range(3)]
    assert got == [False, True, False, False, True, False]
