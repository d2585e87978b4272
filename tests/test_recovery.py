"""Texts a crash left unanswered are answered late by REST, or recorded as failed."""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from phischer import no_reply
from phischer.commands import parse
from phischer.inbound import RESET_TEXT, Inbound
from phischer.models import Message, utcnow
from phischer.recovery import (
    GIVE_UP_AFTER,
    LATE_ANSWERS,
    NO_REST,
    OPTED_OUT,
    RECOVER_AFTER,
    SEND_GAVE_UP,
    SEND_INTERRUPTED,
    SEND_OPTED_OUT,
    SEND_SUPERSEDED,
    SUPERSEDED,
    TOO_OLD,
    sweep,
)
from phischer.thread import SPOKEN
from tests.conftest import post_signed, serving, set_model, sms_params
from tests.fake_openai import echo
from tests.fake_twilio import AUTH_TOKEN
from tests.test_serve_stop import async_env
from tests.test_serve_stop import serving as serving_in_group


def stored(app) -> list[Message]:
    with app.extensions["phischer"].db.read() as session:
        return list(session.scalars(sa.select(Message).order_by(Message.id)))


def interrupted(
    app, body: str, sid: str, age: dt.timedelta, phone: str = "+15550100", to: str | None = None
) -> int:
    """Store a text (sent to `to`) exactly as the webhook does, then "crash" before the reply;
    age it."""
    service = app.extensions["phischer"].sms
    decision = service._record(Inbound(phone=phone, sid=sid, body=body, to=to), parse(body))
    assert decision.persona is not None  # it was about to ask the persona
    backdate(app, decision.inbound_id, age)
    return decision.inbound_id


def backdate(app, message_id: int, age: dt.timedelta) -> None:
    with app.extensions["phischer"].db.write() as session:
        # Both columns explicitly: an ORM attribute change would stamp updated_at with now.
        session.execute(
            sa.update(Message)
            .where(Message.id == message_id)
            .values(created_at=utcnow() - age, updated_at=None)
        )


def assert_given_up(app, service, fake_twilio, message_id: int, outcome: tuple) -> None:
    """A sweep gives up on one row, stored with (status, error) `outcome`; nothing is sent."""
    assert sweep(service).failed == 1
    by_id = {m.id: m for m in stored(app)}
    assert (by_id[message_id].status, by_id[message_id].error) == outcome
    assert fake_twilio.calls("POST", "/Messages.json") == []


def assert_answered_late(app, fake_twilio) -> None:
    """A sweep answers the interrupted work question by REST, and nothing else is sent."""
    assert sweep(app.extensions["phischer"].sms).answered == 1
    assert [c.form["Body"] for c in fake_twilio.calls("POST", "/Messages.json")] == [
        "I compute Bernoulli numbers, mostly by candlelight."
    ]


def test_interrupted_text_is_answered_late_by_rest(make_app, personas, fake_twilio, twilio_rest):
    app = make_app(**twilio_rest)
    inbound_id = interrupted(
        app, "so what do you do for work?", "SMcrash1", dt.timedelta(minutes=5)
    )
    result = sweep(app.extensions["phischer"].sms)
    assert (result.answered, result.resent, result.failed) == (1, 0, 0)
    sends = fake_twilio.calls("POST", "/Messages.json")
    assert [(c.form["To"], c.form["Body"]) for c in sends] == [
        ("+15550100", "I compute Bernoulli numbers, mostly by candlelight.")
    ]
    inbound, outbound = stored(app)
    assert inbound.id == inbound_id and inbound.status == "replied"
    assert outbound.reply_to_id == inbound_id and outbound.status == "sent"
    # A second sweep finds nothing: the text is answered once.
    assert sweep(app.extensions["phischer"].sms).answered == 0
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1


def test_a_text_still_being_answered_is_left_alone(make_app, personas, fake_twilio, twilio_rest):
    app = make_app(**twilio_rest)
    interrupted(app, "tell me a joke!", "SMbusy1", dt.timedelta(seconds=30))
    assert sweep(app.extensions["phischer"].sms).answered == 0
    assert [m.status for m in stored(app)] == ["processing"]
    assert fake_twilio.calls("POST", "/Messages.json") == []


def test_a_sweep_that_took_over_a_slow_text_answers_it_once(
    make_app, personas, fake_twilio, twilio_rest, caplog
):
    # The webhook's own model call outlived the sweep's patience: the sweep answers the
    # text, and the original result, arriving later, must not become a second reply.
    from phischer.backends.base import Reply

    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    body = "so what do you do for work?"
    decision = service._record(Inbound(phone="+15550100", sid="SMslow1", body=body), parse(body))
    result = sweep(service, now=utcnow() + dt.timedelta(minutes=3))
    assert result.answered == 1
    service.deliver_later("+15550100", decision, (Reply(text="late original"), None, 190_000))
    sends = fake_twilio.calls("POST", "/Messages.json")
    assert [c.form["Body"] for c in sends] == [
        "I compute Bernoulli numbers, mostly by candlelight."
    ]
    assert [(m.direction, m.status) for m in stored(app)] == [("in", "replied"), ("out", "sent")]
    assert f"Text {decision.inbound_id} was taken over by the recovery sweep" in caplog.text


