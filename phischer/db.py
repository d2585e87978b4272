"""Engine and sessions; SQLite tuned for many short write transactions (WAL, busy_timeout, FKs)."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

BUSY_TIMEOUT_MS = 5000


def _sqlite_path(url: str) -> Path | None:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def make_engine(url: str) -> sa.Engine:
    """Create an engine; for SQLite, create the folder and set the pragmas on every connection."""
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class WriteLock:
    """Serialises SQLite writers across threads and processes.

    SQLite's busy handler polls with growing sleeps, so writers that collide wait far
    longer than the few hundred microseconds a commit takes (the p99 of the webhook blew
    up 19x in FIELD-NOTES). A flock on a side file queues them in the kernel instead and
    wakes the next writer at once. On other databases this is a no-op.
    """

    def __init__(self, db_path: Path | None) -> None:
        self._thread_lock = threading.Lock()
        self._path = None if db_path is None else db_path.with_name(db_path.name + ".wlock")
        self._fd: int | None = None
        self._pid: int | None = None

    def _file(self) -> int:
        # A forked gunicorn worker must not share its parent's open file description,
        # or flock would treat the two processes as one holder.
        if self._fd is None or self._pid != os.getpid():
            assert self._path is not None
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the write lock for the duration of the block."""
        if self._path is None:
            yield
            return
        with self._thread_lock:
            fd = self._file()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


class Database:
    """One engine, a session factory, and the write lock that goes with them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.write_lock = WriteLock(_sqlite_path(url))

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads (no lock); rolled back on exit."""
        with self.sessions() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A short write transaction: lock, work, commit (or roll back on error)."""
        with self.write_lock.hold(), self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        """Close pooled connections (call after fork or at shutdown)."""
        self.engine.dispose()
