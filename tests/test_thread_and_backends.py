"""The thread sent to the model, and every way the model can fail."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import threading
import time
from contextlib import closing

import pytest
import sqlalchemy as sa

from phischer.inbound import OPT_IN_TEXT
from phischer.models import Message, utcnow
from phischer.ports import is_local_host
from phischer.recovery import SEND_SUPERSEDED
from tests.conftest import set_model
from tests.fake_openai import echo


@pytest.fixture
def llm_app(make_app, personas, database, fake_openai):
    """Ada on the fake OpenAI server; Bo stays on retrieval."""
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)

    def build(**overrides):
        return make_app(**overrides)

    return build


def stored(app):
    with app.extensions["phischer"].db.read() as session:
        return list(session.scalars(sa.select(Message).order_by(Message.id)))


def test_thread_shape_history_and_system(llm_app, fake_openai, twilio_post):
    app = llm_app()
    twilio_post("hi", target=app)
    twilio_post("how are you?", target=app)
    sent = fake_openai.chat_calls[-1]["messages"]
    assert sent == [
        {"role": "system", "content": "You are Ada."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "echo: hi"},
        {"role": "user", "content": "how are you?"},
    ]
    call = fake_openai.chat_calls[-1]
    assert call["model"] == "ft:gpt-4.1-mini:ada"


def test_consecutive_user_turns_merge(llm_app, fake_openai, twilio_post):
    app = llm_app()
    fake_openai.behaviour = "status"
    fake_openai.status_code = 400
    twilio_post("first", target=app)  # fails: no assistant turn stored for it
    fake_openai.behaviour = "ok"
    twilio_post("second", target=app)
    assert fake_openai.chat_calls[-1]["messages"][1:] == [
        {"role": "user", "content": "first\nsecond"},
    ]


def test_history_isolated_between_numbers_and_personas(llm_app, fake_openai, twilio_post):
    app = llm_app()
    twilio_post("from one", from_="+15550001", target=app)
    twilio_post("from two", from_="+15550002", target=app)
    assert fake_openai.chat_calls[-1]["messages"][1:] == [{"role": "user", "content": "from two"}]
    # Number one talks to Bo (retrieval) and back: Bo's turns never reach Ada's thread.
    twilio_post("#bo hey how are you", from_="+15550001", target=app)
    twilio_post("#ada back again", from_="+15550001", target=app)
    assert fake_openai.chat_calls[-1]["messages"][1:] == [
        {"role": "user", "content": "from one"},
        {"role": "assistant", "content": "echo: from one"},
        {"role": "user", "content": "back again"},
    ]


def test_a_full_width_switch_sends_only_its_text_to_the_model(llm_app, fake_openai, twilio_post):
    # "＃ＡＤＡ　…" (a full-width keyboard) is #ada: the keyword is a command, not the words.
    app = llm_app()
    twilio_post("#bo", target=app)
    assert twilio_post("＃ＡＤＡ　hello there", target=app).replies == ["echo: hello there"]
    assert fake_openai.chat_calls[-1]["messages"][1:] == [
        {"role": "user", "content": "hello there"}
    ]


def test_a_switch_with_a_comma_sends_only_the_words_after_it(llm_app, fake_openai, twilio_post):
    # "#ada,hello there" is "#ada hello there": the keyword is a command, in the history too.
    app = llm_app()
    twilio_post("#bo", target=app)
    assert twilio_post("#ADA,hello there", target=app).replies == ["echo: hello there"]
    assert twilio_post("and again", target=app).replies == ["echo: and again"]
    assert [m["content"] for m in fake_openai.chat_calls[-1]["messages"][1:]] == [
        "hello there",
        "echo: hello there",
        "and again",
    ]


def test_reset_starts_a_fresh_thread(llm_app, fake_openai, twilio_post):
    app = llm_app()
    twilio_post("remember the password is swordfish", target=app)
    assert twilio_post("#reset", target=app).replies == [
        "Fresh start: I've forgotten this conversation."
    ]
    time.sleep(0.01)
    twilio_post("what was it?", target=app)
    assert fake_openai.chat_calls[-1]["messages"][1:] == [
        {"role": "user", "content": "what was it?"}
    ]


def test_session_gap_starts_a_new_thread(llm_app, fake_openai, twilio_post):
    app = llm_app(session_gap_hours=6)
    twilio_post("old news", target=app)
    with app.extensions["phischer"].db.write() as session:
        session.execute(sa.update(Message).values(created_at=utcnow() - dt.timedelta(hours=7)))
    twilio_post("new day", target=app)
    assert fake_openai.chat_calls[-1]["messages"][1:] == [{"role": "user", "content": "new day"}]


@pytest.mark.parametrize("gap_hours", [1e300, float("inf"), 0])
def test_gap_too_big_for_a_timedelta_never_splits(gap_hours):
    from phischer.thread import build_thread

    now = utcnow()
    rows = [  # newest first, decades apart
        ("in", "still there?", now),
        ("out", "hello", now - dt.timedelta(days=9000)),
        ("in", "hi", now - dt.timedelta(days=18000)),
    ]
    thread = build_thread(rows, system_prompt="S", history_turns=20, gap_hours=gap_hours)
    assert [m["content"] for m in thread] == ["S", "hi", "hello", "still there?"]


def test_huge_session_gap_setting_keeps_old_history(llm_app, fake_openai, twilio_post):
    app = llm_app(session_gap_hours=1e300)  # finite, so accepted; used to raise per text
    twilio_post("old news", target=app)
    with app.extensions["phischer"].db.write() as session:
        session.execute(sa.update(Message).values(created_at=utcnow() - dt.timedelta(days=900)))
    assert twilio_post("still there?", target=app).replies == ["echo: still there?"]
    assert fake_openai.chat_calls[-1]["messages"][1:] == [
        {"role": "user", "content": "old news"},
        {"role": "assistant", "content": "echo: old news"},
        {"role": "user", "content": "still there?"},
    ]


def test_history_turns_cap_and_user_first(llm_app, fake_openai, twilio_post):
    app = llm_app(history_turns=4)
    for i in range(5):
        twilio_post(f"m{i}", target=app)
    sent = fake_openai.chat_calls[-1]["messages"]
    assert sent[0]["role"] == "system"
    # The last 4 turns are "echo: m2", m3, "echo: m3", m4; the leading assistant turn goes.
    assert [m["content"] for m in sent[1:]] == ["m3", "echo: m3", "m4"]


def test_temperature_and_max_tokens_from_persona(llm_app, fake_openai, database, twilio_post):
    from phischer.models import Persona

    with database.write() as session:
        ada = session.scalar(sa.select(Persona).where(Persona.name == "Ada"))
        ada.temperature, ada.max_tokens = 0.3, 64
    app = llm_app()
    twilio_post("hi", target=app)
    call = fake_openai.chat_calls[-1]
    assert (call["temperature"], call["max_tokens"]) == (0.3, 64)


def test_a_reasoning_model_gets_the_parameters_it_takes(
    llm_app, fake_openai, database, twilio_post
):
    from phischer.models import Persona

    with database.write() as session:
        ada = session.scalar(sa.select(Persona).where(Persona.name == "Ada"))
        ada.model, ada.temperature, ada.max_tokens = "o4-mini", 0.3, 64
    fake_openai.reasoning_models = {"o4-mini"}
    app = llm_app()
    assert twilio_post("hi", target=app).replies == ["echo: hi"]
    # Each 400 names what the model refuses; the same text is sent again without it at once.
    assert [
        (c.get("max_tokens"), c.get("max_completion_tokens"), c.get("temperature"))
        for c in fake_openai.chat_calls
    ] == [(64, None, 0.3), (None, 64, 0.3), (None, 64, None)]
    # Remembered: the next text goes out in the right shape the first time.
    assert twilio_post("again", target=app).replies == ["echo: again"]
    last = fake_openai.chat_calls[3:]
    assert [(c.get("max_completion_tokens"), "temperature" in c) for c in last] == [(64, False)]
    assert [m.error for m in stored(app) if m.direction == "in"] == [None, None]


def test_a_400_for_anything_else_is_a_recorded_failure_not_a_loop(
    llm_app, fake_openai, database, twilio_post
):
    from phischer.models import Persona

    with database.write() as session:
        ada = session.scalar(sa.select(Persona).where(Persona.name == "Ada"))
        ada.model, ada.temperature = "o4-mini", 1.0
    fake_openai.reasoning_models = {"o4-mini"}
    fake_openai.fail("POST", "/v1/chat/completions", 400, "messages: too long")
    app = llm_app()
    twilio_post("hi", target=app)
    assert len(fake_openai.chat_calls) == 1
    inbound = [m for m in stored(app) if m.direction == "in"]
    assert inbound[-1].error == "model server error 400: messages: too long"


@pytest.mark.parametrize("pad", range(186, 200))
def test_a_number_at_the_cut_of_a_long_model_error_is_not_kept_in_part(
    llm_app, fake_openai, twilio_post, pad
):
    # The server's message is cut to 200 characters: cut inside a number, its first groups
    # ("020 7946") would be too few for the mask and stay in the error and the log.
    message = "x" * pad + " 020 7946 0958 is not allowed"
    fake_openai.fail("POST", "/v1/chat/completions", 400, message)
    app = llm_app()
    twilio_post("hi", target=app)
    (error,) = [m.error for m in stored(app) if m.direction == "in"]
    assert error.startswith("model server error 400: xxx")
    assert re.search(r"\d\d \d\d", error) is None, error


def test_persona_api_key_env(llm_app, fake_openai, database, twilio_post, monkeypatch):
    from phischer.models import Persona

    with database.write() as session:
        session.scalar(sa.select(Persona).where(Persona.name == "Ada")).api_key_env = "ADA_KEY"
    app = llm_app()
    r = twilio_post("hi", target=app)
    assert r.replies == ["Sorry, I can't answer right now. Try again in a bit."]
    assert "ADA_KEY is not set" in stored(app)[0].error
    monkeypatch.setenv("ADA_KEY", "sk-ada")
    twilio_post("hi", target=app)
    assert fake_openai.requests[-1].auth == "Bearer sk-ada"


def test_a_key_the_model_server_quotes_back_is_neither_logged_nor_stored(
    llm_app, fake_openai, database, twilio_post, monkeypatch, caplog
):
    from phischer.models import Persona

    key = "sk-ada-0123456789abcdefghij"
    with database.write() as session:
        session.scalar(sa.select(Persona).where(Persona.name == "Ada")).api_key_env = "ADA_KEY"
    monkeypatch.setenv("ADA_KEY", key)
    fake_openai.valid_key, fake_openai.echo_key = "the-server-wants-another", True
    app = llm_app()
    with caplog.at_level("INFO"):
        twilio_post("hi", target=app)
    assert fake_openai.requests[-1].auth == f"Bearer {key}"  # it was sent, and quoted back
    assert "Persona Ada failed to answer: model server error 401: Incorrect API key " \
        "provided: <ADA_KEY>" in caplog.messages  # fmt: skip
    assert stored(app)[0].error == "model server error 401: Incorrect API key provided: <ADA_KEY>"
    assert key not in caplog.text


@pytest.mark.parametrize(
    ("behaviour", "status", "error_part"),
    [
        ("status", 429, "rate limited (429)"),
        ("status", 500, "model server error 500"),
        ("status", 503, "model server error 503"),
        ("empty", 200, "empty reply"),
        ("drop", 200, "cannot reach the model server"),
        ("html", 200, "model server answered something that is not a chat completion"),
        ("not_completion", 200, "model server answered something that is not a chat completion"),
        ("bad_json", 200, "model server answered something that is not a chat completion"),
    ],
)
def test_model_failures_store_error_and_send_fallback(
    llm_app, fake_openai, twilio_post, behaviour, status, error_part, caplog
):
    app = llm_app(model_retries=0, fallback_reply="brb, phone died")
    fake_openai.behaviour, fake_openai.status_code = behaviour, status
    r = twilio_post("hello?", target=app)
    assert r.status_code == 200
    assert r.replies == ["brb, phone died"]
    inbound, outbound = stored(app)
    assert inbound.body == "hello?" and inbound.status == "failed"
    assert error_part in inbound.error
    assert (outbound.kind, outbound.body) == ("fallback", "brb, phone died")
    # a failure of the model server, not of phischer: a warning line, no traceback
    assert not [r for r in caplog.records if r.exc_info]
    # A fallback is not the persona talking: it never enters the thread.
    fake_openai.behaviour = "ok"
    twilio_post("again", target=app)
    assert fake_openai.chat_calls[-1]["messages"][1:] == [
        {"role": "user", "content": "hello?\nagain"}
    ]


def test_retries_then_succeeds_once(llm_app, fake_openai, twilio_post):
    app = llm_app(model_retries=1)
    fake_openai.behaviour, fake_openai.status_code = "status", 500
    twilio_post("hi", target=app)
    assert len(fake_openai.chat_calls) == 2  # the SDK retried once


def test_a_timed_out_call_is_not_retried_so_reply_timeout_bounds_the_webhook(
    llm_app, fake_openai, twilio_post
):
    # The SDK's own retries gave each attempt the full timeout again: 2 x REPLY_TIMEOUT_S.
    app = llm_app(reply_mode="inline", reply_timeout_s=0.4, model_retries=3)
    fake_openai.behaviour, fake_openai.delay = "slow", 1.5
    start = time.perf_counter()
    r = twilio_post("hi", target=app)
    assert time.perf_counter() - start < 1.0
    assert r.replies == ["Sorry, I can't answer right now. Try again in a bit."]
    assert len(fake_openai.chat_calls) == 1
    assert stored(app)[0].error == "model timed out after 0.4 s"


def test_retries_honour_retry_after_within_the_deadline(llm_app, fake_openai, twilio_post):
    app = llm_app(reply_mode="inline", model_retries=2)
    fake_openai.fail("POST", "/v1/chat/completions", 429, "slow down", times=2)
    r = twilio_post("hi", target=app)
    assert r.replies == ["echo: hi"]  # third attempt; each 429 asked for 1 ms
    assert len(fake_openai.calls("POST", "/v1/chat/completions")) == 3


def test_no_retry_that_cannot_finish_before_the_deadline(llm_app, fake_openai, twilio_post):
    # A 500 without Retry-After waits 0.5 s before the retry: past a 0.6 s deadline, the
    # error is recorded at once instead.
    app = llm_app(reply_mode="inline", reply_timeout_s=0.6, model_retries=5)
    fake_openai.behaviour, fake_openai.status_code = "status", 500
    start = time.perf_counter()
    twilio_post("hi", target=app)
    assert time.perf_counter() - start < 0.5
    assert len(fake_openai.chat_calls) == 1
    assert stored(app)[0].error.startswith("model server error 500")


def test_client_errors_are_not_retried(llm_app, fake_openai, twilio_post):
    app = llm_app(model_retries=3)
    fake_openai.behaviour, fake_openai.status_code = "status", 400
    twilio_post("hi", target=app)
    assert len(fake_openai.chat_calls) == 1


def test_connection_refused(make_app, personas, database, twilio_post, caplog):
    # The error names the server (each persona may have its own), never its path, query
    # string or credentials, where a key may be.
    url = "http://someone:pass-word-1@127.0.0.1:9/v1?api-key=query-key-1"
    with database.write() as session:
        set_model(session, "Ada", "m", base_url=url)
    app = make_app(model_retries=0)
    with caplog.at_level("INFO"):
        r = twilio_post("hi", target=app)
    assert r.replies == ["Sorry, I can't answer right now. Try again in a bit."]
    error = "cannot reach the model server at http://127.0.0.1:9: Connection error."
    assert stored(app)[0].error == error
    assert f"Persona Ada failed to answer: {error}" in caplog.messages
    assert "pass-word-1" not in caplog.text and "query-key-1" not in caplog.text


def test_inline_timeout(llm_app, fake_openai, twilio_post):
    app = llm_app(reply_mode="inline", reply_timeout_s=0.3, model_retries=0)
    fake_openai.behaviour, fake_openai.delay = "slow", 1.0
    r = twilio_post("hi", target=app)
    assert r.replies == ["Sorry, I can't answer right now. Try again in a bit."]
    assert "timed out" in stored(app)[0].error


def test_auto_mode_without_twilio_answers_fallback_in_time(llm_app, fake_openai, twilio_post):
    app = llm_app(reply_mode="auto", reply_timeout_s=0.3)
    fake_openai.behaviour, fake_openai.delay = "slow", 1.0
    start = time.perf_counter()
    r = twilio_post("hi", target=app)
    assert time.perf_counter() - start < 0.9  # did not wait for the model
    assert r.replies == ["Sorry, I can't answer right now. Try again in a bit."]
    assert "REPLY_TIMEOUT_S" in stored(app)[0].error


@pytest.mark.parametrize("missing", ["twilio_auth_token", "twilio_phone_number"])
def test_auto_mode_with_half_the_twilio_settings_answers_fallback_in_time(
    llm_app, fake_openai, fake_twilio, twilio_rest, twilio_post, missing
):
    """A late reply needs SID, token and number: without one the texter gets the fallback."""
    app = llm_app(reply_mode="auto", reply_timeout_s=0.3, **{**twilio_rest, missing: None})
    fake_openai.behaviour, fake_openai.delay = "slow", 1.0
    r = twilio_post("hi", target=app)
    assert r.replies == ["Sorry, I can't answer right now. Try again in a bit."]
    app.extensions["phischer"].sms.shutdown()
    assert fake_twilio.calls("POST", "/Messages.json") == []
    assert "no Twilio credentials for a late REST reply" in stored(app)[0].error


def test_auto_mode_without_twilio_stops_the_model_call_at_reply_timeout(
    llm_app, fake_openai, twilio_post
):
    # The fallback already went out and no late reply can: the call must not run on.
    app = llm_app(reply_mode="auto", reply_timeout_s=0.3, model_retries=0)
    fake_openai.behaviour, fake_openai.delay = "slow", 3.0
    start = time.perf_counter()
    assert twilio_post("hi", target=app).replies == [
        "Sorry, I can't answer right now. Try again in a bit."
    ]
    app.extensions["phischer"].sms.shutdown()  # waits for the background model call
    assert time.perf_counter() - start < 2.0  # with the 60 s async timeout: 3 s


def test_model_timeout_is_reply_timeout_unless_a_late_reply_can_go_out(settings):
    from phischer.backends import ASYNC_MODEL_TIMEOUT_S, Backends

    def timeout(**overrides):
        backend = Backends(settings.with_overrides(reply_timeout_s=3.5, **overrides))
        return backend.get("openai").timeout_s

    full = {
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": "t" * 32,
        "twilio_phone_number": "+15550199",
    }
    assert ASYNC_MODEL_TIMEOUT_S > 3.5
    assert timeout(reply_mode="auto") == 3.5
    assert timeout(reply_mode="auto", **full) == ASYNC_MODEL_TIMEOUT_S
    # a late reply needs all three: with one missing it could never be sent
    for missing in full:
        assert timeout(reply_mode="auto", **{**full, missing: None}) == 3.5
    assert timeout(reply_mode="inline", **full) == 3.5
    assert timeout(reply_mode="async") == ASYNC_MODEL_TIMEOUT_S


def test_auto_mode_slow_reply_goes_out_by_rest(
    llm_app, fake_openai, fake_twilio, twilio_rest, twilio_post
):
    app = llm_app(reply_mode="auto", reply_timeout_s=0.2, **twilio_rest)
    fake_openai.behaviour, fake_openai.delay = "slow", 0.6
    r = twilio_post("hi", sid="SMslow1", target=app)
    assert r.status_code == 200 and r.replies == []
    assert r.headers["X-Phischer-No-Reply"] == "rest-slow"  # for `phischer text`
    app.extensions["phischer"].sms.shutdown()  # wait for the background reply
    # Twilio's retry of it: still no inline reply, as the reply went by REST.
    assert twilio_post("hi", sid="SMslow1", target=app).headers["X-Phischer-No-Reply"] == "retry"
    sends = fake_twilio.calls("POST", "/Messages.json")
    assert [(c.form["To"], c.form["From"], c.form["Body"]) for c in sends] == [
        ("+15550100", "+15550199", "echo: hi")
    ]
    outbound = stored(app)[1]
    assert outbound.status == "sent" and outbound.message_sid.startswith("SM")


def test_async_mode_records_a_failed_rest_send(
    llm_app, fake_openai, fake_twilio, twilio_rest, twilio_post
):
    fake_twilio.fail_messages(400, 21610, "Attempt to send to unsubscribed recipient")
    app = llm_app(reply_mode="async", **twilio_rest)
    r = twilio_post("hi", target=app)
    assert r.replies == [] and r.headers["X-Phischer-No-Reply"] == "rest-async"
    app.extensions["phischer"].sms.shutdown()
    inbound, outbound = stored(app)
    assert inbound.status == "replied"
    assert outbound.status == "send_failed" and "21610" in outbound.error


def held_model(fake_openai):
    """Make the fake model wait for `release` before answering; `asked` is set when it is asked."""
    from tests.fake_openai import echo

    asked, release = threading.Event(), threading.Event()

    def answer(body):
        asked.set()
        release.wait(10)
        return echo(body)

    fake_openai.responder = answer
    return asked, release


def joke_while_the_model_is_held(app, fake_openai, fake_twilio, twilio_post, *newer, asks=1):
    """Text "tell me a joke" to a held model, send `newer` meanwhile, then let it answer.

    `asks`: the model calls to wait for before releasing (a newer chat text asks too).
    Returns the webhook's answers to `newer` and the bodies Twilio was asked to send.
    """
    asked, release = held_model(fake_openai)
    assert twilio_post("tell me a joke", target=app).replies == []
    assert asked.wait(10)
    answers = [twilio_post(body, target=app) for body in newer]
    deadline = time.monotonic() + 10
    while len(fake_openai.chat_calls) < asks and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    app.extensions["phischer"].sms.shutdown()  # wait for the background replies
    return answers, [c.form["Body"] for c in fake_twilio.calls("POST", "/Messages.json")]


@pytest.mark.parametrize(
    ("newer", "reason"),
    [
        ("#reset", SEND_SUPERSEDED),
        ("#bo", SEND_SUPERSEDED),
        ("STOP", "not sent; the number opted out"),
    ],
)
@pytest.mark.parametrize("mode", ["async", "auto"])
def test_a_slow_reply_is_not_sent_after_a_newer_command(
    llm_app, fake_openai, fake_twilio, twilio_rest, twilio_post, mode, newer, reason
):
    # The texter resets, switches persona or opts out while the model works: Ada's late
    # answer would arrive after "Fresh start" (or "You're now texting Bo."), or after STOP.
    app = llm_app(reply_mode=mode, reply_timeout_s=0.2, **twilio_rest)
    _, sends = joke_while_the_model_is_held(app, fake_openai, fake_twilio, twilio_post, newer)
    assert sends == []
    first, *_, late = stored(app)
    assert (first.body, first.status) == ("tell me a joke", "replied")
    assert (late.reply_to_id, late.body) == (first.id, "echo: tell me a joke")
    assert (late.status, late.error) == ("send_failed", reason)


def test_a_slow_reply_is_not_sent_after_stop_then_start(
    llm_app, fake_openai, fake_twilio, twilio_rest, twilio_post
):
    # START lets the number's new texts in; the answer STOP cut off stays unsent.
    app = llm_app(reply_mode="async", **twilio_rest)
    (_, start), sends = joke_while_the_model_is_held(
        app, fake_openai, fake_twilio, twilio_post, "STOP", "START"
    )
    assert start.replies == [OPT_IN_TEXT]
    assert sends == []
    late = stored(app)[-1]
    assert (late.body, late.status) == ("echo: tell me a joke", "send_failed")


@pytest.mark.parametrize("newer", ["#who", "#list", "HELP", "#nobody", "#ada"])
def test_a_slow_reply_still_goes_out_after_a_command_that_changes_nothing(
    llm_app, fake_openai, fake_twilio, twilio_rest, twilio_post, newer
):
    # "#who" (or HELP) while waiting, or choosing the persona already answering: the texter
    # still wants the answer, and nothing it was made from has changed.
    app = llm_app(reply_mode="async", **twilio_rest)
    _, sends = joke_while_the_model_is_held(app, fake_openai, fake_twilio, twilio_post, newer)
    assert sends == ["echo: tell me a joke"]


def test_a_slow_reply_overtaken_by_a_newer_text_gives_way_to_its_answer(
    llm_app, fake_openai, fake_twilio, twilio_rest, twilio_post
):
    # Two texts while the model is slow: the second one's thread holds both, so its answer
    # is the one that goes out; the first would arrive after the second text, out of order.
    app = llm_app(reply_mode="async", **twilio_rest)
    _, sends = joke_while_the_model_is_held(
        app, fake_openai, fake_twilio, twilio_post, "are you there?", asks=2
    )
    assert sends == ["echo: tell me a joke\nare you there?"]
    replies = {m.body: (m.status, m.error) for m in stored(app) if m.direction == "out"}
    assert replies["echo: tell me a joke"] == (
        "send_failed",
        SEND_SUPERSEDED,
    )


def test_the_log_line_says_how_the_model_answered(
    llm_app, fake_openai, fake_twilio, twilio_rest, twilio_post, caplog
):
    app = llm_app(reply_mode="auto", reply_timeout_s=0.3, model_retries=0, **twilio_rest)
    with caplog.at_level("INFO", logger="phischer.inbound"):
        twilio_post("hi", target=app)
        fake_openai.behaviour, fake_openai.status_code = "status", 500
        twilio_post("hi again", target=app)
        fake_openai.behaviour, fake_openai.responder = "ok", lambda body: "\x01\x02"
        twilio_post("say nothing", target=app)  # an answer, but no SMS can carry it
        fake_openai.behaviour, fake_openai.delay = "slow", 0.6
        twilio_post("still there?", target=app)
        app.extensions["phischer"].sms.shutdown()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("text from")]
    assert [line.split(" in ")[0] for line in lines] == [
        "text from …00 → persona 'Ada' (openai) replied",
        "text from …00 → persona 'Ada' (openai) failed, fallback sent",
        "text from …00 → persona 'Ada' (openai) reply unsendable, fallback sent",
        "text from …00 → persona 'Ada' (openai) answers by REST (slower than REPLY_TIMEOUT_S)",
    ]


def test_long_replies_cut_at_word_boundary(llm_app, fake_openai, twilio_post):
    app = llm_app(max_reply_chars=50)
    fake_openai.responder = lambda body: "word " * 40
    r = twilio_post("talk a lot", target=app)
    (reply,) = r.replies
    assert len(reply) <= 50 and reply.endswith("word…")


def test_fit_sms_edges():
    from phischer.replies import fit_sms

    assert fit_sms("short", 10) == "short"
    assert fit_sms("x" * 30, 10) == "x" * 9 + "…"
    assert fit_sms("aaaa bbbb cccc", 12) == "aaaa bbbb…"
    assert len(fit_sms("é" * 2000, 1600)) == 1600


def test_fit_sms_counts_an_emoji_twice_as_twilio_does():
    from phischer.replies import fit_sms, sms_length

    # Twilio counts UTF-16 code units against its 1,600 limit: 1,600 emoji were refused.
    assert sms_length("😀" * 800) == 1600 and sms_length("hé😀") == 4
    assert fit_sms("😀" * 800, 1600) == "😀" * 800
    cut = fit_sms("😀" * 801, 1600)
    assert cut == "😀" * 799 + "…" and sms_length(cut) == 1599
    # A cut never splits an emoji in two, and words still end where a space is near.
    assert fit_sms("a" + "😀" * 10, 6) == "a😀😀…"
    assert fit_sms("ok 😀😀😀 and more words", 12) == "ok 😀😀😀…"


@pytest.mark.parametrize(
    "texts",
    [
        [],
        [""],
        ["plain reply"],
        ["<Message> & \"quotes\" 'apos' </Response> ]]> &amp;"],
        ["emoji 😀👍🏽 and ñ, 中文"],
        ["first", "second", "third"],
        ["", "kept", "\x00\x07", "also kept\x0b"],
        ["line\nbreak\ttab\r"],
    ],
)
def test_twiml_replies_is_the_sdks_twiml_with_a_status_action_per_message(texts):
    from twilio.twiml.messaging_response import MessagingResponse

    from phischer.replies import NOT_XML, twiml_replies

    for ids in ([7, 12, 345, 6][: len(texts)], [999, 2, 31, 40][: len(texts)]):  # cached texts
        expected = MessagingResponse()
        for text, rid in zip(texts, ids, strict=True):
            if NOT_XML.sub("", text):
                expected.message(NOT_XML.sub("", text), action=f"sms/status?reply={rid}")
        assert twiml_replies(list(zip(texts, ids, strict=True))) == str(expected)


def test_retrieval_picks_the_right_reply_and_avoids_repeats(app, twilio_post):
    assert twilio_post("so what do you do for work?").replies == [
        "I compute Bernoulli numbers, mostly by candlelight."
    ]
    assert twilio_post("tell me a joke!").replies == [
        "Why did the loom blush? It saw the punch cards."
    ]
    again = twilio_post("tell me a joke!").replies
    assert again != ["Why did the loom blush? It saw the punch cards."]
    assert twilio_post("qwertyuiop").replies  # no match still answers in voice


def test_retrieval_index_built_once(app, twilio_post, monkeypatch):
    from phischer.backends.retrieval import RetrievalBackend

    calls = []
    original = RetrievalBackend._build
    monkeypatch.setattr(
        RetrievalBackend, "_build", lambda self, p: calls.append(p) or original(self, p)
    )
    for _ in range(3):
        twilio_post("good night")
    # Built once (ahead of the first text, which waits for it), then reused by every text.
    assert [p.name for p in calls].count("ada.jsonl") == 1


def test_retrieval_gets_only_the_turns_it_reads(app, twilio_post, monkeypatch):
    from phischer.backends.retrieval import RECENT_REPLIES, RetrievalBackend

    threads = []
    original = RetrievalBackend.reply
    monkeypatch.setattr(
        RetrievalBackend, "reply", lambda self, p, m: threads.append(m) or original(self, p, m)
    )
    for i in range(12):
        twilio_post(f"tell me a joke number {i}")
    turns = [m for m in threads[-1] if m["role"] != "system"]
    # The last text and the RECENT_REPLIES exchanges before it: all the backend looks at.
    assert len(turns) == 2 * RECENT_REPLIES + 1
    assert turns[-1] == {"role": "user", "content": "tell me a joke number 11"}
    assert turns[0] == {"role": "user", "content": "tell me a joke number 8"}
    assert len({m["content"] for m in turns if m["role"] == "assistant"}) == RECENT_REPLIES


def test_unknown_backend_name_gets_fallback_and_recorded_error(
    make_app, personas, database, twilio_post
):
    from phischer.models import Persona

    with database.write() as session:  # e.g. a row written by a newer version
        session.scalar(sa.select(Persona).where(Persona.name == "Ada")).backend = "telepathy"
    app = make_app()
    assert twilio_post("hi", target=app).replies == [
        "Sorry, I can't answer right now. Try again in a bit."
    ]
    inbound = stored(app)[0]
    assert inbound.status == "failed" and "unknown backend 'telepathy'" in inbound.error


def test_inbound_is_committed_before_the_model_is_called(llm_app, fake_openai, twilio_post):
    app = llm_app()
    db_path = app.extensions["phischer"].settings.instance_path / "phischer.db"
    seen = []

    def responder(body):
        # Another connection, as a crash-recovery sweep would have: only committed rows show.
        with closing(sqlite3.connect(db_path)) as conn:
            seen.extend(conn.execute("SELECT direction, body, status FROM messages").fetchall())
        return "ok"

    fake_openai.responder = responder
    assert twilio_post("are you there?", target=app).replies == ["ok"]
    assert seen == [("in", "are you there?", "processing")]


def test_fallback_in_auto_mode_drops_a_model_call_still_queued(llm_app, fake_openai, twilio_post):
    app = llm_app(reply_mode="auto", reply_timeout_s=0.2, model_retries=0)
    sms = app.extensions["phischer"].sms
    fake_openai.behaviour, fake_openai.delay = "slow", 0.6
    # Every reply thread busy: the next model call has to wait in the queue.
    gate = threading.Event()
    busy = [sms._executor.submit(gate.wait) for _ in range(sms._executor.max_workers)]
    r = twilio_post("hi", target=app)
    assert r.replies == ["Sorry, I can't answer right now. Try again in a bit."]
    gate.set()
    for f in busy:
        f.result()
    sms.shutdown()
    assert fake_openai.chat_calls == []  # the queued call was cancelled, not run late


def test_persona_base_url_wins_over_openai_base_url(make_app, personas, database, twilio_post):
    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI() as env_server, FakeOpenAI() as own_server:
        env_server.responder = lambda body: "from OPENAI_BASE_URL"
        own_server.responder = lambda body: "from the persona's URL"
        with database.write() as session:
            set_model(session, "Ada", "m-ada", base_url=own_server.base_url)
            set_model(session, "Bo", "m-bo")  # no --base-url: OPENAI_BASE_URL applies
        app = make_app(openai_base_url=env_server.base_url, model_retries=0)
        assert twilio_post("hi", target=app).replies == ["from the persona's URL"]
        assert [c["model"] for c in own_server.chat_calls] == ["m-ada"]
        assert env_server.chat_calls == []
        assert twilio_post("#bo hi", from_="+15550111", target=app).replies == [
            "from OPENAI_BASE_URL"
        ]
        assert [c["model"] for c in env_server.chat_calls] == ["m-bo"]
        assert len(own_server.chat_calls) == 1


def test_no_api_key_on_openais_own_url_is_a_recorded_error(
    make_app, personas, database, twilio_post, monkeypatch
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    # Should the key check ever go, the call fails here instead of reaching api.openai.com.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with database.write() as session:
        set_model(session, "Ada", "gpt-4.1-mini")  # no --base-url: api.openai.com
    app = make_app(openai_api_key=None, openai_base_url=None)
    r = twilio_post("hi", target=app)
    assert r.status_code == 200
    assert r.replies == ["Sorry, I can't answer right now. Try again in a bit."]
    inbound, outbound = stored(app)
    assert inbound.status == "failed" and inbound.error == "No OPENAI_API_KEY: set it in .env"
    assert outbound.kind == "fallback"


def test_no_api_key_with_a_local_base_url_sends_a_placeholder(
    make_app, personas, database, fake_openai, twilio_post, monkeypatch
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with database.write() as session:
        set_model(session, "Ada", "llama3", base_url=fake_openai.base_url)
    app = make_app(openai_api_key=None, openai_base_url=None)
    assert twilio_post("hi", target=app).replies == ["echo: hi"]
    (call,) = fake_openai.calls("POST", "/v1/chat/completions")
    assert call.auth == "Bearer not-needed"
    inbound = stored(app)[0]
    assert (inbound.status, inbound.error) == ("replied", None)


def test_openai_api_key_goes_only_to_openai_base_urls_server(
    make_app, personas, database, twilio_post
):
    from tests.fake_openai import FakeOpenAI

    # Bo lives on OPENAI_BASE_URL's server (written with a slash); Ada on someone else's
    # server, added without --api-key-env: that server must not be handed OPENAI_API_KEY.
    with FakeOpenAI() as env_server, FakeOpenAI() as other_server:
        with database.write() as session:
            set_model(session, "Ada", "m-ada", base_url=other_server.base_url)
            set_model(session, "Bo", "m-bo", base_url=env_server.base_url + "/")
        app = make_app(
            openai_api_key="sk-secret", openai_base_url=env_server.base_url, model_retries=0
        )
        assert twilio_post("hi", target=app).replies == ["echo: hi"]
        assert twilio_post("#bo hi", from_="+15550111", target=app).replies == ["echo: hi"]
        (to_other,) = other_server.calls("POST", "/v1/chat/completions")
        (to_env,) = env_server.calls("POST", "/v1/chat/completions")
        assert to_other.auth == "Bearer not-needed"
        assert to_env.auth == "Bearer sk-secret"


def test_a_server_that_wants_a_key_says_how_to_give_it_one(
    make_app, personas, database, fake_openai, twilio_post
):
    fake_openai.valid_key = "vllm-key"  # vLLM started with --api-key
    with database.write() as session:
        set_model(session, "Ada", "llama3", base_url=fake_openai.base_url)
    app = make_app(openai_api_key="sk-secret", openai_base_url=None, model_retries=0)
    twilio_post("hi", target=app)
    inbound = stored(app)[0]
    assert inbound.status == "failed"
    assert inbound.error.startswith("model server error 401: Incorrect API key provided")
    assert inbound.error.endswith("give it one with `phischer persona edit ada --api-key-env VAR`")
    assert "sk-secret" not in inbound.error
    (call,) = fake_openai.calls("POST", "/v1/chat/completions")
    assert call.auth == "Bearer not-needed"


def test_half_an_emoji_from_the_model_is_stored_and_sent_as_u_fffd(
    llm_app, fake_openai, twilio_post
):
    # A server may answer with a lone "\ud83d" escape (a reply cut mid-emoji): UTF-8, the
    # database and XML cannot hold it, and the text must still be answered.
    app = llm_app()
    fake_openai.responder = lambda body: "see you \ud83d"
    r = twilio_post("bye", target=app)
    assert r.status_code == 200
    assert r.replies == ["see you \ufffd"]
    assert stored(app)[1].body == "see you \ufffd"


@pytest.mark.parametrize(
    ("nothing", "fallback", "kept"),
    [
        # Characters XML cannot carry (dropped; a fallback made of them too).
        ("\x01\x02\x03", "\x07\x08", "hi\x01 there"),
        # Zero-width spaces and bidi marks: XML holds them and Twilio sends them, so the
        # texter got a blank SMS, recorded as the persona's answer (a blank fallback too).
        ("\u202e\u200b \u200f\u2060", "\u200b\ufeff", "\u05e9\u05dc\u05d5\u05dd \u200fhey"),
    ],
)
def test_a_reply_with_nothing_an_sms_shows_is_a_failure_not_an_empty_sms(
    llm_app, fake_openai, twilio_post, nothing, fallback, kept
):
    app = llm_app(fallback_reply=fallback)
    fake_openai.responder = lambda body: nothing
    assert twilio_post("hello?", target=app).replies == [
        "Sorry, I can't answer right now. Try again in a bit."
    ]
    inbound, outbound = stored(app)
    assert (inbound.status, inbound.error) == (
        "failed",
        "model reply has no characters an SMS can carry",
    )
    assert outbound.kind == "fallback"
    # What can be sent is (marks beside visible text are its own: a right-to-left name's),
    # and the row holds exactly that.
    sent = kept.replace("\x01", "")
    fake_openai.responder = lambda body: kept
    assert twilio_post("again", target=app).replies == [sent]
    assert stored(app)[-1].body == sent


@pytest.mark.parametrize(
    ("url", "other", "same"),
    [
        ("https://api.openai.com/v1", "https://API.openai.com:443/v1/", True),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/openai/v1", True),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1", False),
        ("http://api.openai.com/v1", "https://api.openai.com/v1", False),
        ("https://api.openai.com.evil.example/v1", "https://api.openai.com/v1", False),
        ("https://api.openai.com:99999/v1", "https://api.openai.com/v1", False),
        ("http://127.0.0.1:8000/v1", None, False),
    ],
)
def test_same_server_compares_scheme_host_and_port(url, other, same):
    from phischer.ports import same_server

    assert same_server(url, other) is same


def set_sampling(database, **changes):
    """Change Ada's columns (max_tokens, temperature, …) as `persona edit` would."""
    from phischer.models import Persona

    with database.write() as session:
        ada = session.scalar(sa.select(Persona).where(Persona.name == "Ada"))
        for name, value in changes.items():
            setattr(ada, name, value)


