"""Checkpoint-N folders: resume from the last, refuse another run's, hand back a finished one."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phischer.finetune.common import Echo, FineTuneError
from phischer.finetune.local_request import LoraSettings
from phischer.finetune.train_result import TrainResult, history_of
from phischer.printing import plural

CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")  # the folders the Trainer saves
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # the adapter's weights, what servers load
STAGING = ".saving"  # where save_adapter writes an adapter before moving it into place


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The highest-numbered complete checkpoint-N folder in checkpoints, to resume from."""
    if not checkpoints.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in checkpoints.iterdir()
        if (m := CHECKPOINT_RE.fullmatch(p.name)) and p.is_dir()
    ]
    # Highest first, skipping any a run stopped while it saved (killed, power lost): the
    # Trainer writes trainer_state.json last, and resuming from a folder without it fails.
    for _, path in sorted(found, reverse=True):
        if isinstance(checkpoint_state(path).get("global_step"), int):
            return path
    return None


def save_adapter(output_dir: Path, write: Callable[[Path], None]) -> None:
    """Put the files `write` saves into a folder in output_dir whole, the weights last.

    A server may read the folder (or a rerun find it finished) at any time: saving in
    place, a run stopped mid-write would leave a cut adapter_model.safetensors there that
    a rerun calls complete and serves. So `write` saves beside it, then each file is renamed
    into place, the weights last: weights there means the whole adapter is.
    """
    staging = output_dir / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while it saved
    staging.mkdir(parents=True)
    try:
        write(staging)
        saved = sorted(staging.iterdir(), key=lambda p: p.name == ADAPTER_WEIGHTS)
        for path in saved:
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in path, or {} when it is missing, unreadable or no object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def same_base_model(recorded: str, requested: str) -> bool:
    """Whether an adapter's recorded base model is the one asked for (a folder or a hub id)."""
    if recorded == requested:
        return True
    was, now = Path(recorded).expanduser(), Path(requested).expanduser()
    if was.is_dir() and now.is_dir():
        return was.resolve() == now.resolve()
    # A folder since moved, named relative to another directory, or the hub id it was
    # downloaded as: its name is all there is to compare.
    return was.name == now.name


def check_checkpoint_settings(output_dir: Path, lora: LoraSettings, base_model: str) -> None:
    """Refuse to resume or finish a checkpoint of another base model, rank, alpha or targets.

    Resuming would fail deep in load_state_dict (or, on a base of the same shape, go on
    training weights learnt on another model), and a finished run would be served with
    commands for a base or rank its adapter does not have: say so in one line before
    anything loads.
    """
    checkpoints = output_dir / "checkpoints"
    last = last_checkpoint(checkpoints)
    if last is None:
        return
    config = read_json(last / "adapter_config.json")
    differs = []
    recorded_base = config.get("base_model_name_or_path")
    if isinstance(recorded_base, str) and not same_base_model(recorded_base, base_model):
        differs.append(f"--base-model {recorded_base}")
    if config.get("r") not in (None, lora.rank):
        differs.append(f"--lora-rank {config['r']}")
    if config.get("lora_alpha") not in (None, lora.alpha):
        differs.append(f"--lora-alpha {config['lora_alpha']}")
    # peft records "all-linear" as the module names it found, so only a list given here
    # can be compared with the one it recorded.
    recorded = config.get("target_modules")
    targets = lora.target_modules
    if isinstance(targets, list) and isinstance(recorded, list) and set(recorded) != set(targets):
        differs.append(f"target modules {', '.join(sorted(recorded))}")
    if differs:
        raise FineTuneError(
            f"{checkpoints} was trained with {' '.join(differs)}: delete it or pass another "
            "--output-dir"
        )


def adapter_rank(adapter_dir: Path, default: int) -> int:
    """The LoRA rank r the saved adapter really has (its adapter_config.json), else default."""
    rank = read_json(adapter_dir / "adapter_config.json").get("r")
    return rank if isinstance(rank, int) and rank > 0 else default


def checkpoint_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json: its step, epoch and log history."""
    return read_json(checkpoint / "trainer_state.json")  # unreadable: {} (resume reports it)


def finished_checkpoint(output_dir: Path, lora: LoraSettings) -> tuple[Path, int] | None:
    """The last checkpoint and its step, if it already reached this run's plan; else None.

    The plan is --max-steps when given, else the epochs: a checkpoint's trainer_state.json
    holds its step and (fractional) epoch, so nothing heavy is loaded to tell.
    """
    last = last_checkpoint(output_dir / "checkpoints")
    if last is None:
        return None
    state = checkpoint_state(last)
    try:
        step, epoch = int(state.get("global_step") or 0), float(state.get("epoch") or 0)
    except (TypeError, ValueError):
        return None
    done = step >= lora.max_steps if lora.max_steps else epoch >= lora.epochs - 1e-6
    return (last, step) if done and step > 0 else None


def _plan(lora: LoraSettings) -> str:
    if lora.max_steps:
        return f"--max-steps {lora.max_steps}"
    return plural(lora.epochs, "epoch")


def finished_result(
    base_model: str, output_dir: Path, lora: LoraSettings, checkpoint: Path, step: int, echo: Echo
) -> TrainResult:
    """Say the run is already complete and hand back its last checkpoint's history."""
    # A rerun of a finished run: the Trainer would take one more step past the end, so say
    # where the adapter is and hand back the checkpoint's history instead of training.
    echo(
        f"Already complete: {checkpoint.name} reached step {step} ({_plan(lora)}); the "
        f"adapter is in {output_dir}. To train again, delete {output_dir / 'checkpoints'} "
        "or pass another --output-dir."
    )
    # The last checkpoint holds the final weights. The adapter in output_dir may be older: a
    # run stopped between its last checkpoint and its final save left the one before it.
    from transformers import AutoTokenizer

    def copy(folder: Path) -> None:
        for name in ("adapter_config.json", ADAPTER_WEIGHTS):
            shutil.copyfile(checkpoint / name, folder / name)
        AutoTokenizer.from_pretrained(base_model).save_pretrained(str(folder))

    save_adapter(output_dir, copy)
    history = checkpoint_state(checkpoint).get("log_history") or []
    return TrainResult(
        adapter_dir=output_dir,
        losses=[],
        global_step=step,
        steps_this_run=0,
        resumed_from=str(checkpoint),
        examples=0,
        dropped=0,
        tokens_seen=0,
        loss_history=history_of(history, "loss"),
        eval_history=history_of(history, "eval_loss"),
        already_complete=True,
    )
