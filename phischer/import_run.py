"""One import, start to finish: a chat export -> chat fine-tuning JSONL, and its summary."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from phischer.dataset import (
    MAX_EXAMPLE_TOKENS,
    BuildStats,
    build_examples,
    system_prompt,
    write_jsonl,
)
from phischer.dataset_split import sidecar_path
from phischer.import_tokens import TokenCounter
from phischer.importers import load
from phischer.importers.base import Conversation
from phischer.importers.progress import PROGRESS_DELAY_S
from phischer.importers.senders import one_name_per_sender
from phischer.printing import plural
from phischer.stopping import stop_if_requested


@dataclass
class ImportResult:
    """What an import did: builder stats, examples written, tokens (maybe estimated)."""

    out: Path
    stats: BuildStats
    examples: int
    tokens: int
    tokens_estimated: bool
    system: str

    def format(self) -> str:
        """The summary `phischer import` prints."""
        s = self.stats
        lines = [
            f"Threads: {s.threads:,}  ({plural(s.sessions, 'conversation')} after splitting on "
            "silences)",
        ]
        if s.skipped:
            # Left out whole (bot chats, threads with no text): not among the threads above.
            lines.append(_counted("Threads skipped", s.skipped))
        lines += [
            f"Messages kept: {s.messages:,}  (yours: {s.me_messages:,})",
            _counted("Dropped", s.dropped),
        ]
        if s.repaired:
            lines.append(
                f"Repaired: {plural(s.repaired, 'example')} had half an emoji (a lone surrogate "
                "in the export), written as U+FFFD"
            )
        if s.duplicates:
            lines.append(
                f"Duplicates: {plural(s.duplicates, 'example')} left out, already written from "
                "another copy of the same chat in the export"
            )
        if s.shortened:
            lines.append(
                f"Shortened: {plural(s.shortened, 'example')} over OpenAI's "
                f"{MAX_EXAMPLE_TOKENS:,}-token limit, written without their oldest messages"
            )
        if s.too_long:
            lines.append(
                f"Too long: {plural(s.too_long, 'example')} left out, over OpenAI's "
                f"{MAX_EXAMPLE_TOKENS:,}-token limit with only the last message and reply"
            )
        if s.openers:
            lines.append(
                f"Not used: {s.openers:,} of your messages that opened a conversation (no message "
                "before them to reply to)"
            )
        approx = "~" if self.tokens_estimated else ""
        lines += [
            f"Examples: {self.examples:,}  ({approx}{self.tokens:,} tokens, o200k_base"
            + (", estimated from a sample" if self.tokens_estimated else "")
            + ")",
            f"Wrote {self.out} and {sidecar_path(self.out)}",
            f"System prompt: {self.system}",
            f"Next: phischer dataset check {self.out}",
        ]
        return "\n".join(lines)


def _counted(label: str, reasons: Counter[str]) -> str:
    # "Dropped: 4  (bot chat 2, service 1, media 1)": a total, then each reason, most first.
    detail = ", ".join(f"{reason} {n:,}" for reason, n in reasons.most_common())
    return f"{label}: {sum(reasons.values()):,}" + (f"  ({detail})" if detail else "")


def _progress(
    conversations: Iterator[Conversation], label: str, total: int | None = None
) -> Iterator[Conversation]:
    # Per thread, on stderr; appears only when the import takes more than PROGRESS_DELAY_S
    # and stderr is a terminal, so small imports and pipes stay quiet. Each thread is also
    # where a stop signal whose KeyboardInterrupt a finalizer swallowed stops the import.
    with tqdm(
        conversations,
        desc=label,
        total=total,
        unit=" threads",
        delay=PROGRESS_DELAY_S,
        disable=None,
        leave=False,
    ) as bar:
        for conversation in bar:
            stop_if_requested()
            yield conversation


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    # A big import allocates millions of small objects (parsed JSON, Messages) and none of
    # them form cycles: reference counting frees them all, while the cyclic collector
    # would rescan the ever-growing heap again and again (~10% of a 1M-message import).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_import(
    fmt: str,
    path: Path,
    me: str,
    out: Path,
    *,
    system: str | None = None,
    gap_hours: float = 6,
    max_turns: int = 12,
    mask_pii: bool = False,
) -> ImportResult:
    """Import an export and write OUT.jsonl (+ .conversations); nothing is written on error."""
    stats = BuildStats()
    counter = TokenCounter()
    try:
        with _no_cyclic_gc():
            label = f"{fmt} {path.name}"
            # An export with sender ids is read whole before its examples are built (see
            # senders): a second bar, with the total known, follows that part.
            conversations = one_name_per_sender(
                _progress(load(fmt, path), f"Importing {label}"),
                replay=lambda convs, n: _progress(convs, f"Building examples from {label}", n),
                me=me,
            )
            examples = build_examples(
                conversations,
                me,
                system=system,
                gap_hours=gap_hours,
                max_turns=max_turns,
                mask_pii=mask_pii,
                stats=stats,
            )
            written = write_jsonl(counter.counted(examples), out, stats)
            tokens = counter.finish()
    finally:
        counter.close()
    return ImportResult(
        out=out,
        stats=stats,
        examples=written,
        tokens=tokens,
        tokens_estimated=counter.estimated,
        system=stats.system or system_prompt(me, system),
    )
