"""The webhook's storage: WAL checkpoints off the hot path, history reads that do not grow."""

from __future__ import annotations

import datetime as dt
import sqlite3
from itertools import islice

import phischer.db as dbmod
from phischer.db import RESTART_FRAMES
from phischer.models import utcnow
from phischer.store import Store
from phischer.thread import SPOKEN


def wal_bytes(database) -> int:
    path = database.checkpointer._path.with_name(database.checkpointer._path.name + "-wal")
    return path.stat().st_size if path.exists() else 0


def add_contact(store: Store) -> int:
    with store.write() as cur:
        return store.contact(cur, "+15550100", utcnow()).id


def add_messages(store: Store, contact_id: int, n: int, start: dt.datetime) -> None:
    for i in range(n):
        with store.write() as cur:  # one commit each, as the webhook does
            store.insert_message(
                cur, contact_id=contact_id, direction="in", kind="chat", body=f"text {i}",
                message_sid=f"SM{start.timestamp():.0f}{i:08d}", status="replied",
                created_at=start + dt.timedelta(seconds=i),
            )  # fmt: skip


def test_hot_path_connections_leave_checkpoints_to_the_thread(database):
    store = Store(database)
    add_contact(store)
    conn = store._conn()
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    thread = database.checkpointer.thread
    assert thread is not None and thread.is_alive()
    Store(database)._conn()  # a second store of the same database: the same thread
    assert database.checkpointer.thread is thread
    # Connections outside the hot path (CLI, ORM sessions) keep SQLite's own checkpoints.
    with database.engine.connect() as other:
        value = other.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    assert value == 1000
    database.dispose()  # shutdown stops the thread
    assert not thread.is_alive() and database.checkpointer.thread is None


def test_checkpoint_copies_a_short_wal_and_truncates_a_long_one(database, monkeypatch):
    monkeypatch.setattr(dbmod, "CHECKPOINT_EVERY_S", 3600)  # only our explicit calls run
    store = Store(database)
    contact_id = add_contact(store)
    add_messages(store, contact_id, 20, dt.datetime(2026, 1, 1))
    busy, frames, copied = database.checkpointer.run_once()
    assert busy == 0 and 0 < frames < RESTART_FRAMES and copied == frames
    assert wal_bytes(database) > 0  # short: copied but left for SQLite to rewind

    monkeypatch.setattr(dbmod, "RESTART_FRAMES", 50)
    add_messages(store, contact_id, 60, dt.datetime(2026, 1, 2))
    assert database.checkpointer.run_once() == (0, 0, 0)
    assert wal_bytes(database) == 0
    # Nothing was lost on the way: a fresh connection reads every row from the database.
    path = database.checkpointer._path
    count = sqlite3.connect(path).execute("SELECT count(*) FROM messages").fetchone()[0]
    assert count == 80


def traced_history(database, n: int) -> tuple[Store, int, int, dt.datetime, list[str]]:
    """A number with `n` texts to Ada a second apart, and the list its statements go to."""
    from phischer.personas import get_persona

    with database.read() as session:
        persona = get_persona(session, "Ada").id
    store = Store(database)
    contact_id = add_contact(store)
    start = dt.datetime(2026, 1, 1)
    add_messages(store, contact_id, n, start)
    with store.write() as cur:
        cur.execute("UPDATE messages SET persona_id = ?", (persona,))
    executed: list[str] = []
    store._conn().set_trace_callback(executed.append)  # the statements as run, values filled in
    return store, contact_id, persona, start, executed


def assert_walks_the_index_backwards(conn, statements: list[str]) -> None:
    """Each history read walks (contact_id, created_at) backwards and stops at its limit."""
    # A temp b-tree would mean reading and sorting every message of the number.
    for statement in statements:
        plan = " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + statement))
        assert "ix_messages_contact_created" in plan and "TEMP B-TREE" not in plan, plan


def test_history_reads_the_newest_rows_without_sorting_everything(database, personas):
    store, contact_id, persona, start, executed = traced_history(database, 30)
    conn = store._conn()
    with store.read() as cur:
        rows = list(islice(store.history_pages(cur, contact_id, persona, None, 5, SPOKEN), 5))
        later = start + dt.timedelta(seconds=27)
        since = list(store.history_pages(cur, contact_id, persona, later, 5, SPOKEN))
    conn.set_trace_callback(None)
    assert [body for _, body, _ in rows] == [f"text {i}" for i in (29, 28, 27, 26, 25)]
    assert [body for _, body, _ in since] == ["text 29", "text 28", "text 27"]
    assert_walks_the_index_backwards(conn, [s for s in executed if s.startswith("SELECT")])


def test_one_write_connection_per_process_many_threads(database):
    from concurrent.futures import ThreadPoolExecutor

    store = Store(database)
    contact_id = add_contact(store)
    used = []

    def write(i: int) -> None:
        with store.write() as cur:
            used.append(cur.connection)  # the DB-API connection behind the cursor
            store.insert_message(
                cur, contact_id=contact_id, direction="in", kind="chat", body=f"t{i}",
                message_sid=f"SMthread{i:04d}", status="replied", created_at=utcnow(),
            )  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(64)))
    # Every thread wrote through the same connection (its page cache stays warm), and the
    # write lock kept their transactions apart: all 64 rows are there.
    assert len({id(conn) for conn in used}) == 1
    with store.read() as cur:
        cur.execute("SELECT count(*) FROM messages WHERE message_sid LIKE 'SMthread%'")
        assert cur.fetchone()[0] == 64
        assert cur.connection is not used[0]  # reads keep their per-thread connections


def test_history_pages_read_each_row_once_while_texts_arrive(database, personas):
    store, contact_id, persona, start, executed = traced_history(database, 10)
    conn = store._conn()
    with store.read() as cur:
        pages = store.history_pages(cur, contact_id, persona, None, 4, SPOKEN)
        first = [next(pages) for _ in range(4)]
        # A newer text stored between two pages (the pages are separate reads), as the
        # webhook does while the model answers a long run of texts.
        with store.write() as wcur:
            store.insert_message(
                wcur, contact_id=contact_id, persona_id=persona, direction="in", kind="chat",
                body="newer", message_sid="SMnewer", status="replied",
                created_at=start + dt.timedelta(seconds=10),
            )  # fmt: skip
        rest = list(pages)
    conn.set_trace_callback(None)
    bodies = [body for _, body, _ in first + rest]
    assert bodies == [f"text {i}" for i in range(9, -1, -1)]
    # The later pages too walk the index backwards and stop at their limit.
    statements = [s for s in executed if s.startswith("SELECT")]
    assert len(statements) == 3
    assert_walks_the_index_backwards(conn, statements)
