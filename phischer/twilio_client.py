"""One place that builds the Twilio REST client: credentials checked, timeout set, base URL hook."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from phischer.config import ConfigError, Settings

# twilio's HTTP client waits forever by default; a webhook registration or a reply send
# that hangs would hang `phischer up` or a reply worker with it.
TWILIO_HTTP_TIMEOUT_S = 10.0

# Twilio's SDK never retries. A request that may be repeated (a read, setting a number's SMS
# URL) is tried again after a 429, a 5xx or a connection error: the restore on Ctrl-C uses
# this, so the waits are short and bounded, and the user waits seconds, not a minute.
RETRY_DELAYS_S = (0.5, 1.0, 2.0)
RETRY_BUDGET_S = 5.0
# Under a deadline (within_deadline) each request still gets this long when the budget is
# spent: the restore's second request (putting the URL back) is always tried.
LAST_REQUEST_S = 1.0

log = logging.getLogger(__name__)
T = TypeVar("T")

_WHERE = {
    "TWILIO_ACCOUNT_SID": "the Account SID (AC…) from console.twilio.com → Account info",
    "TWILIO_AUTH_TOKEN": "the Auth Token from console.twilio.com → Account info",
    "TWILIO_PHONE_NUMBER": "your Twilio number in E.164, e.g. +15551234567 (Phone Numbers → Active numbers)",
}


class _DebugOnly(logging.LoggerAdapter):
    """twilio logs every request (numbers and bodies included) at INFO: keep that at DEBUG."""

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log at DEBUG instead."""
        self.debug(msg, *args, **kwargs)


_HTTP_LOG = _DebugOnly(logging.getLogger("twilio.http_client"), {})


class TwilioConfigError(ConfigError):
    """A Twilio variable needed for REST calls is missing; the message names it."""


class _HttpClient(TwilioHttpClient):
    """A TwilioHttpClient that logs at DEBUG and keeps its last response (for Retry-After)."""

    def __init__(self, timeout: float = TWILIO_HTTP_TIMEOUT_S) -> None:
        super().__init__(timeout=timeout, logger=_HTTP_LOG)  # type: ignore[arg-type]
        self.last_response: Response | None = None
        # The deadline (time.monotonic()) of this thread's requests, set by within_deadline:
        # per thread, as a reply worker may send on the same client meanwhile.
        self.local = threading.local()

    def request(self, *args: Any, **kwargs: Any) -> Response:  # type: ignore[override]
        """Send the request; remember its response (None after a connection error)."""
        deadline = getattr(self.local, "deadline", None)
        if deadline is not None:
            # A Twilio that hangs would hold the stop for the whole timeout (10 s) per try.
            left = max(deadline - time.monotonic(), LAST_REQUEST_S)
            kwargs["timeout"] = min(kwargs.get("timeout") or self.timeout, left)
        self.last_response = None
        self.last_response = super().request(*args, **kwargs)
        return self.last_response


class RebasingHttpClient(_HttpClient):
    """A TwilioHttpClient that sends every *.twilio.com request to one base URL.

    `client.api.base_url` only covers api.twilio.com; messaging.twilio.com and the absolute
    `next_page_url` links in list replies would still go to the internet. Rewriting the host
    here keeps a loopback fake (tests, a local mock) in charge of every domain.
    """

    def __init__(self, base_url: str, timeout: float = TWILIO_HTTP_TIMEOUT_S) -> None:
        super().__init__(timeout)
        parts = urlsplit(base_url.rstrip("/"))
        self._scheme, self._netloc, self._prefix = parts.scheme, parts.netloc, parts.path

    def request(self, method: str, url: str, *args: object, **kwargs: object) -> Response:  # type: ignore[override]
        """Rewrite a twilio.com URL onto the base URL, then send it."""
        parts = urlsplit(url)
        if parts.hostname and (
            parts.hostname == "twilio.com" or parts.hostname.endswith(".twilio.com")
        ):
            url = urlunsplit(
                (self._scheme, self._netloc, self._prefix + parts.path, parts.query, parts.fragment)
            )
        return super().request(method, url, *args, **kwargs)  # type: ignore[arg-type]


def require_twilio(settings: Settings, *, number: bool = True) -> None:
    """Raise TwilioConfigError naming the first missing Twilio variable."""
    needed = {
        "TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
        "TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
    }
    if number:
        needed["TWILIO_PHONE_NUMBER"] = settings.twilio_phone_number
    for var, value in needed.items():
        if not value:
            raise TwilioConfigError(f"{var} is not set: add {_WHERE[var]} to .env")
    sid = str(settings.twilio_account_sid)
    if not sid.startswith("AC"):
        # An API key (SK…) would authenticate, then every call 404s on /Accounts/SK…; and
        # Twilio signs webhooks with the account's Auth Token, never with a key's secret.
        raise TwilioConfigError(
            f"TWILIO_ACCOUNT_SID={sid[:2]}… is not an Account SID (an API key's SID starts with "
            f"SK, and phischer cannot use API keys): set {_WHERE['TWILIO_ACCOUNT_SID']}, and "
            f"TWILIO_AUTH_TOKEN to that account's Auth Token"
        )


