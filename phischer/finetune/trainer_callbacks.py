"""The Trainer callbacks of a local run: its step counter and its progress bar."""

from __future__ import annotations

import sys
from typing import Any


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
