"""The Twilio signature check's own computations agree with Twilio's SDK and the stdlib."""

from __future__ import annotations

import random
from urllib.parse import parse_qsl

import pytest
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from phischer.config import Settings
from phischer.security import SignatureChecker, parse_form

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


def test_a_form_is_read_as_parse_qsl_reads_it() -> None:
    pieces = ["&", "&&", "=", "==", "+", "%", "%2", "%41", "%2B", "%C3%A9", "%FF", "%zz", "a", "é"]
    rng = random.Random(0)
    for _ in range(20_000):
        body = "".join(rng.choices(pieces, k=rng.randrange(0, 12)))
        assert parse_form(body) == parse_qsl(body, keep_blank_values=True), body
