"""A loopback fake of OpenAI's files, fine-tuning and chat endpoints for the real SDK.

Each GET of a job advances its scripted progress by one step, so a test decides exactly
how many polls a job takes and what events appear on the way.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

VALID_KEY = "sk-test-not-real"


@dataclass
class Step:
    """One scripted poll: the status it reports, and events that appear with it."""

    status: str
    events: list[str | dict[str, Any]] = field(default_factory=list)
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: dict[str, Any] | None = None


def metrics_event(
    step: int,
    total_steps: int,
    train_loss: float,
    valid_loss: float | None = None,
    accuracy: float = 0.5,
) -> dict[str, Any]:
    """A `metrics` event as OpenAI emits one per training step (validation every few)."""
    message = f"Step {step}/{total_steps}: training loss={train_loss:.2f}"
    data: dict[str, Any] = {
        "step": step,
        "train_loss": train_loss,
        "total_steps": total_steps,
        "train_mean_token_accuracy": accuracy,
    }
    if valid_loss is not None:
        message += f", validation loss={valid_loss:.2f}"
        data["valid_loss"] = valid_loss
        data["valid_mean_token_accuracy"] = accuracy
    return {"message": message, "type": "metrics", "data": data}


@dataclass
class Recorded:
    """A request as the fake saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class FakeOpenAI:
    """State and scripts behind the handler; start() binds 127.0.0.1 on a free port."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}  # newest first, as the API lists
        self.scripts: dict[str, list[Step]] = {}
        self.default_script: list[Step] = [Step("running")]
        # (method, path prefix) -> list of (status, error body) served before normal answers.
        self.errors: list[tuple[str, str, int, dict[str, Any]]] = []
        self.valid_key = VALID_KEY
        self.chat_reply = "hey it's {model}"
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # -- test helpers -------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The URL to give OPENAI_BASE_URL."""
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def fail(
        self,
        method: str,
        prefix: str,
        status: int,
        message: str = "boom",
        times: int = 1,
        code: str | None = None,
    ) -> None:
        """Answer the next `times` matching requests with an OpenAI-style error."""
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
        for _ in range(times):
            self.errors.append((method, prefix, status, body))

    def calls(self, method: str | None = None, prefix: str = "") -> list[Recorded]:
        """Recorded requests, optionally filtered by method and path prefix."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and r.path.startswith(prefix)
        ]

    def start(self) -> FakeOpenAI:
        """Serve in a daemon thread."""
        fake = self

        class Handler(_Handler):
            state = fake

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Shut the server down."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # -- endpoint logic -----------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        """A fresh object id."""
        return f"{prefix}-{next(self._ids):04d}"

    def add_event(self, job_id: str, spec: str | dict[str, Any]) -> None:
        """Append an event (a message, or a dict with message/level/data/type)."""
        spec = {"message": spec} if isinstance(spec, str) else spec
        event = {
            "id": self.new_id("ftevent"),
            "object": "fine_tuning.job.event",
            "created_at": int(time.time()),
            "level": spec.get("level", "info"),
            "message": spec["message"],
            "type": spec.get("type", "metrics" if "data" in spec else "message"),
            "data": spec.get("data"),
        }
        self.events[job_id].insert(0, event)

    def advance(self, job_id: str) -> None:
        """Apply the job's next scripted step; once the script is used up it stays put."""
        script = self.scripts[job_id]
        job = self.jobs[job_id]
        if not script or job["status"] in ("succeeded", "failed", "cancelled"):
            return
        step = script.pop(0)
        job["status"] = step.status
        for spec in step.events:
            self.add_event(job_id, spec)
        if step.fine_tuned_model:
            job["fine_tuned_model"] = step.fine_tuned_model
        if step.trained_tokens is not None:
            job["trained_tokens"] = step.trained_tokens
        if step.error:
            job["error"] = step.error
        if step.status in ("succeeded", "failed", "cancelled"):
            job["finished_at"] = int(time.time())


def _job_object(job_id: str, body: dict[str, Any]) -> dict[str, Any]:
    method = body.get("method") or {}
    hyper = (method.get("supervised") or {}).get("hyperparameters") or {}
    return {
        "id": job_id,
        "object": "fine_tuning.job",
        "created_at": int(time.time()),
        "error": None,
        "fine_tuned_model": None,
        "finished_at": None,
        "hyperparameters": {
            "n_epochs": hyper.get("n_epochs", "auto"),
            "batch_size": "auto",
            "learning_rate_multiplier": "auto",
        },
        "model": body["model"],
        "organization_id": "org-fake",
        "result_files": [],
        "seed": 42,
        "status": "validating_files",
        "trained_tokens": None,
        "training_file": body["training_file"],
        "validation_file": body.get("validation_file"),
        "method": method or None,
        "suffix": body.get("suffix"),
    }


