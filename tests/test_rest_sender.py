"""The Twilio REST sender: retries what may pass, stops at what will not."""

from __future__ import annotations

import pytest

from phischer.replies import RestSender, SendError
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio


@pytest.fixture
def twilio():
    with FakeTwilio() as fake:
        yield fake


def sender(settings, twilio) -> RestSender:
    s = settings.with_overrides(
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_phone_number="+15550199",
        twilio_api_base_url=twilio.url,
    )
    return RestSender(s, retry_delays_s=(0.01, 0.01))


def test_sends_and_returns_the_sid(settings, twilio):
    sid = sender(settings, twilio).send("+15550100", "hello")
    (call,) = twilio.calls("POST", "/Messages.json")
    assert (call.form["To"], call.form["From"], call.form["Body"]) == (
        "+15550100",
        "+15550199",
        "hello",
    )
    assert sid.startswith("SM")


def test_server_errors_are_retried(settings, twilio):
    twilio.fail_messages(503, 20503, "Service unavailable", times=2)
    assert sender(settings, twilio).send("+15550100", "hello").startswith("SM")
    assert len(twilio.calls("POST", "/Messages.json")) == 3


def test_gives_up_after_the_retries(settings, twilio):
    twilio.fail_messages(500, 20500, "Internal error", times=5)
    with pytest.raises(SendError, match="Twilio error 20500"):
        sender(settings, twilio).send("+15550100", "hello")
    assert len(twilio.calls("POST", "/Messages.json")) == 3


def test_opted_out_recipient_is_not_retried(settings, twilio):
    twilio.fail_messages(400, 21610, "Attempt to send to unsubscribed recipient")
    with pytest.raises(SendError, match="21610"):
        sender(settings, twilio).send("+15550100", "hello")
    assert len(twilio.calls("POST", "/Messages.json")) == 1


def test_missing_credentials_are_a_send_error(settings):
    with pytest.raises(SendError, match="TWILIO_ACCOUNT_SID is not set"):
        RestSender(settings, retry_delays_s=()).send("+15550100", "hello")
