"""The webhook's request checks as `phischer serve` (gunicorn) meets them over real HTTP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlencode

import requests

from phischer.server import READ_S
from tests.conftest import post_signed, run, serving, sign, sms_params, twiml_bodies
from tests.fake_http import FakeServer


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


class PrefixProxy(BaseHTTPRequestHandler):
    """A reverse proxy serving the server at `target` under /clone (the prefix taken off)."""

    target = ""  # the server's base URL
    public = ""  # the proxy's, with the prefix

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        answer = requests.post(
            self.target + self.path.removeprefix("/clone"), data=body, headers=headers, timeout=30
        )
        self.send_response(answer.status_code)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextmanager
def prefix_proxy() -> Iterator[type[PrefixProxy]]:
    """PrefixProxy on a loopback port; yields its class, whose `public` is its base URL."""
    handler = type("Proxy", (PrefixProxy,), {})
    server = FakeServer(("127.0.0.1", 0), handler)
    handler.public = f"http://127.0.0.1:{server.server_port}/clone"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield handler
    finally:
        server.shutdown()
        thread.join()


def test_text_through_a_proxy_serving_it_under_a_path_prefix(
    settings, personas, tmp_path, monkeypatch
):
    # PUBLIC_URL=https://host/clone: `text --url https://host/clone/sms` was signed for
    # …/clone/clone/sms, and the server answered 403.
    with prefix_proxy() as proxy:
        monkeypatch.setenv("PUBLIC_URL", proxy.public)  # for the server and for `text`
        with serving(tmp_path) as base:
            proxy.target = base
            for url, sender in [(proxy.public + "/sms", "+15550101"), (base + "/sms", "+15550102")]:
                result = run("text", "--url", url, "--from", sender, "good night")
                assert result.exit_code == 0, result.output
                assert result.output.strip() == "Sleep well, dear. Dream of engines."
            params = sms_params("good night", "+15550103")
            posted = post_signed(proxy.public + "/sms", settings.auth_token(), params)
            assert twiml_bodies(posted.content) == ["Sleep well, dear. Dream of engines."]
