"""Stop signals: SIGTERM and SIGHUP stop like Ctrl-C; no stop is lost, none cuts a restore short."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# The stop signals (SIGHUP: the terminal was closed; not on Windows). Ctrl-C is among them so
# that a second press while the number is being restored does not cut the restore short.
STOP_SIGNALS = tuple(
    sig
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
    if sig is not None
)
# Ctrl-C presses during the shutdown that are only answered with STILL_STOPPING: the one
# after them quits at once, for a shutdown that hangs (Twilio's 10 s timeout, twice).
PATIENT_PRESSES = 1
STILL_STOPPING = (
    b"Still shutting down (restoring the number's SMS URL, closing the tunnel); press Ctrl-C "
    b"again to quit at once and leave the SMS URL as it is.\n"
)


@dataclass
class _StopState:
    """What the stop-signal handler has seen, shared with the startup checkpoints."""

    requested: bool = False  # a stop was asked for (SIGTERM, SIGHUP, a swallowed Ctrl-C)
    raised: bool = False  # its KeyboardInterrupt is on its way: later stop signals are ignored
    presses: int = 0  # Ctrl-C presses since then (more than PATIENT_PRESSES: quit at once)
    still_stopping: bytes = STILL_STOPPING  # what those presses are answered with
    holding: bool = False  # inside stops_held(): a stop waits for its end


_stop = _StopState()


def stop_if_requested() -> None:
    """Raise KeyboardInterrupt if a stop was asked for: one whose exception Python dropped.

    A signal handler runs wherever the main thread is, also inside a finalizer or a garbage
    collection callback, where an exception is printed as "Exception ignored in …" and dropped.
    Startup calls this between its steps and the wait calls it while serving, so such a stop
    still undoes everything.
    """
    if _stop.requested:
        _stop.raised = True
        raise KeyboardInterrupt


def mark_stopping() -> None:
    """The shutdown has begun: a stop signal from now on must not interrupt it."""
    _stop.raised = True


def _on_stop_signal(signum: int, frame: object) -> None:
    _stop.requested = True  # first: if the raise below is swallowed, the checkpoints stop us
    if _stop.holding:
        return  # stops_held() raises it at its end
    if _stop.raised:
        # A supervisor repeating TERM must not interrupt the restore it asked for; nor must
        # an impatient second Ctrl-C, but someone pressing on means it.
        if signum == signal.SIGINT:
            _stop.presses += 1
            if _stop.presses > PATIENT_PRESSES:
                raise KeyboardInterrupt
            # Straight to stderr's descriptor: the main thread may be inside a print.
            with suppress(OSError):
                os.write(2, _stop.still_stopping)
        return
    _stop.raised = True
    raise KeyboardInterrupt


def _stop_keeper(previous: Callable[[Any], object]) -> Callable[[Any], None]:
    """An unraisable hook that turns a swallowed KeyboardInterrupt into a pending stop."""

    def hook(unraisable: Any) -> None:
        exc_type = unraisable.exc_type
        on_main = threading.current_thread() is threading.main_thread()
        if on_main and isinstance(exc_type, type) and issubclass(exc_type, KeyboardInterrupt):
            _stop.requested = True
            _stop.raised = False  # it never got anywhere: the next signal raises again
            log.debug("A stop arrived inside %r; stopping at the next step", unraisable.object)
            return
        previous(unraisable)

    return hook


@contextmanager
def sigterm_as_interrupt(still_stopping: bytes = STILL_STOPPING) -> Iterator[None]:
    """Make SIGTERM and SIGHUP stop us like Ctrl-C: `finally` blocks restore and close everything.

    SIGHUP is what closing the terminal window sends; left at its default it would kill the
    process with the number still pointing at a tunnel that is about to vanish. Once stopping,
    repeated signals are ignored, except a Ctrl-C pressed again after `still_stopping`. A stop is
    never lost: the handler records it before raising, and a KeyboardInterrupt Python drops
    (raised inside a finalizer) is caught by an unraisable hook; `stop_if_requested()` then
    raises it again at the next startup step or while waiting.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = (_stop.requested, _stop.raised, _stop.presses, _stop.still_stopping)
    _stop.requested = _stop.raised = False
    _stop.presses = 0
    _stop.still_stopping = still_stopping
    hook = sys.unraisablehook
    sys.unraisablehook = _stop_keeper(hook)
    # A signal ignored when we started stays ignored: `nohup phischer up &` asked to outlive
    # the terminal, and a background job of a script is not meant to get Ctrl-C.
    previous = {
        sig: signal.signal(sig, _on_stop_signal)
        for sig in STOP_SIGNALS
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        sys.unraisablehook = hook
        _stop.requested, _stop.raised, _stop.presses, _stop.still_stopping = saved


@contextmanager
def stops_held() -> Iterator[None]:
    """Hold stop signals back while the block runs; one that came stops us at its end."""
    # Blocked in this thread, so that a process forked in the block starts with them blocked;
    # held by the handler too, since another thread of ours may take the signal.
    holding, _stop.holding = _stop.holding, True
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _stop.holding = holding
    if not holding:
        stop_if_requested()


def fork_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of forked worker processes that leave stopping to this one (Unix only)."""
    # A terminal's Ctrl-C or hang-up, or a supervisor's SIGTERM, goes to every process of the
    # job. A worker would stop wherever it was: a KeyboardInterrupt traceback on the terminal,
    # and a worker killed in the middle of writing its result can leave the pool's shutdown
    # in this process waiting for ever. So workers ignore the stop signals, and this process
    # stops them by shutting the pool down. The first submit forks every worker, then starts
    # the thread that shuts them down: a stop in between would leave them running for ever,
    # and a worker must not take one before it ignores them. Both wait for stops_held's end.
    pool = ProcessPoolExecutor(
        workers, mp_context=mp.get_context("fork"), initializer=_ignore_stops
    )
    try:
        with stops_held():
            pool.submit(int)
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise
    return pool


def _ignore_stops() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # also drops one that came while blocked
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
