"""Counting work in progress, so a stopping server can wait (a while) for it to finish."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class InFlight:
    """Counts work in progress; wait_idle() waits (until a deadline) for none to be left."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    @contextmanager
    def one(self) -> Iterator[None]:
        """Count the block as one piece of work in progress."""
        with self._idle:
            self._count += 1
        try:
            yield
        finally:
            with self._idle:
                self._count -= 1
                if not self._count:
                    self._idle.notify_all()

    @property
    def count(self) -> int:
        """How many are in progress now."""
        return self._count

    def wait_idle(self, deadline: float) -> int:
        """Wait until nothing is in progress or `deadline` (monotonic); how many are left."""
        with self._idle:
            self._idle.wait_for(
                lambda: not self._count, timeout=max(deadline - time.monotonic(), 0.0)
            )
            return self._count
