"""Locks a run holds while it lives (one `up`/`tunnel` per instance folder, one local training
per output folder): lock files the kernel releases when their holder dies."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from phischer.config import PRIVATE_FILE, PRIVATE_FOLDER
from phischer.tunnel_types import TunnelError

log = logging.getLogger(__name__)

# One instance folder, one run: `folder_lock()` refuses a second `up`/`tunnel` there while the
# first lives, since both would share `<instance>/tunnel_state.json` (the original SMS URL kept
# for a run killed with SIGKILL).
LOCK_FILE = "tunnel.lock"


class LockHeld(Exception):
    """Another live process holds the lock; `owner` is what it wrote there (None: not yet)."""

    def __init__(self, owner: dict[str, Any] | None) -> None:
        super().__init__(owner)
        self.owner = owner


def holder(owner: dict[str, Any] | None, default: str) -> str:
    """The process holding a lock, as its record names it: `phischer COMMAND` (pid N)."""
    try:
        return f"`phischer {owner['command']}` (pid {int(owner['pid'])})"  # type: ignore[index]
    except (KeyError, TypeError, ValueError):  # the holder is still writing its record
        return default


@contextmanager
def exclusive(fd: int, command: str) -> Iterator[bool]:
    """Hold an exclusive lock on the open lock file `fd` while the block runs, then close it.

    Yields whether the lock is held (False on a file system without locks: run unguarded).
    Raises LockHeld, naming the holder, if another process holds it. The kernel drops the
    lock when its holder dies, even by SIGKILL, so a dead run never blocks the next one. The
    file stays: removing it would let two runs each lock a file of their own.
    """
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = json.loads(os.pread(fd, 4096, 0))
            except (OSError, ValueError):
                owner = None
            raise LockHeld(owner) from None
        except OSError as exc:
            log.debug("Cannot lock file descriptor %d (%s); not guarding", fd, exc)
            yield False
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode(), 0)
        yield True
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def folder_lock(instance_path: Path, command: str) -> Iterator[bool]:
    """Be the only `up`/`tunnel` of this instance folder while the block runs, else TunnelError.

    The folder's one state file is what remembers the number's original SMS URL if a run is
    killed with SIGKILL: a second run would take it over and the first delete it on exit
    (see `exclusive`).

    Yields whether the lock is held (False on a file system without locks): only then is
    every record in the state file, but the holder's own, a dead run's.
    """
    try:
        instance_path.mkdir(PRIVATE_FOLDER, parents=True, exist_ok=True)
        fd = os.open(instance_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    except OSError as exc:
        raise TunnelError(f"Cannot write to {instance_path} ({exc.strerror}): check it") from None
    try:
        with exclusive(fd, command) as held:
            yield held
    except LockHeld as exc:
        who = holder(exc.owner, "`phischer up` or `phischer tunnel`")
        raise TunnelError(
            f"another {who} serves this number from this folder ({instance_path}): stop it first"
        ) from None
