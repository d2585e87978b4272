"""What a local training run did, read from the Trainer's log history."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainResult:
    """What a training run did."""

    adapter_dir: Path
    losses: list[float]  # training loss per logged step of this run
    global_step: int
    steps_this_run: int
    resumed_from: str | None
    examples: int
    dropped: int
    tokens_seen: int
    eval_loss: float | None = None
    truncated: int = 0  # examples cut to --max-seq-length (their start lost)
    # (step, loss) from the trainer's log history, earlier runs of a resumed job included.
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    already_complete: bool = False  # the checkpoint had reached the plan: nothing was trained


def history_of(log_history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) for every entry of a Trainer log history that has key."""
    # (step, value) of a Trainer log history. The run's closing summary has "train_loss",
    # not "loss", so it is not a step.
    return [(int(e["step"]), float(e[key])) for e in log_history if key in e]
