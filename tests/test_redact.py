"""Logs and error lines show no secret and, above DEBUG, no whole phone number."""

from __future__ import annotations

import io
import logging
import random
import re
import subprocess
import sys

import click
import pytest

from phischer import redact as redaction
from phischer.config import Settings
from phischer.redact import RedactedOutput, add_secret, redact, shorten

log = logging.getLogger("phischer.test_redact")

NUMBER = "+15553330001"
TOKEN = "b7e3c0ffee0123456789abcdef012345"


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        # A number as Twilio quotes it, and %2B-encoded in a URL's query (a requests error).
        (f"The 'To' number {NUMBER} is not valid", "The 'To' number …01 is not valid"),
        (
            "url: /IncomingPhoneNumbers.json?PhoneNumber=%2B15553330001 (Caused by",
            "url: /IncomingPhoneNumbers.json?PhoneNumber=…01 (Caused by",
        ),  # fmt: skip
        ("Key (phone)=(+15553330001) already exists.", "Key (phone)=(…01) already exists."),
        # As people and exports write numbers: a WhatsApp sender never saved as a contact
        # (no-break spaces, a no-break hyphen), national North American forms.
        ("+1 555 010 0199: hi", "…99: hi"),
        ("+1\u00a0(555)\u00a0010\u20110199: hi", "…99: hi"),
        ("+44 (0)20 7946 0958 said", "…58 said"),
        ("call (555) 010-0199 or 555.010.0199", "call …99 or …99"),
        # Secrets phischer never held, by their shape.
        ("postgresql://bob:hunter22@db.example.com/x", "postgresql://bob:***@db.example.com/x"),
        ("Your authtoken: 2abcDEF_ghiJKL123", "Your authtoken: ***"),
        # phischer's own hint after ERR_NGROK_105 goes on with a word, not a token.
        ("not an ngrok authtoken: copy yours again", None),
        ("Authorization: Bearer abcdefgh12345678", "Authorization: Bearer ***"),
        ("Incorrect API key provided: sk-proj-abcdefgh1234", "Incorrect API key provided: sk-***"),
        (
            "Incorrect API key provided: sk-proj-****************wxyz. You can find",
            "Incorrect API key provided: sk-***. You can find",
        ),
        # A key in a URL's query string (a gateway's --base-url), whatever else it holds.
        ("http://gpu.lan:8000/v1?api-key=abcd1234efgh", "http://gpu.lan:8000/v1?api-key=***"),
        (
            "https://h/v1?v=2&access_token=zzz&x=1 refused",
            "https://h/v1?v=2&access_token=***&x=1 refused",
        ),
        ("https://h/v1?Key=abc#part", "https://h/v1?Key=***#part"),
        # The words after a URL stay (its value ends at a closing bracket or a sentence's mark).
        ("at http://x/sms?token=abcd1234: start it", "at http://x/sms?token=***: start it"),
        ("(see http://x/?key=abcd1234). Then", "(see http://x/?key=***). Then"),
        ("a monkey=3, ?keys=4&tokens=5", None),
        # What is neither stays.
        ("Twilio error 21211 for SM0123456789abcdef", "Twilio error 21211 for SM0123456789abcdef"),
        ("basic authentication failed", "basic authentication failed"),
        ("at 2026-11-30 08:03:09.123481", "at 2026-11-30 08:03:09.123481"),
        ("30/Nov/2026 10:22:54 +0000, 2026-11-30T10:22:50+00:00", None),
        ("v1.2.3: +5 of 10, 1,234,567 rows", None),
    ],
)
def test_redact(text: str, clean: str | None) -> None:
    assert redact(text) == (text if clean is None else clean)


def test_a_secret_phischer_holds_is_named_wherever_and_however_it_is_quoted() -> None:
    Settings(twilio_auth_token=TOKEN, database_url="postgresql://bob:p%40ss%2Fw0rd@h/db")
    assert redact(f"token {TOKEN}!") == "token <TWILIO_AUTH_TOKEN>!"
    assert redact("password 'p@ss/w0rd' and p%40ss%2Fw0rd") == (
        "password '<DATABASE_URL password>' and <DATABASE_URL password>"
    )
    add_secret('ab"cd efgh', "NGROK_AUTHTOKEN")  # as a logfmt line quotes it
    assert redact('err="token ab\\"cd efgh"') == 'err="token <NGROK_AUTHTOKEN>"'
    add_secret("short", "X")  # too short to tell from ordinary words
    assert redact("a short one") == "a short one"


def test_numbers_stay_when_asked_secrets_never() -> None:
    add_secret(TOKEN, "TWILIO_AUTH_TOKEN")
    assert redact(f"{NUMBER} {TOKEN}", numbers=False) == f"{NUMBER} <TWILIO_AUTH_TOKEN>"


