"""`phischer serve --dev`: Flask's debug server with the reloader, run as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from phischer.config import Settings
from phischer.simulator import send_text
from tests.conftest import free_port

# Generous: a loaded machine must not fail the test, and a hang still ends it.
DEADLINE_S = 60


def children(pid: int) -> list[int]:
    """The processes `pid` started that have not been reaped."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive_in_group(pgid: int) -> list[int]:
    """Processes of group `pgid` that still run (zombies are dead, only not yet reaped)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp …"; comm may hold spaces, so split after ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def wait_until(condition: Callable[[], object], what: str, log: Path) -> object:
    """Poll `condition` until it returns something truthy; fail with the server log if never."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what} within {DEADLINE_S} s; server log:\n{log.read_text()}")


def healthy(url: str) -> bool:
    """Whether GET /healthz answers 200 now."""
    try:
        return requests.get(f"{url}/healthz", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def test_serve_dev_runs_the_app_under_the_reloader(
    settings: Settings, personas: dict[str, Path], tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The stat reloader watches the .py files under sys.path, whose first entry is the
    # working folder for `python -m`: touching this file must restart the app.
    watched = tmp_path / "watched.py"
    watched.write_text("")
    log = tmp_path / "serve.log"
    env = dict(os.environ, DATABASE_URL=settings.database_url, PYTHONUNBUFFERED="1")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "phischer", "serve", "--dev", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,  # its own process group, reloader child included
        )
    try:
        wait_until(lambda: healthy(url), "GET /healthz did not answer 200", log)
        # No interactive debugger: its console runs Python for whoever has the PIN.
        assert requests.get(f"{url}/console", timeout=10).status_code == 404
        # A text sent by GET (an SMS URL set to HTTP GET): its request line keeps no query.
        query = "From=%2B44+7911+123456&Body=my+pin+is+4242"
        assert requests.get(f"{url}/sms?{query}", timeout=10).status_code == 405
        # The reloader is the process we started; the app is served by the child it runs.
        (first,) = wait_until(lambda: children(proc.pid), "no reloader child", log)
        assert proc.poll() is None

        # The token is shared through the instance folder, as with `phischer text`.
        result = send_text(settings, "hey how are you", url=f"{url}/sms", timeout_s=10)
        assert result.status == 200
        assert result.replies == ["Splendid, thank you! Knitting a scarf for the cat."]

        os.utime(watched, (time.time() + 5, time.time() + 5))
        # The reloader replaces its child: one new process serves the reloaded app.
        (_reloaded,) = wait_until(
            lambda: [c for c in children(proc.pid) if c != first], "no reload", log
        )
        wait_until(lambda: healthy(url), "GET /healthz after the reload", log)
        again = send_text(settings, "#who", url=f"{url}/sms", timeout_s=10)
        assert again.replies == ["You're texting Ada (#ada)."]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wait_until(lambda: not alive_in_group(proc.pid), "processes survived SIGTERM", log)
    assert not alive_in_group(proc.pid)

    output = log.read_text()
    assert " * Debug mode: on" in output
    assert " * Restarting with stat" in output
    assert "Debugger" not in output  # neither "is active!" nor its PIN
    assert f" * Detected change in '{watched}', reloading" in output
    assert f"phischer is answering texts at {url}/sms" in output
    assert "GET /sms?… HTTP/1.1" in output
    assert "7911" not in output and "pin" not in output
    assert "Traceback" not in output
