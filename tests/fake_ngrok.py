"""A fake ngrok agent binary: what pyngrok starts, reads the log of, calls and kills.

`install(directory)` writes an executable `ngrok` there (a `#!python` shim running `main()`
below), so `shutil.which("ngrok")` finds it once the directory is first on PATH. Like the real
agent under `ngrok start --none --log stdout`, it serves the local agent API on 127.0.0.1 and
prints the startup lines pyngrok waits for; sent LOSE_SESSION, it logs a lost session that
ngrok refuses back, as the real agent does once another one took the account's. It records
what a local user could see of it (its argv, its environment, the --config file with its
mode) and the API calls it got into a JSON file next to itself. Only the standard library:
the agent should start in a few milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from tests.fake_http import FakeServer

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_HOST = "fake-agent.ngrok-free.app"
# Sent to a running agent, it loses its session to another agent (ERR_NGROK_108) and stays up.
LOSE_SESSION = signal.SIGUSR1
# The agent exits by itself when pytest is gone or after this long, whatever happens.
MAX_LIFETIME_S = 60
FAILURES = ("auth", "sessions", "account", "outdated", "refuse")
# The real agent's own errors end with the code after CRLFs (escaped in its logfmt lines).
ACCOUNT_ERROR = (
    "authentication failed: Usage of ngrok requires a verified account and authtoken."
    "\r\n\r\nERR_NGROK_4018\r\n"
)
OUTDATED_ERROR = (
    'authentication failed: Your ngrok agent version "2.3.41" is no longer supported. Only the '
    "most recent version of the ngrok agent is supported without an account. Update to a newer "
    "version with ngrok update or by downloading from https://ngrok.com/download.\r\n\r\n"
    "ERR_NGROK_120\r\n"
)
# What its API answers when the endpoint (a free account's one static domain) is online
# through another agent.
ONLINE_ELSEWHERE_ERROR = (
    f"failed to start tunnel: The endpoint 'https://{PUBLIC_HOST}' is already online. Either\n"
    "1. stop your existing endpoint first, or\n2. start both endpoints with "
    "`--pooling-enabled` to load balance between them.\r\n\r\nERR_NGROK_334\r\n"
)
# Like the real agent, a SIGINT/SIGTERM (a terminal's Ctrl-C reaches the whole process group)
# stops the web API at once and the process this much later.
STOP_LINGER_S = 1.0
# The real agent's error when the account's one free agent session is taken (ngrok 3).
SESSIONS_ERROR = (
    "authentication failed: Your account is limited to 1 simultaneous ngrok agent sessions.\n"
    "Run multiple endpoints at the same time from a single agent by defining them in your "
    "agent configuration file and running `ngrok start --all`.\n"
    "Read more about the agent configuration file: https://ngrok.com/docs/agent/config/\n"
    "You can view your current agent sessions in the dashboard: "
    "https://dashboard.ngrok.com/agents\n\nERR_NGROK_108\n"
    "https://ngrok.com/docs/errors/err_ngrok_108\n"
)


@dataclass(frozen=True)
class FakeAgent:
    """An installed fake agent: its executable and the record of its last run."""

    path: Path
    record_path: Path

    def record(self) -> dict[str, Any]:
        """What the agent saw and was asked: argv, env, config file, API requests, pid, port."""
        return json.loads(self.record_path.read_text())


def install(directory: Path, scheme: str = "https", fail: str | None = None) -> FakeAgent:
    """Write an executable fake `ngrok` into DIRECTORY.

    SCHEME is that of the public URL it hands out; FAIL makes it fail like the real agent:
    "auth" (the token is refused at startup, and quoted back), "sessions" (the account's
    agent session is taken by another agent), "account" (no token), "outdated" (an agent too
    old for ngrok's service) or "refuse" (the API refuses to open the tunnel: its endpoint
    is online elsewhere).
    """
    assert fail in (None, *FAILURES), fail
    path = directory / "ngrok"
    record_path = directory / "ngrok-record.json"
    settings = {"record": str(record_path), "scheme": scheme, "fail": fail}
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.fake_ngrok import main\n"
        f"sys.exit(main(sys.argv[1:], {settings!r}))\n"
    )
    path.chmod(0o755)
    return FakeAgent(path=path, record_path=record_path)


# -- the agent process ------------------------------------------------------------------------


def _log(lvl: str, msg: str, **fields: str) -> None:
    """One logfmt line as `ngrok --log stdout` prints them (pyngrok splits them with shlex)."""
    parts = [f"t={time.strftime('%Y-%m-%dT%H:%M:%S%z')}", f"lvl={lvl}", f"msg={json.dumps(msg)}"]
    parts += [f"{key}={json.dumps(value)}" for key, value in fields.items()]
    print(" ".join(parts), flush=True)


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def _config_token(text: str) -> str | None:
    match = re.search(r"^authtoken: (.+)$", text, re.MULTILINE)
    if match is None:
        return None
    value = match.group(1).strip()
    return json.loads(value) if value.startswith('"') else value


class _Agent:
    def __init__(self, argv: list[str], settings: dict[str, Any]) -> None:
        self.scheme: str = settings["scheme"]
        self.fail: str | None = settings["fail"]
        self.record_path = Path(settings["record"])
        self.lock = threading.Lock()
        self.tunnels: dict[str, str] = {}  # name -> upstream
        self.record: dict[str, Any] = {
            "argv": argv,
            "pid": os.getpid(),
            "env_token": "NGROK_AUTHTOKEN" in os.environ,
            "config": None,
            "port": None,
            "requests": [],
        }
        config_path = _flag(argv, "--config")
        self.token = os.environ.get("NGROK_AUTHTOKEN")
        if config_path is not None:
            path = Path(config_path)
            text = path.read_text()
            self.record["config"] = {
                "path": config_path,
                "text": text,
                "mode": path.stat().st_mode & 0o777,
                "dir_mode": path.parent.stat().st_mode & 0o777,
            }
            self.token = _config_token(text) or self.token
        self.token = _flag(argv, "--authtoken") or self.token

    def save(self) -> None:
        with self.lock:
            temporary = self.record_path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.record))
            os.replace(temporary, self.record_path)

    def view(self, kind: str, name: str) -> dict[str, Any]:
        public_url = f"{self.scheme}://{PUBLIC_HOST}"
        upstream = self.tunnels[name]
        if kind == "endpoints":  # the v3 Endpoints shape (pyngrok's config_version "3")
            return {
                "id": "ep_fake0001",
                "name": name,
                "url": public_url,
                "upstream": {"url": upstream},
            }
        return {
            "name": name,
            "uri": f"/api/tunnels/{quote(name, safe='')}",
            "public_url": public_url,
            "proto": self.scheme,
            "config": {"addr": upstream, "inspect": True},
            "metrics": {},
        }


def _handler(agent: _Agent) -> type[BaseHTTPRequestHandler]:
    class Api(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # the real agent logs requests in its own format; pytest needs none of it

        def _reply(self, status: int, body: dict[str, Any] | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _kind(self) -> tuple[str | None, str]:
            for kind in ("tunnels", "endpoints"):
                prefix = f"/api/{kind}"
                if self.path == prefix:
                    return kind, ""
                if self.path.startswith(prefix + "/"):
                    return kind, unquote(self.path[len(prefix) + 1 :])
            return None, ""

        def _note(self, body: Any = None) -> None:
            agent.record["requests"].append(
                {"method": self.command, "path": self.path, "body": body}
            )
            agent.save()

        def do_GET(self) -> None:
            kind, name = self._kind()
            if kind is None or name:
                self._reply(404, {"error_code": 100, "status_code": 404, "msg": "not found"})
                return
            self._reply(200, {kind: [agent.view(kind, n) for n in agent.tunnels], "uri": self.path})

        def do_POST(self) -> None:
            kind, name = self._kind()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self._note(body)
            if kind is None or name:
                self._reply(404, {"error_code": 100, "status_code": 404, "msg": "not found"})
                return
            if agent.fail == "refuse":
                self._reply(
                    502,
                    {
                        "error_code": 103,
                        "status_code": 502,
                        "msg": "failed to start tunnel",
                        "details": {"err": ONLINE_ELSEWHERE_ERROR},
                    },
                )
                return
            upstream = (body.get("upstream") or {}).get("url") or body.get("addr")
            agent.tunnels[body["name"]] = upstream
            self._reply(201, agent.view(kind, body["name"]))

        def do_DELETE(self) -> None:
            kind, name = self._kind()
            self._note()
            if kind is None or name not in agent.tunnels:
                self._reply(404, {"error_code": 100, "status_code": 404, "msg": "not found"})
                return
            del agent.tunnels[name]
            self._reply(204)

    return Api


def _lose_session() -> None:
    """Log what the real agent logs when its session drops and ngrok will not take it back.

    The process lives on (the real agent retries every few seconds, forever); what ended the
    session is the account's one agent session, taken meanwhile by an agent elsewhere.
    """
    _log("eror", "session closed, starting reconnect loop", obj="tunnels.session", err="EOF")
    _log("eror", "failed to reconnect session", obj="tunnels.session", err=SESSIONS_ERROR)


def _watch_parent(parent: int) -> None:
    """Exit when whoever started us (pytest) is gone, or after MAX_LIFETIME_S: never linger."""
    deadline = time.monotonic() + MAX_LIFETIME_S
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.2)
    os._exit(3)


def main(argv: list[str], settings: dict[str, Any]) -> int:
    """Run the fake agent for `ngrok start --none --log stdout [--config PATH] …`."""
    if argv[:2] != ["start", "--none"]:
        print(f"fake ngrok: unexpected command line {argv}", file=sys.stderr)
        return 2
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    stop_requests: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: stop_requests.append(signum))
    losses: list[int] = []
    signal.signal(LOSE_SESSION, lambda signum, frame: losses.append(signum))
    agent = _Agent(argv, settings)
    server = FakeServer(("127.0.0.1", 0), _handler(agent))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    addr = f"127.0.0.1:{server.server_address[1]}"
    agent.record["port"] = server.server_address[1]
    agent.save()

    if agent.record["config"] is not None:
        _log("info", "open config file", path=agent.record["config"]["path"], err="nil")
    _log("info", "starting web service", obj="web", addr=addr, allow_hosts="[]")
    if agent.fail == "auth":
        _log(
            "eror",
            "failed to reconnect session",
            obj="tunnels.session",
            err="authentication failed: The authtoken you specified does not look like a "
            f"proper ngrok tunnel authtoken. Your authtoken: {agent.token} ERR_NGROK_105",
        )
        return 1
    startup_errors = {
        "sessions": SESSIONS_ERROR,
        "account": ACCOUNT_ERROR,
        "outdated": OUTDATED_ERROR,
    }
    if agent.fail in startup_errors:
        error = startup_errors[agent.fail]
        _log("eror", "failed to reconnect session", obj="tunnels.session", err=error)
        return 1
    _log("info", "tunnel session started", obj="tunnels.session")
    _log("info", "client session established", obj="csess", id="fake0001")
    while not stop_requests:  # until pyngrok kills us (or the watchdog does), or a signal
        if losses:
            losses.clear()
            _lose_session()
        time.sleep(0.02)
    server.shutdown()
    server.server_close()
    _log("info", "received stop request", obj="app", stopReq="{}")
    time.sleep(STOP_LINGER_S)
    return 0
