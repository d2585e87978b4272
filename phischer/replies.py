"""Reply delivery: SMS length rules, TwiML for inline replies, the Twilio REST sender for async."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import re
import time
import unicodedata
from collections.abc import Sequence
from typing import Any, NamedTuple

import requests
from twilio.twiml.messaging_response import MessagingResponse
from urllib3.exceptions import ConnectTimeoutError

from phischer.config import Settings
from phischer.models import ADDRESS_MAX
from phischer.redact import mask_number, shorten
from phischer.surrogates import replace_lone_surrogates

log = logging.getLogger(__name__)


def sms_length(text: str) -> int:
    """`text`'s length as Twilio counts it against its 1,600-character body limit."""
    # In UTF-16 code units: an emoji (outside the Basic Multilingual Plane) counts twice, so
    # 1,600 Python characters of emoji were refused (error 21617, "exceeds the 1600 character
    # limit"), or the TwiML reply was not sent.
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


def fit_sms(text: str, limit: int) -> str:
    """Cut text to `limit` characters as Twilio counts them, at a word boundary, marked "…"."""
    text = text.strip()
    if len(text) <= limit and sms_length(text) <= limit:
        return text
    cut = _first_units(text, limit - 1)
    space = max(cut.rfind(" "), cut.rfind("\n"))
    # Only back up to a word boundary when one is reasonably near; a single 1,600-char
    # "word" (a URL, say) is cut hard instead of being dropped.
    if space >= len(cut) // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def _first_units(text: str, units: int) -> str:
    """The longest start of `text` of at most `units` UTF-16 code units, no emoji split."""
    if text.isascii():
        return text[:units]
    head = text.encode("utf-16-le")[: 2 * units]
    if head and 0xD8 <= head[-1] <= 0xDB:  # the first half of a pair: its emoji is left out
        head = head[:-2]
    return head.decode("utf-16-le")


# XML 1.0 cannot carry most C0 controls, lone surrogates or U+FFFE/U+FFFF. A reply may hold
# them ("No #<keyword>." echoes the text; a dataset answer or FALLBACK_REPLY may have any),
# and one such character would make the whole TwiML unreadable to Twilio.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@functools.lru_cache(maxsize=4096)
def twiml(*bodies: str) -> str:
    """A TwiML document with one <Message> per non-empty body (none: no SMS is sent).

    Characters XML cannot hold are dropped. Cached: a persona's replies repeat (retrieval
    answers come from a fixed set), and serialising the XML costs more than the rest of
    the response.
    """
    response = MessagingResponse()
    for body in filter(None, map(_xml_text, bodies)):
        response.message(body)
    return str(response)


def _xml_text(body: str) -> str:
    """`body` without the characters XML cannot hold (empty: no message is sent)."""
    return NOT_XML.sub("", body)


# The marks a phone shows nothing of (zero-width spaces and joiners, bidi marks, embeddings
# and isolates, a soft hyphen, variation selectors, a BOM, the Hangul fillers), as the body
# of a regex character class.
INVISIBLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0"
)
# A character a phone shows: not a blank, nor an invisible mark.
VISIBLE = re.compile(f"[^\\s{INVISIBLE}]")


def sendable(text: str, limit: int) -> str:
    """`text` as an SMS can carry it: no characters XML cannot hold, cut to `limit`.

    Empty when nothing in it would show: invisible marks alone are no reply to send.
    """
    # Lone surrogates first become U+FFFD (shown, as any UTF-8 decoder would); the C0
    # controls and U+FFFE/U+FFFF that remain are dropped, so the row says what was sent.
    text = _xml_text(replace_lone_surrogates(text))
    return fit_sms(text, limit) if VISIBLE.search(text) else ""


# Where Twilio reports what became of a reply (its status callback). Relative in the TwiML:
# Twilio resolves it against the webhook's own URL, so it works behind any public URL.
STATUS_PATH = "sms/status"
# A Twilio error as a reply records it and the log shows it: its first line, this long at most.
TWILIO_ERROR_CHARS = 300


def twiml_replies(replies: Sequence[tuple[str, int]]) -> str:
    """TwiML for (text, reply id) pairs; each <Message> asks for status callbacks for its row."""
    head, parts = _twiml_parts(tuple(text for text, _ in replies))
    return head + "".join(
        f'<Message action="{STATUS_PATH}?reply={replies[i][1]}">{part}' for i, part in parts
    )