def test_an_inline_answer_the_sweep_took_over_tells_the_webhook_it_goes_by_rest(
    make_app, personas, fake_twilio, twilio_rest
):
    # The webhook's answer then holds no message: its header says the sweep answers by REST.
    from phischer.backends.base import Reply

    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    body = "so what do you do for work?"
    decision = service._record(Inbound(phone="+15550100", sid="SMslow2", body=body), parse(body))
    assert sweep(service, now=utcnow() + dt.timedelta(minutes=3)).answered == 1
    answers, _, why = service._answered("Ada", decision, (Reply(text="late"), None, 190_000))
    assert (answers, why) == ([], "rest-late")


def test_a_text_answered_in_time_is_not_taken_over(make_app, personas, fake_twilio, twilio_rest):
    from phischer.backends.base import Reply

    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    decision = service._record(Inbound(phone="+15550100", sid="SMok1", body="hi"), parse("hi"))
    service.deliver_later("+15550100", decision, (Reply(text="on time"), None, 900))
    assert sweep(service, now=utcnow() + dt.timedelta(minutes=3)).answered == 0
    assert [c.form["Body"] for c in fake_twilio.calls("POST", "/Messages.json")] == ["on time"]


def test_without_rest_credentials_the_failure_is_recorded(make_app, personas):
    app = make_app()
    interrupted(app, "tell me a joke!", "SMcrash2", dt.timedelta(minutes=5))
    assert sweep(app.extensions["phischer"].sms).failed == 1
    (inbound,) = stored(app)
    assert (inbound.status, inbound.error) == ("failed", NO_REST)


def test_too_old_or_superseded_texts_are_not_answered(
    make_app, personas, fake_twilio, twilio_rest, twilio_post
):
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    # A first text starts the background sweep; let its first round (nothing to find yet)
    # finish, so the next one is a minute away and cannot race the rows made below.
    twilio_post("hello", target=app, from_="+15550999")
    deadline = time.monotonic() + 10
    while not service.sweeper.peek().marks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.sweeper.peek().marks
    old = interrupted(app, "tell me a joke!", "SMold", dt.timedelta(hours=2), phone="+15550111")
    first = interrupted(app, "tell me a joke!", "SMfirst", dt.timedelta(minutes=5))
    assert twilio_post("are you there?", target=app).status_code == 200  # answered normally
    assert sweep(service).failed == 2
    by_id = {m.id: m for m in stored(app)}
    assert (by_id[old].status, by_id[old].error) == ("failed", TOO_OLD)
    assert (by_id[first].status, by_id[first].error) == ("failed", SUPERSEDED)
    assert fake_twilio.calls("POST", "/Messages.json") == []


def test_an_interrupted_rest_send_is_sent_again(
    make_app, personas, fake_twilio, twilio_rest, twilio_post
):
    app = make_app(**twilio_rest)
    twilio_post("good night", target=app)
    app.extensions["phischer"].sms.shutdown()  # no background sweep from here on
    inbound, outbound = stored(app)
    with app.extensions["phischer"].db.write() as session:  # as if killed mid-send
        session.get(Message, outbound.id).status = "queued"
    backdate(app, outbound.id, dt.timedelta(minutes=3))
    result = sweep(app.extensions["phischer"].sms)
    assert (result.answered, result.resent, result.failed) == (0, 1, 0)
    assert [c.form["Body"] for c in fake_twilio.calls("POST", "/Messages.json")] == [outbound.body]
    assert stored(app)[1].status == "sent"

    app2 = make_app()  # no REST credentials: recorded instead
    twilio_post("good morning", target=app2)
    app2.extensions["phischer"].sms.shutdown()
    last = stored(app2)[-1]
    with app2.extensions["phischer"].db.write() as session:
        session.get(Message, last.id).status = "queued"
    backdate(app2, last.id, dt.timedelta(minutes=3))
    assert sweep(app2.extensions["phischer"].sms).failed == 1
    assert (stored(app2)[-1].status, stored(app2)[-1].error) == ("send_failed", SEND_INTERRUPTED)


def test_each_serving_process_starts_one_sweeper(app, twilio_post):
    service = app.extensions["phischer"].sms
    assert service.sweeper.peek() is None  # nothing runs before the first text
    twilio_post("hi")
    sweeper = service.sweeper.peek()
    assert sweeper is not None and sweeper.thread.is_alive()
    twilio_post("hi again")
    assert service.sweeper.peek() is sweeper
    service.shutdown()
    assert not sweeper.thread.is_alive()


