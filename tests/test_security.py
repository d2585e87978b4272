"""The Twilio signature check's own computation agrees with Twilio's SDK."""

from __future__ import annotations

import pytest
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from phischer.config import Settings
from phischer.security import SignatureChecker

TOKEN = "0123456789abcdef0123456789abcdef"
URL = "https://clone.example.com/sms?reply=12"
# Twilio's 21 fields, in the order it posts them, with empty values, a non-ASCII body and
# names that sort differently by case.
TWILIO_FORM = {
    "ToCountry": "US", "ToState": "CA", "SmsMessageSid": "SM" + "a" * 32, "NumMedia": "0",
    "ToCity": "", "FromZip": "", "SmsSid": "SM" + "a" * 32, "FromState": "CA",
    "SmsStatus": "received", "FromCity": "", "Body": "héllo 👋 & = + %", "FromCountry": "US",
    "To": "+15550199", "MessagingServiceSid": "MG" + "b" * 32, "ToZip": "", "NumSegments": "1",
    "ReferralNumMedia": "0", "MessageSid": "SM" + "a" * 32, "AccountSid": "AC" + "c" * 32,
    "From": "+15550100", "ApiVersion": "2010-04-01", "body": "lower", "_": "x",
}  # fmt: skip


@pytest.mark.parametrize("algorithm", ["HMAC_SHA1", "HMAC_SHA256", "hmac_sha256"])
@pytest.mark.parametrize("form", [TWILIO_FORM, {}, {"Body": ""}])
def test_signature_is_the_one_twilio_sends(tmp_path, algorithm: str, form: dict) -> None:
    checker = SignatureChecker(Settings(instance_path=tmp_path, twilio_auth_token=TOKEN))
    expected = RequestValidator(TOKEN).compute_signature(URL, form, algorithm)
    assert checker.signature(URL, form, algorithm) == expected
    assert checker.signature(URL, MultiDict(form), algorithm) == expected


def test_an_algorithm_twilio_does_not_know_is_refused(tmp_path) -> None:
    checker = SignatureChecker(Settings(instance_path=tmp_path, twilio_auth_token=TOKEN))
    with pytest.raises(ValueError):
        checker.signature(URL, TWILIO_FORM, "HMAC_MD5")
