"""Twilio signature check against the URL Twilio actually called (public-URL aware)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from flask import Request
from twilio.request_validator import (
    HMAC_SHA1,
    HMAC_SHA256,
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)
from werkzeug.datastructures import MultiDict

from phischer.config import Settings
from phischer.ports import without_default_port
from phischer.signature_hints import rejection_hint, without_userinfo

log = logging.getLogger(__name__)

UNSIGNED_LOG_EVERY_S = 60.0
# A refused signature is explained (rejection_hint) at most this often: anyone can post
# forgeries to a public /sms, and each explanation costs a few dozen HMACs and a file read.
EXPLAIN_EVERY_S = 60.0

RECHECK_S = 1.0
FORM_TYPE = "application/x-www-form-urlencoded"
MULTIPART_TYPE = "multipart/form-data"
HASHES = {HMAC_SHA1: hashlib.sha1, HMAC_SHA256: hashlib.sha256}


def form_params(request: Request) -> Mapping[str, Any]:
    """The posted parameters, parsed once for both the signature and the handler.

    Twilio posts a flat urlencoded form with unique names; parsing it directly costs a
    quarter of werkzeug's general form parser. Anything else (multipart, repeated names)
    goes through request.form, whose MultiDict the validator also understands.
    """
    if request.mimetype == FORM_TYPE:
        pairs = parse_form(whole_body(request))
        params = dict(pairs)
        if len(params) == len(pairs):
            return params
    form = request.form
    if None in form:  # a multipart part without a name: not Twilio's, and unsignable (None + str)
        return MultiDict((k, v) for k, v in form.items(multi=True) if k is not None)
    return form


def whole_body(request: Request) -> str:
    """The request's body as text, or 413 when it is longer than MAX_CONTENT_LENGTH."""
    body = request.get_data(as_text=True)
    wsgi = request.environ  # not request.content_length: it parses the header, per text
    if wsgi.get("HTTP_TRANSFER_ENCODING") or not wsgi.get("CONTENT_LENGTH"):
        # A chunked body has no length to refuse up front: werkzeug stops reading it at the
        # limit and hands over what it read, a form cut short (a 403 for its signature, or
        # a truncated text with signatures off). One more byte tells a longer body apart.
        request.stream.read(1)  # RequestEntityTooLarge past the limit
    return body


def parse_form(body: str) -> list[tuple[str, str]]:
    """An urlencoded body's (name, value) pairs, as parse_qsl(body, keep_blank_values=True)."""
    pairs = []
    for field in body.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        # Most names and values need no decoding: parse_qsl still makes two calls with
        # keywords per field (8 µs for the benchmark's 6 fields, 18 for Twilio's 21; this
        # loop 5 and 8).
        if "%" in name or "+" in name:
            name = unquote(name.replace("+", " "))
        if "%" in value or "+" in value:
            value = unquote(value.replace("+", " "))
        pairs.append((name, value))
    return pairs


def signed_params(request: Request, form: Mapping[str, Any]) -> Mapping[str, Any] | str:
    """What the signature covers: the form, or the raw body of a post signed with bodySHA256.

    Twilio signs a JSON body as its URL with ?bodySHA256=<the body's SHA-256> and no
    parameters; checked as a form (empty), any body passed under a signed URL.
    """
    # The raw query first: parsing it into request.args costs more than the check, per text.
    if (
        b"bodySHA256" in request.query_string
        and "bodySHA256" in request.args
        and request.mimetype not in (FORM_TYPE, MULTIPART_TYPE)
    ):
        return whole_body(request)
    return form


class PublicUrl:
    """PUBLIC_URL, or the URL a running `phischer tunnel`/`up` wrote to the instance folder.

    The file is re-read only when its mtime changes, so a tunnel started after the server
    is picked up without a restart and without a file read per request.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._fixed = settings.public_url
        self._path = settings.instance_path / "public_url"
        self._stamp: float | None = None
        self._value: str | None = None
        self._next_check = 0.0

    def get(self, force: bool = False) -> str | None:
        """The current public base URL, or None when Twilio reaches us directly."""
        if self._fixed:
            return self._fixed
        # One stat a second, not one per text; a signature that fails against the cached
        # URL asks again at once (force), so a new tunnel is never missed.
        now = time.monotonic()
        if now < self._next_check and not force:
            return self._value
        self._next_check = now + RECHECK_S
        try:
            stamp = os.stat(self._path).st_mtime_ns
        except OSError:
            self._stamp, self._value = None, None
            return None
        if stamp != self._stamp:
            self._value = self._settings.tunnel_public_url()
            self._stamp = stamp
        return self._value


def url_tail(request: Request) -> str:
    """The request's path and query: what Twilio signed after the base URL."""
    query = request.query_string.decode("latin-1")
    return request.path + (f"?{query}" if query else "")


def signed_url(request: Request, public_url: str | None) -> str:
    """The URL Twilio signed: public base + path + query, else the request's own URL.

    Without a public URL, request.url is used; it reflects X-Forwarded-Proto/Host only when
    the app was created with TRUST_PROXY=true (ProxyFix), so a client cannot forge them.
    """
    tail = url_tail(request)
    if public_url:
        return public_url + tail
    # request.url would re-encode the URL as an IRI: ~0.1 ms a request for the same string.
    env = request.environ
    scheme = env["wsgi.url_scheme"]
    host = env.get("HTTP_HOST") or f"{env['SERVER_NAME']}:{env['SERVER_PORT']}"
    # Platform routers (Heroku, Fly, Render) send X-Forwarded-Port: 443, which ProxyFix puts
    # into Host: Twilio signs the number's URL as set, without it. Checked for
    # "https://app.example.com:443/sms", every text missed the one-HMAC exact match, and a
    # refused one was told to set the number's SMS URL to that odd URL.
    host = without_default_port(scheme, host)
    return f"{scheme}://{host}{request.root_path}{tail}"


