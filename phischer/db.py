"""Engine and sessions; SQLite tuned for many short write transactions (WAL, busy_timeout, FKs)."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from phischer.config import PRIVATE_FILE, ensure_folder
from phischer.db_url import normalize_database_url
from phischer.per_process import PerProcess

BUSY_TIMEOUT_MS = 5000
CHECKPOINT_EVERY_S = 1.0
RESTART_FRAMES = 2000  # ~8 MB of WAL
TRUNCATE_WAIT_S = 0.05
# Seconds to wait for a database server to answer a new connection. libpq waits for good by
# default: a server that takes the connection and says nothing (a dead host behind a proxy)
# would hang `serve`'s start, `db upgrade` and /healthz. A `connect_timeout` in the URL wins.
CONNECT_TIMEOUT_S = 10

log = logging.getLogger(__name__)

# SQLite's result codes for a database file that cannot take a write (a full disk, a file
# made read-only, deleted or replaced, an I/O error): unlike a busy or locked database, a
# moment's wait does not get the write through.
_SQLITE_STORAGE = {
    sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOTADB,
}  # fmt: skip
# PostgreSQL's, by SQLSTATE class: 53 (disk full, out of memory), 58 (I/O error), and 08
# (connection exception: the server cannot be reached)...
_PG_STORAGE_CLASSES = ("53", "58", "08")
# ... and by code: a read-only transaction (a standby, or default_transaction_read_only), the
# server shutting down, crashed or still starting (57P01-57P03), and a statement cut off by
# statement_timeout (57014: a server too slow to take the text). Not 55P03: a row another
# transaction holds locked is one number's trouble (its text gets the fallback), not the
# database's.
_PG_STORAGE_CODES = ("25006", "57P01", "57P02", "57P03", "57014")
# DB-API error classes a driver raises without a SQLSTATE when the server is not there to
# give one: connection refused, the connection lost mid-statement, or already closed.
_DBAPI_CONNECTION_ERRORS = ("OperationalError", "InterfaceError")


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for another database or an in-memory one."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def make_engine(url: str) -> sa.Engine:
    """Create an engine; for SQLite, create the folder and set the pragmas on every connection.

    hide_parameters: SQLAlchemy appends a failed statement's parameters to its error, and
    they hold phone numbers and message bodies that a log or a traceback must not show.
    """
    url = normalize_database_url(url)
    path = sqlite_path(url)
    if path is not None:
        ensure_folder(path.parent, "the SQLite database")
        _create_private(path)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False}, hide_parameters=True
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return sa.create_engine(
        url, pool_pre_ping=True, hide_parameters=True, connect_args=_connect_args(url)
    )


def _connect_args(url: str) -> dict[str, int]:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "postgresql" or "connect_timeout" in parsed.query:
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT_S}


def _create_private(path: Path) -> None:
    """Create a missing SQLite database file readable by this user alone (it holds every text).

    SQLite would create it 0644 less the umask, and gives its -wal and -shm files the
    database's mode, so all three are private from here on. An empty file is an empty
    database. One that exists keeps its mode; one that cannot be made is SQLite's to report.
    """
    with suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))


class DatabaseFileGone(Exception):
    """The SQLite file a server process opened was deleted or replaced while it ran."""


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, or None if there is none at `path`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def storage_fault(exc: BaseException) -> bool:
    """Whether a database error says the database cannot store anything now (disk full, …)."""
    if isinstance(exc, DatabaseFileGone):
        return True
    exc = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", 0) & 0xFF in _SQLITE_STORAGE
    state = _sqlstate(exc)
    if state is None:
        return False  # not a PostgreSQL driver's error
    if not state:
        return any(cls.__name__ in _DBAPI_CONNECTION_ERRORS for cls in type(exc).__mro__)
    return state[:2] in _PG_STORAGE_CLASSES or state in _PG_STORAGE_CODES


def ended_by_conflict(exc: BaseException) -> bool:
    """Whether PostgreSQL ended the transaction to break a deadlock or serialization conflict."""
    # SQLSTATE class 40 (40P01, 40001): the other transaction went on, and this one, rolled
    # back whole, succeeds when run again.
    return (_sqlstate(getattr(exc, "orig", None) or exc) or "").startswith("40")


def _sqlstate(exc: BaseException) -> str | None:
    """A PostgreSQL driver error's SQLSTATE ("" if it has none); None for other errors."""
    # psycopg (3) names it sqlstate, psycopg2 pgcode; either has the attribute, maybe None.
    if not hasattr(exc, "sqlstate") and not hasattr(exc, "pgcode"):
        return None
    return getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None) or ""


def error_reason(exc: BaseException, brief: bool = False) -> str:
    """The driver's own words for a database error, on one line (never its parameters).

    `brief`: its first line only, without PostgreSQL's DETAIL and HINT lines.
    """
    words = str(getattr(exc, "orig", None) or exc)
    if brief:
        words = words.strip().split("\n", 1)[0]
    return " ".join(words.split())[:200]