class _Handler(BaseHTTPRequestHandler):
    state: FakeOpenAI
    protocol_version = "HTTP/1.1"
    # Without this each response waits ~40 ms for the client's delayed ACK (FIELD-NOTES).
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlparse(self.path)
        rec = Recorded(method, url.path, parse_qs(url.query), dict(self.headers.items()), body)
        st = self.state
        with st._lock:
            st.requests.append(rec)
            if self.headers.get("Authorization") != f"Bearer {st.valid_key}":
                self._send(
                    401,
                    {
                        "error": {
                            "message": "Incorrect API key provided",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "invalid_api_key",
                        }
                    },
                )
                return
            for i, (m, prefix, status, err) in enumerate(st.errors):
                if m == method and url.path.startswith(prefix):
                    del st.errors[i]
                    # A 1 ms Retry-After keeps the SDK's own retries fast in tests.
                    self._send(status, err, {"retry-after-ms": "1"})
                    return
            try:
                status, payload = self._route(method, url.path, rec)
            except KeyError:
                status, payload = (
                    404,
                    {
                        "error": {
                            "message": f"No such object: {url.path}",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": None,
                        }
                    },
                )
            self._send(status, payload)

    def _route(self, method: str, path: str, rec: Recorded) -> tuple[int, Any]:
        st = self.state
        parts = path.strip("/").split("/")  # v1, resource, ...
        if method == "POST" and path == "/v1/files":
            return 200, self._upload(rec)
        if method == "POST" and path == "/v1/chat/completions":
            req = rec.json()
            text = st.chat_reply.format(model=req["model"])
            return 200, {
                "id": st.new_id("chatcmpl"),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text},
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        if parts[:2] != ["v1", "fine_tuning"] or parts[2:3] != ["jobs"]:
            raise KeyError(path)
        rest = parts[3:]
        if method == "POST" and not rest:
            req = rec.json()
            for key in ("training_file", "validation_file"):
                if req.get(key) and req[key] not in st.files:
                    return 400, {
                        "error": {
                            "message": f"invalid {key} {req[key]}",
                            "type": "invalid_request_error",
                            "param": key,
                            "code": None,
                        }
                    }
            job_id = st.new_id("ftjob")
            st.jobs[job_id] = _job_object(job_id, req)
            st.events[job_id] = []
            st.scripts[job_id] = list(st.default_script)
            st.add_event(job_id, f"Created fine-tuning job: {job_id}")
            return 200, st.jobs[job_id]
        if method == "GET" and not rest:
            data = sorted(st.jobs.values(), key=lambda j: j["id"], reverse=True)
            limit = int(rec.query.get("limit", ["20"])[0])
            return 200, {"object": "list", "data": data[:limit], "has_more": len(data) > limit}
        job_id = rest[0]
        job = st.jobs[job_id]
        if method == "GET" and len(rest) == 1:
            st.advance(job_id)
            return 200, job
        if method == "GET" and rest[1:] == ["events"]:
            events = st.events[job_id]
            after = rec.query.get("after", [None])[0]
            if after is not None:
                idx = next(i for i, e in enumerate(events) if e["id"] == after)
                events = events[idx + 1 :]
            limit = int(rec.query.get("limit", ["20"])[0])
            return 200, {"object": "list", "data": events[:limit], "has_more": len(events) > limit}
        if method == "POST" and rest[1:] == ["cancel"]:
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return 400, {
                    "error": {
                        "message": f"Job {job_id} has already completed",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                }
            job["status"] = "cancelled"
            job["finished_at"] = int(time.time())
            st.add_event(job_id, "Fine-tuning job cancelled")
            return 200, job
        raise KeyError(path)

    def _upload(self, rec: Recorded) -> dict[str, Any]:
        ctype = rec.headers.get("Content-Type") or rec.headers.get("content-type") or ""
        msg = BytesParser(policy=email_policy).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + rec.body
        )
        fields: dict[str, Any] = {}
        filename = None
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                filename = part.get_filename()
                fields[name] = part.get_payload(decode=True)
            else:
                fields[name] = part.get_content()
        file_id = self.state.new_id("file")
        content = fields["file"]
        self.state.files[file_id] = {
            "filename": filename,
            "purpose": fields.get("purpose"),
            "content": content,
        }
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": fields.get("purpose"),
            "status": "processed",
        }

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")