def test_every_log_record_is_redacted_traceback_included(caplog: pytest.LogCaptureFixture) -> None:
    add_secret(TOKEN, "TWILIO_AUTH_TOKEN")
    with caplog.at_level(logging.DEBUG):
        try:
            raise RuntimeError(f"refused {NUMBER} with key {TOKEN}")
        except RuntimeError:
            log.exception("Recovery sweep failed for %s", NUMBER)
            log.debug("debug keeps %s but not %s", NUMBER, TOKEN)
    error, debug = caplog.records
    assert error.getMessage() == "Recovery sweep failed for …01"
    assert "RuntimeError: refused …01 with key <TWILIO_AUTH_TOKEN>" in caplog.text
    assert debug.getMessage() == f"debug keeps {NUMBER} but not <TWILIO_AUTH_TOKEN>"
    # Only the -v DEBUG line shows the number whole.
    assert caplog.text.count(NUMBER) == 1


def test_a_third_party_logger_is_redacted_too(caplog: pytest.LogCaptureFixture) -> None:
    """gunicorn's error log (a request that raised) and pyngrok's agent lines are not ours."""
    with caplog.at_level(logging.INFO):
        try:
            raise ValueError(f"Failing row contains (1, {NUMBER}, f)")
        except ValueError:
            logging.getLogger("gunicorn.error").exception("Error handling request /sms")
    assert NUMBER not in caplog.text and "Failing row contains (1, …01, f)" in caplog.text


def test_a_short_secret_is_hidden_only_where_it_stands_alone() -> None:
    # A development DATABASE_URL's password "postgres" must not mangle the word it is in.
    Settings(database_url="postgresql://postgres:postgres@127.0.0.1/db")
    assert redact("could not reach postgresql://host") == "could not reach postgresql://host"
    assert redact("password 'postgres' refused") == "password '<DATABASE_URL password>' refused"


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        # National numbers as people write them: the whole run goes, not a piece of it.
        ("The 'To' number 07911 123456 is not valid", "The 'To' number …56 is not valid"),
        ("to 020 7946 0958.", "to …58."),
        ("06 12 34 56 78 and 06.12.34.56.78", "…78 and …78"),
        ("Key (phone)=(030 12345678) exists", "Key (phone)=(…78) exists"),
        ("0151-2345 6789, (030) 1234 5678", "…89, …78"),
        ("call 1-555-010-0199\u00a0now", "call …99\u00a0now"),
        ("0800\u00a01111", "…11"),
        ("call (0301) 1234", "call …34"),
        # Cards, wholly.
        ("card 4111 1111 1111 1111 declined", "card …11 declined"),
        ("card 4111-1111-1111-1111", "card …11"),
        ("amex 3782 822463 10005", "amex …05"),
        # After a URI's scheme, a German area code's slash, doubled or spaced separators.
        ("tel:07911 123456, sms:+15550100123", "tel:…56, sms:…23"),
        ("<tel:+447911123456>", "<tel:…56>"),
        ("030/1234567 or 0151 / 2345 6789", "…67 or …89"),
        ("07911  123456 and 07911 - 123456", "…56 and …56"),
        ("(030) - 1234 5678, 0800\u00a0\u2013 1111", "…78, …11"),
        # After a date, which stays: the run starts with it.
        ("on 2026-11-30 07911 123456", "on 2026-11-30 …56"),
        ("2026-11-30 - 07911 123456, 30/11/2026 030/1234567", "2026-11-30 - …56, 30/11/2026 …67"),
    ],
)
def test_a_number_written_in_groups_is_masked_whole(text: str, clean: str) -> None:
    assert redact(text) == clean


@pytest.mark.parametrize(
    "text",
    [
        # What log lines carry that is made of digit groups too.
        "at 2026-11-30 12:43:50 and 12:43:50.123, 2026-11-30T10:22:50Z",
        "on 2026-11-30, 30.11.2026 and 2026-11-30 10 texts",
        "replied in 123.4 ms, 0.12345678 s",
        "twilio 9.3.7, build 10.0.19041.1234",
        "1,697 tests, 1,234,567 rows, 1 234 567,89 EUR",
        "HTTP 404, HTTP 400 21610: the number opted out",
        "Twilio error 21610 for SM5f0c2a9e8d7b6a5f4e3d2c1b0a998877",
        "listening on 127.0.0.1:5000 and 192.168.100.200 port 8080",
        "job 550e8400-e29b-41d4-a716-446655440000 and 12345678-1234-1234-1234-123456789012",
        "Reply 1234567 not sent, 123 456 left",
        # Ranges, fractions and counts, with slashes and spaced dashes.
        "2024-2025, 2024 - 2025, 1999/2000",
        "HTTP/1.1 200, HTTP 400 - 21211, GET /v1/12345678/2345 HTTP/1.1",
        "open 12:00-13:00 and 12:00 - 13:00, 10:22:54 - 12:43:50",
        "1/2, 3/4 done, page 2/10, 50/50, step 1200/3000, 10000 / 20000 tokens",
        "on 30/11/2026, 11/30/2026 10, 2026/11/30",
        "Location: tel:, at 10:22:50 12345678, ::1 8080",
        "job 550E8400-E29B-41D4-A716-446655440000, run-550e8400-e29b-41d4-a716-446655440000.log",
    ],
)
def test_other_numbers_in_groups_stay(text: str) -> None:
    assert redact(text) == text