def test_later_sweeps_read_only_the_last_hour_or_so(make_app, personas):
    from phischer.recovery import Sweeper

    app = make_app()
    service = app.extensions["phischer"].sms
    sweeper = Sweeper(service)  # not started: driven by hand with explicit times
    t0 = utcnow()
    early = interrupted(app, "tell me a joke!", "SMearly", dt.timedelta(minutes=5))
    assert sweeper.after_id(t0) == 0  # no old sweep yet: everything is read
    assert sweeper.run_once(t0).failed == 1  # (no REST credentials: recorded as failed)
    assert sweeper.marks == [(t0, early)]
    # An hour and a bit later, rows up to the id seen then are past; newer ones are read.
    assert sweeper.after_id(t0 + GIVE_UP_AFTER + 3 * RECOVER_AFTER - dt.timedelta(seconds=1)) == 0
    later = t0 + GIVE_UP_AFTER + 3 * RECOVER_AFTER
    assert sweeper.after_id(later) == early
    with service.store.read() as cur:
        assert service.store.pending(cur, later, after_id=early) == []
    # A row below the mark that is somehow still pending is no longer looked at.
    with app.extensions["phischer"].db.write() as session:
        session.execute(sa.update(Message).where(Message.id == early).values(status="processing"))
    assert sweep(service, later, after_id=early).failed == 0
    assert sweep(service, later).failed == 1  # a full sweep still finds it


def test_a_reply_twilio_could_not_take_is_sent_by_a_later_sweep(
    make_app, personas, fake_twilio, twilio_rest
):
    from phischer.backends.base import Reply

    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    service.sender.retry_delays_s = (0.01, 0.01)
    decision = service._record(Inbound(phone="+15550100", sid="SMbusy", body="hi"), parse("hi"))
    fake_twilio.fail_messages(429, 20429, "Too Many Requests", times=3)
    service.deliver_later("+15550100", decision, (Reply(text="see you soon"), None, 900))
    outbound = stored(app)[1]
    assert (outbound.status, outbound.error) == (  # kept for a retry, the reason recorded
        "send_retry",
        "Twilio error 20429: Unable to create record: Too Many Requests",
    )
    # Not something the persona has said (yet): the thread of a text now leaves it out.
    with service.store.read() as cur:
        history = list(
            service.store.history_pages(
                cur, decision.contact_id, decision.persona.id, None, 9, SPOKEN
            )
        )
    assert [(d, b) for d, b, _ in history] == [("in", "hi")]
    # Too soon for the sweep: the failure is fresh.
    assert sweep(service).resent == 0
    assert sweep(service, now=utcnow() + RECOVER_AFTER).resent == 1
    assert [c.form["Body"] for c in fake_twilio.calls("POST", "/Messages.json")][-1] == (
        "see you soon"
    )
    outbound = stored(app)[1]
    assert (outbound.status, outbound.error) == ("sent", None)
    assert outbound.message_sid.startswith("SM")
    with service.store.read() as cur:
        history = list(
            service.store.history_pages(
                cur, decision.contact_id, decision.persona.id, None, 9, SPOKEN
            )
        )
    assert [(d, b) for d, b, _ in history] == [("out", "see you soon"), ("in", "hi")]


def test_a_refused_reply_is_not_retried(make_app, personas, fake_twilio, twilio_rest):
    from phischer.backends.base import Reply

    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    decision = service._record(Inbound(phone="+15550100", sid="SMno", body="hi"), parse("hi"))
    fake_twilio.fail_messages(400, 21211, "Invalid 'To' Phone Number")
    service.deliver_later("+15550100", decision, (Reply(text="hello"), None, 900))
    assert stored(app)[1].status == "send_failed"
    assert sweep(service, now=utcnow() + RECOVER_AFTER).resent == 0
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1


def test_a_reply_refused_as_opted_out_opts_the_number_out(
    make_app, personas, fake_twilio, twilio_rest
):
    from phischer.backends.base import Reply

    # A STOP Twilio has and phischer does not (sent while the server was down): the REST
    # reply is refused (21610) and the number recorded as opted out, so its next text gets
    # no model call, and a reply left waiting for it is not sent.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    decision = service._record(Inbound(phone="+15550100", sid="SMo1", body="hi"), parse("hi"))
    left = service.store
    fake_twilio.fail_messages(400, 21610, "Attempt to send to unsubscribed recipient")
    service.deliver_later("+15550100", decision, (Reply(text="hello"), None, 900))
    with left.write() as cur:
        queued = left.insert_reply(
            cur, decision.inbound_id, decision.contact_id, None, "chat", "and also", "queued",
            utcnow() - dt.timedelta(minutes=5),
        )  # fmt: skip
    later = service._record(Inbound(phone="+15550100", sid="SMo2", body="yo"), parse("yo"))
    assert later.persona is None and later.silence == no_reply.OPTED_OUT
    assert sweep(service).failed == 1
    by_id = {m.id: m for m in stored(app)}
    assert (by_id[queued].status, by_id[queued].error) == ("send_failed", SEND_OPTED_OUT)
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1


