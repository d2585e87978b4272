"""A loopback fake of OpenAI's chat completions endpoint, reached through the real SDK."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    """POST /v1/chat/completions on 127.0.0.1; records requests; scripted behaviour.

    behaviour: "ok" (reply = responder(messages)), "status" (answer `status_code`),
    "slow" (sleep `delay` first), "empty" (empty content), "drop" (close the connection).
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.behaviour = "ok"
        self.status_code = 500
        self.delay = 0.0
        self.responder: Callable[[list[dict[str, str]]], str] = lambda messages: (
            "echo: " + messages[-1]["content"]
        )
        fake = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # else each answer waits ~40 ms (FIELD-NOTES)
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append(
                    {"path": self.path, "json": payload, "auth": self.headers.get("Authorization")}
                )
                if fake.behaviour == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fake.behaviour == "slow":
                    time.sleep(fake.delay)
                if fake.behaviour == "status":
                    self._send(
                        fake.status_code,
                        {"error": {"message": f"fake {fake.status_code}", "type": "server_error"}},
                    )
                    return
                content = "" if fake.behaviour == "empty" else fake.responder(payload["messages"])
                self._send(
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": 0,
                        "model": payload.get("model", "fake"),
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content},
                            }
                        ],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                    },
                )

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def chat_calls(self) -> list[dict[str, Any]]:
        """The chat completion requests received."""
        return [r["json"] for r in self.requests if r["path"].endswith("/chat/completions")]
