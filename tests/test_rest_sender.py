"""The Twilio REST sender: retries what may pass, stops at what will not."""

from __future__ import annotations

import re
import time

import pytest

from phischer.redact import mask_numbers_in
from phischer.replies import RestSender, SendError
from tests.conftest import free_port


@pytest.fixture
def sender(settings, twilio_rest) -> RestSender:
    return RestSender(settings.with_overrides(**twilio_rest), retry_delays_s=(0.01, 0.01))


def test_sends_and_returns_the_sid(sender, fake_twilio):
    sid = sender.send("+15550100", "hello")
    (call,) = fake_twilio.calls("POST", "/Messages.json")
    assert (call.form["To"], call.form["From"], call.form["Body"]) == (
        "+15550100",
        "+15550199",
        "hello",
    )
    assert sid.startswith("SM")


def test_a_whatsapp_texter_is_answered_on_whatsapp(sender, fake_twilio):
    """Twilio refuses a From and To on different channels (21910)."""
    assert sender.send("whatsapp:+15550102", "hello").startswith("SM")
    (call,) = fake_twilio.calls("POST", "/Messages.json")
    assert (call.form["To"], call.form["From"]) == ("whatsapp:+15550102", "whatsapp:+15550199")


def test_too_many_requests_are_retried(sender, fake_twilio):
    fake_twilio.fail_messages(429, 20429, "Too Many Requests", times=2)
    assert sender.send("+15550100", "hello").startswith("SM")
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 3
    assert len(fake_twilio.messages) == 1


def test_gives_up_after_the_retries(sender, fake_twilio):
    fake_twilio.fail_messages(429, 20429, "Too Many Requests", times=5)
    with pytest.raises(SendError, match="Twilio error 20429") as busy:
        sender.send("+15550100", "hello")
    assert busy.value.transient
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 3


@pytest.mark.parametrize(
    ("status", "code"), [(500, 20500), (502, 20502), (503, 20503), (504, 20504)]
)
def test_a_server_error_is_not_retried_at_once_as_twilio_may_have_taken_the_send(
    sender, fake_twilio, status, code
):
    # Twilio answered 5xx after it created the message (its edge timed out on the backend,
    # an error after the write): a retry at once would text the reply twice. It is
    # transient all the same: the recovery sweep asks Twilio before it sends it again.
    fake_twilio.fail_next("POST", "/Messages.json", status, code, "Server error", applied=True)
    with pytest.raises(SendError, match=f"Twilio error {code}") as failed:
        sender.send("+15550100", "hello")
    assert failed.value.transient
    assert "may or may not have been sent" in str(failed.value)
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1
    assert len(fake_twilio.messages) == 1


def test_opted_out_recipient_is_not_retried(sender, fake_twilio):
    fake_twilio.fail_messages(400, 21610, "Attempt to send to unsubscribed recipient")
    with pytest.raises(SendError, match="21610"):
        sender.send("+15550100", "hello")
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1


def test_missing_credentials_are_a_send_error(settings):
    with pytest.raises(SendError, match="TWILIO_ACCOUNT_SID is not set"):
        RestSender(settings, retry_delays_s=()).send("+15550100", "hello")


def test_a_failure_says_whether_a_later_retry_may_pass(sender, fake_twilio):
    fake_twilio.fail_messages(503, 20503, "Service unavailable")
    with pytest.raises(SendError) as busy:
        sender.send("+15550100", "hello")
    assert busy.value.transient
    fake_twilio.fail_messages(400, 21211, "Invalid 'To' Phone Number")
    with pytest.raises(SendError, match="21211") as refused:
        sender.send("+15550100", "hello")
    assert not refused.value.transient


def test_unreachable_twilio_is_transient(settings, twilio_rest):
    overrides = {**twilio_rest, "twilio_api_base_url": f"http://127.0.0.1:{free_port()}"}
    sender = RestSender(settings.with_overrides(**overrides), retry_delays_s=(0.01,))
    with pytest.raises(SendError) as unreachable:
        sender.send("+15550100", "hello")
    assert unreachable.value.transient


def test_an_unanswered_send_is_not_retried(settings, twilio_rest, fake_twilio):
    # Twilio took the request (the message exists) but the answer never came in time: a
    # retry could text the same reply twice, so it is not retried here and says so (the
    # recovery sweep asks Twilio whether it has it before sending it again).
    fake_twilio.after_next("POST", "/Messages.json", lambda: time.sleep(1.0))
    sender = RestSender(
        settings.with_overrides(**twilio_rest), retry_delays_s=(0.01, 0.01), timeout_s=0.3
    )
    with pytest.raises(SendError, match="may or may not have been sent") as unanswered:
        sender.send("+15550100", "hello")
    assert unanswered.value.transient
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1