def test_reply_retries_stop_after_an_hour(make_app, personas, fake_twilio, twilio_rest):
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    service.sender.retry_delays_s = ()
    out_id, _ = queued_reply(app, "SMhour")
    # A failure whose next try would come after the hour is final at once (one that may
    # have gone out, a 5xx, waits for the sweep to ask Twilio: test_resend).
    fake_twilio.fail_messages(429, 20429, "Too Many Requests")
    late = utcnow() - GIVE_UP_AFTER + RECOVER_AFTER / 2
    service.send_stored("+15550100", out_id, "hello", created_at=late)
    assert (stored(app)[1].status, stored(app)[1].error) == (
        "send_failed",
        "Twilio error 20429: Unable to create record: Too Many Requests",
    )
    # A reply still waiting after failed tries, found past the hour: the last failure is kept.
    out_id, _ = queued_reply(app, "SMhour2", error="Twilio error 20429: Too many")
    backdate(app, out_id, GIVE_UP_AFTER + dt.timedelta(minutes=1))
    sends = len(fake_twilio.calls("POST", "/Messages.json"))
    assert sweep(service).failed == 1
    last = stored(app)[-1]
    assert (last.status, last.error) == (
        "send_failed",
        SEND_GAVE_UP + "Twilio error 20429: Too many",
    )
    assert len(fake_twilio.calls("POST", "/Messages.json")) == sends


def test_a_queued_reply_the_texter_has_moved_past_is_not_sent(
    make_app, personas, fake_twilio, twilio_rest, twilio_post
):
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    out_id, _ = queued_reply(app, "SMold1")
    assert twilio_post("hello??", target=app).status_code == 200  # the texter moved on
    service.shutdown()  # no background sweep from here on
    backdate(app, out_id, dt.timedelta(minutes=5))
    assert_given_up(app, service, fake_twilio, out_id, ("send_failed", SEND_SUPERSEDED))


def queued_reply(
    app, sid: str, error: str | None = None, phone: str = "+15550100"
) -> tuple[int, dt.datetime]:
    """A text and its reply stored for a REST send; with `error`, as a failed send left it."""
    from phischer.backends.base import Reply

    service = app.extensions["phischer"].sms
    decision = service._record(Inbound(phone=phone, sid=sid, body="hi"), parse("hi"))
    out_id = service._store(decision, (Reply(text="hello"), None, 900), via_rest=True).id
    if error:
        with app.extensions["phischer"].db.write() as session:
            session.execute(
                sa.update(Message)
                .where(Message.id == out_id)
                .values(status="send_retry", error=error)
            )
    return out_id, utcnow()


def test_a_restarted_server_answers_left_texts_before_any_new_text(
    make_app, personas, fake_twilio, twilio_rest, settings, tmp_path
):
    # On a quiet number the next text may come hours later, and would supersede the left
    # one: each gunicorn worker sweeps as soon as it starts.
    app = make_app(**twilio_rest)
    inbound_id = interrupted(app, "good night", "SMboot", dt.timedelta(minutes=5))
    app.extensions["phischer"].sms.shutdown()
    env = {
        "INSTANCE_PATH": str(settings.instance_path),
        "TWILIO_ACCOUNT_SID": twilio_rest["twilio_account_sid"],
        "TWILIO_AUTH_TOKEN": twilio_rest["twilio_auth_token"],
        "TWILIO_PHONE_NUMBER": twilio_rest["twilio_phone_number"],
        "TWILIO_API_BASE_URL": twilio_rest["twilio_api_base_url"],
    }
    with serving(tmp_path, env):
        deadline = time.monotonic() + 20
        while not fake_twilio.calls("POST", "/Messages.json") and time.monotonic() < deadline:
            time.sleep(0.05)
    sends = fake_twilio.calls("POST", "/Messages.json")
    assert [(c.form["To"], c.form["Body"]) for c in sends] == [
        ("+15550100", "Sleep well, dear. Dream of engines.")
    ]
    inbound, outbound = stored(app)
    assert (inbound.id, inbound.status) == (inbound_id, "replied")
    assert (outbound.reply_to_id, outbound.status) == (inbound_id, "sent")


def test_a_server_killed_at_the_model_answers_the_text_once_when_started_again(
    tmp_path, personas, database, fake_openai, fake_twilio
):
    # The real crash: `kill -9` of every gunicorn process while the model works on a reply.
    held = threading.Event()
    fake_openai.responder = lambda body: held.wait(20) and echo(body)
    with database.write() as session:
        set_model(session, "Ada", "ft:ada", base_url=fake_openai.base_url)
    # Idle for a second is "left" (not two minutes); texted on a second number of the account.
    env = {**async_env(fake_twilio), "RECOVER_AFTER_S": "1"}
    text = sms_params("hey how are you", "+15550100", To="+15550288")
    with serving_in_group(tmp_path, env) as server:
        assert post_signed(server.url, AUTH_TOKEN, text).status_code == 200
        deadline = time.monotonic() + 10
        while not fake_openai.chat_calls:  # the model is now working on the reply
            assert time.monotonic() < deadline, "".join(server.output)
            time.sleep(0.05)
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=5)
    rows = [(m.direction, m.body, m.status) for m in stored_in(database)]
    assert rows == [("in", "hey how are you", "processing")]  # stored before the model call
    held.set()  # the model answers at once from now on
    time.sleep(1.2)  # idle longer than RECOVER_AFTER_S before the restart's first sweep
    with serving_in_group(tmp_path, env) as server:
        deadline = time.monotonic() + 10
        while [m.status for m in stored_in(database)] != ["replied", "sent"]:
            assert time.monotonic() < deadline, "".join(server.output)
            time.sleep(0.05)
        time.sleep(0.5)  # time for the other worker's start-up sweep to send it again, if it could
    sends = fake_twilio.calls("POST", "/Messages.json")
    assert [(c.form["To"], c.form["From"], c.form["Body"]) for c in sends] == [
        ("+15550100", "+15550288", "echo: hey how are you")
    ]
    inbound, reply = stored_in(database)
    assert (inbound.error, reply.reply_to_id, reply.body) == (
        None,
        inbound.id,
        "echo: hey how are you",
    )
    assert len(fake_openai.chat_calls) == 2  # the killed call, then the late answer's


