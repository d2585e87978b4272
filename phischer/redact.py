"""What logs and error lines must not show: secrets never, phone numbers only masked.

phischer passes other programs' words along: an SDK's exception (Twilio quotes the 'To'
number, an OpenAI-compatible server may quote the key it refused), the ngrok agent's log
lines (which quote a refused authtoken), a database's error (PostgreSQL's DETAIL quotes the
row, numbers included). `redact` cleans such text, and `install` puts every log record
through it, traceback included, whichever logger (ours, gunicorn's, pyngrok's) made it;
`install_output` puts what the phischer command prints through it too, numbers kept.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from typing import Any, NamedTuple, TextIO
from urllib.parse import quote

# Shorter values are not worth hiding (and would mangle unrelated text): real tokens and
# keys are 32 characters or more, a database password rarely under 8.
MIN_SECRET_CHARS = 8
# A secret shorter than this is hidden only where it stands alone, not inside a longer run
# of letters and digits: a development password "postgres" must not turn every
# "postgresql://" into "<DATABASE_URL password>ql://". Longer ones are hidden anywhere.
WORD_SECRET_CHARS = 16

# What people (and WhatsApp's export, with its no-break spaces and hyphens) put between a
# number's digits: spaces, dots, dashes and the parentheses around an area code.
_SEPARATOR_CHARS = r" \t\u00a0().\-\u2010-\u2015"
_SEPARATOR = f"[{_SEPARATOR_CHARS}]"
# A phone number inside free text (Twilio quotes it: "The 'To' number +15553330001 is not a
# valid phone number"; a URL carries it %2B-encoded; an export's sender column writes it
# "+1 (555) 010-0199"); not a run of digits inside a SID, a UUID or a word, nor a fraction (a
# timestamp's microseconds), nor a five-digit error code. Without its + a number has 10
# digits or more, run together or grouped as North America writes them (555-010-0199):
# shorter runs are our own ids and counts ("Reply 1234567 not sent"), which every log line
# now passes through. Other national groupings are `_GROUPED_RUN`'s. An underscore is no
# letter or digit here: a file named after a contact (mom_+15550100199.jsonl, a persona's
# dataset) is in the server's warnings whenever it cannot be read.
_NOT_IN_A_WORD = r"(?<![^\W_])"  # after no letter or digit (an underscore may come before)
_NUMBER_IN_TEXT = re.compile(
    rf"{_NOT_IN_A_WORD}(?<![+%.])(?:(?:\+|%2[Bb])\d(?:{_SEPARATOR}{{0,2}}\d){{6,14}}"
    # Not a UUID's tail (12 digits after 8-4-4-4 hex groups); other bare digits after a dash
    # are a number (sms-15550100199.json) like any other.
    rf"|(?<!-[0-9A-Fa-f]{{4}}-)"
    rf"(?:\d{{10,}}|\(?\d{{3}}\)?{_SEPARATOR}{{1,2}}\d{{3}}{_SEPARATOR}\d{{4}}))(?![^\W_])"
)
# A national number or a card as people write them: digit groups joined by a space, a dash
# or a dot, maybe doubled or spaced ("07911 123456", "06 12 34 56 78", "0151-2345 6789",
# "07911  123456", "07911 - 123456", "4111 1111 1111 1111"), the first maybe in parentheses
# ("(030) 12345678") or before a slash ("030/1234567", as Germany writes its area codes).
# Always the whole run, never a piece of it: it neither starts nor ends next to another
# group, so "2026-11-30 12:43:50" (its last group ends at a colon) is no run at all, nor any
# part of it, and the end of "+44 (0)20 7946 0958" is left to the whole number's pattern.
# After a colon only where a word ends there (tel:07911 123456), not in a time or an
# address. `_grouped_number` then tells numbers from the dates, IP addresses, versions,
# decimals and fractions that are such runs too.
_SPACE = r"[ \u00a0]"
_GROUP_SEPARATOR = rf"(?:{_SPACE}?[/\-\u2010-\u2015]{_SPACE}?|{_SPACE}{{1,2}}|\.)"
_GAP = f"[{_SEPARATOR_CHARS}/]"  # any character of a separator, parentheses included
_GROUPED_RUN = re.compile(
    rf"{_NOT_IN_A_WORD}(?<![+%./])(?<![^A-Za-z]:)(?<!\w[\-\u2010-\u2015])"
    rf"(?<!\d{_GAP})(?<!\d{_GAP}{{2}})(?<!\d{_GAP}{{3}})"
    rf"(?:\(\d{{2,5}}\)|\d+)(?:{_GROUP_SEPARATOR}\d{{2,}})+"
    rf"(?![^\W_]|{_GROUP_SEPARATOR}\d|[,:]\d)"
)
# 8 digits for the shortest national numbers (030 1234567 has 10, but 0800 1111 and Europe's
# smaller towns have 8 or 9), 19 for the longest card.
_GROUPED_DIGITS = range(8, 20)
# A run that starts with a date (2026-11-30, 30.11.2026, 30/11/2026) is the date and what
# follows it ("2026-11-30 10" of a log line, or "2026-11-30 - 07911 123456"): only the rest
# can be a number.
_DATE = re.compile(rf"(?:(?:19|20)\d\d([-./ ])\d\d\1\d\d|\d\d([-./])\d\d\2(?:19|20)\d\d){_GAP}*")
# Runs that are no number: a range of years (2024-2025), an HTTP status and a Twilio error
# code ("400 21211").
_NOT_A_NUMBER = re.compile(rf"(?:(?:19|20)\d\d{_GAP}+(?:19|20)\d\d|[1-5]\d\d{_GAP}+\d{{5}})$")
# Dots alone, from a 0 and in three groups or more, are a national number (06.12.34.56.78);
# other dotted runs are IP addresses, versions and decimals (192.168.100.200, 0.12345678).
_DOTTED_NUMBER = re.compile(r"0\d*(?:\.\d+){2,}")
# One slash, after an area code from its 0 (0151/23456789); others are fractions and counts
# (page 2/10, step 1200/3000).
_SLASHED_NUMBER = re.compile(rf"0\d{{1,4}}{_SPACE}?/[^/]*")

# A query parameter whose value is a secret, by its name.
_QUERY_KEY = r"(?i:api[-_]?key|key|(?:access[-_]|auth[-_])?token|secret|password|sig|signature)"
# Secrets phischer never held but text can still carry, by their shape. None matches a
# "<NAME>" a known secret was already replaced with.
_SECRET_SHAPES = (
    # A password in a URL (DATABASE_URL, a proxy): scheme://user:password@host.
    (re.compile(r"(\w://[^\s/:@]*:)(?!<)[^\s/]+@"), r"\1***@"),
    # An Authorization header a server or an SDK's debug output echoes.
    (re.compile(r"\bBearer [\w.~+/=-]{8,}"), "Bearer ***"),
    # ngrok quotes a refused token ("Your authtoken: …"); ngrok.yml holds "authtoken: …". A
    # token has 8 characters or more, digits among them: "not an ngrok authtoken: copy yours
    # again" (phischer's own hint) goes on with a word, which stays.
    (
        re.compile(r"(?i)(authtoken[\"']?\s*[:=]\s*[\"']?)(?!<)(?=[^\s\"',]*\d)[^\s\"',]{8,}"),
        r"\1***",
    ),
    # An OpenAI-style key from somewhere else than phischer's settings, or as OpenAI's 401
    # quotes one it refused: its first characters and last four around asterisks.
    (re.compile(r"\bsk-[\w*-]{8,}"), "sk-***"),
    # A key in a URL's query string (a gateway's "?api-key=…" or "&token=…" in a persona's
    # --base-url, or in a URL an error quotes).
    # The value ends before a closing bracket, or a sentence's mark after it: an error's
    # "…?token=…: start the server" keeps its colon.
    (re.compile(rf"([?&]{_QUERY_KEY}=)(?!\*\*\*)[^&\s#\"'()<>]*[^&\s#\"'()<>.,:;!?]"), r"\1***"),
)

# What every pattern above must contain: 6 digits, a + before a digit or a digit, one to
# four separator characters ("0) - 12") and two digits (a number), or the fixed part of a
# secret's shape. Every log record is redacted, and most hold none of these (nor a known
# secret): one search then clears the text instead of a substitution per pattern.
_SECRET_CANDIDATES = rf"://|Bearer |sk-|(?i:authtoken)|[?&]{_QUERY_KEY}="  # fixed parts
_CANDIDATES = rf"\d(?:\d{{5}}|{_GAP}{{1,4}}\d\d)|\+\d|%2[Bb]\d|{_SECRET_CANDIDATES}"


class _Secrets(NamedTuple):
    """The secrets phischer hands to a third party, with what finds them."""

    names: dict[str, str]  # each form of each secret: its variable's name
    pattern: re.Pattern[str] | None  # every form, longest first (none half replaced)
    candidate: re.Pattern[str]  # every form and _CANDIDATES: a text without it stays as is
    # Every form and _SECRET_CANDIDATES: the same, when numbers are kept. Printed lines start
    # with a time (a log line's "2026-11-30 16:07"), which the number candidates all match.
    secret_candidate: re.Pattern[str]


# Replaced whole, never changed in place: a log line reads it while another thread adds a
# secret, and must see names and patterns that go together.
_known = _Secrets({}, None, re.compile(_CANDIDATES), re.compile(_SECRET_CANDIDATES))
_lock = threading.Lock()
_installed = False


def mask_number(number: str | None) -> str:
    """Phone numbers are personal data: logs above debug show only the last two digits."""
    if not number:
        return "<none>"
    return "…" + number[-2:] if len(number) > 2 else "…"


def mask_numbers_in(text: str) -> str:
    """`text` with every phone number in it masked as `mask_number` does."""
    # Grouped runs first and whole: "4111 1111 1111 1111" would otherwise keep some groups.
    text = _GROUPED_RUN.sub(_grouped_number, text)
    return _NUMBER_IN_TEXT.sub(lambda m: mask_number(m.group()), text)


def _grouped_number(m: re.Match[str]) -> str:
    """A run of digit groups masked if it is a national number or a card, else as it was."""
    run = m.group()
    date = _DATE.match(run)
    start = date.end() if date else 0
    rest = run[start:]
    return run[:start] + (mask_number(rest) if _is_grouped_number(rest) else rest)


def _is_grouped_number(run: str) -> bool:
    """Whether a run of digit groups is a national number or a card (see _GROUPED_RUN)."""
    if sum(c.isdigit() for c in run) not in _GROUPED_DIGITS or _NOT_A_NUMBER.match(run):
        return False
    if "." in run and not _DOTTED_NUMBER.fullmatch(run):
        return False
    return "/" not in run or _SLASHED_NUMBER.fullmatch(run) is not None


def shorten(text: str, limit: int) -> str:
    """`text` in at most `limit` characters (and an ellipsis), cut between words."""
    if len(text) <= limit:
        return text
    # Not inside a word, nor between two groups of digits: a phone number cut to its first
    # digits ("+1555", "020 7946", "07911 - ") would no longer look like one to
    # `mask_numbers_in`, which would let those digits through.
    cut = text.rfind(" ", 0, limit + 1)
    while cut > 0 and _between_groups(text, cut):
        cut = text.rfind(" ", 0, cut)
    return text[: cut if cut > 0 else limit].rstrip() + "…"


# A space with a group of digits on either side, as far as a separator reaches: "0) - 1".
_GROUP_BEFORE = re.compile(rf"\d{_GAP}{{0,3}}\Z")
_GROUP_AFTER = re.compile(rf"{_GAP}{{0,3}}\d")


def _between_groups(text: str, space: int) -> bool:
    """Whether the space at `space` separates two groups of one number's digits."""
    before = _GROUP_BEFORE.search(text, max(0, space - 4), space)
    return before is not None and _GROUP_AFTER.match(text, space + 1) is not None


