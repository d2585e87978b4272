"""Shared fixtures: a temp instance folder and migrated SQLite database per test."""

from __future__ import annotations

import io
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner, Result
from flask import Flask
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from phischer import create_app
from phischer.cli import cli
from phischer.config import Settings
from phischer.db import Database
from phischer.finetune import jobs
from phischer.migrate import upgrade
from phischer.models import FineTuneJob, Persona
from phischer.personas import PersonaSpec, add_persona, edit_persona
from tests.fake_http import FakeApiHandler, FakeServer
from tests.fake_openai import FakeOpenAI
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _environ_restored() -> Iterator[None]:
    """Leave os.environ as the test found it, whatever wrote to it (load_dotenv does).

    Set up before monkeypatch (first autouse fixture, no dependencies), so torn down after
    it: monkeypatch.delenv of a variable .env had set records that value, and its undo put
    LOG_LEVEL=WARNING back for every later test (and the servers they start).
    """
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep every test away from the developer's .env, instance folder and real services."""
    for var in (
        "DATABASE_URL",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_PHONE_NUMBER",
        "TWILIO_VALIDATE_SIGNATURE",
        "PUBLIC_URL",
        "TRUST_PROXY",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ALLOWED_NUMBERS",
        "DEFAULT_PERSONA",
        "REPLY_MODE",
        "REPLY_TIMEOUT_S",
        "HISTORY_TURNS",
        "SESSION_GAP_HOURS",
        "MAX_REPLY_CHARS",
        "DAILY_LIMIT",
        "NGROK_AUTHTOKEN",
        "FALLBACK_REPLY",
        "MODEL_RETRIES",
        "LOG_LEVEL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    # Belt and braces: an accidental real call fails fast instead of reaching the internet.
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a temp instance folder and SQLite file."""
    return Settings.from_env(instance_path=tmp_path / "instance")


@pytest.fixture
def database(settings: Settings) -> Database:
    """A migrated temp database."""
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    yield db
    db.dispose()


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, as tqdm checks before drawing a bar."""

    def isatty(self) -> bool:
        return True


def stderr_to(monkeypatch: pytest.MonkeyPatch, terminal: bool = True) -> io.StringIO:
    """Send sys.stderr to a buffer (a terminal, or not) that keeps what was drawn.

    Call it in the test itself: pytest's capture puts its own stderr back between a
    fixture's setup and the test's call.
    """
    buffer = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    return buffer


def run(*args: str, input: str | None = None) -> Result:
    """Invoke the CLI (exceptions propagate: a traceback is a failure, not an exit code)."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


# -- fine-tuning jobs and the personas they switch ------------------------------------------


def jobs_in(database: Database) -> list[FineTuneJob]:
    """Every stored fine-tuning job."""
    with database.read() as session:
        return list(session.scalars(sa.select(FineTuneJob)))


def persona_row(database: Database, keyword: str = "ada") -> Persona:
    """A fresh copy of the persona row with this keyword."""
    with database.read() as session:
        return session.scalar(sa.select(Persona).where(Persona.keyword == keyword))


def set_model(session: Session, name: str, model: str, *, base_url: str | None = None) -> Persona:
    """Serve persona `name` from `model` (at `base_url`), as a finished fine-tune does."""
    changes = {"backend": "openai", "model": model}
    if base_url is not None:
        changes["base_url"] = base_url
    return edit_persona(session, name, changes)[0]


def record_local_job(
    database: Database,
    job_id: str,
    output_dir: Path,
    status: str = "running",
    base_model: str = "/models/tiny",
    **extra: Any,
) -> None:
    """Record a local LoRA job as `finetune start --provider local` does."""
    with database.write() as session:
        jobs.record_job(
            session,
            job_id=job_id,
            provider="local",
            base_model=base_model,
            status=status,
            output_dir=str(output_dir),
            **extra,
        )


# -- the SMS service ----------------------------------------------------------------------


_sids = itertools.count(1)

# A tiny persona dataset in the chat JSONL shape `phischer import` writes.
ADA_PAIRS = [
    ("hey how are you", "Splendid, thank you! Knitting a scarf for the cat."),
    ("what do you do for work", "I compute Bernoulli numbers, mostly by candlelight."),
    ("good night", "Sleep well, dear. Dream of engines."),
    ("tell me a joke", "Why did the loom blush? It saw the punch cards."),
    ("any plans for the weekend", "A long walk and a longer equation."),
]
BO_PAIRS = [
    ("hey how are you", "yo. tired. u?"),
    ("what do you do for work", "bike courier. legs of steel"),
]


def write_dataset(path: Path, pairs: list[tuple[str, str]], system: str = "You are Ada.") -> Path:
    """Write pairs as chat fine-tuning examples."""
    with path.open("w", encoding="utf-8") as fh:
        for user, assistant in pairs:
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def phischer_at_once(n: int, *args: str, cwd: Path, **env: str) -> list[tuple[int, str]]:
    """Start `n` `phischer ARGS` processes together; each one's (exit code, output)."""
    environ = {**os.environ, **env}
    command = [sys.executable, "-m", "phischer", *args]
    runs = [subprocess.Popen(command, env=environ, cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(n)]  # fmt: skip
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    return [(run.returncode, out) for run, out in zip(runs, outputs, strict=True)]


@contextmanager
def held_dataset(path: Path, content: bytes) -> Iterator[Callable[[], None]]:
    """`path` as a named pipe: an index build reading it waits until `release()` writes `content`.

    A build slower than REPLY_TIMEOUT_S (millions of exchanges, a slow disk), made by the
    file itself. Released on exit too: a failing test must not leave a build waiting.
    """
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            path.write_bytes(content)  # blocks until the build opens it: it is waiting

    try:
        yield release
    finally:
        release()


def zip_folder(folder: Path, target: Path) -> Path:
    """Zip every file under `folder` at its path relative to it, in name order."""
    with zipfile.ZipFile(target, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return target


def free_port() -> int:
    """A loopback port nothing listens on (a server may bind it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(
    cwd: Path,
    env: dict[str, str] | None = None,
    output: list[str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[str]:
    """`phischer serve [ARGS]` (gunicorn) on a free port, healthy; yields its base URL, then stops it.

    The server's output is read as it comes (a full pipe would block its log calls) and
    appended, line by line, to `output` when given.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "phischer", "serve", "--port", str(port), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        text=True,
    )
    lines = output if output is not None else []

    def drain() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(base + "/healthz", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    else:
        proc.kill()
        reader.join(timeout=5)
        pytest.fail("gunicorn did not start: " + "".join(lines)[-2000:])
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=5)


def sign(token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature as Twilio computes it."""
    return RequestValidator(token).compute_signature(url, params)


def post_signed(
    url: str,
    token: str,
    params: dict[str, str],
    *,
    signed_for: str | None = None,
    client: Any = requests,
) -> requests.Response:
    """POST a text's form over HTTP to `url`, signed as Twilio signs it (for `signed_for`, by
    default `url` itself)."""
    signature = sign(token, signed_for or url, params)
    return client.post(url, data=params, headers={"X-Twilio-Signature": signature}, timeout=30)


def sms_params(body: str, from_: str = "+15550100", sid: str | None = None, **extra: str) -> dict:
    """The form fields Twilio posts for an incoming SMS (an `extra` field None: left out)."""
    params = {
        "MessageSid": sid or f"SM{next(_sids):032x}",
        "AccountSid": "AC" + "0" * 32,
        "From": from_,
        "To": "+15550199",
        "Body": body,
        "NumMedia": "0",
    }
    params.update(extra)
    return {name: value for name, value in params.items() if value is not None}


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running loopback fake of the OpenAI API (chat, files, fine-tuning); echoes chats."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_twilio() -> FakeTwilio:
    """A running loopback fake of the Twilio REST API."""
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def twilio_rest(fake_twilio: FakeTwilio) -> dict[str, Any]:
    """Settings overrides that send Twilio REST calls (as +15550199) to the fake."""
    return {
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_phone_number": "+15550199",
        "twilio_api_base_url": fake_twilio.url,
    }


@pytest.fixture
def make_app(settings: Settings, tmp_path: Path) -> Callable[..., Flask]:
    """Build a migrated app; keyword arguments override settings."""
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        upgrade(settings.database_url)
        app = create_app(settings.with_overrides(**overrides))
        apps.append(app)
        return app

    yield factory
    for app in apps:
        services = app.extensions["phischer"]
        services.sms.shutdown()
        services.db.dispose()


@pytest.fixture
def personas(database: Database, tmp_path: Path) -> dict[str, Path]:
    """Two retrieval personas: Ada (#ada, default) and Bo (#bo)."""
    ada = write_dataset(tmp_path / "ada.jsonl", ADA_PAIRS)
    bo = write_dataset(tmp_path / "bo.jsonl", BO_PAIRS, system="You are Bo.")
    with database.write() as session:
        add_persona(
            session,
            PersonaSpec(
                name="Ada",
                keyword="ada",
                dataset=str(ada),
                system_prompt="You are Ada.",
                greeting="Ada here!",
                is_default=True,
            ),
        )
        add_persona(
            session,
            PersonaSpec(name="Bo", keyword="bo", dataset=str(bo), system_prompt="You are Bo."),
        )
    return {"ada": ada, "bo": bo}


@pytest.fixture
def app(make_app: Callable[..., Flask], personas: dict[str, Path]) -> Flask:
    """The app with the two sample personas and default settings."""
    return make_app()


@pytest.fixture
def twilio_post(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """POST a signed /sms like Twilio does; returns the response (with .replies parsed).

    Posts to `target` when given, else to the `app` fixture (built on first use).
    """

    def post(
        body: str = "hi",
        from_: str = "+15550100",
        *,
        sid: str | None = None,
        url: str = "http://localhost/sms",
        signature: str | None = None,
        headers: dict[str, str] | None = None,
        target: Flask | None = None,
        **extra: str,
    ) -> Any:
        app = target or request.getfixturevalue("app")
        token = app.extensions["phischer"].settings.auth_token()
        params = sms_params(body, from_, sid, **extra)
        hdrs = {"X-Twilio-Signature": signature or sign(token, url, params)}
        hdrs.update(headers or {})
        c = app.test_client()
        response = c.post("/sms", data=params, headers=hdrs)
        response.replies = twiml_bodies(response.data)
        return response

    return post


def twiml_bodies(data: bytes) -> list[str]:
    """The <Message> bodies of a TwiML document."""
    if not data:
        return []
    root = ElementTree.fromstring(data)
    assert root.tag == "Response"
    return [m.text or "" for m in root.iter("Message")]


def peak_memory(fn: Callable[[], object]) -> int:
    """The most memory Python allocated at once while `fn` ran, in bytes (tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class _RecordingProxy(FakeApiHandler):
    """A forward proxy that forwards nothing: it records each request and answers 502."""

    seen: list[tuple[str, str]]

    def serve(self, method: str) -> None:
        self.seen.append((method, self.path))
        self.respond(502, b"")

    def do_CONNECT(self) -> None:  # noqa: N802 (http.server's naming)
        self.serve("CONNECT")


@pytest.fixture
def proxy_env(monkeypatch) -> Iterator[list[tuple[str, str]]]:
    """HTTP_PROXY, HTTPS_PROXY and ALL_PROXY on a loopback recording proxy, no NO_PROXY."""
    seen: list[tuple[str, str]] = []
    handler = type("Proxy", (_RecordingProxy,), {"seen": seen})
    server = FakeServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        # The lower-case names win where both are set: none may be left from the caller.
        monkeypatch.delenv(var.lower(), raising=False)
        monkeypatch.delenv(var, raising=False)
        if var != "NO_PROXY":
            monkeypatch.setenv(var, url)
    yield seen
    server.shutdown()
    server.server_close()
