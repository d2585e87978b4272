"""What both providers share: errors, OpenAI's shutdown dates, the dataset check, model names."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phischer.printing import plural

# OpenAI is winding fine-tuning down (FIELD-NOTES): no new jobs from this day on...
OPENAI_JOBS_END = dt.date(2027, 1, 6)
# ...and fine-tuned gpt-4o / gpt-4o-mini / gpt-4.1 / gpt-4.1-mini models stop answering on this one.
OPENAI_MODELS_END = dt.date(2027, 1, 14)
SUFFIX_MAX = 64  # the API documents "a string of up to 64 characters"
FINAL_STATES = ("succeeded", "failed", "cancelled")
LOSS_PNG = "loss.png"  # the loss curve a local run writes next to its adapter

Echo = Callable[[str], None]


def step_bar(bar: Any, step: int, total: int, loss: float | None = None) -> Any:
    """The training bar of a wait (made on the first step seen) moved to `step` of `total`."""
    # One bar for `status --wait` of either provider: on a terminal only, as the uploads'.
    if bar is None:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="training", unit="step", disable=None)
    bar.n = step
    if loss is not None:
        bar.set_postfix(loss=f"{loss:.3f}")
    bar.refresh()
    return bar


def one_line(text: str, limit: int = 400) -> str:
    """`text` with every run of whitespace (newlines too) made one space, cut at `limit`."""
    # Another program's words (OpenAI's job error, an event, a library's exception) may run
    # over several lines: an `Error:` line or a log line is one line.
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


class FineTuneError(ValueError):
    """A fine-tuning step cannot go on; the message says what is wrong and how to fix it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a fine-tuning command; str() says what became of the job and what next."""


def _today() -> dt.date:
    # One seam for tests: the notice changes on the deadline days.
    return dt.date.today()


def _retirement(today: dt.date) -> str:
    verb = "retires" if today < OPENAI_MODELS_END else "retired"
    return f"{verb} fine-tuned gpt-4o/gpt-4.1 models on {OPENAI_MODELS_END:%Y-%m-%d}"


def deadline_notice(today: dt.date | None = None) -> str:
    """The warning printed when a job is started; its wording follows today's date."""
    today = today or _today()
    if today < OPENAI_JOBS_END:
        return (
            f"Note: OpenAI stops accepting new fine-tuning jobs on {OPENAI_JOBS_END:%Y-%m-%d} and "
            f"{_retirement(today)}: train a LoRA you can keep serving with `--provider local`."
        )
    return (
        f"Note: OpenAI stopped new fine-tuning jobs on {OPENAI_JOBS_END:%Y-%m-%d} and "
        f"{_retirement(today)}: use `--provider local`."
    )


def refuse_after_jobs_end(today: dt.date | None = None) -> None:
    """Refuse `--provider openai` once OpenAI takes no new jobs: it would upload for nothing."""
    today = today or _today()
    if today >= OPENAI_JOBS_END:
        raise FineTuneError(
            f"OpenAI stopped accepting new fine-tuning jobs on {OPENAI_JOBS_END:%Y-%m-%d} and "
            f"{_retirement(today)}: train a LoRA you keep with --provider local --base-model "
            "MODEL; nothing was uploaded"
        )


def format_errors_message(path: Any, report: Any, outcome: str) -> str:
    """The one line that refuses a file `dataset check` found format errors in."""
    first = report.errors[0]  # errors keeps the first of each kind: this one is the first
    # A problem of the file as a whole (line 0: no examples at all) has no line to point at.
    where = f"first on line {first.line}" if first.line else first.message
    return (
        f"{path}: {plural(report.error_count, 'format error')} ({where}): fix them before "
        f"fine-tuning; {outcome}"
    )


def check_dataset(path: Path, echo: Echo, outcome: str, **options: Any) -> Any:
    """`dataset check` a file for fine-tuning; on format errors print them and refuse it."""
    from phischer.dataset_check import check_file

    # A bar on big files (tens of MB take seconds to count), quiet when stderr is no terminal.
    report = check_file(path, progress=True, **options)
    if report.errors:
        echo(report.format())
        raise FineTuneError(format_errors_message(path, report, outcome))
    return report


def sanitize_suffix(name: str, flag: str = "--suffix") -> str:
    """A model-name-safe suffix: ASCII letters, digits, '-' and '_', at most 64 characters.

    The suffix ends up inside ``ft:<base>:<org>:<suffix>:<id>``, so a colon or space would
    break the model id; accents are folded ("Zoë" -> "zoe") rather than dropped. `flag` is
    the option that names the model instead when nothing is left (--lora-name for a LoRA).
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", folded.lower()).strip("-_")
    cleaned = re.sub(r"-{2,}", "-", cleaned)[:SUFFIX_MAX].strip("-_")
    if not cleaned:
        raise FineTuneError(
            f"cannot make a model name from {name!r}: pass {flag} with letters or digits"
        )
    return cleaned
