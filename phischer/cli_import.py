"""`phischer import FORMAT PATH --me NAME -o OUT.jsonl`: a chat export -> chat fine-tuning JSONL."""

from __future__ import annotations

import gc
import multiprocessing as mp
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from tqdm import tqdm

from phischer.dataset import BuildStats, Example, build_examples, system_prompt, write_jsonl
from phischer.importers import load
from phischer.importers.base import Conversation

# Counting tokens exactly runs a pure-Python BPE over every example (~15 µs per message):
# on a million-message export that is most of the import. Past this many examples the
# summary estimates from an evenly spread sample; `phischer dataset check` counts exactly.
EXACT_TOKEN_LIMIT = 1_000
TOKEN_SAMPLE_EVERY = 50


@dataclass
class ImportResult:
    """What an import did: builder stats, examples written, tokens (maybe estimated)."""

    out: Path
    stats: BuildStats
    examples: int
    tokens: int
    tokens_estimated: bool
    system: str


class _TokenCounter:
    # Counts every example until EXACT_TOKEN_LIMIT, then every TOKEN_SAMPLE_EVERY-th one
    # and scales the sampled part up; the sample is spread over the whole file. Past
    # EXACT_TOKEN_LIMIT examples the import is big, and the counting moves to a helper
    # process: loading the vocabulary (~0.5 s) and the pure-Python BPE then run beside the
    # import instead of adding to it. Small imports count here, at the end.
    def __init__(self) -> None:
        self.sampled_n = 0
        self.skipped = 0
        self._exact: list[list[dict[str, str]]] = []
        self._sample: list[list[dict[str, str]]] = []
        self._helper: ProcessPoolExecutor | None = None
        self._started = False
        # Token counts, or futures of them from the helper: (exact?, count).
        self._counts: list[tuple[bool, int | Future[int]]] = []

    def add(self, index: int, messages: list[dict[str, str]]) -> None:
        if index < EXACT_TOKEN_LIMIT:
            self._exact.append(messages)
        elif index % TOKEN_SAMPLE_EVERY == 0:
            if not self._started:
                self._start_helper()
            self._sample.append(messages)
            self.sampled_n += 1
            if len(self._sample) >= _TOKEN_BATCH:
                self._flush()
        else:
            self.skipped += 1

    def _start_helper(self) -> None:
        self._started = True
        # fork: the helper starts at once with everything imported (spawn would re-import).
        # Imported here first, so the forked helper never waits on the import lock.
        import phischer.tokens  # noqa: F401

        if "fork" in mp.get_all_start_methods():
            self._helper = ProcessPoolExecutor(1, mp_context=mp.get_context("fork"))
        self._flush()

    def _flush(self) -> None:
        for exact, batch in ((True, self._exact), (False, self._sample)):
            if batch:
                count: int | Future[int] = (
                    self._helper.submit(_count_examples, batch)
                    if self._helper is not None
                    else _count_examples(batch)
                )
                self._counts.append((exact, count))
        self._exact, self._sample = [], []

    def finish(self) -> int:
        """Count what is left, wait for the helper, and return the (estimated) total."""
        self._flush()
        exact = sampled = 0
        for is_exact, count in self._counts:
            n = count if isinstance(count, int) else count.result()
            if is_exact:
                exact += n
            else:
                sampled += n
        self.close()
        if not self.sampled_n:
            return exact
        return exact + round(sampled / self.sampled_n * (self.sampled_n + self.skipped))

    def close(self) -> None:
        """Stop the helper process, if any."""
        if self._helper is not None:
            self._helper.shutdown(wait=True, cancel_futures=True)
            self._helper = None

    @property
    def estimated(self) -> bool:
        return self.skipped > 0


# Examples per job sent to the token-counting helper.
_TOKEN_BATCH = 200


def _count_examples(batch: list[list[dict[str, str]]]) -> int:
    from phischer.tokens import count_messages_tokens

    return sum(map(count_messages_tokens, batch))


def _counted(examples: Iterable[Example], counter: _TokenCounter) -> Iterator[Example]:
    for i, ex in enumerate(examples):
        counter.add(i, ex.messages)
        yield ex


def _progress(conversations: Iterator[Conversation], label: str) -> Iterator[Conversation]:
    # Per thread, on stderr; appears only when the import takes more than a second and
    # stderr is a terminal, so small imports and pipes stay quiet.
    with tqdm(
        conversations,
        desc=f"Importing {label}",
        unit=" threads",
        delay=1,
        disable=None,
        leave=False,
    ) as bar:
        yield from bar


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
    counter = _TokenCounter()
    try:
        with _no_cyclic_gc():
            conversations = _progress(load(fmt, path), f"{fmt} {path.name}")
            examples = build_examples(
                conversations,
                me,
                system=system,
                gap_hours=gap_hours,
                max_turns=max_turns,
                mask_pii=mask_pii,
                stats=stats,
            )
            written = write_jsonl(_counted(examples, counter), out)
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


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def summary(result: ImportResult) -> str:
    """The report printed after an import."""
    s = result.stats
    dropped = sum(s.dropped.values())
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in s.dropped.most_common())
    lines = [
        f"Threads: {s.threads:,}  ({_plural(s.sessions, 'conversation')} after splitting on "
        "silences)",
        f"Messages kept: {s.messages:,}  (yours: {s.me_messages:,})",
        f"Dropped: {dropped:,}" + (f"  ({reasons})" if reasons else ""),
    ]
    if s.openers:
        lines.append(
            f"Not used: {s.openers:,} of your messages that opened a conversation (no message "
            "before them to reply to)"
        )
    approx = "~" if result.tokens_estimated else ""
    lines += [
        f"Examples: {result.examples:,}  ({approx}{result.tokens:,} tokens, o200k_base"
        + (", estimated from a sample" if result.tokens_estimated else "")
        + ")",
        f"Wrote {result.out} and {result.out.name}.conversations",
        f"System prompt: {result.system}",
        f"Next: phischer dataset check {result.out}",
    ]
    return "\n".join(lines)


@click.command("import")
# A plain argument, not click.Choice: an unknown format is then one line and exit 1 like
# every other bad input, instead of a usage error.
@click.argument("fmt", metavar="{messenger,twitter,discord,whatsapp,telegram}")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--me", required=True, help="The person to clone: their name (or id) in the export.")
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output chat JSONL (a .conversations file is written beside it).",
)
@click.option("--system", help="System prompt (default names --me; {me} is filled in).")
@click.option(
    "--gap-hours",
    type=float,
    default=6,
    show_default=True,
    help="A silence longer than this starts a new conversation.",
)
@click.option(
    "--max-turns",
    type=int,
    default=12,
    show_default=True,
    help="At most this many user/assistant messages per example.",
)
@click.option("--mask-pii", is_flag=True, help="Replace emails, phone numbers and URLs.")
def import_command(fmt: str, path: Path, me: str, out: Path, **options: object) -> None:
    """Turn a chat export (zip, folder or file) into a fine-tuning JSONL."""
    # Not phischer.cli.friendly_errors: importing phischer.cli from here would make
    # `import phischer.cli_import` circular for callers that start with this module.
    try:
        result = run_import(fmt, path, me, out, **options)  # type: ignore[arg-type]
    except ValueError as exc:  # ImportErrorMessage and other bad input: one line, exit 1
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. the output folder is not writable
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or out}") from None
    click.echo(summary(result))


def register(cli: click.Group) -> None:
    """Add `phischer import` to the CLI."""
    cli.add_command(import_command)