@pytest.mark.parametrize(
    "content",
    [
        "<think>\nThey say hi. Keep it short.\n</think>\n\nhey you!",  # Qwen3, raw R1
        "They say hi. Keep it short.\n</think>\n\nhey you!",  # R1's template opens <think>
        "<think>\n\n</think>\n\nhey you!",  # Qwen3 with thinking off
    ],
)
def test_a_think_block_is_never_texted_nor_remembered(llm_app, fake_openai, twilio_post, content):
    app = llm_app()
    fake_openai.responder = lambda body: content
    assert twilio_post("hi", target=app).replies == ["hey you!"]
    assert stored(app)[1].body == "hey you!"
    fake_openai.responder = echo
    twilio_post("and?", target=app)
    assert fake_openai.chat_calls[-1]["messages"][2] == {
        "role": "assistant",
        "content": "hey you!",
    }


@pytest.mark.parametrize(
    ("content", "sent"),
    [
        ("Ada: hey you!", "hey you!"),  # a chat model labels its reply as the thread's lines
        ("ada:hey you!", "hey you!"),
        ("Assistant: hey you!", "hey you!"),
        ("hey you!\nAda: how's it going", "hey you!\nhow's it going"),  # two texts, labelled
        ("hey you!\nUser: good, you?\nAda: great", "hey you!"),  # it writes the texter's turn
        ("hey you!\n\nHuman: good", "hey you!"),
        ("hey you!<|im_end|>\n<|im_start|>user\ngood", "hey you!"),  # a local server's template
        ("User: hi Ada\nAda: hey you!", "hey you!"),  # the texter's turn comes first
        ("Human: hi\nhow are you?\n\nAssistant: hey you!\n", "hey you!"),
        ("Sam: hi\nAda: hey you!\nSam: good, you?", "hey you!"),  # a group's transcript
        ("Ada: hey you!\nMary Ann: hi", "hey you!"),
        ("Ada\uff1a hey you!", "hey you!"),  # the fullwidth colon of CJK text
        ("\u200bAda: hey you!", "hey you!"),  # an invisible mark before the label
        ("hey you!\r\nuser\uff1a good", "hey you!"),
        ("Adam: hey you!", "Adam: hey you!"),  # someone else's name is what Ada says
        ("meet at 12:30?\nsee you", "meet at 12:30?\nsee you"),
    ],
)
def test_a_reply_is_texted_and_remembered_without_speaker_labels(
    llm_app, fake_openai, twilio_post, content, sent
):
    app = llm_app()
    fake_openai.responder = lambda body: content
    assert twilio_post("hi", target=app).replies == [sent]
    assert stored(app)[1].body == sent
    fake_openai.responder = echo
    twilio_post("and?", target=app)
    assert fake_openai.chat_calls[-1]["messages"][2] == {"role": "assistant", "content": sent}