def stored_in(database) -> list[Message]:
    """Every stored message, oldest first."""
    with database.read() as session:
        return list(session.scalars(sa.select(Message).order_by(Message.id)))


def test_a_sweep_stops_resending_while_twilio_is_down(make_app, personas, fake_twilio, twilio_rest):
    # Three replies wait for Twilio; it still fails at the first: the other two are not
    # tried in this sweep (each would wait out the same retries), but in the next one.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    service.sender.retry_delays_s = ()
    # Three numbers: a later text from the same number would supersede an earlier reply.
    waiting = [
        queued_reply(app, f"SMdown{i}", "Twilio error 20503: down", f"+1555010{i}")[0]
        for i in range(3)
    ]
    for out_id in waiting:
        backdate(app, out_id, dt.timedelta(minutes=5))
    fake_twilio.fail_messages(503, 20503, "Service unavailable")
    result = sweep(service)
    assert (result.resent, result.retrying, result.failed) == (0, 1, 0)
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1
    statuses = {m.id: m.status for m in stored(app)}
    assert [statuses[i] for i in waiting] == ["send_retry"] * 3
    # Twilio is back: the next sweep sends the two it skipped; the first waits its turn.
    result = sweep(service)
    assert (result.resent, result.retrying) == (2, 0)
    assert sweep(service, now=utcnow() + RECOVER_AFTER).resent == 1
    assert [m.status for m in stored(app) if m.id in waiting] == ["sent"] * 3


def text_now(app, body: str, phone: str = "+15550100") -> None:
    """A text handled as the webhook stores it, without starting the background sweep."""
    from phischer.backends.base import Reply

    service = app.extensions["phischer"].sms
    decision = service._record(
        Inbound(phone=phone, sid=f"SM{time.time_ns()}", body=body), parse(body)
    )
    if decision.persona is not None:  # answered inline, as a fast model would
        service._store(decision, (Reply(text=f"inline answer to {body}"), None, 5), via_rest=False)


def test_a_text_left_before_stop_is_not_answered_late(make_app, personas, fake_twilio, twilio_rest):
    app = make_app(**twilio_rest)
    inbound_id = interrupted(app, "tell me a joke!", "SMstop1", dt.timedelta(minutes=5))
    text_now(app, "STOP")
    assert_given_up(
        app, app.extensions["phischer"].sms, fake_twilio, inbound_id, ("failed", OPTED_OUT)
    )


def test_a_text_left_before_stop_is_not_answered_after_start_either(
    make_app, personas, fake_twilio, twilio_rest
):
    # STOP ended that conversation; START lets new texts in, not the answer STOP cut off.
    app = make_app(**twilio_rest)
    inbound_id = interrupted(app, "tell me a joke!", "SMstop4", dt.timedelta(minutes=5))
    text_now(app, "STOP")
    text_now(app, "START")
    assert_given_up(
        app, app.extensions["phischer"].sms, fake_twilio, inbound_id, ("failed", SUPERSEDED)
    )


def test_a_reply_waiting_for_twilio_is_not_sent_after_stop(
    make_app, personas, fake_twilio, twilio_rest
):
    app = make_app(**twilio_rest)
    out_id, _ = queued_reply(app, "SMstop2", error="Twilio error 20503: down")
    text_now(app, "STOP")
    backdate(app, out_id, dt.timedelta(minutes=5))
    assert_given_up(
        app, app.extensions["phischer"].sms, fake_twilio, out_id, ("send_failed", SEND_OPTED_OUT)
    )


def test_a_stop_during_the_sweep_stops_a_reply_it_listed_before(
    make_app, personas, fake_twilio, twilio_rest, monkeypatch
):
    # The sweep lists its rows first, then answers and sends them one by one, which can take
    # minutes: a STOP in between must still stop the send.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    out_id, _ = queued_reply(app, "SMstop3", error="Twilio error 20503: down")
    backdate(app, out_id, dt.timedelta(minutes=5))
    pending = service.store.pending

    def pending_then_stop(*args, **kwargs):
        rows = pending(*args, **kwargs)
        text_now(app, "STOP")
        return rows

    monkeypatch.setattr(service.store, "pending", pending_then_stop)
    assert_given_up(app, service, fake_twilio, out_id, ("send_failed", SEND_OPTED_OUT))


