"""The Twilio REST sender: retries what may pass, stops at what will not."""

from __future__ import annotations

import pytest

from phischer.replies import RestSender, SendError


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


def test_server_errors_are_retried(sender, fake_twilio):
    fake_twilio.fail_messages(503, 20503, "Service unavailable", times=2)
    assert sender.send("+15550100", "hello").startswith("SM")
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 3


def test_gives_up_after_the_retries(sender, fake_twilio):
    fake_twilio.fail_messages(500, 20500, "Internal error", times=5)
    with pytest.raises(SendError, match="Twilio error 20500"):
        sender.send("+15550100", "hello")
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 3


def test_opted_out_recipient_is_not_retried(sender, fake_twilio):
    fake_twilio.fail_messages(400, 21610, "Attempt to send to unsubscribed recipient")
    with pytest.raises(SendError, match="21610"):
        sender.send("+15550100", "hello")
    assert len(fake_twilio.calls("POST", "/Messages.json")) == 1


def test_missing_credentials_are_a_send_error(settings):
    with pytest.raises(SendError, match="TWILIO_ACCOUNT_SID is not set"):
        RestSender(settings, retry_delays_s=()).send("+15550100", "hello")
