"""Stop signals: SIGTERM and SIGHUP stop like Ctrl-C; no stop is lost, none cuts a restore short."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
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
    if _stop.raised:
        # A supervisor repeating TERM must not interrupt the restore it asked for; nor must
        # an impatient second Ctrl-C, but someone pressing on means it.
        if signum == signal.SIGINT:
            _stop.presses += 1
            if _stop.presses > PATIENT_PRESSES:
                raise KeyboardInterrupt
            # Straight to stderr's descriptor: the main thread may be inside a print.
            with suppress(OSError):
                os.write(2, STILL_STOPPING)
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
def sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM and SIGHUP stop us like Ctrl-C: `finally` blocks restore and close everything.

    SIGHUP is what closing the terminal window sends; left at its default it would kill the
    process with the number still pointing at a tunnel that is about to vanish. Once stopping,
    repeated signals are ignored, except a Ctrl-C pressed again after STILL_STOPPING. A stop is
    never lost: the handler records it before raising, and a KeyboardInterrupt Python drops
    (raised inside a finalizer) is caught by an unraisable hook; `stop_if_requested()` then
    raises it again at the next startup step or while waiting.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = (_stop.requested, _stop.raised, _stop.presses)
    _stop.requested = _stop.raised = False
    _stop.presses = 0
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
        _stop.requested, _stop.raised, _stop.presses = saved