@functools.lru_cache(maxsize=4096)
def _twiml_parts(texts: tuple[str, ...]) -> tuple[str, tuple[tuple[int, str], ...]]:
    """twiml(*texts) cut before each <Message>: the head, and (index in texts, rest) per message."""
    # Cached per texts, as twiml is: only the ids differ between texts. A body cannot hold
    # "<Message>" (it is escaped), so the tags split the document into one part per text kept.
    head, *parts = twiml(*texts).split("<Message>")
    kept = [i for i, text in enumerate(texts) if _xml_text(text)]
    return head, tuple(zip(kept, parts, strict=True))


class SendError(Exception):
    """The REST send failed; the message row records why."""

    def __init__(
        self,
        reason: str,
        transient: bool = False,
        code: int | None = None,
        maybe_sent: bool = False,
    ) -> None:
        super().__init__(reason)
        # Transient: Twilio was unreachable or busy, or did not answer, so the recovery sweep
        # may try again later (asking Twilio first whether it has the message); otherwise (a
        # refusal, missing credentials) it is final.
        self.transient = transient
        self.code = code  # Twilio's error code of a refusal (21610: the number opted out)
        # Twilio may have created the message (a 5xx, no answer): only a look-up can tell.
        self.maybe_sent = maybe_sent


class RestSender:
    """Sends an SMS through Twilio's REST API (used when the reply is too slow for TwiML)."""

    def __init__(
        self,
        settings: Settings,
        retry_delays_s: tuple[float, ...] = (1.0, 4.0),
        timeout_s: float | None = None,  # per request; None: twilio_client's default
    ) -> None:
        from phischer.security import PublicUrl

        self.settings = settings
        self.retry_delays_s = retry_delays_s
        self.timeout_s = timeout_s
        self.public_url = PublicUrl(settings)
        self._client: Any = None

    def _rest_client(self) -> Any:
        """The twilio REST client, made on first use (it is heavy to import)."""
        from phischer.twilio_client import TWILIO_HTTP_TIMEOUT_S, make_twilio_client

        if self._client is None:
            self._client = make_twilio_client(
                self.settings, self.timeout_s or TWILIO_HTTP_TIMEOUT_S
            )
        return self._client

    def warm(self) -> None:
        """Make the REST client now, so a send that follows goes out at once."""
        # Missing credentials and the like: the send itself says so.
        with contextlib.suppress(Exception):
            self._rest_client()

    def status_callback(self, reply_id: int) -> str | None:
        """The absolute status-callback URL for a reply, when the server has a public URL."""
        base = self.public_url.get()
        return f"{base}/{STATUS_PATH}?reply={reply_id}" if base else None

    def send(
        self, to: str, body: str, reply_id: int | None = None, from_: str | None = None
    ) -> str:
        """Send `body` to `to` from `from_`; return the Message SID or raise SendError.

        `from_` is the number or sender the texter wrote to (see `our_address`); None:
        TWILIO_PHONE_NUMBER on the texter's channel.

        A connection that was never made and a 429 are retried (Twilio created no message
        then, so a retry cannot double-send); any other refusal (21610 opted out, 21211 bad
        number, …) is final. A request Twilio may have taken is not retried here: a 5xx (its
        edge or a proxy may give up while the message is being created, and Twilio does not
        promise that a 5xx created nothing), or no answer (in time, or at all: the connection
        dropped). Its SendError is transient all the same: the recovery sweep, minutes later
        when such a request has long ended, asks Twilio whether it has the message first.
        """
        from_ = from_ or reply_from(to, self.settings.twilio_phone_number)
        for delay in (*self.retry_delays_s, None):
            try:
                client = self._rest_client()
                extra = {}
                callback = self.status_callback(reply_id) if reply_id is not None else None
                if callback:
                    extra["status_callback"] = callback
                message = client.messages.create(
                    to=to,
                    from_=from_,
                    body=body,
                    **extra,
                )
                return str(message.sid)
            except Exception as exc:  # TwilioRestException, requests' errors, config errors
                log.warning("REST send to %s failed: %s", mask_number(to), _short(exc))
                transient, maybe_sent = _transient(exc), _maybe_sent(exc)
                if delay is None or not transient or maybe_sent:
                    raise SendError(_short(exc), transient, _code(exc), maybe_sent) from None
                time.sleep(delay)
        raise AssertionError("unreachable")

    def sent_since(self, to: str, since: dt.datetime, from_: str | None = None) -> list[Taken]:
        """REST messages Twilio took for `to` from `from_` since `since`, oldest first.

        `since` is naive UTC. Raises SendError (transient: Twilio was unreachable or busy) when
        Twilio cannot tell.
        """
        from phischer.twilio_client import idempotent

        from_ = from_ or reply_from(to, self.settings.twilio_phone_number)
        try:
            client = self._rest_client()
            # A read: repeated after a 429, a 5xx or a lost connection, for a few seconds.
            listed = idempotent(client, lambda: _listed_since(client, to, from_, since))
        except Exception as exc:  # TwilioException, requests' errors, config errors
            raise _lookup_failed(exc) from None
        return [
            Taken(m.sid, m.status or "", m.error_code, m.body or "", _naive(m.date_created))
            for m in reversed(listed)  # Twilio lists newest first
            # "outbound-api": sent by REST, as replies the sweep sends are (a TwiML reply,
            # "outbound-reply", with the same words is another message).
            if m.direction == "outbound-api"
        ]


