"""A built wheel carries the Alembic scripts: `phischer db upgrade` works from `pip install .`."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from phischer.migrate import CANDIDATES, alembic_config, migrations_dir
from phischer.models import Base

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "migrations"
# What a wheel build reads from the checkout (pyproject.toml names README.md as the readme).
SOURCES = ("pyproject.toml", "README.md", "phischer", "migrations")
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def _run(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output (never raising on a non-zero exit)."""
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def _source_files(folder: Path) -> list[str]:
    """Every file under `folder` (relative, POSIX), bytecode caches left out."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built offline from a copy of the checkout (build/ and *.egg-info land there)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=junk)
        else:
            shutil.copy2(ROOT / name, src / name)
    out = tmp / "dist"
    # --no-build-isolation: the venv's setuptools (the test extra) builds it, no download.
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = _run([*cmd, "--no-index", "-w", str(out), str(src)], env={**os.environ, **OFFLINE})
    assert built.returncode == 0, built.stdout + built.stderr
    (whl,) = out.glob("phischer-*.whl")
    return whl


@pytest.fixture(scope="module")
def site(wheel: Path) -> Path:
    """The wheel installed (no dependencies) into a bare target folder, as pip would."""
    target = wheel.parent.parent / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--no-index"]
    installed = _run([*cmd, "--target", str(target), str(wheel)], env={**os.environ, **OFFLINE})
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return target


def _phischer(site: Path, cwd: Path, *args: str, url: str) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` that can import only the installed copy of phischer, not the checkout."""
    env = {**os.environ, "PYTHONPATH": str(site), "DATABASE_URL": url}
    return _run([sys.executable, *args], cwd=cwd, env=env)


def test_wheel_ships_migrations_inside_the_package(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    scripts = _source_files(MIGRATIONS)
    assert {"env.py", "script.py.mako"} <= set(scripts)
    versions = [s for s in scripts if s.startswith("versions/") and s.endswith(".py")]
    assert len(versions) >= 4
    missing = [s for s in scripts if f"phischer/_migrations/{s}" not in names]
    assert missing == []
    # No top-level `migrations` package lands in site-packages.
    assert not any(n.startswith("migrations/") for n in names)
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["phischer"]
    # pyproject.toml lists the subpackages by hand: a new one (or sample data) left out fails here.
    package = [
        f for f in _source_files(ROOT / "phischer") if f.endswith(".py") or f.startswith("sample/")
    ]
    assert "sample/personas.json" in package
    assert [f for f in package if f"phischer/{f}" not in names] == []


def test_db_upgrade_from_installed_wheel(site: Path, tmp_path: Path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    db = tmp_path / "x.db"
    url = f"sqlite:///{db}"
    where = _phischer(site, cwd, "-c", "import phischer; print(phischer.__file__)", url=url)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()) == site / "phischer" / "__init__.py"

    result = _phischer(site, cwd, "-m", "phischer", "db", "upgrade", url=url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Database migrated from an empty database to revision" in result.stdout
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"alembic_version", "personas", "messages"} <= tables
    assert tables == {"alembic_version", *Base.metadata.tables}
    assert version == ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert list(cwd.iterdir()) == []  # nothing written next to the caller


def test_install_without_migrations_is_one_line(site: Path, tmp_path: Path):
    broken = tmp_path / "site"
    shutil.copytree(site / "phischer", broken / "phischer")
    shutil.rmtree(broken / "phischer" / "_migrations")
    db = tmp_path / "x.db"
    result = _phischer(broken, tmp_path, "-m", "phischer", "db", "upgrade", url=f"sqlite:///{db}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: database migrations not found")
    assert str(broken / "phischer" / "_migrations") in lines[0]


def test_checkout_uses_the_top_level_migrations_folder():
    # Running from the checkout (pytest's pythonpath, the Procfile, `pip install -e .`).
    assert not (ROOT / "phischer" / "_migrations").exists()
    assert migrations_dir() == MIGRATIONS
    assert CANDIDATES[-1] == MIGRATIONS
