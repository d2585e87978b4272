"""What exposing the webhook deals in: the Tunnel an opener returns, its Check, TunnelError."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Echo = Callable[[str], None]


class TunnelError(ValueError):
    """The tunnel or the webhook registration cannot be set up; the message says how to fix it."""


# A liveness check polled while serving: None while all is well, else what stopped and why.
Check = Callable[[], "str | None"]


@dataclass(frozen=True)
class Tunnel:
    """An open tunnel: its public base URL, how to close it, and how to tell it stopped."""

    public_url: str
    close: Callable[[], None] = lambda: None
    check: Check = lambda: None


TunnelOpener = Callable[[int], Tunnel]
