"""`finetune status` of a local run: its stored state, and `--wait` following the run's files."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phischer.db import Database
from phischer.finetune import jobs
from phischer.finetune.checkpoints import read_json
from phischer.finetune.common import Echo, FineTuneError, step_bar
from phischer.finetune.local_jobs import PROGRESS_FILE, training_runs
from phischer.models import FineTuneJob

# The run writes its progress at most once a second (trainer_callbacks.PROGRESS_EVERY_S).
POLL_S = 1.0

_sleep = time.sleep  # tests replace this to poll without waiting


def status_lines(row: FineTuneJob) -> list[str]:
    """What `finetune status` prints about a local job, as stored."""
    lines = [f"{row.job_id}: {row.status} (local LoRA in {row.output_dir})"]
    if row.status == "cancelled" and row.error:
        lines.append(f"  {row.error}")  # interrupted: how to resume, as for OpenAI's
    return lines


def stopped_hard(row: FineTuneJob) -> str | None:
    """Why a job stored as running is not (its run died without recording it), else None."""
    if row.status != "running" or training_runs(Path(row.output_dir or ".")) is not False:
        return None
    # SIGKILL or a power loss ends a run before it can record its end: the lock it held
    # went with it, so the row is all that still says running.
    return (
        f"{row.job_id} is stored as running, but no `phischer finetune start` trains into "
        f"{row.output_dir} any more (it was killed, or the machine restarted): rerun the same "
        "command to resume it from its last checkpoint"
    )


def wait_local(
    db: Database, row: FineTuneJob, *, echo: Echo, sleep: Callable[[float], None] | None = None
) -> FineTuneJob:
    """Poll a local job until its run ends, with a bar from its progress file; the final row.

    A run that died without recording its end is an error, not waited for in vain.
    """
    sleep = sleep or _sleep
    progress_path = Path(row.output_dir or ".") / PROGRESS_FILE
    bar = None
    try:
        while True:
            # The lock first, then the row: a run records its end before it lets go of the
            # lock, so a free lock and a row still running can only be a dead run's.
            dead = stopped_hard(row)
            with db.read() as session:
                row = jobs.get_job(session, row.job_id)
            if row.status != "running":
                return row
            if dead is not None:
                raise FineTuneError(dead)
            bar = _move(bar, read_json(progress_path))
            sleep(POLL_S)
    finally:
        if bar is not None:
            bar.close()


def _move(bar: Any, progress: dict[str, Any]) -> Any:
    # A file another version (or a run cut off mid-write) left odd is shown as nothing.
    step, total, loss = (progress.get(k) for k in ("step", "total_steps", "loss"))
    if not (isinstance(step, int) and isinstance(total, int) and total > 0):
        return bar
    return step_bar(bar, step, total, float(loss) if isinstance(loss, int | float) else None)