def test_our_own_ids_are_not_taken_for_numbers() -> None:
    assert redact("Reply 1234567 not sent") == "Reply 1234567 not sent"
    assert redact("call 5553330001 back") == "call …01 back"


def test_bare_digits_after_a_word_and_a_dash_are_masked_unless_a_uuids_tail() -> None:
    assert redact("sms-15551234567.json, chat\u20135553330001") == "sms-…67.json, chat\u2013…01"
    uuid = "123e4567-e89b-12d3-a456-426614174000"
    assert redact(f"job {uuid}") == f"job {uuid}"


@pytest.mark.parametrize("number", ["07911  123456", "07911 - 123456", "(0301) - 1234 5678"])
def test_a_long_text_is_not_cut_between_a_numbers_spaced_groups(number: str) -> None:
    # Cut between "07911" and "- 123456", the first group is too short for the mask.
    for pad in range(len(number) + 3):
        text = "x" * pad + f" {number} is not valid"
        assert re.search(r"\d{3}", redact(shorten(text, pad + len(number)))) is None, pad


def test_a_number_in_a_snake_case_file_name_is_masked() -> None:
    # A persona's dataset named after the contact: the server's warnings name the file.
    assert redact("Dataset /data/mom_+15553330001.jsonl: skipped 1 malformed line") == (
        "Dataset /data/mom_…01.jsonl: skipped 1 malformed line"
    )
    assert redact("dad_15553330001_old.jsonl, aunt_07911 123456.txt") == (
        "dad_…01_old.jsonl, aunt_…56.txt"
    )


def test_a_number_with_its_plus_after_a_word_and_a_dash_is_masked() -> None:
    # Not a UUID's tail (the bare digits after "word-" that stay): a UUID holds no +.
    assert redact("chat-+15553330001 and Sam\u2013+44 7911 123456") == "chat-…01 and Sam\u2013…56"


# Pieces of what the patterns look for, and of what they must not take, to shuffle together.
PIECES = (
    "+", "%2B", "%2b", "1234567890", "555", "0199", "\u0663" * 6, "(", ")", "-", "\u2011", "x://", "bob:", "pw@", "Bearer ",
    "sk-", "****", "AuthToken", "authtoken", "?api-key", "&Token", ": ", "=", "'", '"', "abcdefgh", " ", ".", "/", "<", "x",
    TOKEN, TOKEN[:20], "postgres", "p%40ss%2Fw0rd", "07911", "12", "030", "12345", ":", "\u00a0",
)  # fmt: skip


@pytest.mark.parametrize("numbers", [True, False])
def test_a_text_redact_clears_at_once_has_nothing_to_redact(numbers: bool) -> None:
    """The one search that lets most log lines through never lets through what a pattern takes."""
    add_secret(TOKEN, "TWILIO_AUTH_TOKEN")
    add_secret("postgres", "DATABASE_URL password")  # short: hidden only where alone
    add_secret("p@ss/w0rd", "DATABASE_URL password")
    rng = random.Random(0)
    for _ in range(20_000):
        text = "".join(rng.choices(PIECES, k=rng.randrange(1, 10)))
        full = redaction._redact_all(text, numbers, redaction._known)
        assert redact(text, numbers=numbers) == full, text


def test_a_secret_added_again_changes_nothing() -> None:
    # The openai backend adds a persona's key on every model call (the hot path).
    from phischer import redact as redaction

    add_secret("f00dfeed-known-key-0123456789", "GPU_KEY")
    known = redaction._known
    add_secret("f00dfeed-known-key-0123456789", "GPU_KEY")
    assert redaction._known is known
    assert redact("key f00dfeed-known-key-0123456789") == "key <GPU_KEY>"


def test_what_the_command_prints_hides_secrets_and_keeps_numbers() -> None:
    """install_output: a line no log record carries, and a traceback Python prints itself."""
    code = (
        "from phischer.redact import add_secret, install_output\n"
        f"add_secret({TOKEN!r}, 'TWILIO_AUTH_TOKEN')\n"
        "install_output()\n"
        f"print('(not listed: key {TOKEN} refused for {NUMBER})')\n"
        f"raise RuntimeError('refused {TOKEN}')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == f"(not listed: key <TWILIO_AUTH_TOKEN> refused for {NUMBER})\n"
    assert "RuntimeError: refused <TWILIO_AUTH_TOKEN>" in done.stderr
    assert TOKEN not in done.stderr


def test_click_cannot_write_around_the_redacted_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a stream it takes for misconfigured (ASCII), click writes to its binary buffer.
    add_secret(TOKEN, "TWILIO_AUTH_TOKEN")
    raw = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", RedactedOutput(raw))
    click.echo(f"key {TOKEN}")
    raw.flush()
    assert raw.buffer.getvalue() == b"key <TWILIO_AUTH_TOKEN>\n"