def make_twilio_client(settings: Settings, timeout_s: float = TWILIO_HTTP_TIMEOUT_S) -> Client:
    """A twilio REST Client from Settings, with a request timeout and the optional test base URL."""
    require_twilio(settings)
    base_url = settings.twilio_api_base_url
    http_client = RebasingHttpClient(base_url, timeout_s) if base_url else _HttpClient(timeout_s)
    client = Client(
        settings.twilio_account_sid, settings.twilio_auth_token, http_client=http_client
    )
    if base_url:
        client.api.base_url = base_url.rstrip("/")
        client.messaging.base_url = base_url.rstrip("/")
        # TWILIO_EDGE/TWILIO_REGION from the environment would rewrite the loopback host.
        client.edge = None
        client.region = None
    return client


@contextmanager
def within_deadline(client: Client, deadline: float) -> Iterator[None]:
    """Make each Twilio request sent in the block wait no later than `deadline` for its answer.

    The wait is requests' timeout (per connect and per read): a Twilio that hangs is given
    up on at the deadline, or after LAST_REQUEST_S for a request sent once it has passed.
    """
    http = client.http_client
    local = http.local if isinstance(http, _HttpClient) else threading.local()
    local.deadline = deadline
    try:
        yield
    finally:
        local.deadline = None


def _retry_after_s(client: Client) -> float | None:
    """The seconds of the last response's Retry-After header, if it gave a number of them."""
    response = getattr(client.http_client, "last_response", None)
    try:
        return max(0.0, float((getattr(response, "headers", None) or {})["Retry-After"]))
    except (KeyError, ValueError):  # none, or an HTTP date: the usual backoff then
        return None


def http_status(exc: Exception) -> int | None:
    """The HTTP status of Twilio's answer that `exc` reports (None: no answer, or not Twilio's)."""
    if isinstance(exc, TwilioRestException):
        return exc.status
    if isinstance(exc, TwilioException):
        # A list page Twilio refused raises a bare TwilioException("Unable to fetch page", response).
        response = exc.args[1] if len(exc.args) > 1 else None
        return getattr(response, "status_code", None)
    return None


def twilio_reason(exc: TwilioException) -> tuple[int | None, str]:
    """(HTTP status, short reason) from the SDK's two exception shapes."""
    if isinstance(exc, TwilioRestException):
        return exc.status, f"error {exc.code}: {exc.msg}" if exc.code else str(exc.msg)
    response = exc.args[1] if len(exc.args) > 1 else None
    try:
        body = json.loads(getattr(response, "text", "") or "{}")
        return http_status(exc), f"error {body['code']}: {body['message']}"
    except (ValueError, KeyError, TypeError):
        return http_status(exc), str(exc.args[0]) if exc.args else type(exc).__name__


def _retry_wait(client: Client, exc: Exception, backoff: float) -> float | None:
    """How long to wait before sending `exc`'s request again; None: again would not help."""
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return backoff
    status = http_status(exc)
    if status is not None and (status == 429 or status >= 500):
        # Twilio asks to come back later: not sooner than it says.
        return max(backoff, _retry_after_s(client) or 0.0)
    return None


def idempotent(client: Client, call: Callable[[], T], deadline: float | None = None) -> T:
    """`call()`, a request that may be repeated, retried after a 429, a 5xx or a connection error.

    No retry starts after `deadline` (time.monotonic(); default RETRY_BUDGET_S from now), so a
    Retry-After longer than the time left ends the tries at once. The last error is raised.
    A deadline given also bounds each try's wait for an answer (within_deadline): the restore
    on Ctrl-C passes one, as the user waits for it.
    """
    if deadline is not None:
        with within_deadline(client, deadline):
            return _tries(client, call, deadline)
    return _tries(client, call, time.monotonic() + RETRY_BUDGET_S)


def _tries(client: Client, call: Callable[[], T], deadline: float) -> T:
    """`call()`, tried again as idempotent() says until `deadline`."""
    for backoff in RETRY_DELAYS_S:
        try:
            return call()
        except (TwilioException, requests.RequestException) as exc:
            wait = _retry_wait(client, exc, backoff)
            if wait is None or time.monotonic() + wait > deadline:
                raise
            log.debug("Twilio request failed (%s); trying again in %.1f s", exc, wait)
            time.sleep(wait)
    return call()