class Every:
    """Whether something done at most once per `seconds` (a log line) is due now."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0  # time.monotonic() before which it is not due

    def due(self) -> bool:
        """True at most once per `seconds` (two threads at the same moment may both get it)."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


class SignatureChecker:
    """Validates X-Twilio-Signature with twilio's RequestValidator."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = settings.twilio_validate_signature
        self.validator = RequestValidator(settings.auth_token())
        self.public_url = PublicUrl(settings)
        self._unsigned_due = Every(UNSIGNED_LOG_EVERY_S)  # else _unsigned logs at debug
        self._explain_due = Every(EXPLAIN_EVERY_S)  # else _refused logs at debug, unexplained

    def is_valid(self, request: Request, form: Mapping[str, Any]) -> bool:
        """True when the request carries a valid signature (or checking is switched off)."""
        if not self.enabled:
            return True
        signature = request.headers.get(SIGNATURE_HEADER)
        # A signature is base64: anything else (non-ASCII bytes included, which the constant-
        # time compare refuses with a TypeError) is a forgery, not a server error.
        if not signature or not signature.isascii():
            self._unsigned(signature)
            return False
        algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
        form = signed_params(request, form)
        base = self.public_url.get()
        url = signed_url(request, base)
        ok = self._matches(url, form, signature, algorithm)
        if not ok:
            # A tunnel may have written a new public URL since the last look: look again.
            fresh = self.public_url.get(force=True)
            if fresh != base:
                base, url = fresh, signed_url(request, fresh)
                ok = self._matches(url, form, signature, algorithm)
        if not ok:
            self._refused(
                request, url, base, lambda other: self._fits(other, form, signature, algorithm)
            )
        return ok

    def _refused(
        self, request: Request, url: str, base: str | None, fits: Callable[[str], bool]
    ) -> None:
        """Log a refused signature checked for `url`, with why once a minute."""
        # Our own endpoint, minus any user:password a PUBLIC_URL might carry.
        shown = without_userinfo(url)
        if not self._explain_due.due():
            # A flood of forged posts must not make each 403 cost the explanation.
            log.debug(
                "Rejected a request with a bad Twilio signature for %s (explained once a minute)",
                shown,
            )
            return
        # A 403 is the commonest trouble: the line says why, worked out only here.
        hint = rejection_hint(request, url, url_tail(request), base, self.settings, fits)
        log.warning("Rejected a request with a bad Twilio signature for %s: %s", shown, hint)

    def signature(self, url: str, form: Mapping[str, Any], algorithm: str) -> str:
        """The signature Twilio sends for a post of `form` to `url` (ValueError: no such algorithm)."""
        hash_function = HASHES.get(algorithm)
        if type(form) is not dict or hash_function is None:
            return self.validator.compute_signature(url, form, algorithm)
        # Twilio's scheme for form_params' plain dict (unique names): the URL, then each name
        # and value in name order. RequestValidator asks each value for two methods only a
        # MultiDict has and catches the AttributeErrors: 43 µs for Twilio's 21 fields, 6 here.
        data = url + "".join([name + value for name, value in sorted(form.items())])
        digest = hmac.new(self.validator.token, data.encode("utf-8"), hash_function).digest()
        return base64.b64encode(digest).decode("ascii")

    def _unsigned(self, signature: str | None) -> None:
        """Log a post with no usable signature: once a minute, as anyone can send them."""
        # Without a line a user whose proxy drops the header saw 403s and a silent log;
        # with one per request, a scanner posting to a public /sms would fill it.
        level = logging.WARNING if self._unsigned_due.due() else logging.DEBUG
        what = "no X-Twilio-Signature header" if not signature else "a signature that is not base64"
        log.log(
            level,
            "Rejected a request with %s: not from Twilio, or a proxy in front of phischer drops "
            "the header (such requests are logged once a minute)",
            what,
        )

    def _fits(
        self, url: str, form: Mapping[str, Any] | str, signature: str, algorithm: Any
    ) -> bool:
        """Whether the signature is the one for exactly `url` (for a raw body, `url` give or take its port)."""
        if isinstance(form, str):
            return self._matches(url, form, signature, algorithm)
        try:
            return hmac.compare_digest(self.signature(url, form, algorithm), signature)
        except ValueError:  # an algorithm twilio does not know
            return False

    def _matches(
        self, url: str, form: Mapping[str, Any] | str, signature: str, algorithm: Any
    ) -> bool:
        if isinstance(form, str):  # a raw body: validate() checks it against bodySHA256
            try:
                return self.validator.validate(url, form, signature, algorithm)
            except ValueError:
                return False
        try:
            expected = self.signature(url, form, algorithm)
        except ValueError:  # an algorithm twilio does not know
            return False
        # The exact URL matches almost always: one HMAC and a constant-time compare.
        # validate() also tries the URL with and without the default port (Twilio signs
        # either), at the cost of two more HMACs, so it only runs on a mismatch.
        if hmac.compare_digest(expected, signature):
            return True
        try:
            return self.validator.validate(url, form, signature, algorithm)
        except ValueError:  # its urlparse refuses the Host header ("h:abc", "h:99999", "[::1")
            return False