class ReadOnlyDatabase(Exception):
    """The database takes reads but no writes (a PostgreSQL standby, or set read-only)."""


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
        # Per process: a worker sharing its parent's open file description would look like
        # the same holder to flock.
        self._fd = PerProcess(lambda: os.open(self._path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the write lock for the duration of the block."""
        if self._path is None:
            yield
            return
        with self._thread_lock:
            fd = self._fd.get()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


class Checkpointer:
    """Moves SQLite's WAL checkpoints off the webhook's commits, into one thread per process.

    By default the commit that grows the WAL past 1,000 pages copies them into the database
    and fsyncs it, inside the write lock: every ~150th text paid for that (a commit of the
    webhook's statements measured ~115 µs on average with it, ~35 µs without). Hot-path
    connections switch automatic checkpoints off (`disable_auto`); this thread runs a
    PASSIVE checkpoint every CHECKPOINT_EVERY_S instead, which never waits for or blocks a
    writer. Under steady writes the WAL is never fully copied at the moment a writer starts,
    so SQLite never rewinds it: once it passes RESTART_FRAMES, the thread takes the write
    lock for one short TRUNCATE checkpoint (only the frames written since the PASSIVE one
    are left to copy).
    """

    def __init__(self, db_path: Path, write_lock: WriteLock) -> None:
        self._path = db_path
        self._write_lock = write_lock
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def disable_auto(self, dbapi_conn: sqlite3.Connection) -> None:
        """Turn off automatic checkpoints on a connection; this process's thread does them."""
        dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")
        self.start()

    def start(self) -> None:
        """Start this process's checkpoint thread (once; again in a forked child)."""
        with self._lock:
            if self._pid == os.getpid() and not self._stop.is_set():
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            self.thread = threading.Thread(
                target=self._run, args=(self._stop,), name="phischer-checkpoint", daemon=True
            )
            self.thread.start()

    def stop(self) -> None:
        """Stop the thread after one last checkpoint (at shutdown)."""
        with self._lock:
            self._stop.set()
            thread, self.thread = self.thread, None
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(timeout=5)

    def checkpoint(self, mode: str = "PASSIVE", timeout_s: float = 0.0) -> tuple[int, int, int]:
        """One checkpoint: (blocked?, frames in the WAL, frames copied)."""
        # mode=rw: a database deleted under us is an error, not a new empty file.
        conn = sqlite3.connect(
            f"{self._path.resolve().as_uri()}?mode=rw", uri=True, timeout=timeout_s
        )
        try:
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            conn.close()
        return row[0], row[1], row[2]

    def run_once(self) -> tuple[int, int, int]:
        """A PASSIVE checkpoint, then a TRUNCATE under the write lock if the WAL is long."""
        result = self.checkpoint()
        if result[1] >= RESTART_FRAMES:
            # Readers are short (one SELECT), so a brief wait for them is enough; if one is
            # slower the WAL is rewound on a later round instead of stalling the writers.
            with self._write_lock.hold():
                result = self.checkpoint("TRUNCATE", timeout_s=TRUNCATE_WAIT_S)
        return result

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(CHECKPOINT_EVERY_S):
            self._checkpoint_quietly()
        self._checkpoint_quietly()

    def _checkpoint_quietly(self) -> None:
        try:
            self.run_once()
        except sqlite3.Error as exc:  # a busy or missing database: try again later
            log.debug("WAL checkpoint skipped: %s", exc)


class Database:
    """One engine, a session factory, and the write lock that goes with them."""

    def __init__(self, url: str) -> None:
        self.url = url = normalize_database_url(url)
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.path = path = sqlite_path(url)
        self.write_lock = WriteLock(path)
        # Only the webhook's own connections (Store) hand their checkpoints to this thread;
        # CLI commands keep SQLite's automatic ones, so the WAL never grows without a server.
        self.checkpointer = None if path is None else Checkpointer(path, self.write_lock)

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

    def check_writable(self) -> None:
        """Raise if the database cannot take a write now (for /healthz, never per text).

        A read alone said ok while every text got 503: a full disk, or a database that became
        read-only, still answers SELECTs.
        """
        if self.engine.dialect.name != "sqlite":
            # One round trip, as SELECT 1 was. A standby or default_transaction_read_only
            # says so here; a full PostgreSQL disk only when a row is written (see README).
            with self.engine.connect() as conn:
                if conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on":
                    raise ReadOnlyDatabase("the database is read-only")
            return
        # SQLite: a real committed write, one WAL frame: the header's user_version (unused
        # by phischer) set to what it is. A write rolled back never reaches the disk, so it
        # would not tell a full disk or a file that cannot be written. Under the write lock,
        # like the webhook's writers, so it queues with them instead of meeting busy_timeout.
        with self.write_lock.hold(), self.engine.connect() as conn:
            version = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
            conn.exec_driver_sql(f"PRAGMA user_version = {version}")
            conn.commit()

    def dispose(self) -> None:
        """Close pooled connections and stop this process's checkpoints (after fork, at shutdown)."""
        self.engine.dispose()
        if self.checkpointer is not None:
            self.checkpointer.stop()
