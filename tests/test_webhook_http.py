"""The webhook's request checks as `phischer serve` (gunicorn) meets them over real HTTP."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import ExitStack, suppress
from urllib.parse import urlencode

import requests

from phischer.server import READ_S
from tests.conftest import post_signed, serving, sign, sms_params


def test_forwarded_headers_from_loopback_are_ignored_without_trust_proxy(
    settings, personas, tmp_path
):
    # ngrok's agent or a local proxy connects from 127.0.0.1 and passes on a client's headers:
    # gunicorn believed them from there, whatever TRUST_PROXY said.
    with serving(tmp_path) as base:
        token = settings.auth_token()
        for headers, signed_url in [
            ({"X-Forwarded-Proto": "https"}, base.replace("http:", "https:") + "/sms"),
            ({"X-Forwarded-Ssl": "on"}, base.replace("http:", "https:") + "/sms"),
            ({"SCRIPT_NAME": "/clone"}, base + "/clone/sms"),  # was a 500
            ({"PATH_INFO": "/sms/status"}, base + "/sms/status"),
        ]:
            params = sms_params("hi")
            signature = sign(token, signed_url, params)
            posted = requests.post(
                base + "/sms",
                data=params,
                headers={"X-Twilio-Signature": signature, **headers},
                timeout=30,
            )
            assert posted.status_code == 403, headers
        assert post_signed(base + "/sms", token, sms_params("hi")).status_code == 200


def test_a_chunked_body_past_the_limit_is_413_not_cut_short(settings, personas, tmp_path):
    # Without a Content-Length werkzeug stopped at 64 KB and handed over a truncated form.
    with serving(tmp_path) as base:
        url = base + "/sms"
        for text, status in [("hi", 200), ("x" * 100_000, 413)]:
            params = sms_params(text)
            body = urlencode(params).encode()
            posted = requests.post(
                url,
                data=iter([body[:50], body[50:]]),  # an iterator: sent chunked
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": sign(settings.auth_token(), url, params),
                },
                timeout=30,
            )
            assert posted.status_code == status


def test_clients_sending_slowly_do_not_hold_texts_up(settings, personas, tmp_path):
    # Eight connections trickling a body (every thread of the default 2 workers x 4) held
    # the server until they stopped: Twilio gives up on a text after 15 s.
    stop = threading.Event()
    with serving(tmp_path) as base, ExitStack() as stack:
        port = int(base.rsplit(":", 1)[1])
        slow = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(8)
        ]
        for sock in slow:
            sock.sendall(b"POST /sms HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nBody=")
        trickle = threading.Thread(target=_trickle, args=(slow, stop))
        trickle.start()
        try:
            time.sleep(0.5)
            started = time.monotonic()
            posted = post_signed(base + "/sms", settings.auth_token(), sms_params("hi"))
            waited = time.monotonic() - started
        finally:
            stop.set()
            trickle.join()
    assert posted.status_code == 200
    assert waited < READ_S + 3


def _trickle(socks: list[socket.socket], stop: threading.Event) -> None:
    """A byte on each socket every half second until `stop` (or the socket is closed)."""
    while not stop.wait(0.5):
        for sock in socks:
            with suppress(OSError):  # the server has closed it
                sock.send(b"x")
