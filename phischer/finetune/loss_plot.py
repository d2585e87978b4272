"""The loss curve of a local run: drawn to loss.png after training, copied by `status --plot`."""

from __future__ import annotations

import shutil
from pathlib import Path

from phischer.finetune.common import LOSS_PNG
from phischer.finetune.train_result import TrainResult
from phischer.models import FineTuneJob


def write_loss_plot(result: TrainResult, path: Path, title: str) -> str:
    """Draw the run's loss curve to path; returns the summary line (it never fails the job)."""
    from phischer import plots

    train, valid = dict(result.loss_history), dict(result.eval_history)
    steps = sorted(train.keys() | valid.keys())
    try:
        plots.loss_curve(
            steps,
            [train.get(s) for s in steps],
            [valid.get(s) for s in steps] if valid else None,
            path,
            title,
        )
    except plots.PlotError as exc:
        # The adapter is trained and saved by now: a missing plot is not worth failing for.
        return f"No loss curve ({exc})."
    return f"Loss curve: {path}"


def copy_loss_plot(job: FineTuneJob, target: Path) -> str:
    """`finetune status LOCAL_JOB --plot`: copy the run's loss.png; returns the line to print."""
    source = Path(job.output_dir or ".") / LOSS_PNG
    if not source.is_file():
        return f"No loss curve: {job.job_id} wrote no {source} (nothing written to {target})."
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return f"Loss curve: {target}"
