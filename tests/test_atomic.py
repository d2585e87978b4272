"""Files written whole or not at all (imports, splits, the tunnel's public URL)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from phischer.atomic import atomic_files


def test_all_targets_appear_together_on_success(tmp_path):
    a, b = tmp_path / "sub" / "a.jsonl", tmp_path / "sub" / "b.jsonl"
    with atomic_files(a, b) as (fa, fb):
        fa.write("é\n")
        fb.write("two\n")
        assert not a.exists() and not b.exists()  # nothing visible until the block ends
    assert a.read_bytes() == "é\n".encode() and b.read_text() == "two\n"
    assert sorted(p.name for p in a.parent.iterdir()) == ["a.jsonl", "b.jsonl"]  # no temps
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(a.stat().st_mode) == 0o666 & ~umask  # like any new file


def test_an_error_leaves_the_old_files_and_no_temps(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_files(a, b, mode="wb") as (fa, fb):
        fa.write(b"new")
        fb.write(b"new")
        raise KeyboardInterrupt
    assert a.read_bytes() == b"old" and not b.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_file_that_cannot_be_made_is_named_by_the_target(tmp_path):
    # The temp file is ours; the error names the file the user asked for. (/proc refuses
    # new files even to root, whom permissions would not stop.)
    target = Path("/proc/phischer-out.jsonl")
    with pytest.raises(OSError) as info, atomic_files(target):
        pass
    assert info.value.filename == str(target)
    assert info.value.strerror