def test_a_send_cut_off_after_twilio_took_it_is_not_retried(sender, fake_twilio):
    # Twilio created the message, then the connection dropped before its answer (a reset,
    # a proxy closing): like an answer that came too late, a retry could text it twice.
    fake_twilio.hang_up_next("POST", "/Messages.json")
    with pytest.raises(SendError, match="may or may not have been sent") as cut_off:
        sender.send("+15550100", "hello")
    assert cut_off.value.transient
    assert len(fake_twilio.messages) == 1


def test_a_number_twilio_quotes_in_its_error_is_masked_in_the_log(sender, fake_twilio, caplog):
    fake_twilio.fail_messages(
        400, 21211, "The 'To' number +15553330001 is not a valid phone number."
    )
    with caplog.at_level("DEBUG"), pytest.raises(SendError) as raised:
        sender.send("+15553330001", "hello")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "phischer.replies"]
    assert line == (
        "REST send to …01 failed: Twilio error 21211: Unable to create record: "
        "The 'To' number …01 is not a valid phone number."
    )
    # the reply's recorded error keeps the whole text: it is the user's own database
    assert "+15553330001" in str(raised.value)


def test_a_national_number_twilio_quotes_is_masked_in_the_log(sender, fake_twilio, caplog):
    fake_twilio.fail_messages(400, 21211, "The 'To' number 07911 123456 is not a valid number.")
    with caplog.at_level("INFO"), pytest.raises(SendError):
        sender.send("+447911123456", "hello")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "phischer.replies"]
    assert line.endswith("The 'To' number …56 is not a valid number."), line


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("number +15553330001 bad", "number …01 bad"),
        ("to 4915112345678.", "to …78."),
        ("Twilio error 21211 and 30034", "Twilio error 21211 and 30034"),
        ("SM0123456789abcdef0123456789abcdef", "SM0123456789abcdef0123456789abcdef"),
        ("id 12345", "id 12345"),
    ],
)
def test_mask_numbers_in(text, masked):
    assert mask_numbers_in(text) == masked


@pytest.mark.parametrize("pad", range(238, 256))
@pytest.mark.parametrize("number", ["+15550100199", "020 7946 0958", "06 12 34 56 78"])
def test_a_number_at_the_cut_of_twilios_long_message_is_not_logged_in_part(
    sender, fake_twilio, caplog, pad, number
):
    # The message is cut to 300 characters: a number straddling the cut kept its first
    # digits (or groups), too few to look like a number to the log's mask, which let them
    # through.
    fake_twilio.fail_messages(400, 21211, "x" * pad + f" {number} is not a valid number")
    with caplog.at_level("WARNING"), pytest.raises(SendError) as raised:
        sender.send("+15550100", "hello")
    assert len(str(raised.value)) <= 301
    (line,) = [r.getMessage() for r in caplog.records if r.name == "phischer.replies"]
    assert re.search(r"\+\d|\d\d[ .]\d\d", line) is None, line


def test_an_unreachable_proxy_is_transient(settings, twilio_rest, fake_twilio, monkeypatch):
    # The proxy refused the connection: nothing reached Twilio, so a later try may pass and
    # cannot text twice, as when Twilio itself is unreachable.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    sender = RestSender(settings.with_overrides(**twilio_rest), retry_delays_s=(0.01,))
    with pytest.raises(SendError) as unreachable:
        sender.send("+15550100", "hello")
    assert unreachable.value.transient
    assert "may or may not" not in str(unreachable.value)
    assert fake_twilio.requests == []


def test_a_proxy_refusing_the_tunnel_to_twilio_is_transient(settings, twilio_rest, proxy_env):
    # HTTPS goes through the proxy's CONNECT tunnel; one it refuses (502) carried nothing.
    overrides = {**twilio_rest, "twilio_api_base_url": "https://api.twilio.example.invalid"}
    sender = RestSender(settings.with_overrides(**overrides), retry_delays_s=(0.01,))
    with pytest.raises(SendError) as unreachable:
        sender.send("+15550100", "hello")
    assert unreachable.value.transient
    assert "may or may not" not in str(unreachable.value)
    assert [method for method, _ in proxy_env] == ["CONNECT", "CONNECT"]
