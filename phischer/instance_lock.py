"""One instance folder, one `up`/`tunnel`: a lock file the kernel releases when its holder dies."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from phischer.config import PRIVATE_FILE, PRIVATE_FOLDER
from phischer.tunnel_types import TunnelError

log = logging.getLogger(__name__)

# One instance folder, one run: `folder_lock()` refuses a second `up`/`tunnel` there while the
# first lives, since both would share `<instance>/tunnel_state.json` (the original SMS URL kept
# for a run killed with SIGKILL).
LOCK_FILE = "tunnel.lock"


def _folder_owner(fd: int) -> str:
    """Who holds the lock on `fd`, from what the holder wrote into the lock file."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0))
        return f"`phischer {owner['command']}` (pid {int(owner['pid'])})"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is still writing it
        return "`phischer up` or `phischer tunnel`"


@contextmanager
def folder_lock(instance_path: Path, command: str) -> Iterator[bool]:
    """Be the only `up`/`tunnel` of this instance folder while the block runs, else TunnelError.

    The folder's one state file is what remembers the number's original SMS URL if a run is
    killed with SIGKILL: a second run would take it over and the first delete it on exit. The
    kernel drops the lock when its holder dies, even by SIGKILL, so a dead run never blocks the
    next one (which restores what it left). The file stays: removing it would let two runs
    each lock a file of their own.

    Yields whether the lock is held (False on a file system without locks): only then is
    every record in the state file, but the holder's own, a dead run's.
    """
    path = instance_path / LOCK_FILE
    try:
        instance_path.mkdir(PRIVATE_FOLDER, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    except OSError as exc:
        raise TunnelError(f"Cannot write to {instance_path} ({exc.strerror}): check it") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TunnelError(
                f"another {_folder_owner(fd)} serves this number from this folder "
                f"({instance_path}): stop it first"
            ) from None
        except OSError as exc:  # a file system without locks: run unguarded, as before
            log.debug("Cannot lock %s (%s); not guarding against a second run", path, exc)
            yield False
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode(), 0)
        yield True
    finally:
        os.close(fd)  # releases the lock
