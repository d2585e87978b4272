"""A database or output folder that cannot take a write (a full disk): nothing acknowledged is
lost, nothing half-written is left, and the user is told in one line.

A full disk is made with RLIMIT_FSIZE: a write that would take a file past it fails with
EFBIG, as it would with ENOSPC, for that process alone and without root. (Python ignores
SIGXFSZ, so the write fails instead of killing the process.)
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_dataset


def run_limited(*args: str, cwd: Path, max_bytes: int) -> subprocess.CompletedProcess[str]:
    """`phischer ARGS` whose files may not grow past `max_bytes` (a disk that fills up)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.RLIM_INFINITY))

    command = [sys.executable, "-m", "phischer", *args]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, preexec_fn=limit, timeout=120
    )


def test_a_split_the_disk_cannot_hold_says_so_in_one_line_and_leaves_the_old_files(tmp_path):
    # It ended in a traceback, and closing the unfinished files (flushing into the full disk)
    # failed again before they were removed: four hidden temp files were left behind.
    data = write_dataset(
        tmp_path / "ada.jsonl", [(f"hi {i}", f"hello {i} " * 40) for i in range(200)]
    )
    assert run_limited("dataset", "split", str(data), cwd=tmp_path, max_bytes=2**30).returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_dataset(data, [(f"yo {i}", f"hey {i} " * 40) for i in range(300)])
    before[data.name] = data.read_bytes()

    result = run_limited("dataset", "split", str(data), cwd=tmp_path, max_bytes=8192)

    assert result.returncode == 1
    assert result.stderr == f"Error: cannot write the split files in {tmp_path}: File too large\n"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
