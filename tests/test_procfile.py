"""The Procfile runs on a platform that installs requirements.txt only (no console script)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def processes() -> dict[str, list[str]]:
    """Procfile entries as argv lists, ${PORT:-5000} expanded the way the shell would."""
    out = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip():
            name, _, command = line.partition(":")
            out[name.strip()] = shlex.split(command.replace("${PORT:-5000}", "5000"))
    return out


def run_from_repo(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """argv[0] is `python`; run it with this interpreter, from the repository, no venv on PATH."""
    assert argv[0] == "python"
    env = dict(os.environ, INSTANCE_PATH=str(tmp_path / "instance"), PATH="/usr/bin:/bin")
    return subprocess.run(
        [sys.executable, *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_procfile_needs_no_console_script(tmp_path: Path) -> None:
    procs = processes()
    assert set(procs) == {"release", "web"}
    assert all(argv[:3] == ["python", "-m", "phischer"] for argv in procs.values())

    release = run_from_repo(procs["release"], tmp_path)
    assert release.returncode == 0, release.stderr
    assert (tmp_path / "instance" / "phischer.db").is_file()
    web = run_from_repo([*procs["web"], "--help"], tmp_path)
    assert web.returncode == 0 and "--port" in web.stdout, web.stderr
