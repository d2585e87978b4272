"""Values made once per process: a forked gunicorn worker must make its own, never share."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """Holds what `make()` returns, made on first use in each process.

    Open files, database connections and threads do not survive a fork in a usable state
    (a child sharing its parent's flock file description, or SQLite connection, breaks
    both), so anything gunicorn's preloaded app created is made again in each worker.
    """

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._value: T | None = None

    def get(self) -> T:
        """This process's value, made now if it has none yet."""
        if self._pid != os.getpid():
            with self._lock:  # the first requests of a worker may arrive together
                if self._pid != os.getpid():
                    self._value = self._make()
                    self._pid = os.getpid()
        return self._value  # type: ignore[return-value]

    def peek(self) -> T | None:
        """This process's value if it was made, else None (never makes one)."""
        return self._value if self._pid == os.getpid() else None
