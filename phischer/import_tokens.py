"""The token total an import reports: exact when small, sampled in a helper process when big."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor

from phischer.dataset import Example
from phischer.stopping import fork_pool

# Counting tokens exactly runs a pure-Python BPE over every example (~15 µs per message):
# on a million-message export that is most of the import. Past this many examples the
# summary estimates from an evenly spread sample; `phischer dataset check` counts exactly.
EXACT_TOKEN_LIMIT = 1_000
TOKEN_SAMPLE_EVERY = 50

# Examples per job sent to the token-counting helper.
_TOKEN_BATCH = 200


class TokenCounter:
    """Counts the tokens of the examples it is given, estimating from a sample past a limit."""

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
        """Take example number `index` into the count (or into the sample, or skip it)."""
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

    def counted(self, examples: Iterable[Example]) -> Iterator[Example]:
        """Pass `examples` through unchanged, adding each one to the count on the way."""
        for i, ex in enumerate(examples):
            self.add(i, ex.messages)
            yield ex

    def _start_helper(self) -> None:
        self._started = True
        # fork: the helper starts at once with everything imported (spawn would re-import).
        # Imported here first, so the forked helper never waits on the import lock.
        import phischer.tokens  # noqa: F401

        if "fork" in mp.get_all_start_methods():
            self._helper = fork_pool(1)
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
        """Whether the total is estimated from a sample (some examples were skipped)."""
        return self.skipped > 0


def _count_examples(batch: list[list[dict[str, str]]]) -> int:
    from phischer.tokens import count_messages_tokens

    return sum(map(count_messages_tokens, batch))