def test_a_slow_reply_is_not_sent_after_stop(make_app, personas, fake_twilio, twilio_rest):
    from phischer.backends.base import Reply

    # REPLY_MODE=auto with a slow model: the number texts STOP while the reply is made.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    decision = service._record(Inbound(phone="+15550100", sid="SMslow2", body="hi"), parse("hi"))
    text_now(app, "STOP")
    service.deliver_later("+15550100", decision, (Reply(text="too late"), None, 20_000))
    assert fake_twilio.calls("POST", "/Messages.json") == []
    inbound, _stop, outbound = stored(app)
    assert inbound.status == "replied"
    assert (outbound.body, outbound.status, outbound.error) == (
        "too late",
        "send_failed",
        SEND_OPTED_OUT,
    )


def test_a_stop_while_the_first_rest_client_is_made_stops_the_reply(
    make_app, personas, fake_twilio, twilio_rest, monkeypatch
):
    from phischer import twilio_client
    from phischer.backends.base import Reply

    # A process's first REST send builds twilio's client (its imports: tens of ms on a busy
    # machine). Built after the reply was checked and stored, a STOP could be recorded in
    # between, and the reply still went out: on the real server, 2 of 30 numbers that texted
    # STOP just as their slow reply came got it 35-78 ms after their STOP was answered.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    decision = service._record(Inbound(phone="+15550100", sid="SMfirst", body="hi"), parse("hi"))
    made = twilio_client.make_twilio_client

    def stop_meanwhile(*args, **kwargs):
        text_now(app, "STOP")  # the number's STOP, stored by another thread meanwhile
        return made(*args, **kwargs)

    monkeypatch.setattr(twilio_client, "make_twilio_client", stop_meanwhile)
    service.deliver_later("+15550100", decision, (Reply(text="too late"), None, 20_000))
    assert fake_twilio.calls("POST", "/Messages.json") == []
    reply = stored(app)[-1]
    assert (reply.body, reply.status, reply.error) == ("too late", "send_failed", SEND_OPTED_OUT)


