"""A progress bar through one big export file, in bytes, for the importers that read one.

The import's own bar counts threads, so one big chat (a 400,000-message WhatsApp `.txt`, a
Discord channel's `.json`, Telegram's whole-account `result.json`) would show nothing until
it is done. An importer reading such a file moves this bar as it goes: on stderr, only on a
terminal and only once reading has taken PROGRESS_DELAY_S, like the thread bar.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from types import TracebackType
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

# Seconds before a progress bar appears: work quicker than this prints no bar at all.
PROGRESS_DELAY_S = 1.0
# Smaller files get no bar (they take well under PROGRESS_DELAY_S), so an export of
# thousands of small files pays nothing for it.
BIG_FILE_BYTES = 4 << 20
# The bar moves once per this many items: its cost per item is then nil.
STEP = 4096


class FileProgress:
    """How far an importer is through one file, drawn as a bar of the file's bytes."""

    def __init__(self, name: str, size: int) -> None:
        self.size = size
        self._bar = (
            tqdm(
                total=size,
                desc=f"Reading {name}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                delay=PROGRESS_DELAY_S,
                disable=None,  # quiet when stderr is not a terminal
                leave=False,
            )
            if size >= BIG_FILE_BYTES
            else None
        )

    def __enter__(self) -> FileProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Wipe the bar (the import's summary stands alone)."""
        if self._bar is not None:
            self._bar.close()

    def to(self, done: int) -> None:
        """Move the bar to `done` bytes of the file."""
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def through(self, items: Sequence[T], start: float = 0.0, end: float = 1.0) -> Iterator[T]:
        """The items in order, the bar moving with them from `start` to `end` of the file."""
        if self._bar is None or self._bar.disable:
            return iter(items)
        # Items are handed out by chain in C, a slice at a time: nothing runs per item.
        return chain.from_iterable(self._slices(items, start, end))

    def _slices(self, items: Sequence[T], start: float, end: float) -> Iterator[Sequence[T]]:
        total = len(items)
        for first in range(0, total, STEP):
            yield items[first : first + STEP]
            # Asked for the next slice: this one is done.
            done = start + (end - start) * min(first + STEP, total) / total
            self.to(int(done * self.size))


# For callers that read text without a file behind it (tests, a chat given as a string).
NO_PROGRESS = FileProgress("", 0)
