"""Run Alembic migrations programmatically (`phischer db upgrade`, `make run`, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from phischer.config import ConfigError

_PACKAGE = Path(__file__).resolve().parent
# Where the Alembic scripts (env.py, script.py.mako, versions/) can be, in the order tried.
# 1. phischer/_migrations: the copy a wheel ships (`pip install .`, pipx; see packages and
#    package-dir in pyproject.toml). It comes first because next to an installed package the
#    parent folder is site-packages, whose `migrations` would be some other project's.
# 2. migrations/ at the top of a source checkout (the layout contract keeps it there): running
#    from the checkout (pytest's pythonpath, the Procfile) or an editable `pip install -e .`,
#    where phischer/ is the checkout's own folder and has no _migrations.
CANDIDATES = (_PACKAGE / "_migrations", _PACKAGE.parent / "migrations")


class MigrationsNotFound(ConfigError):
    """The Alembic scripts are in neither place (a broken install); the CLI shows one line."""


def migrations_dir() -> Path:
    """The folder of Alembic scripts: the installed copy, else the source checkout's."""
    for candidate in CANDIDATES:
        if (candidate / "env.py").is_file():
            return candidate
    looked = " or ".join(str(c) for c in CANDIDATES)
    raise MigrationsNotFound(
        f"database migrations not found (looked in {looked}): reinstall phischer "
        "(pip install .) or run it from a source checkout"
    )


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at our migrations and the given database."""
    cfg = Config()
    # Alembic's config interpolates %(name)s: a literal % in the path must be doubled.
    cfg.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the database schema up to `revision`; returns its revision before and after."""
    from alembic.runtime.migration import MigrationContext

    from phischer.db import make_engine

    engine = make_engine(database_url)
    try:
        # One connection for the check and the migration (env.py takes it as given).
        with engine.connect() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
            conn.commit()  # end the read: the migration runs its own transaction
            cfg = alembic_config(database_url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            after = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return before, after
