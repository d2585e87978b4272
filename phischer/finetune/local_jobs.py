"""A local run as a FineTuneJob row: recorded when training starts, closed when it ends early."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from phischer.db import Database
from phischer.finetune import jobs
from phischer.finetune.checkpoints import checkpoint_state, last_checkpoint
from phischer.finetune.common import FineTuneError, Interrupted
from phischer.finetune.local_request import LocalRequest
from phischer.finetune.serving import resolve_base
from phischer.instance_lock import LockHeld, exclusive, holder
from phischer.models import FineTuneJob, utcnow

# Held by the run training into a folder; the kernel drops it when the run dies, SIGKILL too.
LOCK_FILE = ".training.lock"
# Where that run keeps its step, for `finetune status --wait` in another terminal.
PROGRESS_FILE = ".progress.json"


def _new_job_id(session: Any) -> str:
    base = f"{jobs.LOCAL_PREFIX}{utcnow():%Y%m%d-%H%M%S}"
    job_id, n = base, 1
    while jobs.find_job(session, job_id) is not None:
        n += 1
        job_id = f"{base}-{n}"
    return job_id


def _finished_job(session: Any, output_dir: Path, persona_id: int, name: str) -> FineTuneJob | None:
    # The succeeded job that trained this folder for this persona and model name, if any.
    return session.scalars(
        sa.select(FineTuneJob)
        .where(
            FineTuneJob.provider == "local",
            FineTuneJob.status == "succeeded",
            FineTuneJob.output_dir == str(output_dir.resolve()),
            FineTuneJob.persona_id == persona_id,
            FineTuneJob.fine_tuned_model == name,
        )
        .order_by(FineTuneJob.id.desc())
    ).first()


def _record_local_job(
    session: Any, request: LocalRequest, output_dir: Path, persona_id: int, name: str
) -> FineTuneJob:
    job_id = _new_job_id(session)
    # A run killed hard (SIGKILL, power loss) never recorded its end: this run resumes it
    # from the same folder, so close its row instead of leaving it "running" for good.
    stale = session.scalars(
        sa.select(FineTuneJob).where(
            FineTuneJob.provider == "local",
            FineTuneJob.status == "running",
            FineTuneJob.output_dir == str(output_dir.resolve()),
        )
    )
    for old in stale:
        jobs.apply_update(
            session,
            old,
            jobs.JobUpdate(status="cancelled", error=f"interrupted; resumed by {job_id}"),
        )
    return jobs.record_job(
        session,
        job_id=job_id,
        provider="local",
        persona_id=persona_id,
        # A folder as an absolute path: `finetune list` may be run from anywhere.
        base_model=resolve_base(request.base_model)[0],
        status="running",
        training_file=str(request.train_path.resolve()),
        validation_file=(
            str(request.validation_path.resolve()) if request.validation_path else None
        ),
        suffix=name,
        hyperparameters={k: v for k, v in asdict(request.lora).items() if v is not None},
        output_dir=str(output_dir.resolve()),
    )


class JobRecorder:
    """Records a run's job when training starts: a model that fails to load records nothing."""

    def __init__(
        self, db: Database, request: LocalRequest, output_dir: Path, persona_id: int, name: str
    ) -> None:
        self.db, self.request, self.output_dir = db, request, output_dir
        self.persona_id, self.name = persona_id, name
        self.job_id: str | None = None
        self.kept = False  # a finished run's job, reused: it keeps its success

    def __call__(self, already_complete: bool) -> None:
        """train_lora's on_start: record a new running job, or find the finished run's."""
        with self.db.write() as session:
            # Rerunning a finished run trains nothing: it keeps that run's job, not a new one.
            previous = None
            if already_complete:
                previous = _finished_job(session, self.output_dir, self.persona_id, self.name)
            row = previous or _record_local_job(
                session, self.request, self.output_dir, self.persona_id, self.name
            )
            self.job_id, self.kept = row.job_id, previous is not None

    def end(self, status: str, error: str) -> None:
        """Store how a run that had started ended early (a reused job is left as it was)."""
        if self.job_id is None or self.kept:
            return
        with self.db.write() as session:
            job = jobs.get_job(session, self.job_id)
            jobs.apply_update(session, job, jobs.JobUpdate(status=status, error=error))


def _resume_hint(output_dir: Path) -> str:
    # What a rerun of the same command will do, from what is on disk now.
    last = last_checkpoint(output_dir / "checkpoints")
    if last is None:
        return "no checkpoint was saved yet: rerun the same command to start again"
    step = checkpoint_state(last).get("global_step") or "?"
    return f"rerun the same command to resume from {last.name} (step {step})"


def interrupted(recorder: JobRecorder, output_dir: Path) -> Interrupted:
    """Cancel the job of a run Ctrl-C stopped; the error says how to resume it."""
    if recorder.job_id is None or recorder.kept:
        return Interrupted("Interrupted before training started: nothing was trained.")
    hint = _resume_hint(output_dir)
    recorder.end("cancelled", f"interrupted: {hint}")
    return Interrupted(f"Interrupted: {recorder.job_id} is cancelled; {hint}.")


@contextmanager
def training_lock(output_dir: Path) -> Iterator[None]:
    """Be the only run training into output_dir while the block runs, else a one-line error.

    Two runs in one folder would share its checkpoints (each deleting the other's old ones)
    and write one adapter over the other; the second would also close the first's job as a
    killed run's.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise FineTuneError(f"cannot write to {output_dir} ({exc.strerror}): check it") from None
    try:
        with exclusive(fd, "finetune start"):
            yield
    except LockHeld as exc:
        raise FineTuneError(
            f"another {holder(exc.owner, '`phischer finetune start`')} is training into "
            f"{output_dir}: wait for it to end, or pass another --output-dir"
        ) from None


def training_runs(output_dir: Path) -> bool | None:
    """Whether a run holds output_dir's training lock now; None where locks cannot tell."""
    try:
        fd = os.open(output_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False  # no run ever trained here (or the folder was deleted)
    except OSError:
        return None
    try:
        # A shared lock for an instant, not the run's exclusive one: taken, no run holds it.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a file system without locks: no run is guarded, none can be seen
        return None
    finally:
        os.close(fd)  # releases the probe's lock
    return False
