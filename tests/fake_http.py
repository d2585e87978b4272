"""What the loopback fakes of HTTP APIs (OpenAI, Twilio, ngrok) share: server and handler bases."""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeServer(ThreadingHTTPServer):
    """A threading HTTP server that says nothing when a client hangs up mid-request."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Print the traceback of a fake's own error, not of a client that went away."""
        # A client that timed out on a busy machine or closed at the end of a test left a
        # BrokenPipe/ConnectionReset traceback on stderr, where tests look for ours.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class FakeApiHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1, quiet; GET, POST and DELETE all go to `serve(method)`."""

    protocol_version = "HTTP/1.1"
    # Without this each small request waits ~40 ms for the client's delayed ACK (FIELD-NOTES).
    disable_nagle_algorithm = True

    def serve(self, method: str) -> None:
        """Answer one request."""
        raise NotImplementedError

    def request_body(self) -> bytes:
        """The request's body (empty without one)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def respond(
        self,
        status: int,
        data: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send a whole response."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self.serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self.serve("DELETE")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep pytest output clean
