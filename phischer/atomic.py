"""Files written whole or not at all: temp names in the target folder, renamed on success."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from phischer.config import PRIVATE_FILE, PRIVATE_FOLDER


@contextmanager
def atomic_files(*targets: Path, mode: str = "w", private: bool = False) -> Iterator[list[IO[Any]]]:
    """Open a temp file beside each target; rename them all into place if the block succeeds.

    On an error (a bad export, Ctrl-C) every temp file is removed and no target is touched,
    so a reader never sees a half-written file and a failed run leaves nothing behind. The
    targets are renamed in order, so put the one readers look for first last. `private`:
    readable by this user alone (instance files), not by the umask's rule.
    """
    binary = "b" in mode
    file_mode, folder_mode = (PRIVATE_FILE, PRIVATE_FOLDER) if private else (0o666, 0o777)
    temps: list[Path] = []
    files: list[IO[Any]] = []
    try:
        for target in targets:
            target.parent.mkdir(folder_mode, parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            try:
                # Private, or 0o666 and the umask like any new file (mkstemp: always private).
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode)
            except OSError as exc:  # named after the file the user asked for, not our temp
                raise OSError(exc.errno, exc.strerror, str(target)) from None
            temps.append(tmp)
            kwargs = {} if binary else {"encoding": "utf-8", "newline": "\n"}
            files.append(os.fdopen(fd, mode, **kwargs))
        yield files
        for fh in files:
            fh.close()
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
    except BaseException:
        # Closing flushes what is still buffered, which fails again on a full disk: the
        # first error is the one to report, and the temp files must go whatever happens.
        for fh in files:
            with suppress(OSError):
                fh.close()
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