@pytest.mark.parametrize(
    "content",
    [
        "Ada:\nUser: hi",
        "User: hi Ada, how are you?",  # the model answers as the texter
        "Human: hi\nhow are you?",
        "Sam: hi\nAda:",
    ],
)
def test_a_reply_that_is_only_a_label_is_a_failure_that_says_so(
    llm_app, fake_openai, twilio_post, content
):
    app = llm_app(model_retries=0)
    fake_openai.responder = lambda body: content
    assert twilio_post("hi", target=app).replies == [
        "Sorry, I can't answer right now. Try again in a bit."
    ]
    inbound, outbound = stored(app)
    assert (
        inbound.error == "model wrote only a speaker label or another's turn, no reply of its own"
    )
    assert outbound.kind == "fallback"


@pytest.mark.parametrize(
    ("content", "finish", "refusal", "behaviour", "error"),
    [
        # A reasoning model that thought through all of its max_tokens: nothing left to say.
        (
            "",
            "length",
            None,
            "ok",
            "model used all of --max-tokens 64 before writing a reply (finish_reason length; "
            "a reasoning model spends them thinking first): raise it with `phischer persona "
            "edit ada --max-tokens N`",
        ),
        ("<think>\nSo they want", "length", None, "ok", "model used all of --max-tokens 64"),
        (
            "<think>hmm</think>",
            "stop",
            None,
            "ok",
            "model returned only its reasoning (a <think> block), no reply",
        ),
        (
            None,
            "stop",
            "I'm sorry, I can't help with that.",
            "ok",
            "model refused to answer: I'm sorry, I can't help with that.",
        ),
        (
            "I can tell you th",
            "content_filter",
            None,
            "ok",
            "the model server's content filter stopped the reply",
        ),
        ("hi", "stop", None, "no_choices", "model server answered with no choices"),
    ],
)
def test_a_completion_without_a_reply_says_why(
    llm_app, fake_openai, database, twilio_post, content, finish, refusal, behaviour, error
):
    set_sampling(database, max_tokens=64)
    app = llm_app(model_retries=0)
    fake_openai.responder = lambda body: content
    fake_openai.finish_reason, fake_openai.refusal = finish, refusal
    fake_openai.behaviour = behaviour
    assert twilio_post("hi", target=app).replies == [
        "Sorry, I can't answer right now. Try again in a bit."
    ]
    inbound, outbound = stored(app)
    assert inbound.status == "failed" and inbound.error.startswith(error)
    assert outbound.kind == "fallback"


