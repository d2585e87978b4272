"""`finetune status LOCAL_JOB --wait`: follows a local run another process trains, until it ends.

The run is stood in for at the edges it shows itself by: its job row, the training lock it
holds on its folder, and the progress file it rewrites; no model is trained here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from phischer.db import Database
from phischer.finetune import jobs, local_status
from phischer.finetune.local_jobs import PROGRESS_FILE, training_lock
from tests.conftest import jobs_in, record_local_job, run, stderr_to

JOB = "local-20261122-101500"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The adapter folder of the run."""
    return tmp_path / "out"


@pytest.fixture
def running(database: Database, out: Path) -> Iterator[Path]:
    """A run training into `out`: its job row running, its training lock held."""
    with training_lock(out):
        record_local_job(database, JOB, out.resolve())
        yield out


def end_job(database: Database, status: str, error: str | None = None) -> None:
    """Record the run's end as it does (JobRecorder.end, or the success at the end)."""
    with database.write() as session:
        job = jobs.get_job(session, JOB)
        jobs.apply_update(session, job, jobs.JobUpdate(status=status, error=error))


def write_progress(out: Path, step: int, total: int, loss: float) -> None:
    """The progress file as the run's callback writes it."""
    (out / PROGRESS_FILE).write_text(json.dumps({"step": step, "total_steps": total, "loss": loss}))


@contextmanager
def waiting() -> Iterator[subprocess.Popen[str]]:
    """`phischer finetune status JOB --wait` in a process of its own, still waiting after 2 s."""
    command = [sys.executable, "-m", "phischer", "finetune", "status", JOB, "--wait"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)  # two polls
        assert proc.poll() is None, proc.communicate()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_wait_returns_once_the_run_ends_not_while_it_trains(
    database: Database, running: Path
) -> None:
    with waiting() as proc:
        end_job(database, "succeeded")
        out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err) == (0, f"{JOB}: succeeded (local LoRA in {running})\n", "")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_ctrl_c_or_kill_stops_the_wait_and_leaves_the_job_running(
    database: Database, running: Path, sig: signal.Signals
) -> None:
    with waiting() as proc:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (130, "")
    assert err == (
        f"Stopped waiting: {JOB} keeps training in its `phischer finetune start` (Ctrl-C there "
        f"stops it). Wait again with: phischer finetune status {JOB} --wait\n"
    )
    assert jobs_in(database)[0].status == "running"


def test_wait_fails_with_the_runs_error(
    database: Database, running: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_status, "_sleep", lambda _: end_job(database, "failed", "OOM"))
    result = run("finetune", "status", JOB, "--wait")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{JOB}: failed (local LoRA in {running})",
        f"Error: {JOB} failed: OOM",
    ]


def test_wait_draws_the_runs_progress_on_a_terminal(
    database: Database, running: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = stderr_to(monkeypatch)
    # Each poll's sleep moves the run on: a step, another, then its end.
    script = [
        lambda: write_progress(running, 5, 10, 0.5),
        lambda: write_progress(running, 9, 10, 0.25),
        lambda: end_job(database, "succeeded"),
    ]
    (row,) = jobs_in(database)
    sleep = lambda _: script.pop(0)()  # noqa: E731
    ended = local_status.wait_local(database, row, echo=print, sleep=sleep)
    assert ended.status == "succeeded" and script == []
    frames = terminal.getvalue().split("\r")
    assert any(f.startswith("training:  50%|") and "| 5/10 [" in f for f in frames)
    assert frames[-1].startswith("training:  90%|") and "| 9/10 [" in frames[-1]
    assert "loss=0.250" in frames[-1]
    assert frames[-1].endswith("\n")  # closed: what is printed next starts on its own line


def test_a_run_killed_hard_is_said_not_waited_for(database: Database, out: Path) -> None:
    with training_lock(out):
        pass  # a run that held the lock, then died without recording its end (SIGKILL)
    record_local_job(database, JOB, out.resolve())
    dead = (
        f"{JOB} is stored as running, but no `phischer finetune start` trains into "
        f"{out.resolve()} any more (it was killed, or the machine restarted): rerun the same "
        "command to resume it from its last checkpoint"
    )
    waited = run("finetune", "status", JOB, "--wait")
    assert (waited.exit_code, waited.output) == (1, f"Error: {dead}\n")
    shown = run("finetune", "status", JOB)
    assert shown.exit_code == 0
    assert shown.output.splitlines() == [
        f"{JOB}: running (local LoRA in {out.resolve()})",
        f"  {dead}",
    ]
    assert jobs_in(database)[0].status == "running"  # only `finetune start` closes it


def test_a_run_training_now_is_not_called_dead(database: Database, running: Path) -> None:
    shown = run("finetune", "status", JOB)
    assert shown.output == f"{JOB}: running (local LoRA in {running})\n"
    assert os.path.exists(running / ".training.lock")