def inline_reply_after(app, fake_openai, twilio_post, command: str, phone: str):
    """Text the slow model, send `command` while it works; the text's webhook response."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(twilio_post, "hey how are you", phone, target=app)
        deadline = time.monotonic() + 5
        while not fake_openai.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        twilio_post(command, phone, target=app)
        return first.result(timeout=10)


@pytest.fixture
def slow_inline(make_app, personas, database, fake_openai):
    """Build an app whose Ada (fake OpenAI) takes 1.5 s, within REPLY_TIMEOUT_S."""
    from tests.conftest import set_model

    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    fake_openai.behaviour, fake_openai.delay = "slow", 1.5
    return lambda mode: make_app(reply_mode=mode, reply_timeout_s=8)


@pytest.mark.parametrize("mode", ["inline", "auto"])
def test_an_inline_reply_is_not_sent_after_stop(slow_inline, fake_openai, twilio_post, mode):
    # The model answers within REPLY_TIMEOUT_S, in the webhook's TwiML; the number texted
    # STOP while it worked. Twilio blocks it on SMS, but not on WhatsApp: phischer must not.
    app = slow_inline(mode)
    answered = inline_reply_after(app, fake_openai, twilio_post, "STOP", "whatsapp:+15550100")
    assert answered.replies == []
    assert answered.headers[no_reply.HEADER] == no_reply.OPTED_OUT
    reply = stored(app)[-1]
    assert (reply.direction, reply.status, reply.error) == ("out", "send_failed", SEND_OPTED_OUT)


def test_an_inline_reply_made_across_a_reset_stays_out_of_the_new_thread(
    slow_inline, fake_openai, twilio_post
):
    # It would arrive after "Fresh start", and be the first turn of the thread that follows.
    app = slow_inline("inline")
    answered = inline_reply_after(app, fake_openai, twilio_post, "#reset", "+15550100")
    assert answered.replies == []
    assert answered.headers[no_reply.HEADER] == no_reply.SUPERSEDED
    reply = stored(app)[-1]
    assert (reply.direction, reply.status, reply.error) == ("out", "send_failed", SEND_SUPERSEDED)
    fake_openai.behaviour = "ok"
    twilio_post("what do you do for work", target=app)
    thread = fake_openai.requests[-1].json()["messages"]
    assert [m["role"] for m in thread] == ["system", "user"]


def command_while_answering(fake_openai, post, command: str) -> list[str]:
    """Have the model send `command` (a text of its own, once) while it answers; the replies."""
    answers: list[str] = []

    def responder(body):
        if not answers:  # the first text only: the command's own text may ask the model too
            answers.extend(post(command).replies)
        return echo(body)

    fake_openai.responder = responder
    return answers


@pytest.mark.parametrize(
    ("command", "silence", "error"),
    [
        ("STOP", no_reply.OPTED_OUT, SEND_OPTED_OUT),
        ("#reset", no_reply.SUPERSEDED, SEND_SUPERSEDED),
        ("#bo", no_reply.SUPERSEDED, SEND_SUPERSEDED),
    ],
)
def test_a_quick_inline_reply_is_not_sent_after_a_command_that_came_meanwhile(
    make_app, personas, database, fake_openai, twilio_post, command, silence, error
):
    # A model that answers in well under a second (a loopback fake here, a small local model
    # for real) still leaves time for another text: Twilio posts a number's texts as they
    # come, to any worker. Not checked, the reply went out after STOP (on WhatsApp, Twilio
    # does not block it), after "Fresh start", or from Ada after "You're now texting Bo".
    set_ada_on(database, fake_openai)
    app = make_app()
    phone = "whatsapp:+15550100"
    during = command_while_answering(
        fake_openai, lambda body: twilio_post(body, phone, target=app), command
    )
    answered = twilio_post("hey how are you", phone, target=app)
    switched = {"STOP": [], "#reset": [RESET_TEXT], "#bo": ["You're now texting Bo."]}
    assert during == switched[command]
    assert answered.replies == []
    assert answered.headers[no_reply.HEADER] == silence
    reply = [m for m in stored(app) if m.body == "echo: hey how are you"]
    assert [(m.status, m.error) for m in reply] == [("send_failed", error)]


def test_a_quick_inline_reply_across_a_reset_stays_out_of_the_new_thread(
    make_app, personas, database, fake_openai, twilio_post
):
    # The text before #reset is answered only after a text sent after it: stored as "replied",
    # that answer was part of the new thread, the one turn #reset must forget.
    set_ada_on(database, fake_openai)
    app = make_app()
    texted = []

    def responder(body):
        said = body["messages"][-1]["content"]
        if said == "before the reset":
            texted.append(twilio_post("#reset", target=app).replies)
            texted.append(twilio_post("after the reset", target=app).replies)
        return echo(body)

    fake_openai.responder = responder
    assert twilio_post("before the reset", target=app).replies == []
    assert texted == [[RESET_TEXT], ["echo: after the reset"]]
    twilio_post("and now?", target=app)
    thread = fake_openai.requests[-1].json()["messages"]
    assert [(m["role"], m["content"]) for m in thread[1:]] == [
        ("user", "after the reset"),
        ("assistant", "echo: after the reset"),
        ("user", "and now?"),
    ]


def set_ada_on(database, fake_openai) -> None:
    """Ada answers from the fake OpenAI (at once, unless a test slows it)."""
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)


def test_an_inline_reply_to_an_earlier_text_is_still_sent(slow_inline, fake_openai, twilio_post):
    # Texts answered in the TwiML arrive in order: a newer text does not stop the older reply.
    app = slow_inline("inline")
    answered = inline_reply_after(app, fake_openai, twilio_post, "and you?", "+15550100")
    assert answered.replies == ["echo: hey how are you"]


@pytest.mark.parametrize("command", ["#reset", "#bo"])
def test_a_command_since_the_crash_supersedes_the_late_answer(
    make_app, personas, fake_twilio, twilio_rest, command
):
    # Ada's answer to a text left before "#bo" would arrive after "Bo here!".
    app = make_app(**twilio_rest)
    first = interrupted(app, "tell me a joke!", "SMcmd", dt.timedelta(minutes=5))
    text_now(app, command)
    assert_given_up(app, app.extensions["phischer"].sms, fake_twilio, first, ("failed", SUPERSEDED))


def test_ignored_texts_since_the_crash_do_not_supersede(
    make_app, personas, fake_twilio, twilio_rest
):
    app = make_app(**twilio_rest)
    interrupted(app, "so what do you do for work?", "SMign", dt.timedelta(minutes=5))
    text_now(app, "   ")  # empty: stored as ignored, no reply
    assert_answered_late(app, fake_twilio)


def test_a_reset_before_the_text_leaves_the_late_answer_wanted(
    make_app, personas, fake_twilio, twilio_rest
):
    from phischer.models import Contact

    app = make_app(**twilio_rest)
    text_now(app, "#reset")  # the number's reset comes first, then the text
    interrupted(app, "so what do you do for work?", "SMreset", dt.timedelta(minutes=5))
    with app.extensions["phischer"].db.write() as session:
        # The crash was minutes ago; the reset a moment before the text.
        session.execute(
            sa.update(Contact).values(thread_reset_at=utcnow() - dt.timedelta(minutes=6))
        )
    assert_answered_late(app, fake_twilio)


def test_a_reset_stored_after_the_text_supersedes_its_late_answer(
    make_app, personas, fake_twilio, twilio_rest
):
    from phischer.models import Contact

    # Read from the contact, not only from a newer #reset text: the sweep listed the text
    # before the reset, and the thread the late answer would start from no longer exists.
    app = make_app(**twilio_rest)
    first = interrupted(app, "so what do you do for work?", "SMreset", dt.timedelta(minutes=5))
    with app.extensions["phischer"].db.write() as session:
        session.execute(sa.update(Contact).values(thread_reset_at=utcnow()))
    assert_given_up(app, app.extensions["phischer"].sms, fake_twilio, first, ("failed", SUPERSEDED))


@pytest.mark.parametrize("command", ["#who", "#list", "HELP", "#nobody", "#ada"])
def test_commands_that_change_nothing_leave_the_late_answer_wanted(
    make_app, personas, fake_twilio, twilio_rest, command
):
    # Asking who is answering (or for help) while waiting is no reason to lose the answer;
    # neither is choosing the persona that is already answering.
    app = make_app(**twilio_rest)
    interrupted(app, "so what do you do for work?", "SMwho", dt.timedelta(minutes=5))
    text_now(app, command)
    assert_answered_late(app, fake_twilio)


@pytest.mark.parametrize(("newer", "reason"), [("are you there?", SUPERSEDED), ("STOP", OPTED_OUT)])
def test_a_slow_late_answer_does_not_overtake_a_newer_text(
    make_app, personas, fake_twilio, twilio_rest, monkeypatch, newer, reason
):
    # The sweep claimed the text; while its model call runs, a newer text is answered
    # inline (or STOP arrives). The late answer would reach the phone after it.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    first = interrupted(app, "tell me a joke!", "SMrace", dt.timedelta(minutes=5))
    generate = service.generate

    def slow_generate(decision, backend):
        result = generate(decision, backend)
        text_now(app, newer)
        return result

    monkeypatch.setattr(service, "generate", slow_generate)
    sweep(service)
    by_id = {m.id: m for m in stored(app)}
    assert (by_id[first].status, by_id[first].error) == ("failed", reason)
    assert [m for m in by_id.values() if m.reply_to_id == first] == []
    assert fake_twilio.calls("POST", "/Messages.json") == []


def test_a_reply_twilio_reported_on_is_not_sent_again(make_app, personas, fake_twilio, twilio_rest):
    # Twilio took the reply and its status callback arrived, but the process died before
    # recording the send: sending again would text it twice.
    app = make_app(**twilio_rest)
    out_id, _ = queued_reply(app, "SMcb")
    with app.extensions["phischer"].db.write() as session:
        session.execute(sa.update(Message).where(Message.id == out_id).values(delivery="sent"))
    backdate(app, out_id, dt.timedelta(minutes=5))
    sweep(app.extensions["phischer"].sms)
    assert fake_twilio.calls("POST", "/Messages.json") == []
    assert {m.id: m.status for m in stored(app)}[out_id] == "sent"


def leftovers(app, count: int) -> list[int]:
    """`count` texts, each from its own number, a crash left "processing" five minutes ago."""
    return [
        interrupted(app, f"joke {i}?", f"SMleft{i}", dt.timedelta(minutes=5), f"+1555011{i:02d}")
        for i in range(count)
    ]


def answer_once(fake_openai, at_once: int):
    """Make the fake model answer each chat once `at_once` were asked together (or after 3 s)."""

    def respond(body):
        deadline = time.monotonic() + 3
        while fake_openai.most_chats < at_once and time.monotonic() < deadline:
            time.sleep(0.01)
        return echo(body)

    fake_openai.responder = respond


@pytest.fixture
def slow_ada(make_app, personas, database, fake_openai, twilio_rest):
    """An app whose Ada is a model on the fake OpenAI server, sending REST replies to the fake."""
    with database.write() as session:
        set_model(session, "Ada", "ft:ada", base_url=fake_openai.base_url)
    return lambda: make_app(**twilio_rest)


def assert_each_answered_once(app, fake_twilio, texts: list[int]) -> None:
    """Each text got one reply, sent once by REST."""
    sends = sorted(c.form["Body"] for c in fake_twilio.calls("POST", "/Messages.json"))
    assert sends == sorted(f"echo: joke {i}?" for i in range(len(texts)))
    rows = stored(app)
    assert {m.id: m.status for m in rows if m.direction == "in"} == dict.fromkeys(texts, "replied")
    replies = [(m.reply_to_id, m.status) for m in rows if m.direction == "out"]
    assert sorted(replies) == [(i, "sent") for i in texts]


def test_leftover_texts_are_answered_a_few_at_a_time(slow_ada, fake_openai, fake_twilio):
    # After a kill -9 with N texts at a model taking T s each, one by one took N x T.
    app = slow_ada()
    texts = leftovers(app, LATE_ANSWERS + 2)
    answer_once(fake_openai, LATE_ANSWERS)
    result = sweep(app.extensions["phischer"].sms)
    # Together, and never more than LATE_ANSWERS at once.
    assert fake_openai.most_chats == LATE_ANSWERS
    assert (result.answered, result.failed, result.retrying) == (len(texts), 0, 0)
    assert_each_answered_once(app, fake_twilio, texts)


def test_two_processes_sweeping_at_once_answer_each_text_once(slow_ada, fake_openai, fake_twilio):
    # Two gunicorn workers start and sweep together: each text is claimed by one of them.
    apps = [slow_ada(), slow_ada()]
    texts = leftovers(apps[0], 2 * LATE_ANSWERS)
    answer_once(fake_openai, LATE_ANSWERS)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda app: sweep(app.extensions["phischer"].sms), apps))
    assert LATE_ANSWERS <= fake_openai.most_chats <= 2 * LATE_ANSWERS
    assert sum(r.answered for r in results) == len(texts)
    assert len(fake_openai.chat_calls) == len(texts)
    assert_each_answered_once(apps[0], fake_twilio, texts)