def test_a_tool_call_instead_of_a_reply_says_so(llm_app, fake_openai, twilio_post):
    # phischer offers no tools, but a proxy or a server's template can add some.
    app = llm_app(model_retries=0)
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "web_search", "arguments": "{}"},
    }
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    choice = {"index": 0, "finish_reason": "tool_calls", "message": message}
    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [choice],
    }
    fake_openai.reply("POST", "/v1/chat/completions", 200, completion)
    assert twilio_post("hi", target=app).replies == [
        "Sorry, I can't answer right now. Try again in a bit."
    ]
    inbound, outbound = stored(app)
    assert (
        inbound.error
        == "model called a tool (web_search) instead of replying; phischer offers it none"
    )
    assert outbound.kind == "fallback"


def test_a_reasoning_models_cut_answer_is_sent_without_its_thinking(
    llm_app, fake_openai, twilio_post
):
    app = llm_app()
    fake_openai.responder = lambda body: "<think>short</think>sure, see you at"
    fake_openai.finish_reason = "length"
    assert twilio_post("hi", target=app).replies == ["sure, see you at"]


def test_content_given_as_parts_is_read_without_the_thinking_part(
    llm_app, fake_openai, twilio_post
):
    # Mistral's Magistral answers with a list of parts, its thinking in one of them.
    app = llm_app()
    fake_openai.responder = lambda body: [
        {"type": "thinking", "thinking": [{"type": "text", "text": "They greet me."}]},
        {"type": "text", "text": "hey! "},
        {"type": "text", "text": "what's up"},
    ]
    assert twilio_post("hi", target=app).replies == ["hey! what's up"]


