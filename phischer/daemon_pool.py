"""A small thread pool whose threads never hold up the interpreter's exit (slow replies)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class DaemonPool:
    """Runs submitted calls on up to `max_workers` daemon threads, started as work comes.

    Not a ThreadPoolExecutor: concurrent.futures joins every thread it started when the
    interpreter exits, so a model call cut off by `shutdown(timeout)` would still hold the
    exit (of `phischer up`, say) for up to a minute. A daemon thread is simply left behind.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self.max_workers = max_workers
        self.name = name
        self._jobs: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a job
        self._closed = False
        self._changed = threading.Condition()

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        """Run `fn(*args)` on a pool thread; RuntimeError once shut down (as the executor)."""
        future: Future[T] = Future()
        with self._changed:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._jobs.append((future, fn, args))
            if len(self._jobs) > self._idle and len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}_{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            self._changed.notify()
        return future

    def shutdown(self, timeout: float | None = None) -> int:
        """Take no more work and wait for what was submitted; return how many still run.

        With a timeout, calls not started yet are dropped (their futures cancelled) and
        those running are waited for until it passes, then left to their threads.
        """
        with self._changed:
            self._closed = True
            dropped = list(self._jobs) if timeout is not None else []
            if dropped:
                self._jobs.clear()
            self._changed.notify_all()
            threads = list(self._threads)
        for future, _, _ in dropped:
            future.cancel()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        return sum(thread.is_alive() for thread in threads)

    def _work(self) -> None:
        while True:
            with self._changed:
                self._idle += 1
                self._changed.wait_for(lambda: self._jobs or self._closed)
                self._idle -= 1
                if not self._jobs:  # shut down, and nothing left to run
                    return
                future, fn, args = self._jobs.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                result = fn(*args)
            except BaseException as exc:  # the caller's to see, as with any executor
                future.set_exception(exc)
            else:
                future.set_result(result)