class Taken(NamedTuple):
    """A message Twilio has: its sid, status, error code if it failed, words and creation time."""

    sid: str
    status: str
    error_code: int | None
    body: str
    created: dt.datetime  # naive UTC, as our rows' times


def _naive(when: dt.datetime) -> dt.datetime:
    """An aware time as naive UTC."""
    return when.astimezone(dt.UTC).replace(tzinfo=None)


# The most messages to a number one look-up reads: the newest come first, so it stops long
# before, at the first one older than it looks for (this bounds it should Twilio's order differ).
LOOKUP_MAX = 500
LOOKUP_PAGE = 50


def _listed_since(client: Any, to: str, from_: str | None, since: dt.datetime) -> list[Any]:
    """Messages from `from_` to `to` Twilio created since `since`, as listed (newest first)."""
    # No DateSent filter: Twilio documents it to the day only, and a message it still holds
    # in its queue has no date_sent yet, so the filter would hide the very message wanted.
    since = since.replace(tzinfo=dt.UTC)
    found = []
    for message in client.messages.stream(
        to=to, from_=from_, limit=LOOKUP_MAX, page_size=LOOKUP_PAGE
    ):
        created = message.date_created
        # Listed by date sent, newest first; a message is sent after it is created.
        if (message.date_sent or created or since) < since:
            break
        if created is not None and created >= since:
            found.append(message)
    return found


def _lookup_failed(exc: Exception) -> SendError:
    """The SendError for a look-up of sent messages that failed with `exc`."""
    from twilio.base.exceptions import TwilioException

    from phischer.twilio_client import twilio_reason

    if isinstance(exc, TwilioException):
        status, reason = twilio_reason(exc)
        # No status: an answer the SDK could not read (a proxy's page?), worth another try.
        transient = status is None or status == 429 or status >= 500
        reason = f"Twilio {reason}"
    elif isinstance(exc, requests.RequestException):
        transient, reason = True, f"Twilio did not answer ({type(exc).__name__})"
    else:  # TwilioConfigError: final, as for a send
        transient, reason = False, _short(exc)
    reason = shorten(f"could not check whether Twilio has it already: {reason}", TWILIO_ERROR_CHARS)
    return SendError(reason, transient)


# Twilio's Smart Encoding (a Messaging Service option) sends these as their GSM look-alikes,
# and lists the message as sent.
_SMART = str.maketrans(
    {"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u2013": "-", "\u2014": "-"}
)


def same_words(ours: str, listed: str) -> bool:
    """Whether Twilio's `listed` body is our `ours` as sent (NFKC, GSM look-alikes, spacing)."""
    return _comparable(ours) == _comparable(listed)


def _comparable(text: str) -> str:
    """`text` as two bodies are compared: NFKC, GSM look-alikes, whitespace runs as one space."""
    return " ".join(unicodedata.normalize("NFKC", text).translate(_SMART).split())