def test_a_max_tokens_the_model_cannot_give_is_an_error_not_a_renamed_retry(
    llm_app, fake_openai, database, twilio_post
):
    # OpenAI names max_tokens for a value too large too (code null): renamed, a server that
    # ignores max_completion_tokens would answer with no cap, and every later text too.
    set_sampling(database, max_tokens=100000)
    app = llm_app()
    message = (
        "max_tokens is too large: 100000. This model supports at most 16384 completion "
        "tokens, whereas you provided 100000."
    )
    fake_openai.fail("POST", "/v1/chat/completions", 400, message, param="max_tokens")
    twilio_post("hi", target=app)
    assert stored(app)[0].error == f"model server error 400: {message}"
    twilio_post("again", target=app)
    assert [c.get("max_tokens") for c in fake_openai.chat_calls] == [100000, 100000]
    assert not any("max_completion_tokens" in c for c in fake_openai.chat_calls)


def test_a_model_server_on_loopback_is_reached_around_the_proxy(
    make_app, personas, database, fake_openai, twilio_post, proxy_env
):
    # A corporate HTTP_PROXY without NO_PROXY cannot reach the Ollama on this machine: the
    # SDK sent it there anyway, and every text got the fallback after the proxy's 502.
    with database.write() as session:
        set_model(session, "Ada", "llama3", base_url=fake_openai.base_url)
    app = make_app(model_retries=0)
    assert twilio_post("hi", target=app).replies == ["echo: hi"]
    assert len(fake_openai.chat_calls) == 1
    assert proxy_env == []