def add_secret(value: str | None, name: str) -> None:
    """Never show `value` (the secret in variable `name`): `redact` writes <name> instead."""
    global _known
    if not value or len(value) < MIN_SECRET_CHARS:
        return
    if value in _known.names:
        # Known already: a persona's --api-key-env key is added on every model call, which
        # must not re-sort and re-join every secret's pattern under the lock each time.
        return
    # As it was given, and as a URL or a JSON string (ngrok's log lines) would quote it.
    forms = {value, quote(value, safe=""), json.dumps(value)[1:-1]}
    with _lock:
        names = dict(_known.names)
        for form in forms:
            names.setdefault(form, name)
        longest_first = sorted(names, key=len, reverse=True)
        pattern = "|".join(_secret_pattern(form) for form in longest_first)
        _known = _Secrets(
            names,
            re.compile(pattern),
            re.compile(f"{pattern}|{_CANDIDATES}"),
            re.compile(f"{pattern}|{_SECRET_CANDIDATES}"),
        )


def _secret_pattern(form: str) -> str:
    """A regex for one form of a secret: anywhere, or alone if it is short (see above)."""
    if len(form) >= WORD_SECRET_CHARS:
        return re.escape(form)
    return rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])"


def redact(text: str, *, numbers: bool = True) -> str:
    """`text` without secrets (known ones named, others by shape); phone numbers masked too."""
    known = _known  # one consistent set (see _known)
    if (known.candidate if numbers else known.secret_candidate).search(text) is None:
        return text  # nothing any pattern could replace
    return _redact_all(text, numbers, known)


