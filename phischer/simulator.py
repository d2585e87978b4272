"""A signed fake-Twilio client: `phischer text` and `phischer chat` try the clone without a phone."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit
from xml.etree import ElementTree

import requests
import urllib3
from requests.exceptions import InvalidSchema, InvalidURL, MissingSchema
from twilio.request_validator import RequestValidator

from phischer import no_reply
from phischer.config import Settings
from phischer.ports import is_local_host, same_server

DEFAULT_URL = "http://127.0.0.1:5000/sms"
DEFAULT_FROM = "+15550100"
DEFAULT_TO = "+15550199"


class SimulatorError(Exception):
    """The server could not be reached or refused the request; the message says why."""


@dataclass(frozen=True)
class SimResult:
    """What the server answered."""

    status: int
    replies: list[str]
    no_reply: str | None = None  # the server's word for why there is no reply, if it said

    def silence(self, from_: str) -> str:
        """What to print when the answer holds no reply: why, as far as the server said."""
        return no_reply.explain(self.no_reply, from_)


def signed_for(url: str, public_url: str | None) -> str:
    """The URL to sign: what the server validates against (its public URL, if it has one)."""
    if not public_url or _under(url, public_url):
        # Posted through the public URL itself: its proxy takes off the path prefix, and the
        # server puts it back (https://host/clone/sms was signed as …/clone/clone/sms).
        return url
    parts = urlsplit(url)
    return public_url + parts.path + (f"?{parts.query}" if parts.query else "")


def _under(url: str, base: str) -> bool:
    """Whether `url` is on `base`'s server (scheme, host and port), under its path."""
    return same_server(url, base) and urlsplit(url).path.startswith(
        urlsplit(base).path.rstrip("/") + "/"
    )


def send_text(
    settings: Settings,
    body: str,
    *,
    url: str = DEFAULT_URL,
    from_: str = DEFAULT_FROM,
    timeout_s: float = 20.0,
    session: requests.Session | None = None,
) -> SimResult:
    """POST one signed SMS to the webhook like Twilio does and parse the TwiML answer."""
    params = {
        "MessageSid": "SM" + secrets.token_hex(16),
        "SmsMessageSid": "",
        "AccountSid": settings.twilio_account_sid or "AC" + "0" * 32,
        "From": from_,
        "To": settings.twilio_phone_number or DEFAULT_TO,
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    }
    params["SmsMessageSid"] = params["MessageSid"]
    try:
        signed_url = signed_for(url, settings.tunnel_public_url())
    except ValueError as exc:  # urlsplit refuses e.g. http://[::1
        raise SimulatorError(_not_postable(url, str(exc))) from None
    token = settings.signing_token()
    # Without a token the post still goes out (unsigned), so a server that is down says so
    # first; a running one answers 403, explained below.
    signature = RequestValidator(token).compute_signature(signed_url, params) if token else ""
    http = session or requests
    try:
        response = http.post(
            url,
            data=params,
            headers={"X-Twilio-Signature": signature},
            timeout=timeout_s,
            proxies=_direct_if_local(url),
        )
    except requests.ConnectionError as exc:
        raise SimulatorError(_connection_error(url, exc)) from None
    except requests.Timeout:
        raise SimulatorError(f"{url} did not answer within {timeout_s:g} s") from None
    except (MissingSchema, InvalidSchema, InvalidURL) as exc:  # no http://, a bad host or port
        raise SimulatorError(_not_postable(url, " ".join(str(exc).split()))) from None
    except requests.RequestException as exc:  # an answer requests could not read
        raise SimulatorError(f"cannot post to {url}: {' '.join(str(exc).split())}") from None
    if response.status_code == 403 and token is None:
        raise SimulatorError(
            f"the server rejected the text (403): no TWILIO_AUTH_TOKEN is set and "
            f"{settings.instance_path / 'dev_auth_token'} does not exist, so the server runs "
            "from another folder: run this command there, or set the same TWILIO_AUTH_TOKEN "
            "for both"
        )
    if response.status_code == 403:
        raise SimulatorError(
            "the server rejected the signature (403): it uses a different TWILIO_AUTH_TOKEN "
            "or PUBLIC_URL than this shell; run both from the same folder and .env"
        )
    if response.status_code != 200:
        raise SimulatorError(f"the server answered HTTP {response.status_code}")
    return SimResult(
        status=response.status_code,
        replies=parse_twiml(response.content),
        no_reply=response.headers.get(no_reply.HEADER),
    )


def _not_postable(url: str, why: str) -> str:
    """The error for a --url requests cannot post to, with the form it wants."""
    # requests' own words ("No connection adapters were found for …") do not say that the
    # usual cause is a missing http://, so the line ends with a URL that works.
    return f"cannot post to {url}: {why}; pass the full webhook URL, e.g. --url {DEFAULT_URL}"


def _direct_if_local(url: str) -> dict[str, str | None] | None:
    """requests' proxies for `url`: none for a server on this machine or network (is_local_host)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:  # not a URL: requests says so in the post's own error
        return None
    # A None per scheme drops the environment's HTTP_PROXY / ALL_PROXY for this request.
    return dict.fromkeys(("http", "https", "all")) if host and is_local_host(host) else None


def _connection_error(url: str, exc: requests.ConnectionError) -> str:
    """Why the post got no answer: no server at all, or one that dropped the request."""
    # requests wraps a refused connection in MaxRetryError, and a connection the server
    # accepted and then closed (Ctrl-C or a crash mid-text) in ProtocolError: the text may
    # be stored, so "start the server" would send someone to a server that is running.
    if isinstance(exc.args[0] if exc.args else None, urllib3.exceptions.ProtocolError):
        return (
            f"the server at {url} closed the connection without answering (it stopped or "
            "crashed while handling the text); a text it stored is taken up by its recovery "
            "sweep when it runs again"
        )
    return f"nothing answers at {url}: start the server with `make run` or `phischer serve`"


def parse_twiml(data: bytes) -> list[str]:
    """The <Message> bodies of a TwiML response."""
    if not data.strip():
        return []
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError:
        raise SimulatorError("the server answered something that is not TwiML") from None
    return [m.text or "" for m in root.iter("Message")]