def test_a_model_server_elsewhere_still_goes_through_the_proxy(
    make_app, personas, database, twilio_post, proxy_env
):
    with database.write() as session:
        set_model(session, "Ada", "llama3", base_url="http://models.example.invalid/v1")
    app = make_app(model_retries=0)
    assert twilio_post("hi", target=app).replies == [
        "Sorry, I can't answer right now. Try again in a bit."
    ]
    assert proxy_env == [("POST", "http://models.example.invalid/v1/chat/completions")]


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("LocalHost.", True),
        ("ollama.localhost", True),
        ("::1", True),
        ("192.168.1.20", True),
        ("10.0.0.5", True),
        ("172.16.3.4", True),
        ("fd00::5", True),
        ("fe80::1", True),
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        ("api.openai.com", False),
        ("gpu-box.lan", False),  # a name: the proxy may be the way to it
    ],
)
def test_is_local_host(host, local):
    assert is_local_host(host) is local


@pytest.mark.parametrize(
    ("url", "server"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com"),
        ("HTTP://Gpu.Local:8000/v1/?api-key=k", "http://gpu.local:8000"),
        ("http://user:pw@[::1]:11434/v1", "http://[::1]:11434"),
        ("https://api.openai.com:99999/v1", "https://api.openai.com"),
    ],
)
def test_a_server_is_shown_by_scheme_host_and_port_only(url, server):
    from phischer.ports import url_origin

    assert url_origin(url) == server