def _redact_all(text: str, numbers: bool, known: _Secrets) -> str:
    """`redact` without the shortcut: every pattern substituted in turn."""
    if known.pattern is not None:
        names = known.names
        text = known.pattern.sub(lambda m: f"<{names[m.group()]}>", text)
    for shape, replacement in _SECRET_SHAPES:
        text = shape.sub(replacement, text)
    return mask_numbers_in(text) if numbers else text


def install() -> None:
    """Put every log record made from now on through `redact` (numbers kept at DEBUG)."""
    global _installed
    with _lock:
        if _installed:
            return
        make = logging.getLogRecordFactory()

        def redacted_record(*args: object, **kwargs: object) -> logging.LogRecord:
            record = make(*args, **kwargs)
            redact_record(record)
            return record

        # A record factory, not a Filter: a filter on a logger misses its children's records
        # and one on a handler misses other handlers (gunicorn's error log, pytest's).
        logging.setLogRecordFactory(redacted_record)
        _installed = True


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record's message and traceback in place (-v's DEBUG lines keep numbers)."""
    numbers = record.levelno > logging.DEBUG
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it when the record is emitted
        return
    clean = redact(message, numbers=numbers)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[1] is not None:
        # A traceback shows no local variables, but it does show the exception's text.
        # Formatted now, as a handler would, so every handler prints this redacted copy.
        trace = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact(trace, numbers=numbers)


class RedactedOutput:
    """A text stream (stdout, stderr) that writes what it is given through `redact`.

    Numbers stay: what phischer prints at the terminal is the user's own. Secrets go, in what
    no log record carries: a note or an event line a server's words are part of, a traceback
    Python prints itself, an `Error:` line of a command run outside the `phischer` group.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        """Write `text` without its secrets; the count is of `text`, as its writer expects."""
        self._stream.write(redact(text, numbers=False) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        """Write each line as `write` does."""
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        # No binary buffer: click writes bytes, and text it finds no encoding for, straight to
        # the buffer of a text stream, which would go around `write`.
        if name == "buffer":
            raise AttributeError(name)
        return getattr(self._stream, name)


def install_output() -> None:
    """Put what this program prints on stdout and stderr through `redact` (numbers kept)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactedOutput):
            setattr(sys, name, RedactedOutput(stream))
