"""The Trainer callbacks of a local run: its step counter, its progress bar and file."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from phischer.atomic import atomic_files

PROGRESS_EVERY_S = 1.0  # how often a run rewrites its progress file


def step_counter(base: type) -> Any:
    """A callback (a subclass of base, TrainerCallback) counting this run's steps."""

    # Defined here because TrainerCallback is only importable with the train extra.
    class StepCounter(base):  # type: ignore[misc, valid-type]
        """Counts the optimizer steps this run made (a resumed run starts mid-way)."""

        steps = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.steps += 1

    return StepCounter()


def progress_bar(base: type, *, show: bool) -> Any:
    """A callback (a subclass of base, TrainerCallback) drawing the training bar."""

    # One bar for the whole run with the latest training loss; it starts at a resumed step.
    class ProgressBar(base):  # type: ignore[misc, valid-type]
        """A tqdm bar over the optimizer steps, with the last logged loss as its postfix."""

        bar: Any = None
        out: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            from tqdm import tqdm

            self.out = sys.stderr
            self.bar = tqdm(
                file=self.out,
                total=state.max_steps,
                initial=state.global_step,
                desc="Training",
                unit="step",
                dynamic_ncols=True,
                # None: only on a terminal, as the OpenAI bars; a pipe or log file gets no
                # \r frames.
                disable=None if show else True,
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}")

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.close()

        def close(self) -> None:
            """End the bar's line (once), so what is printed next starts on its own."""
            if self.bar is not None:
                self.bar.close()
                self.bar = None
                self.out.flush()  # its last newline before the summary on stdout

    return ProgressBar()


def progress_file(base: type, path: Path) -> Any:
    """A callback (a subclass of base, TrainerCallback) keeping `path` at the run's step."""

    # What `finetune status --wait` in another terminal reads: the job row only says running.
    class ProgressFile(base):  # type: ignore[misc, valid-type]
        """Writes {"step", "total_steps", "loss"} to path: at the start, then at most every second."""

        written = 0.0  # monotonic time of the last write
        loss: float | None = None

        def write(self, state: Any) -> None:
            """Put the step (and the last logged loss) in the file, whole."""
            progress = {"step": state.global_step, "total_steps": state.max_steps}
            if self.loss is not None:
                progress["loss"] = self.loss
            try:
                with atomic_files(path) as (fh,):
                    json.dump(progress, fh)
            except OSError:  # only what a waiter shows: never a reason to stop training
                pass
            self.written = time.monotonic()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.write(state)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # A tiny model takes a step per millisecond: a file per step would be the work.
            if time.monotonic() - self.written >= PROGRESS_EVERY_S:
                self.write(state)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.write(state)

    return ProgressFile()
