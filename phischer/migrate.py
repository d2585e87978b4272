"""Run Alembic migrations programmatically (`phischer db upgrade`, `make run`, tests)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from phischer.config import PRIVATE_FILE, ConfigError

_PACKAGE = Path(__file__).resolve().parent
# Where the Alembic scripts (env.py, script.py.mako, versions/) can be, in the order tried.
# 1. phischer/_migrations: the copy a wheel ships (`pip install .`, pipx; see packages and
#    package-dir in pyproject.toml). It comes first because next to an installed package the
#    parent folder is site-packages, whose `migrations` would be some other project's.
# 2. migrations/ at the top of a source checkout (the layout contract keeps it there): running
#    from the checkout (pytest's pythonpath, the Procfile) or an editable `pip install -e .`,
#    where phischer/ is the checkout's own folder and has no _migrations.
CANDIDATES = (_PACKAGE / "_migrations", _PACKAGE.parent / "migrations")
# The PostgreSQL advisory lock migrations hold, so instances migrating one database at once
# (a release phase and web processes starting together) take turns. Any fixed number will
# do: it only has to be the same in every phischer.
MIGRATION_LOCK = 0x70686973


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

    engine = migration_engine(database_url)
    try:
        # One connection for the check and the migration (env.py takes it as given).
        with engine.connect() as conn, _migrating_alone(conn):
            before = MigrationContext.configure(conn).get_current_revision()
            conn.commit()  # end the read: the migration runs its own transaction
            cfg = alembic_config(database_url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            after = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return before, after


def migration_engine(database_url: str) -> sa.Engine:
    """An engine for migrating: on SQLite, each transaction a real one, DDL included."""
    from phischer.db import make_engine

    engine = make_engine(database_url)
    if engine.dialect.name == "sqlite":
        # Python's sqlite3 begins a transaction only before INSERT/UPDATE/DELETE, so each
        # CREATE, DROP and ALTER committed on its own: a migration killed halfway (Ctrl-C,
        # a crash) left tables without their alembic_version row, and every later command
        # failed on "table personas already exists". With sqlite3's own BEGIN off and
        # SQLAlchemy's BEGIN sent as one, a migration is all or nothing. IMMEDIATE: it
        # takes the write lock at once, so a server writing meanwhile cannot stale its read.
        # Foreign keys off: batch mode rebuilds a table (copy, DROP, rename), and with them on
        # the DROP's implicit DELETE fired ON DELETE actions on the copy: every reply's
        # reply_to_id was cleared (SET NULL), and a CASCADE would delete the rows.
        sa.event.listen(engine, "connect", _sqlite_autocommit)
        sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_autocommit(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None
    # Runs after make_engine's pragmas (listeners run in order); outside a transaction,
    # where SQLite takes it (inside one it is a no-op).
    dbapi_connection.execute("PRAGMA foreign_keys=OFF")


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def _migrating_alone(conn: Connection) -> Iterator[None]:
    """Wait for any other migration of this database to end first.

    Without it, processes that all found no schema would all create it, and all but one
    would crash on tables that already exist. SQLite too: Python's sqlite3 runs DDL outside
    a transaction: of four `phischer db upgrade` started together on a new file, three
    failed (sometimes all four, on a constraint another had already renamed).
    """
    if conn.dialect.name == "sqlite":
        with _sqlite_alone(conn):
            yield
        return
    if conn.dialect.name != "postgresql":
        yield
        return
    # A session lock, held across the migration's own transaction; released at the end.
    conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
    conn.commit()
    try:
        yield
    finally:
        # A lost connection has lost its lock too; the migration's own error is the news.
        with suppress(sa.exc.DBAPIError):
            conn.rollback()  # a failed migration leaves its transaction aborted
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
            conn.commit()


@contextmanager
def _sqlite_alone(conn: Connection) -> Iterator[None]:
    """Hold a flock on a side file of the SQLite database while migrating it."""
    from phischer.db import sqlite_path

    path = sqlite_path(conn.engine.url.render_as_string(hide_password=False))
    if path is None:  # in memory: no other process can see it
        yield
        return
    # Its own file, not the writers' .wlock: a server of this process may hold that one.
    try:
        fd = os.open(path.with_name(path.name + ".migrating"), os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    except OSError:
        # A folder this process cannot write in: SQLite cannot write the database there
        # either, and says so in the migration's own one-line error.
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close, also if the process dies
        yield
    finally:
        os.close(fd)
