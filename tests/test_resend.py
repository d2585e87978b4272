"""A reply Twilio took before a crash is recorded as sent by the recovery sweep, not sent twice."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import time
from email.utils import format_datetime, parsedate_to_datetime

import pytest
import sqlalchemy as sa

from phischer.models import Message, utcnow
from phischer.recovery import (
    GIVE_UP_AFTER,
    LOOKUP_GAVE_UP,
    LOOKUP_GIVE_UP_AFTER,
    RECOVER_AFTER,
    SEND_INTERRUPTED,
    SEND_SUPERSEDED,
    sweep,
)
from phischer.replies import MAYBE_SENT
from tests.conftest import post_signed, set_model, sms_params
from tests.fake_twilio import AUTH_TOKEN
from tests.test_recovery import backdate, queued_reply, stored, stored_in
from tests.test_serve_stop import async_env
from tests.test_serve_stop import serving as serving_in_group

LOOKUP_FAILED = "could not check whether Twilio has it already: Twilio error "


def forget_the_send(app, out_id: int, **values) -> None:
    """Undo the record of a send Twilio took (its sid; "queued" unless `values` say), as a crash."""
    with app.extensions["phischer"].db.write() as session:
        session.execute(
            sa.update(Message)
            .where(Message.id == out_id)
            .values(**{"status": "queued", "message_sid": None, **values})
        )


def taken_unrecorded(app, fake_twilio, out_id: int, age=dt.timedelta(0), **values) -> dict:
    """Twilio's message for reply `out_id`, sent `age` ago; the send's record then undone."""
    assert app.extensions["phischer"].sms.send_stored("+15550100", out_id, "hello") == "sent"
    forget_the_send(app, out_id, **values)
    twilio_dated(fake_twilio.messages[-1], age)
    return fake_twilio.messages[-1]


def twilio_dated(message: dict, age: dt.timedelta) -> None:
    """Date a message the fake Twilio has `age` earlier (its creation and its sending)."""
    when = format_datetime(parsedate_to_datetime(message["date_created"]) - age, usegmt=True)
    message.update(date_created=when, date_sent=when)


@pytest.mark.parametrize("down", [dt.timedelta(0), dt.timedelta(hours=8)])
def test_a_server_killed_after_twilio_took_the_reply_does_not_send_it_again(
    tmp_path, personas, database, fake_openai, fake_twilio, down
):
    # The real crash: `kill -9` of the server once Twilio has created the message, before
    # its answer reaches the server (which would record the reply "sent"). Started again at
    # once, or the next morning: the texter got the reply either way, so it is "sent".
    with database.write() as session:
        set_model(session, "Ada", "ft:ada", base_url=fake_openai.base_url)
    env = {**async_env(fake_twilio), "RECOVER_AFTER_S": "1"}
    with serving_in_group(tmp_path, env) as server:
        fake_twilio.after_next(
            "POST", "/Messages.json", lambda: os.killpg(server.proc.pid, signal.SIGKILL)
        )
        post_signed(server.url, AUTH_TOKEN, sms_params("hey how are you", "+15550100"))
        server.proc.wait(timeout=10)
    assert [(m.direction, m.status) for m in stored_in(database)] == [
        ("in", "replied"),
        ("out", "queued"),  # Twilio has it; the server did not live to record that
    ]
    (taken,) = fake_twilio.messages
    if down:
        with database.write() as session:
            for message in session.scalars(sa.select(Message)):
                message.created_at -= down
        twilio_dated(taken, down)
    time.sleep(1.2)  # idle longer than RECOVER_AFTER_S before the restart's first sweep
    with serving_in_group(tmp_path, env) as server:
        deadline = time.monotonic() + 10
        while stored_in(database)[1].status != "sent":
            assert time.monotonic() < deadline, "".join(server.output)
            time.sleep(0.05)
        time.sleep(0.5)  # time for another sweep to send it, if one could
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1
    reply = stored_in(database)[1]
    assert (reply.status, reply.message_sid, reply.delivery) == ("sent", taken["sid"], "sent")


@pytest.mark.parametrize("left", ["queued", "send_retry"])
def test_a_reply_twilio_took_is_recorded_sent_not_sent_again(
    make_app, personas, fake_twilio, twilio_rest, left, caplog
):
    # "queued": the process died (or its database write failed) after Twilio took the
    # reply. "send_retry": Twilio took a send it answered with an error (a 504 from its edge).
    caplog.set_level(logging.INFO, logger="phischer")
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    out_id, _ = queued_reply(app, "SMtook")
    error = "Twilio error 20504: Gateway timeout" if left == "send_retry" else None
    taken = taken_unrecorded(app, fake_twilio, out_id, status=left, error=error)
    backdate(app, out_id, dt.timedelta(minutes=3))
    result = sweep(service)
    assert (result.resent, result.already_sent) == (0, 1)
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1
    reply = {m.id: m for m in stored(app)}[out_id]
    assert (reply.status, reply.message_sid, reply.error) == ("sent", taken["sid"], None)
    (lookup,) = fake_twilio.calls("GET", "/Messages.json")
    assert (lookup.query["To"], lookup.query["From"]) == ("+15550100", "+15550199")
    assert "0 re-sent, 1 already sent (not sent again)" in caplog.text
    assert "+15550100" not in caplog.text  # the look-up logs no number


def test_a_reply_that_never_reached_twilio_is_sent_by_the_sweep(
    make_app, personas, fake_twilio, twilio_rest
):
    app = make_app(**twilio_rest)
    out_id, _ = queued_reply(app, "SMnever")
    backdate(app, out_id, dt.timedelta(minutes=3))
    result = sweep(app.extensions["phischer"].sms)
    assert (result.resent, result.already_sent) == (1, 0)
    assert len(fake_twilio.calls("GET", "/Messages.json")) == 1  # asked first
    (sent,) = fake_twilio.calls("POST", "/Messages.json")
    assert sent.form["Body"] == "hello"
    reply = {m.id: m for m in stored(app)}[out_id]
    assert (reply.status, reply.message_sid) == ("sent", fake_twilio.messages[0]["sid"])


@pytest.mark.parametrize("recorded", [True, False])
def test_an_earlier_reply_with_the_same_words_does_not_count_as_this_one(
    make_app, personas, fake_twilio, twilio_rest, recorded
):
    # The persona said "hello" before, and Twilio has that message; this "hello" never got
    # there. Recorded: the earlier one's row has its sid. Not recorded (its sid lost too):
    # Twilio created it well before this reply was stored.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    first, _ = queued_reply(app, "SMfirst")
    if recorded:
        assert service.send_stored("+15550100", first, "hello") == "sent"
    else:
        taken_unrecorded(app, fake_twilio, first, dt.timedelta(minutes=10), status="sent")
    second, _ = queued_reply(app, "SMsecond")
    backdate(app, second, dt.timedelta(minutes=5))
    result = sweep(service)
    assert (result.resent, result.already_sent) == (1, 0)
    assert [c.form["Body"] for c in fake_twilio.calls("POST", "/Messages.json")] == ["hello"] * 2
    reply = {m.id: m for m in stored(app)}[second]
    assert (reply.status, reply.message_sid) == ("sent", fake_twilio.messages[1]["sid"])


def test_a_lookup_twilio_cannot_answer_leaves_the_reply_for_the_next_sweep(
    make_app, personas, fake_twilio, twilio_rest
):
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    out_id, _ = queued_reply(app, "SMbusy")
    backdate(app, out_id, dt.timedelta(minutes=3))
    # Busy, back in a minute: longer than a look-up waits, so it fails at once.
    fake_twilio.fail_next("GET", "/Messages.json", 429, 20429, "Too Many Requests", retry_after=60)
    assert sweep(service).retrying == 1
    assert fake_twilio.calls("POST", "/Messages.json") == []  # not sent unchecked
    reply = {m.id: m for m in stored(app)}[out_id]
    assert reply.status == "send_retry"
    assert reply.error.startswith(LOOKUP_FAILED + "20429")
    assert sweep(service).retrying == 0  # too soon: the failure is fresh
    assert sweep(service, now=utcnow() + RECOVER_AFTER).resent == 1
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1
    assert {m.id: m for m in stored(app)}[out_id].status == "sent"


def test_a_lookup_failing_near_the_hour_keeps_the_reply_for_a_later_one(
    make_app, personas, fake_twilio, twilio_rest
):
    # Too late for another send by the next sweep, but not given up unchecked: it was left
    # "queued", and the process may have died after Twilio took it.
    app = make_app(**twilio_rest)
    out_id, _ = queued_reply(app, "SMlate")
    backdate(app, out_id, GIVE_UP_AFTER - dt.timedelta(minutes=1))
    fake_twilio.fail_next("GET", "/Messages.json", 503, 20503, "Unavailable", retry_after=60)
    result = sweep(app.extensions["phischer"].sms)
    assert (result.failed, result.retrying, result.unchecked[0][0]) == (0, 1, out_id)
    reply = {m.id: m for m in stored(app)}[out_id]
    assert reply.status == "send_retry" and reply.error.startswith(LOOKUP_FAILED + "20503")
    assert fake_twilio.calls("POST", "/Messages.json") == []


def test_a_lookup_twilio_refuses_gives_the_reply_up(make_app, personas, fake_twilio, twilio_rest):
    # Wrong credentials (or no right to read messages): the same credentials could not send
    # either, and a send unchecked might text the reply twice.
    app = make_app(**twilio_rest)
    out_id, _ = queued_reply(app, "SMrefused")
    backdate(app, out_id, dt.timedelta(minutes=3))
    fake_twilio.fail_next("GET", "/Messages.json", 401, 20003, "Authenticate")
    assert sweep(app.extensions["phischer"].sms).failed == 1
    reply = {m.id: m for m in stored(app)}[out_id]
    assert (reply.status, reply.error) == ("send_failed", LOOKUP_FAILED + "20003: Authenticate")
    assert fake_twilio.calls("POST", "/Messages.json") == []


def test_a_reply_twilio_lists_in_plainer_characters_is_still_found(
    make_app, personas, fake_twilio, twilio_rest
):
    # Smart Encoding (a Messaging Service option) sends curly quotes and dashes as their GSM
    # look-alikes, and Twilio lists what it sent.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    out_id, _ = queued_reply(app, "SMsmart")
    text = "It’s late — sleep well…"
    with app.extensions["phischer"].db.write() as session:
        session.execute(sa.update(Message).where(Message.id == out_id).values(body=text))
    assert service.send_stored("+15550100", out_id, text) == "sent"
    fake_twilio.messages[0]["body"] = "It's late - sleep  well..."
    forget_the_send(app, out_id)
    backdate(app, out_id, dt.timedelta(minutes=3))
    assert sweep(service).already_sent == 1
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1


def test_a_send_twilio_took_without_answering_waits_for_the_sweep_which_finds_it(
    make_app, personas, fake_twilio, twilio_rest
):
    # The connection dropped after Twilio created the message: not sent again at once (it
    # may have gone out), nor given up (it may not have): the sweep asks Twilio.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    out_id, _ = queued_reply(app, "SMcut")
    fake_twilio.hang_up_next("POST", "/Messages.json")
    assert service.send_stored("+15550100", out_id, "hello") == "send_retry"
    reply = {m.id: m for m in stored(app)}[out_id]
    assert "may or may not have been sent" in reply.error
    backdate(app, out_id, dt.timedelta(minutes=3))
    assert sweep(service).already_sent == 1
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1
    reply = {m.id: m for m in stored(app)}[out_id]
    assert (reply.status, reply.message_sid, reply.error) == (
        "sent",
        fake_twilio.messages[0]["sid"],
        None,
    )


def test_a_reply_twilio_took_counts_as_sent_though_the_texter_moved_on(
    make_app, personas, fake_twilio, twilio_rest, twilio_post
):
    # The texter read it (Twilio sent it) before texting again: it is part of the thread,
    # not a reply "not sent" because a newer text came.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    out_id, _ = queued_reply(app, "SMread")
    fake_twilio.hang_up_next("POST", "/Messages.json")
    assert service.send_stored("+15550100", out_id, "hello") == "send_retry"
    assert twilio_post("and then?", target=app).status_code == 200
    service.shutdown()  # no background sweep from here on
    backdate(app, out_id, dt.timedelta(minutes=5))
    assert sweep(service).already_sent == 1
    reply = {m.id: m for m in stored(app)}[out_id]
    assert (reply.status, reply.error) == ("sent", None)
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1


@pytest.mark.parametrize("created", [True, False])
def test_a_server_error_waits_for_the_sweep_which_asks_twilio_first(
    make_app, personas, fake_twilio, twilio_rest, created
):
    # A 5xx does not say Twilio created nothing: the send is not repeated at once (that
    # texted the reply twice when it had), but left for the sweep, which asks Twilio first.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    out_id, _ = queued_reply(app, "SM5xx")
    fake_twilio.fail_next("POST", "/Messages.json", 502, 20502, "Bad gateway", applied=created)
    assert service.send_stored("+15550100", out_id, "hello") == "send_retry"
    reply = {m.id: m for m in stored(app)}[out_id]
    assert reply.error.startswith("Twilio error 20502")
    assert "may or may not have been sent" in reply.error
    backdate(app, out_id, dt.timedelta(minutes=3))
    result = sweep(service)
    assert (result.already_sent, result.resent) == ((1, 0) if created else (0, 1))
    assert len(fake_twilio.messages) == 1  # texted once either way
    reply = {m.id: m for m in stored(app)}[out_id]
    assert (reply.status, reply.message_sid, reply.error) == (
        "sent",
        fake_twilio.messages[0]["sid"],
        None,
    )


@pytest.mark.parametrize("taken", [True, False])
def test_a_reply_left_for_hours_is_looked_up_and_never_sent(
    make_app, personas, fake_twilio, twilio_rest, taken
):
    # The server died mid-send and stayed down overnight. Too late to send now (the texter
    # has long moved on), but whether Twilio took it decides what the row says: "sent" (the
    # texter read it, and the model sees it in the thread) or "send_failed".
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    out_id, _ = queued_reply(app, "SMnight")
    if taken:
        taken_unrecorded(app, fake_twilio, out_id, dt.timedelta(hours=8))
    backdate(app, out_id, dt.timedelta(hours=8))
    result = sweep(service)
    assert (result.already_sent, result.failed, result.resent) == (
        (1, 0, 0) if taken else (0, 1, 0)
    )
    assert len(fake_twilio.calls("GET", "/Messages.json")) == 1  # asked
    assert len(fake_twilio.calls("POST", "/Messages.json")) == (1 if taken else 0)
    reply = {m.id: m for m in stored(app)}[out_id]
    if taken:
        assert (reply.status, reply.message_sid, reply.error) == (
            "sent",
            fake_twilio.messages[0]["sid"],
            None,
        )
    else:
        assert (reply.status, reply.error) == ("send_failed", SEND_INTERRUPTED)


def test_a_send_that_may_have_gone_out_near_the_hour_is_looked_up_not_given_up(
    make_app, personas, fake_twilio, twilio_rest
):
    # The sweep's last try, minutes before the hour, got a 504 after Twilio created the
    # message: not "send_failed" at once (the texter got it), but left for the sweep to ask.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    out_id, _ = queued_reply(app, "SMedge")
    fake_twilio.fail_next("POST", "/Messages.json", 504, 20504, "Gateway timeout", applied=True)
    late = utcnow() - GIVE_UP_AFTER + RECOVER_AFTER / 2
    assert service.send_stored("+15550100", out_id, "hello", created_at=late) == "send_retry"
    backdate(app, out_id, GIVE_UP_AFTER + dt.timedelta(minutes=1))
    assert sweep(service).already_sent == 1
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1
    reply = {m.id: m for m in stored(app)}[out_id]
    assert (reply.status, reply.message_sid) == ("sent", fake_twilio.messages[0]["sid"])


def test_a_send_answered_after_a_sweep_took_its_message_for_another_reply_is_sent_once(
    make_app, personas, fake_twilio, twilio_rest, caplog
):
    # Two "hello" replies to one number: the first never reached Twilio and waits for the
    # sweep; the second is being sent. The sweep's look-up, while Twilio's answer to the
    # second is on its way, finds the second's message. Once it took that for the first's
    # (and the second's sid then failed the unique index: its send raised, it stayed
    # "queued", and a later sweep, finding that message taken, texted it again); now the
    # message is the second's, the reply stored closest before it.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    service.shutdown()  # no background sweep: the one below runs mid-send
    first, _ = queued_reply(app, "SMhello1")
    backdate(app, first, dt.timedelta(minutes=5))
    second, _ = queued_reply(app, "SMhello2")
    fake_twilio.after_next("POST", "/Messages.json", lambda: sweep(service))
    assert service.send_stored("+15550100", second, "hello") == "sent"
    (taken,) = fake_twilio.messages
    by_id = {m.id: m for m in stored(app)}
    assert (by_id[first].status, by_id[first].error) == ("send_failed", SEND_SUPERSEDED)
    assert (by_id[second].status, by_id[second].message_sid) == ("sent", taken["sid"])
    assert "is recorded on another reply" not in caplog.text
    later = sweep(service, now=utcnow() + RECOVER_AFTER)
    assert (later.resent, later.already_sent) == (0, 0)
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1


def test_a_server_answered_5xx_after_twilio_took_the_reply_texts_it_once(
    tmp_path, personas, database, fake_openai, fake_twilio
):
    # The real server: Twilio creates the message and answers 500. It is not sent again at
    # once; the sweep of the next start (Twilio is asked first) records it sent.
    with database.write() as session:
        set_model(session, "Ada", "ft:ada", base_url=fake_openai.base_url)
    env = {**async_env(fake_twilio), "RECOVER_AFTER_S": "1"}
    fake_twilio.fail_next("POST", "/Messages.json", 500, 20500, "Internal error", applied=True)

    def until_reply(status: str, server) -> None:
        deadline = time.monotonic() + 10
        while len(rows := stored_in(database)) < 2 or rows[1].status != status:
            assert time.monotonic() < deadline, "".join(server.output)
            time.sleep(0.05)

    with serving_in_group(tmp_path, env) as server:
        post_signed(server.url, AUTH_TOKEN, sms_params("hey how are you", "+15550100"))
        until_reply("send_retry", server)
    time.sleep(1.2)  # idle longer than RECOVER_AFTER_S before the restart's first sweep
    with serving_in_group(tmp_path, env) as server:
        until_reply("sent", server)
        time.sleep(0.5)  # time for another sweep to send it, if one could
    (taken,) = fake_twilio.messages
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1
    assert stored_in(database)[1].message_sid == taken["sid"]


def test_a_lookup_failing_past_the_hour_keeps_a_reply_twilio_may_have_for_a_later_one(
    make_app, personas, fake_twilio, twilio_rest
):
    # Twilio took the sweep's last try minutes before the hour and answered 504; the next
    # sweep's look-up, past the hour, fails too. Recorded "send_failed" then, the reply the
    # texter got dropped out of the thread for good: it waits for a look-up that works.
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    service.shutdown()  # no background sweep
    out_id, _ = queued_reply(app, "SMwait")
    fake_twilio.fail_next("POST", "/Messages.json", 504, 20504, "Gateway timeout", applied=True)
    late = utcnow() - GIVE_UP_AFTER + RECOVER_AFTER / 2
    assert service.send_stored("+15550100", out_id, "hello", created_at=late) == "send_retry"
    backdate(app, out_id, GIVE_UP_AFTER + dt.timedelta(minutes=1))
    fake_twilio.fail_next("GET", "/Messages.json", 503, 20503, "Unavailable", retry_after=60)
    assert sweep(service).retrying == 1
    reply = {m.id: m for m in stored(app)}[out_id]
    assert (reply.status, reply.message_sid) == ("send_retry", None)
    assert reply.error.startswith(LOOKUP_FAILED + "20503")
    assert sweep(service, now=utcnow() + RECOVER_AFTER).already_sent == 1
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1  # never sent again
    reply = {m.id: m for m in stored(app)}[out_id]
    assert (reply.status, reply.message_sid) == ("sent", fake_twilio.messages[0]["sid"])


def test_a_reply_twilio_cannot_be_asked_about_for_a_day_is_given_up_as_unknown(
    make_app, personas, fake_twilio, twilio_rest
):
    app = make_app(**twilio_rest)
    out_id, _ = queued_reply(app, "SMday", error="Twilio error 20500: oops; " + MAYBE_SENT)
    backdate(app, out_id, LOOKUP_GIVE_UP_AFTER + dt.timedelta(minutes=1))
    fake_twilio.fail_next("GET", "/Messages.json", 503, 20503, "Unavailable", retry_after=60)
    assert sweep(app.extensions["phischer"].sms).failed == 1
    reply = {m.id: m for m in stored(app)}[out_id]
    assert reply.status == "send_failed"
    assert reply.error.startswith(LOOKUP_GAVE_UP + LOOKUP_FAILED + "20503")
    assert fake_twilio.calls("POST", "/Messages.json") == []


def test_a_long_running_sweeper_looks_up_a_kept_reply_again_after_the_hour(
    make_app, personas, fake_twilio, twilio_rest
):
    # Later sweeps read only the last hour or so of rows (Sweeper.after_id); a reply kept
    # for a look-up is older than that, and must not be left "send_retry" for good.
    from phischer.recovery import Sweeper

    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    service.shutdown()
    sweeper = Sweeper(service)  # driven by hand
    out_id, _ = queued_reply(app, "SMkept")
    taken_unrecorded(app, fake_twilio, out_id, GIVE_UP_AFTER - dt.timedelta(minutes=5))
    backdate(app, out_id, GIVE_UP_AFTER - dt.timedelta(minutes=5))
    t0 = utcnow()
    fake_twilio.fail_next("GET", "/Messages.json", 503, 20503, "Unavailable", retry_after=60)
    assert sweeper.run_once(t0).retrying == 1
    assert sweeper.run_once(t0 + RECOVER_AFTER).retrying == 0  # too soon: the failure is fresh
    assert sweeper.run_once(t0 + GIVE_UP_AFTER + 4 * RECOVER_AFTER).already_sent == 1
    reply = {m.id: m for m in stored(app)}[out_id]
    assert (reply.status, reply.message_sid) == ("sent", fake_twilio.messages[0]["sid"])


def test_a_newer_reply_with_the_same_words_is_not_credited_to_an_older_one(
    make_app, personas, fake_twilio, twilio_rest
):
    assert_newer_hello_credited_to_itself(make_app(**twilio_rest), fake_twilio)


def assert_newer_hello_credited_to_itself(app, fake_twilio) -> None:
    """Of two unrecorded "hello" replies Twilio took only the newer: a sweep credits that one."""
    # The older one's look-up took that message for its own: it was then "sent", and the
    # newer one, finding its message taken, was texted a second time.
    service = app.extensions["phischer"].sms
    service.shutdown()  # no background sweep
    older, _ = queued_reply(app, "SMolder")
    backdate(app, older, dt.timedelta(minutes=10))
    newer, _ = queued_reply(app, "SMnewer")
    taken = taken_unrecorded(app, fake_twilio, newer, dt.timedelta(minutes=5))
    backdate(app, newer, dt.timedelta(minutes=5))
    result = sweep(service)
    assert (result.already_sent, result.resent, result.failed) == (1, 0, 1)
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1  # texted once
    by_id = {m.id: m for m in stored(app)}
    assert (by_id[older].status, by_id[older].error) == ("send_failed", SEND_SUPERSEDED)
    assert (by_id[newer].status, by_id[newer].message_sid) == ("sent", taken["sid"])


def test_a_sweep_lists_a_numbers_messages_once_for_all_its_replies(
    make_app, personas, fake_twilio, twilio_rest
):
    # After a long outage many replies to one busy number are stale: each looked up on its
    # own read the same pages again (up to ten requests a reply).
    app = make_app(**twilio_rest)
    service = app.extensions["phischer"].sms
    service.shutdown()
    now = format_datetime(dt.datetime.now(dt.UTC), usegmt=True)
    for n in range(120):  # inline (TwiML) replies since: listed too, but not REST replies
        fake_twilio.messages.append(
            {"sid": f"SM{n:032x}", "to": "+15550100", "from": "+15550199", "body": "hi",
             "status": "delivered", "direction": "outbound-reply", "date_created": now,
             "date_sent": now, "error_code": None}
        )  # fmt: skip
    replies = []
    for n in range(4):
        out_id, _ = queued_reply(app, f"SMbusy{n}")
        backdate(app, out_id, dt.timedelta(minutes=20 - n))
        replies.append(out_id)
    result = sweep(service)
    assert (result.resent, result.failed) == (1, 3)  # the older three were superseded
    assert len(fake_twilio.calls("GET", "/Messages.json")) == 3  # one listing: three pages
