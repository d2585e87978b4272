"""A loopback fake of the Twilio REST endpoints phischer calls, reached through the real SDK.

Point the SDK at it with TWILIO_API_BASE_URL=fake.url (see phischer.twilio_client): every
*.twilio.com request lands here. It serves

- api:       GET  /2010-04-01/Accounts/{AC}/IncomingPhoneNumbers.json[?PhoneNumber=…]
             GET  /2010-04-01/Accounts/{AC}/IncomingPhoneNumbers/{PN}.json
             POST /2010-04-01/Accounts/{AC}/IncomingPhoneNumbers/{PN}.json  (SmsUrl, SmsMethod, …)
             POST /2010-04-01/Accounts/{AC}/Messages.json                   (201 + SM sid)
             GET  /2010-04-01/Accounts/{AC}/Messages.json[?To=…&From=…&DateSent>=…]
                  (the messages it took, newest first, paged as Twilio pages: PageSize, Page)
- messaging: GET  /v1/Services   and   GET /v1/Services/{MG}/PhoneNumbers
             GET  /v2/Channels/Senders?Channel=whatsapp                    (WhatsApp senders)

and records every request (method, path, query, form) for assertions. Messages.json can be
scripted to fail: `fake.fail_messages(400, 21610, "unsubscribed")` answers the next send so.
Any endpoint can be scripted too: `fake.fail_next("GET", "/v1/Services", 403, 20003, "…")`
refuses the next such request (`times=3`: the next three; `retry_after=1`: with that
Retry-After header; `applied=True`: applied all the same, as a 5xx Twilio answers after it
created the message), and `fake.after_next("POST", "/PN….json", fn)` calls `fn()` once
that request has been applied, before it is answered (a Ctrl-C while the SDK waits), and
`fake.hang_up_next("POST", "/Messages.json")` applies the next such request, then closes the
connection without an answer (a reset after Twilio created the message; `then=fn` calls `fn()`
before that).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import operator
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.fake_http import FakeApiHandler, FakeServer

ACCOUNT_SID = "AC" + "0" * 30
AUTH_TOKEN = "fake-auth-token-0123456789abcdef"

_API = re.compile(r"^/2010-04-01/Accounts/(?P<ac>AC\w+)/(?P<rest>.+)$")


@dataclass
class Scripted:
    """A one-shot script for the next request matching `method` and `path_suffix`."""

    method: str
    path_suffix: str
    error: tuple[int, int, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)  # sent with the error
    then: Callable[[], None] | None = None
    hang_up: bool = False  # apply it, then close the connection without an answer
    applied: bool = False  # apply it, then answer with `error`


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    at: float = field(default_factory=time.monotonic)


def incoming_number(
    phone: str,
    sid: str | None = None,
    sms_url: str = "",
    sms_method: str = "POST",
    sms_application_sid: str | None = None,
) -> dict[str, Any]:
    """An IncomingPhoneNumber resource as Twilio returns it (the fields phischer reads)."""
    sid = sid or "PN" + secrets.token_hex(16)
    return {
        "account_sid": ACCOUNT_SID,
        "sid": sid,
        "phone_number": phone,
        "friendly_name": phone,
        "sms_url": sms_url,
        "sms_method": sms_method,
        "sms_application_sid": sms_application_sid or "",
        "sms_fallback_url": "",
        "sms_fallback_method": "POST",
        "voice_url": "",
        "capabilities": {"sms": True, "voice": True, "mms": True},
        "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/IncomingPhoneNumbers/{sid}.json",
    }


@dataclass
class FakeTwilio:
    """State of the fake account; `start()` serves it on 127.0.0.1 and sets `url`."""

    numbers: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    service_numbers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    senders: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    url: str = ""
    _scripts: list[Scripted] = field(default_factory=list)
    _server: FakeServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- scripting -----------------------------------------------------------------------
    def add_number(self, phone: str, **kw: Any) -> dict[str, Any]:
        """Add an IncomingPhoneNumber to the account and return it (a live dict)."""
        number = incoming_number(phone, **kw)
        self.numbers.append(number)
        return number

    def add_service(
        self,
        friendly_name: str,
        numbers: list[dict[str, Any]] | None = None,
        inbound_request_url: str | None = "https://example.com/inbound",
        use_inbound_webhook_on_number: bool = False,
    ) -> dict[str, Any]:
        """Add a Messaging Service holding `numbers` (IncomingPhoneNumber dicts)."""
        sid = "MG" + secrets.token_hex(16)
        service = {
            "sid": sid,
            "account_sid": self.account_sid,
            "friendly_name": friendly_name,
            "inbound_request_url": inbound_request_url,
            "inbound_method": "POST",
            "use_inbound_webhook_on_number": use_inbound_webhook_on_number,
            "url": f"https://messaging.twilio.com/v1/Services/{sid}",
        }
        self.services.append(service)
        self.service_numbers[sid] = [
            {
                "sid": n["sid"],
                "account_sid": self.account_sid,
                "service_sid": sid,
                "phone_number": n["phone_number"],
                "country_code": "US",
                "capabilities": ["SMS"],
            }
            for n in numbers or []
        ]
        return service

    def add_whatsapp_sender(self, phone: str) -> dict[str, Any]:
        """Register `phone` as a WhatsApp sender of the account (Senders API, not a number)."""
        sid = "XE" + secrets.token_hex(16)
        sender = {
            "sid": sid,
            "status": "ONLINE",
            "sender_id": f"whatsapp:{phone}",
            "webhook": {"callback_url": None, "callback_method": "POST"},
            "url": f"https://messaging.twilio.com/v2/Channels/Senders/{sid}",
        }
        self.senders.append(sender)
        return sender

    def fail_messages(self, status: int, code: int, message: str, times: int = 1) -> None:
        """Make the next `times` POSTs to Messages.json fail with a Twilio error body."""
        for _ in range(times):
            self.fail_next("POST", "/Messages.json", status, code, message)

    def fail_next(
        self,
        method: str,
        path_suffix: str,
        status: int,
        code: int,
        message: str,
        times: int = 1,
        retry_after: float | None = None,
        applied: bool = False,
    ) -> None:
        """Refuse the next `times` `method` requests whose path ends with `path_suffix`.

        Nothing is applied unless `applied`; `retry_after` is sent as the Retry-After header.
        """
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        for _ in range(times):
            self._scripts.append(
                Scripted(
                    method,
                    path_suffix,
                    error=(status, code, message),
                    headers=headers,
                    applied=applied,
                )
            )

    def after_next(self, method: str, path_suffix: str, then: Callable[[], None]) -> None:
        """Call `then()` once the next matching request is applied, before it is answered."""
        self._scripts.append(Scripted(method, path_suffix, then=then))

    def hang_up_next(
        self, method: str, path_suffix: str, then: Callable[[], None] | None = None
    ) -> None:
        """Apply the next matching request (then call `then()`), and close without answering."""
        self._scripts.append(Scripted(method, path_suffix, then=then, hang_up=True))

    def calls(self, method: str, path_suffix: str) -> list[Recorded]:
        """Recorded requests with this method whose path ends with `path_suffix`."""
        return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]

    # -- serving -------------------------------------------------------------------------
    def start(self) -> FakeTwilio:
        """Serve on an ephemeral loopback port in a daemon thread."""
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._server = FakeServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- routing -------------------------------------------------------------------------
    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        form: dict[str, str],
        authorization: str | None,
    ) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        """Answer one request: (status, JSON body, headers), or None to hang up unanswered."""
        with self._lock:
            self.requests.append(Recorded(method, path, query, form))
            expected = (
                "Basic "
                + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
            )
            if authorization != expected:
                return (*_error(401, 20003, "Authenticate"), {})
            script = next(
                (s for s in self._scripts if s.method == method and path.endswith(s.path_suffix)),
                None,
            )
            if script is not None:
                self._scripts.remove(script)
                if script.error is not None and not script.applied:
                    return (*_error(*script.error), script.headers)
            answer = self._route(method, path, query, form)
            if script is not None and script.error is not None:
                return (*_error(*script.error), script.headers)
        if script is not None and script.then is not None:
            script.then()  # outside the lock: it may make more requests
        return None if script is not None and script.hang_up else (*answer, {})

    def _route(
        self, method: str, path: str, query: dict[str, str], form: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        if path.startswith("/v1/Services"):
            return self._messaging(method, path)
        if path == "/v2/Channels/Senders" and method == "GET":
            channel = query.get("Channel", "").lower()
            found = [s for s in self.senders if s["sender_id"].startswith(f"{channel}:")]
            return 200, _v1_page("senders", found, self.url + path)
        match = _API.match(path)
        if not match or match["ac"] != self.account_sid:
            return _error(404, 20404, f"The requested resource {path} was not found")
        return self._api(method, match["rest"], query, form)

    def _api(
        self, method: str, rest: str, query: dict[str, str], form: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        if rest == "IncomingPhoneNumbers.json" and method == "GET":
            # Twilio treats PhoneNumber as a pattern (partial numbers match), hence the
            # exact-E.164 check on our side.
            wanted = re.sub(r"\D", "", query.get("PhoneNumber", ""))
            found = [n for n in self.numbers if wanted in re.sub(r"\D", "", n["phone_number"])]
            return 200, _api_page("incoming_phone_numbers", found, self.account_sid)
        m = re.fullmatch(r"IncomingPhoneNumbers/(PN\w+)\.json", rest)
        if m:
            number = next((n for n in self.numbers if n["sid"] == m[1]), None)
            if number is None:
                return _error(404, 20404, "The requested resource was not found")
            if method == "POST":
                fields = {
                    "SmsUrl": "sms_url",
                    "SmsMethod": "sms_method",
                    "SmsApplicationSid": "sms_application_sid",
                }
                for key, attr in fields.items():
                    if key in form:
                        number[attr] = form[key]
            return 200, dict(number)
        if rest == "Messages.json" and method == "POST":
            if not form.get("To") or not (form.get("Body") or form.get("MediaUrl")):
                return _error(400, 21602, "Message body is required.")
            if _channel(form.get("From", "")) != _channel(form["To"]):
                return _error(
                    400,
                    21910,
                    "Invalid From and To pair. From and To should be of the same channel",
                )
            sid = "SM" + secrets.token_hex(16)
            now = format_datetime(dt.datetime.now(dt.UTC), usegmt=True)  # as Twilio dates them
            message = {
                "sid": sid,
                "account_sid": self.account_sid,
                "to": form.get("To"),
                "from": form.get("From"),
                "messaging_service_sid": form.get("MessagingServiceSid"),
                "body": form.get("Body"),
                "status": "queued",
                "num_segments": "1",
                "direction": "outbound-api",
                "date_created": now,
                "date_sent": None,
                "error_code": None,
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            }
            # Handed on at once: listed from now on as sent, at the time it was created.
            self.messages.append({**message, "status": "sent", "date_sent": now})
            return 201, message
        if rest == "Messages.json" and method == "GET":
            return 200, self._messages_page(query)
        return _error(404, 20404, f"The requested resource {rest} was not found")

    def _messages_page(self, query: dict[str, str]) -> dict[str, Any]:
        """One page of the messages matching `query`'s filters, newest first, as Twilio lists."""
        found = [
            m
            for m in self.messages
            if query.get("To", m["to"]) == m["to"]
            and query.get("From", m["from"]) == m["from"]
            and _sent_on(m, query)
        ]
        # Newest first by the time sent (stable: of two sent in one second, the later taken).
        found = sorted(reversed(found), key=lambda m: _when(m["date_sent"]), reverse=True)
        size, page = int(query.get("PageSize", 50)), int(query.get("Page", 0))
        items = found[page * size : (page + 1) * size]
        base = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json?"
        filters = {k: v for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")}

        def uri(number: int) -> str:
            return base + urlencode({**filters, "PageSize": size, "Page": number})

        more = (page + 1) * size < len(found)
        return {
            "messages": items,
            "start": page * size,
            "end": page * size + max(len(items) - 1, 0),
            "page": page,
            "page_size": size,
            "uri": uri(page),
            "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1) + f"&PageToken=PA{secrets.token_hex(8)}"
            if more
            else None,
            "previous_page_uri": uri(page - 1) if page else None,
        }

    def _messaging(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        if method != "GET":
            return _error(405, 20004, "Method not allowed")
        if path == "/v1/Services":
            return 200, _v1_page("services", self.services, self.url + path)
        m = re.fullmatch(r"/v1/Services/(MG\w+)/PhoneNumbers", path)
        if m and m[1] in self.service_numbers:
            return 200, _v1_page("phone_numbers", self.service_numbers[m[1]], self.url + path)
        return _error(404, 20404, f"The requested resource {path} was not found")


def _when(rfc2822: str | None) -> dt.datetime:
    """A Twilio date as a datetime (none, as for a message not sent yet: the earliest)."""
    return parsedate_to_datetime(rfc2822) if rfc2822 else dt.datetime.min.replace(tzinfo=dt.UTC)


def _sent_on(message: dict[str, Any], query: dict[str, str]) -> bool:
    """Whether `message` passes the DateSent filters, which Twilio applies by the day (GMT)."""
    tests = {"DateSent": operator.eq, "DateSent>": operator.ge, "DateSent<": operator.le}
    # The SDK sends a datetime ("2024-05-01T12:00:00Z"): Twilio reads its date. A message not
    # sent yet has no date_sent, so no DateSent filter lets it through.
    wanted = [(test, query[key][:10]) for key, test in tests.items() if key in query]
    if not wanted:
        return True
    if not message["date_sent"]:
        return False
    day = _when(message["date_sent"]).date()
    return all(test(day, dt.date.fromisoformat(value)) for test, value in wanted)


def _channel(address: str) -> str:
    """The channel of a Twilio address: "whatsapp" for "whatsapp:+1…", "" for a phone number."""
    return address.rpartition(":")[0]


def _error(status: int, code: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _api_page(key: str, items: list[dict[str, Any]], account_sid: str) -> dict[str, Any]:
    uri = f"/2010-04-01/Accounts/{account_sid}/IncomingPhoneNumbers.json?PageSize=50&Page=0"
    return {
        key: items,
        "start": 0,
        "end": max(len(items) - 1, 0),
        "page": 0,
        "page_size": 50,
        "uri": uri,
        "first_page_uri": uri,
        "next_page_uri": None,
        "previous_page_uri": None,
    }


def _v1_page(key: str, items: list[dict[str, Any]], url: str) -> dict[str, Any]:
    return {
        key: items,
        "meta": {
            "key": key,
            "page": 0,
            "page_size": 50,
            "first_page_url": url + "?PageSize=50&Page=0",
            "previous_page_url": None,
            "next_page_url": None,
            "url": url + "?PageSize=50&Page=0",
        },
    }


class _Handler(FakeApiHandler):
    fake: FakeTwilio

    def handle(self) -> None:
        """Serve the connection; a client that hangs up (an interrupted request) is no error."""
        # What was applied stays applied, as on Twilio.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().handle()

    def serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        raw = self.request_body().decode()
        form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        answer = self.fake.handle(
            method, parts.path, query, form, self.headers.get("Authorization")
        )
        if answer is None:
            self.close_connection = True  # the client reads an end of stream, no status line
            return
        status, body, headers = answer
        self.respond(status, json.dumps(body).encode(), headers=headers)
