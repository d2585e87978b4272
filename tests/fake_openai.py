"""A loopback fake of the OpenAI API (chat, files, fine-tuning), reached through the real SDK.

Point the SDK at `fake.base_url` (OPENAI_BASE_URL, or base_url=). It serves

- POST /v1/chat/completions                 reply = `responder(request body)`; `behaviour` scripts
                                            failures: "status", "slow", "empty", "drop", …;
                                            `finish_reason` and `refusal` shape it
- POST /v1/files                            multipart upload, kept in `files`
- GET  /v1/files[?purpose=&limit=]          list, newest first
- DELETE /v1/files/{id}                     removes it from `files` (404 if unknown)
- POST /v1/fine_tuning/jobs                 create (its progress script is `default_script`)
- GET  /v1/fine_tuning/jobs[?limit=]        list, newest first
- GET  /v1/fine_tuning/jobs/{id}            retrieve; each GET applies the job's next `Step`,
                                            so a test decides how many polls a job takes
- GET  /v1/fine_tuning/jobs/{id}/events     newest first, paged with after/limit (or
                                            `events_status`, a server without events)
- POST /v1/fine_tuning/jobs/{id}/cancel

and records every request in `requests` (`most_chats`: the most chat completions it was
answering at once). `fail()` answers the next matching requests with an
OpenAI-style error, `reply()` with any body and headers (a proxy's HTML page, cut-off JSON, a
Retry-After), `drop()` closes their connection without an answer, `stall()` does the work but
answers too late (after the client timed out), `reset()` does it and closes the connection
without an answer (a response lost on the way); with `valid_key` set,
any other API key gets a 401 (quoting it with `echo_key`); `restart()` forgets every file and
job, as a server without storage that was restarted.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.fake_http import FakeApiHandler, FakeServer

VALID_KEY = "sk-test-not-real"
CHAT_PATH = "/v1/chat/completions"
FINISHED = ("succeeded", "failed", "cancelled")

# (status, JSON body, extra headers); None drops the connection instead.
Answer = tuple[int, Any, dict[str, str]]


@dataclass
class Step:
    """One scripted poll: the status it reports, and events that appear with it."""

    status: str
    events: list[str | dict[str, Any]] = field(default_factory=list)
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: dict[str, Any] | str | None = None  # a str: as some OpenAI-compatible servers send it
    estimated_finish: int | None = None


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


def echo(body: dict[str, Any]) -> str:
    """Chat responder: "echo: " and the last message."""
    return "echo: " + body["messages"][-1]["content"]


def greet_model(body: dict[str, Any]) -> str:
    """Chat responder naming the model asked for, to show which model a text reached."""
    return f"hey it's {body['model']}"


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """An error payload shaped like OpenAI's."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass
class Recorded:
    """A request as the fake saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    auth: str | None
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class FakeOpenAI:
    """State and scripts behind the loopback server; use it as a context manager."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.valid_key: str | None = None  # None: any key is accepted
        # A 401 quotes the key it got, as some OpenAI-compatible servers (and OpenAI once) do.
        self.echo_key = False
        # Chat: how the next completions are answered.
        self.behaviour = "ok"
        self.status_code = 500
        self.delay = 0.0
        # The message's content: a string, or what else a server sends (None, a list of parts).
        self.responder: Callable[[dict[str, Any]], Any] = echo
        self.finish_reason = "stop"
        self.refusal: str | None = None
        # Models that answer like OpenAI's reasoning models: a 400 naming `max_tokens`
        # (they take max_completion_tokens) or a temperature other than 1.
        self.reasoning_models: set[str] = set()
        # Files and fine-tuning.
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}  # newest first, as the API lists
        self.scripts: dict[str, list[Step]] = {}
        self.default_script: list[Step] = [Step("running")]
        # The status the events endpoint answers with, if not 200: an OpenAI-compatible server
        # without one (404, 405, 501).
        self.events_status: int | None = None
        # What an upload's answer says of it: ("error", details) for a file OpenAI cannot read.
        self.upload_status: tuple[str, str | None] = ("processed", None)
        # (method, path prefix, status, body, headers), each served once before normal
        # answers; a None body drops the connection instead.
        self.errors: list[tuple[str, str, int, dict[str, Any] | bytes | None, dict[str, str]]] = []
        # (method, path prefix, body part, seconds): the request is served, its answer held
        # back this long.
        self.stalls: list[tuple[str, str, bytes, float]] = []
        self.resets: list[tuple[str, str]] = []  # (method, path prefix): served, answer lost
        # Chat completions being answered now, and the most there ever were at once.
        self.chats_now = 0
        self.most_chats = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        fake = self

        class Handler(_Handler):
            state = fake

        self.server = FakeServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- test helpers -------------------------------------------------------------------
    def fail(
        self,
        method: str,
        prefix: str,
        status: int,
        message: str = "boom",
        times: int = 1,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        """Answer the next `times` matching requests with an OpenAI-style error."""
        # A 1 ms Retry-After keeps the SDK's own retries fast in tests.
        err = error_body(message, param=param, code=code)
        self.reply(method, prefix, status, err, {"retry-after-ms": "1"}, times)

    def reply(
        self,
        method: str,
        prefix: str,
        status: int,
        body: dict[str, Any] | bytes,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` matching requests with this body (bytes: as they are)."""
        self.errors.extend([(method, prefix, status, body, headers or {})] * times)

    def drop(self, method: str, prefix: str, times: int = 1) -> None:
        """Drop the connection of the next `times` matching requests, answering nothing."""
        self.errors.extend([(method, prefix, 0, None, {})] * times)

    def reset(self, method: str, prefix: str, times: int = 1) -> None:
        """Serve the next `times` matching requests, then close the connection unanswered."""
        self.resets.extend([(method, prefix)] * times)

    def was_reset(self, rec: Recorded) -> bool:
        """Whether the answer to `rec` is to be lost (see `reset`)."""
        with self._lock:
            for i, (method, prefix) in enumerate(self.resets):
                if method == rec.method and rec.path.startswith(prefix):
                    del self.resets[i]
                    return True
        return False

    def stall(
        self, method: str, prefix: str, seconds: float, times: int = 1, body: bytes = b""
    ) -> None:
        """Serve the next `times` matching requests (with `body` in theirs), answering late."""
        self.stalls.extend([(method, prefix, body, seconds)] * times)

    def stalled(self, rec: Recorded) -> float:
        """How long to hold back the answer to `rec` (0: answer at once)."""
        with self._lock:
            for i, (method, prefix, body, seconds) in enumerate(self.stalls):
                if method == rec.method and rec.path.startswith(prefix) and body in rec.body:
                    del self.stalls[i]
                    return seconds
        return 0.0

    def calls(self, method: str | None = None, prefix: str = "") -> list[Recorded]:
        """Recorded requests, optionally filtered by method and path prefix."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and r.path.startswith(prefix)
        ]

    @property
    def chat_calls(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat completion requests received."""
        return [r.json() for r in self.calls("POST", CHAT_PATH)]

    def restart(self) -> None:
        """Forget every file and job and number from 1 again, as a server without storage."""
        with self._lock:
            for kept in (self.files, self.jobs, self.events, self.scripts):
                kept.clear()
            self._ids = itertools.count(1)

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
        if not script or job["status"] in FINISHED:
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
        if step.estimated_finish is not None:
            job["estimated_finish"] = step.estimated_finish
        if step.status in FINISHED:
            job["finished_at"] = int(time.time())

    # -- endpoint logic -----------------------------------------------------------------
    def answer(self, rec: Recorded) -> Answer | None:
        """Record a request and work out its response (None: drop the connection)."""
        with self._lock:
            self.requests.append(rec)
            if self.valid_key is not None and rec.auth != f"Bearer {self.valid_key}":
                given = (rec.auth or "").removeprefix("Bearer ") if self.echo_key else ""
                message = f"Incorrect API key provided: {given}".rstrip(": ")
                return 401, error_body(message, code="invalid_api_key"), {}
            for i, (method, prefix, status, err, headers) in enumerate(self.errors):
                if method == rec.method and rec.path.startswith(prefix):
                    del self.errors[i]
                    return None if err is None else (status, err, headers)
            if not (rec.method == "POST" and rec.path == CHAT_PATH):
                try:
                    status, payload = self._fine_tuning(rec)
                except KeyError:
                    status, payload = 404, error_body(f"No such object: {rec.path}")
                return status, payload, {}
            self.chats_now += 1
            self.most_chats = max(self.most_chats, self.chats_now)
        try:
            # Outside the lock, so a "slow" reply does not hold up other requests.
            return self._chat(rec)
        finally:
            with self._lock:
                self.chats_now -= 1

    def _chat(self, rec: Recorded) -> Answer | None:
        if self.behaviour == "drop":
            return None
        if self.behaviour == "slow":
            time.sleep(self.delay)
        if self.behaviour == "status":
            code = self.status_code
            return code, error_body(f"fake {code}", "server_error"), {}
        body = rec.json()
        if body.get("model") in self.reasoning_models:
            refused = _reasoning_refusal(body)
            if refused is not None:
                return 400, refused, {}
        if self.behaviour == "html":  # 200, but a web page, not a completion
            return 200, b"<html><body>Welcome to nginx!</body></html>", {}
        if self.behaviour == "bad_json":  # 200, JSON by its header, cut off
            return 200, b'{"id": "chatcmpl-1", "choices": [', {}
        if self.behaviour == "not_completion":  # 200 and JSON, of another shape
            return 200, {"status": "ok", "choices": "none"}, {}
        content = "" if self.behaviour == "empty" else self.responder(body)
        message = {"role": "assistant", "content": content, "refusal": self.refusal}
        choice = {"index": 0, "finish_reason": self.finish_reason, "message": message}
        completion = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "fake"),
            # "no_choices": a 200 with an empty list, as a proxy or a filtered answer may give
            "choices": [] if self.behaviour == "no_choices" else [choice],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }
        return 200, completion, {}

    def _fine_tuning(self, rec: Recorded) -> tuple[int, Any]:
        method, path = rec.method, rec.path
        if method == "POST" and path == "/v1/files":
            return 200, self._upload(rec)
        if method == "GET" and path == "/v1/files":
            return 200, self._list_files(rec.query)
        if method == "DELETE" and path.startswith("/v1/files/"):
            file_id = path.rsplit("/", 1)[1]
            del self.files[file_id]  # KeyError: 404, as for any unknown object
            return 200, {"id": file_id, "object": "file", "deleted": True}
        parts = path.strip("/").split("/")  # v1, fine_tuning, jobs, ...
        if parts[:3] != ["v1", "fine_tuning", "jobs"]:
            raise KeyError(path)
        rest = parts[3:]
        if method == "POST" and not rest:
            return self._create_job(rec.json())
        if method == "GET" and not rest:
            data = sorted(self.jobs.values(), key=lambda j: j["id"], reverse=True)
            return 200, _page(data, rec.query)
        job_id = rest[0]
        job = self.jobs[job_id]
        if method == "GET" and len(rest) == 1:
            self.advance(job_id)
            return 200, job
        if method == "GET" and rest[1:] == ["events"] and self.events_status is not None:
            return self.events_status, {"detail": "Not Found"}
        if method == "GET" and rest[1:] == ["events"]:
            events = self.events[job_id]
            after = rec.query.get("after", [None])[0]
            if after is not None:
                idx = next(i for i, e in enumerate(events) if e["id"] == after)
                events = events[idx + 1 :]
            return 200, _page(events, rec.query)
        if method == "POST" and rest[1:] == ["cancel"]:
            if job["status"] in FINISHED:
                return 400, error_body(f"Job {job_id} has already completed")
            job["status"] = "cancelled"
            job["finished_at"] = int(time.time())
            self.add_event(job_id, "Fine-tuning job cancelled")
            return 200, job
        raise KeyError(path)

    def _create_job(self, req: dict[str, Any]) -> tuple[int, Any]:
        for key in ("training_file", "validation_file"):
            if req.get(key) and req[key] not in self.files:
                return 400, error_body(f"invalid {key} {req[key]}", param=key)
        job_id = self.new_id("ftjob")
        self.jobs[job_id] = _job_object(job_id, req)
        self.events[job_id] = []
        self.scripts[job_id] = list(self.default_script)
        self.add_event(job_id, f"Created fine-tuning job: {job_id}")
        return 200, self.jobs[job_id]

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
        file_id = self.new_id("file")
        content = fields["file"]
        self.files[file_id] = {
            "filename": filename,
            "purpose": fields.get("purpose"),
            "content": content,
            "created_at": int(time.time()),
        }
        return self._file_object(file_id)

    def _file_object(self, file_id: str) -> dict[str, Any]:
        kept = self.files[file_id]
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(kept["content"]),
            "created_at": kept["created_at"],
            "filename": kept["filename"],
            "purpose": kept["purpose"],
            "status": self.upload_status[0],
            "status_details": self.upload_status[1],
        }

    def _list_files(self, query: dict[str, list[str]]) -> dict[str, Any]:
        purpose = query.get("purpose", [None])[0]
        ids = [i for i, f in self.files.items() if purpose in (None, f["purpose"])]
        return _page([self._file_object(i) for i in reversed(ids)], query)  # newest first


def _reasoning_refusal(body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's 400 for a parameter a reasoning model does not take (None: it takes them all)."""
    if "max_tokens" in body:
        return error_body(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    if body.get("temperature", 1) != 1:
        return error_body(
            f"Unsupported value: 'temperature' does not support {body['temperature']} with "
            "this model. Only the default (1) value is supported.",
            param="temperature",
            code="unsupported_value",
        )
    return None


def _page(data: list[dict[str, Any]], query: dict[str, list[str]]) -> dict[str, Any]:
    limit = int(query.get("limit", ["20"])[0])
    return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}


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


class _Handler(FakeApiHandler):
    state: FakeOpenAI

    def serve(self, method: str) -> None:
        body = self.request_body()
        url = urlparse(self.path)
        rec = Recorded(
            method,
            url.path,
            parse_qs(url.query),
            self.headers.get("Authorization"),
            dict(self.headers.items()),
            body,
        )
        answer = self.state.answer(rec)
        time.sleep(self.state.stalled(rec))  # the work is done; the client may have left
        if answer is None or self.state.was_reset(rec):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        status, payload, headers = answer
        # bytes: a raw body, as a misconfigured proxy or web server answers
        raw = isinstance(payload, bytes)
        data = payload if raw else json.dumps(payload).encode()
        page = raw and payload.startswith(b"<")
        self.respond(status, data, "text/html" if page else "application/json", headers)