def reply_from(to: str, number: str | None) -> str | None:
    """Our sender for a reply to `to`: `number` on the texter's channel ("whatsapp:+1…")."""
    channel = _channel(to)
    # Twilio refuses a From and To on different channels (21910): a WhatsApp texter is
    # answered from the WhatsApp sender of the same number.
    return f"{channel}:{number}" if channel and number else number


# What Twilio posts as `To`: a number or short code ("+15550199", "12345"), or a channel's
# sender ("whatsapp:+1…", "rcs:acme_agent", "messenger:1234…"). No spaces or controls.
_ADDRESS = re.compile(r"(?:[a-z]+:)?[\w+.@-]+", re.ASCII)


def our_address(to: str, phone: str) -> str | None:
    """The sender to answer `phone` from: Twilio's `To` of its text, or None if it is not one.

    Twilio sends a reply in the TwiML from the number or sender that was texted; a REST
    reply must name it. Not checked against the account's numbers: the signature shows
    Twilio posted it, and Twilio refuses a From the account does not own anyway.
    """
    to = to.strip()
    if not to:
        return None
    # Too long for the column, not an address, or on another channel than the texter's
    # (Twilio would refuse the pair, 21910): not a sender a reply can go out from.
    if len(to) > ADDRESS_MAX or not _ADDRESS.fullmatch(to) or _channel(to) != _channel(phone):
        # The post is Twilio's (signed), so the text is still answered, from the default.
        log.debug("Ignoring To %r of a text from %s", to, phone)
        return None
    return to


def _channel(address: str) -> str:
    """The channel of a Twilio address: "whatsapp" for "whatsapp:+1…", "" for a number."""
    return address.rpartition(":")[0]


def _transient(exc: Exception) -> bool:
    """Whether a failed send may be tried again later: Twilio did not refuse it."""
    status = _status(exc)
    if status is not None:
        return status == 429 or status >= 500
    # Also a send Twilio may have taken (_maybe_sent): the sweep asks Twilio before sending.
    return isinstance(exc, requests.ConnectionError | requests.Timeout)


def _status(exc: Exception) -> int | None:
    """The HTTP status of Twilio's (or a proxy's) answer to the send, if one came."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _maybe_sent(exc: Exception) -> bool:
    """Whether Twilio may have created the message: a 5xx, or no answer after the request."""
    status = _status(exc)
    if status is not None:
        # A 500 can come after the write; a 502/504 from an edge or proxy that gave up on a
        # backend still creating it. Only a 429 (and a 4xx refusal) says nothing was made.
        return status >= 500
    if isinstance(exc, requests.ReadTimeout):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    # A connection refused, unresolved or timed out before it was made (urllib3 wraps those
    # in a MaxRetryError whose reason is a ConnectTimeoutError, NewConnectionError included)
    # carried nothing; nor did one through a proxy that could not be reached or refused the
    # tunnel to Twilio (a CONNECT answered 502): urllib3 raises its ProxyError, which requests
    # turns into this one, only before the request got through the proxy. Anything else (a
    # reset or an end of stream instead of the answer) may have come after Twilio created
    # the message: a retry could text it twice.
    if isinstance(exc, requests.exceptions.ProxyError):
        return False
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    return not isinstance(reason, ConnectTimeoutError)


def _code(exc: Exception) -> int | None:
    """Twilio's error code of a refusal (a TwilioRestException's), if any."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


MAYBE_SENT = "the SMS may or may not have been sent"


def _short(exc: Exception) -> str:
    if isinstance(exc, requests.ReadTimeout):
        return f"Twilio did not answer in time; {MAYBE_SENT}"
    if _status(exc) is None and _maybe_sent(exc):
        return f"Twilio closed the connection before answering; {MAYBE_SENT}"
    code = _code(exc)
    if code is not None:  # TwilioRestException: the error code is what users look up
        short = shorten(f"Twilio error {code}: {getattr(exc, 'msg', '')}", TWILIO_ERROR_CHARS)
    else:
        text = str(exc).strip().splitlines()
        short = shorten(text[0] if text else type(exc).__name__, TWILIO_ERROR_CHARS)
    # A 5xx: said after Twilio's own words, which are what users look up.
    return f"{short}; {MAYBE_SENT}" if _maybe_sent(exc) else short
