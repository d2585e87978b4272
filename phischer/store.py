"""Hot-path SQL for the webhook: a few plain statements on a per-thread DB-API connection.

The ORM costs ~0.1-0.4 ms per statement here (compile, pool checkout, unit of work) against
~0.02 ms for the same statement on the driver; a text needs seven of them, which made the
webhook 20x slower than a bare Flask endpoint (scripts/bench_webhook.py). The schema still
comes from the typed models and Alembic; this module only reads and writes rows, in the
storage formats SQLAlchemy itself uses, so the ORM reads them back unchanged.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import select
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from typing import Any

from phischer.config import from_number
from phischer.db import BUSY_TIMEOUT_MS, Database, DatabaseFileGone, file_identity
from phischer.per_process import PerProcess

log = logging.getLogger(__name__)

# Statuses of rows the recovery sweep picks up once idle: a text whose reply was being made,
# a reply stored before its REST send, and one whose send Twilio could not take.
PENDING = "('processing', 'queued', 'send_retry')"
# Delivery statuses of a reply that never reached the phone (a scheduled send can be
# canceled too): left out of the thread, and the reply's error says why.
NOT_DELIVERED = ("undelivered", "failed", "canceled")
_NOT_DELIVERED_SQL = "(" + ", ".join(f"'{status}'" for status in NOT_DELIVERED) + ")"
# The finest step a stored timestamp keeps (SQLite's text and PostgreSQL's timestamp alike).
TICK = dt.timedelta(microseconds=1)
# PostgreSQL: connections one process keeps for texts. Each is lent for one transaction of a
# few milliseconds (never across a model call or a REST send), so a few serve every thread;
# a connection per thread held ~14 per gunicorn worker for good, and a small plan's limit
# (20 connections) was then full after one burst: every other text got FALLBACK_REPLY,
# unstored, until a restart.
PG_CONNECTIONS = 3
# How long a statement waits for a row lock: as long as SQLite waits for its write lock. Our
# transactions hold one for milliseconds; a transaction left open elsewhere (a psql session,
# an instance cut off mid-text) held a number's texts for good, and with them the
# connections every other text needs. Such a text gets FALLBACK_REPLY, not Twilio's timeout.
LOCK_TIMEOUT_MS = BUSY_TIMEOUT_MS
# How long a transaction waits for a free connection: longer than a lock wait, so the
# connections texts stuck on a locked row hold come back first.
CONNECTION_WAIT_S = LOCK_TIMEOUT_MS / 1000 + 1.0


def stamp(now: dt.datetime, latest: dt.datetime | None) -> dt.datetime:
    """The time to store a number's next message at: `now`, or just after its latest message."""
    # Threads are read newest first by created_at, so a clock set back (an NTP step, a VM
    # resumed) must not stamp a text before the ones already stored: it would leave the
    # thread out of order, or the new text behind a #reset made "later". One tick after
    # also orders two messages stored within the same clock tick.
    return now if latest is None or now > latest else latest + TICK


@dataclass
class PendingRow:
    """A message left "processing" (inbound) or "queued"/"send_retry" (outbound) past its time."""

    id: int
    direction: str
    contact_id: int
    persona_id: int | None
    body: str
    created_at: dt.datetime
    phone: str
    thread_reset_at: dt.datetime | None
    error: str | None  # a "send_retry" reply's last failed send
    opted_out: bool = False  # the number has sent STOP since: nothing more may be sent
    delivery: str | None = None  # a status callback's report: Twilio took this reply
    our_address: str | None = None  # the sender the text was sent to / its reply goes from


@dataclass
class ContactRow:
    """The contact columns the webhook reads and may change."""

    id: int
    persona_id: int | None
    opted_out: bool
    opted_out_at: dt.datetime | None
    thread_reset_at: dt.datetime | None
    reply_day: dt.date | None
    replies_today: int
    # Not a column: when this number's latest message was stored (see `stamp`).
    latest_at: dt.datetime | None = None


CONTACT_COLUMNS = [f.name for f in fields(ContactRow) if f.name != "latest_at"]
MESSAGE_COLUMNS = (
    "contact_id", "persona_id", "direction", "kind", "body", "message_sid", "reply_to_id",
    "status", "error", "model", "latency_ms", "prompt_tokens", "completion_tokens", "num_media",
    "our_address", "created_at",
)  # fmt: skip


class Store:
    """The webhook's statements, on kept-open connections (SQLite: one writer per process)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        dialect = db.engine.dialect
        self.sqlite = dialect.name == "sqlite"
        self.IntegrityError = dialect.dbapi.IntegrityError
        # PostgreSQL ends one of two transactions that wait for each other's rows (a
        # deadlock); the other goes on, so the one ended can simply run again. SQLite's
        # writers never wait for each other: one holds the write lock at a time.
        self.Deadlock: type[Exception] = getattr(
            getattr(dialect.dbapi, "extensions", None), "TransactionRollbackError", _Never
        )
        # Statements are written with "?" (sqlite's style); pyformat drivers want "%s".
        self._placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
        self._local = threading.local()
        # SQLite: one write connection per process, used under the write lock's thread lock.
        # Each connection's page cache is dropped whenever another connection commits, so
        # per-thread writers re-read their pages on nearly every transaction; a shared one
        # only after the other process wrote; readers keep one per thread (a file, no
        # server to count them). Other databases: a few per process, lent per transaction.
        self._writer = PerProcess(self._new_conn) if self.sqlite else None
        # The SQLite file as this process's writer found it: deleted (`make clean`, `rm`) or
        # replaced (a backup moved over it) while serving, the open connection would go on
        # committing texts into a file no one will read again.
        # Taken now, before gunicorn forks its workers: a worker's first connection would
        # make a new empty file where the deleted one was, and take that for the database.
        self._file = db.path
        self._opened = None if db.path is None else file_identity(db.path)
        self._pool = (
            None
            if self.sqlite
            else PerProcess(lambda: ConnectionPool(self._new_conn, PG_CONNECTIONS))
        )
        self._insert_message = self.sql(
            f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(MESSAGE_COLUMNS))})"
        )
        # PostgreSQL: the write lock is a no-op and READ COMMITTED lets two transactions read
        # the same counter, so the row is locked until commit (each text's transaction is
        # short). Otherwise concurrent texts from one number overshoot DAILY_LIMIT.
        # SQLite: the write lock already serialises writers, and it has no FOR UPDATE.
        self._for_update = "" if self.sqlite else " FOR UPDATE"
        # The latest message's time in the same statement: one more seek in
        # ix_messages_contact_created, no extra round trip under the write lock.
        self._select_contact = self.sql(
            f"SELECT {', '.join(CONTACT_COLUMNS)}, (SELECT max(created_at) FROM messages "
            "WHERE contact_id = contacts.id) "
            f"FROM contacts WHERE phone = ?{self._for_update}"
        )

    # -- connections and transactions --------------------------------------------------------

    def _lend(self, write: bool) -> AbstractContextManager[Any]:
        """A connection for one transaction (SQLite: the writer, or this thread's reader)."""
        if self._pool is not None:
            return self._pool.get().lend()
        # SQLite's are kept, not lent: a plain holder, cheaper per text than a generator's.
        return _Kept(self._writer.get() if write else self._conn())  # type: ignore[union-attr]

    def _conn(self) -> Any:
        """This thread's SQLite reader connection."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # never reuse a parent's connection
            local.conn = self._new_conn()
            local.pid = os.getpid()
        return local.conn

    def _new_conn(self) -> Any:
        pooled = self.db.engine.raw_connection()
        # Kept for good and set up differently: out of the pool, so a session never gets it.
        conn = pooled.dbapi_connection
        pooled.detach()
        if self.db.checkpointer is not None:
            self.db.checkpointer.disable_auto(conn)
        if not self.sqlite:
            cur = conn.cursor()
            cur.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")  # for the session
            cur.close()
            conn.commit()
        return conn

    def sql(self, statement: str) -> str:
        """The statement in the driver's parameter style."""
        return statement if self._placeholder == "?" else statement.replace("?", "%s")

    @contextmanager
    def write(self) -> Iterator[Any]:
        """A short write transaction under the database's write lock; yields a cursor."""
        with self.db.write_lock.hold(), self._lend(write=True) as conn:
            cur = conn.cursor()
            try:
                yield cur
                if self._file is not None:
                    self.check_file()
                conn.commit()
            except BaseException:
                self._rollback(conn)
                raise
            finally:
                cur.close()

    def check_file(self) -> None:
        """Raise DatabaseFileGone if the SQLite file is no longer the one this process opened."""
        gone = self.file_gone()
        if gone is not None:
            raise gone

    def file_gone(self) -> DatabaseFileGone | None:
        """The error to raise if the SQLite file is no longer the one the server opened."""
        path = self._file
        if path is None or (self._opened is not None and file_identity(path) == self._opened):
            return None
        return DatabaseFileGone(
            f"the database file {path} was deleted or replaced while phischer served it: "
            "restart `phischer serve`"
        )

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A cursor for reads (no lock); the read transaction is closed afterwards."""
        with self._lend(write=False) as conn:
            cur = conn.cursor()
            try:
                yield cur
            finally:
                cur.close()
                if not self.sqlite:
                    # psycopg opened a transaction for the SELECTs: end it, or the connection
                    # sits idle in it. sqlite3 opens none for reads (nothing to end per text).
                    self._rollback(conn)

    def _rollback(self, conn: Any) -> None:
        # A connection the server dropped mid-statement is closed: rolling it back would
        # raise again and hide why the statement failed (the next use replaces it).
        if self.sqlite or not getattr(conn, "closed", False):
            conn.rollback()

    # -- value formats (what SQLAlchemy stores for DateTime/Date on each backend) --------------

    def ts(self, value: dt.datetime | None) -> Any:
        """A datetime as the column stores it."""
        if value is None or not self.sqlite:
            return value
        return value.isoformat(sep=" ", timespec="microseconds")  # SQLAlchemy's own format

    def day(self, value: dt.date | None) -> Any:
        """A date as the column stores it."""
        if value is None or not self.sqlite:
            return value
        return value.isoformat()

    @staticmethod
    def parse_ts(value: Any) -> dt.datetime | None:
        """A stored datetime back to a naive UTC datetime."""
        if value is None or isinstance(value, dt.datetime):
            return value
        return dt.datetime.fromisoformat(value)

    @staticmethod
    def parse_day(value: Any) -> dt.date | None:
        """A stored date back to a date."""
        if value is None or isinstance(value, dt.date):
            return value
        return dt.date.fromisoformat(value)

    # -- statements ------------------------------------------------------------------------

    def contact(self, cur: Any, phone: str, now: dt.datetime) -> ContactRow:
        """This number's contact row (and its latest message's time), created on first contact."""
        cur.execute(self._select_contact, (phone,))
        row = cur.fetchone()
        if row is None:
            persona_id = self._routed_persona(cur, phone)
            cur.execute(
                self.sql(
                    "INSERT INTO contacts (phone, persona_id, opted_out, replies_today, "
                    "created_at) VALUES (?, ?, ?, 0, ?) RETURNING id"
                ),
                (phone, persona_id, False, self.ts(now)),
            )
            return ContactRow(cur.fetchone()[0], persona_id, False, None, None, None, 0)
        cid, persona_id, opted_out, opted_out_at, reset_at, reply_day, replies, latest = row
        return ContactRow(
            cid,
            persona_id,
            bool(opted_out),
            self.parse_ts(opted_out_at),
            self.parse_ts(reset_at),
            self.parse_day(reply_day),
            replies,
            self.parse_ts(latest),
        )

    def _routed_persona(self, cur: Any, phone: str) -> int | None:
        """For a first text from another channel ("whatsapp:+1…"), its number's routed persona."""
        # `persona route` pins the E.164 number; the channel's own contact (its own memory and
        # opt-out, and replies go back on that channel) starts with the same persona.
        number = from_number(phone) if ":" in phone else None
        if number is None:
            return None
        cur.execute(self.sql("SELECT persona_id FROM contacts WHERE phone = ?"), (number,))
        row = cur.fetchone()
        return row[0] if row else None

    def save_contact(self, cur: Any, before: ContactRow, after: ContactRow) -> None:
        """Write the columns that changed."""
        changed = {
            name: getattr(after, name)
            for name in CONTACT_COLUMNS[1:]
            if getattr(after, name) != getattr(before, name)
        }
        if not changed:
            return
        values = [
            self.ts(v) if isinstance(v, dt.datetime) else self.day(v) if isinstance(v, dt.date)
            else v
            for v in changed.values()
        ]  # fmt: skip
        assignments = ", ".join(f"{name} = ?" for name in changed)
        cur.execute(
            self.sql(f"UPDATE contacts SET {assignments} WHERE id = ?"), (*values, after.id)
        )

    def insert_message(self, cur: Any, **values: Any) -> int:
        """Insert a message row; returns its id (IntegrityError on a duplicate MessageSid)."""
        values["created_at"] = self.ts(values["created_at"])
        values.setdefault("num_media", 0)
        values.setdefault("body", "")
        row = tuple(values.get(name) for name in MESSAGE_COLUMNS)
        if self.sqlite:
            # lastrowid instead of RETURNING: one sqlite3_step less, and each step is a
            # round trip through the GIL while the write lock is held.
            cur.execute(self._insert_message, row)
            return cur.lastrowid
        cur.execute(self._insert_message + " RETURNING id", row)
        return cur.fetchone()[0]

    def insert_reply(
        self,
        cur: Any,
        inbound_id: int,
        contact_id: int,
        persona_id: int | None,
        kind: str,
        body: str,
        status: str,
        created_at: dt.datetime,
        **values: Any,
    ) -> int:
        """Insert an outbound message answering `inbound_id`; returns its id."""
        return self.insert_message(
            cur, contact_id=contact_id, persona_id=persona_id, direction="out", kind=kind,
            body=body, reply_to_id=inbound_id, status=status, created_at=created_at, **values,
        )  # fmt: skip

    def update_message(
        self,
        cur: Any,
        message_id: int,
        now: dt.datetime,
        condition: str = "",
        condition_params: tuple[Any, ...] = (),
        **values: Any,
    ) -> bool:
        """Set some columns of a message (and its updated_at), if `condition` holds too."""
        values["updated_at"] = self.ts(now)
        assignments = ", ".join(f"{name} = ?" for name in values)
        where = f"id = ? AND {condition}" if condition else "id = ?"
        cur.execute(
            self.sql(f"UPDATE messages SET {assignments} WHERE {where}"),
            (*values.values(), message_id, *condition_params),
        )
        return cur.rowcount == 1

    def finish_inbound(
        self,
        cur: Any,
        message_id: int,
        now: dt.datetime,
        claimed_at: Any,
        wanted_from: int | None = None,
        **values: Any,
    ) -> bool:
        """Record a text's outcome if it is still the caller's to answer (see `claim`).

        The process that stored the text owns it while its updated_at is NULL; a recovery
        sweep that claimed it owns it with updated_at = the claim's time. With `wanted_from`
        (a persona id), only if its number still wants that persona's reply too: it has not
        opted out, nor sent #reset or STOP since the text, nor chosen another persona.
        """
        if claimed_at is None:
            condition, params = "status = 'processing' AND updated_at IS NULL", ()
        else:
            condition, params = "status = 'processing' AND updated_at = ?", (self.ts(claimed_at),)
        if wanted_from is not None:
            # In the same statement: the webhook's inline replies need no query more for it.
            # (No choice, a NULL persona_id, is no move: see SmsService.superseded.)
            condition += (
                " AND NOT EXISTS (SELECT 1 FROM contacts c WHERE c.id = messages.contact_id "
                "AND (c.opted_out = ? OR c.thread_reset_at > messages.created_at "
                "OR c.opted_out_at > messages.created_at OR c.persona_id <> ?))"
            )
            params += (True, wanted_from)
        return self.update_message(cur, message_id, now, condition, params, **values)

    def history_pages(
        self,
        cur: Any,
        contact_id: int,
        persona_id: int,
        since: dt.datetime | None,
        page: int,
        spoken: Sequence[str],
    ) -> Iterator[tuple[str, str, dt.datetime]]:
        """Newest-first (direction, body, created_at) of the chat turns with this persona.

        Read `page` rows a query, for as long as the caller reads on.
        """
        # Nearly every thread fits the first page; a long run of texts (replies that failed)
        # reads the next ones, so the thread never holds a turn cut in the middle. Each page
        # starts below the last row read, not at an OFFSET: the pages are separate reads, and
        # a text stored (or a reply sent or failed) in between would shift an OFFSET, which
        # then reads a row twice or skips one.
        before: tuple[Any, int] | None = None
        while True:
            rows = self._history_rows(cur, contact_id, persona_id, since, page, spoken, before)
            yield from ((d, b, self.parse_ts(c)) for _, d, b, c in rows)
            if len(rows) < page:
                return
            last_id, _, _, last_at = rows[-1]
            before = (last_at, last_id)

    def _history_rows(
        self,
        cur: Any,
        contact_id: int,
        persona_id: int,
        since: dt.datetime | None,
        limit: int,
        spoken: Sequence[str],
        before: tuple[Any, int] | None,
    ) -> list[tuple[int, str, str, Any]]:
        """(id, direction, body, created_at as stored) of one page, older than `before`."""
        marks = ", ".join("?" * len(spoken))
        query = (
            "SELECT id, direction, body, created_at FROM messages "
            "WHERE contact_id = ? AND persona_id = ? AND kind = 'chat' "
            f"AND (direction = 'in' OR (status IN ({marks}) "
            # a reply Twilio reported undelivered never reached the phone: the person
            # did not read it, so the model should not think it was said
            f"AND (delivery IS NULL OR delivery NOT IN {_NOT_DELIVERED_SQL})))"
        )
        params: list[Any] = [contact_id, persona_id, *spoken]
        if since is not None:
            query += " AND created_at >= ?"
            params.append(self.ts(since))
        if before is not None:
            # Below the last row read, in the order below; created_at as stored, not parsed
            # and formatted again, so the comparison is exact on both databases.
            query += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            params += [before[0], before[0], before[1]]
        # created_at then id: the walk goes backwards along ix_messages_contact_created (which
        # ends in the rowid) and stops after `limit` rows; "ORDER BY id" alone made SQLite read
        # and sort every message the number ever sent, slower the longer it texts.
        query += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit)
        cur.execute(self.sql(query), params)
        return cur.fetchall()

    def replies_to(self, cur: Any, sid: str) -> tuple[str, str, list[tuple[str, int]]] | None:
        """(kind, status, inline replies as (body, id)) of an inbound MessageSid; None: none."""
        cur.execute(self.sql("SELECT id, kind, status FROM messages WHERE message_sid = ?"), (sid,))
        row = cur.fetchone()
        if row is None:
            return None
        cur.execute(
            self.sql(
                "SELECT body, id FROM messages WHERE reply_to_id = ? AND status = 'replied' "
                "ORDER BY id"
            ),
            (row[0],),
        )
        return row[1], row[2], [(body, rid) for body, rid in cur.fetchall()]

    def delivery_of(self, cur: Any, message_id: int) -> tuple[str | None, str, str | None] | None:
        """(delivery, status, sid) of an outbound message, or None (PostgreSQL: locked till commit)."""
        # Callbacks for one reply can reach two workers or instances at once ("undelivered"
        # and a late "sent"); unlocked, both read the old status and the later commit won,
        # so "sent" could erase the failure. Locked, the second reads what the first wrote.
        cur.execute(
            self.sql(
                "SELECT delivery, status, message_sid FROM messages WHERE id = ? AND direction = 'out'"
                + self._for_update
            ),
            (message_id,),
        )
        return cur.fetchone()

    def adopt_sid(self, cur: Any, message_id: int, sid: str) -> bool:
        """Give a reply with no message sid Twilio's `sid`, unless another row has it.

        Returns whether the reply has `sid` now. The send's answer, its status callback and a
        sweep's look-up (which cannot tell two replies with the same words apart) may each
        bring a sid: the first to record one keeps it, and the others change nothing.
        """
        statement = self.sql(
            "UPDATE messages SET message_sid = ? WHERE id = ? AND (message_sid = ? OR "
            "(message_sid IS NULL AND NOT EXISTS (SELECT 1 FROM messages WHERE message_sid = ?)))"
        )
        params = (sid, message_id, sid, sid)
        if self.sqlite:
            # The write lock serialises whole transactions: nothing can take the sid between
            # this statement's check and the commit.
            cur.execute(statement, params)
            return cur.rowcount == 1
        # PostgreSQL (READ COMMITTED): another transaction may have given the sid to another
        # row and not committed yet, so the check passes; the unique index then makes this
        # update wait for it, and fail once it commits. The savepoint keeps that failure from
        # undoing the rest of the transaction (a callback's delivery status, say).
        cur.execute("SAVEPOINT adopt_sid")
        try:
            cur.execute(statement, params)
        except self.IntegrityError:
            cur.execute("ROLLBACK TO SAVEPOINT adopt_sid")
            return False
        adopted = cur.rowcount == 1
        cur.execute("RELEASE SAVEPOINT adopt_sid")
        return adopted

    def unsent_alike(
        self, cur: Any, message_id: int, since: dt.datetime
    ) -> list[tuple[int, dt.datetime]]:
        """(id, created_at) of the replies since `since` a message with `message_id`'s words may be.

        Those with its words, number and sender that wait for a send with no sid recorded
        (itself included): Twilio's message with those words may be any one of them.
        """
        # Through ix_messages_contact_created: the number's messages since `since`.
        cur.execute(
            self.sql(
                "SELECT o.id, o.created_at FROM messages m JOIN messages o ON "
                "o.contact_id = m.contact_id AND o.body = m.body AND (o.our_address = "
                "m.our_address OR (o.our_address IS NULL AND m.our_address IS NULL)) "
                "WHERE m.id = ? AND o.created_at >= ? AND o.direction = 'out' "
                f"AND o.message_sid IS NULL AND o.status IN {PENDING}"
            ),
            (message_id, self.ts(since)),
        )
        return [(i, self.parse_ts(at)) for i, at in cur.fetchall()]  # type: ignore[misc]

    def recorded_sids(self, cur: Any, sids: Sequence[str]) -> set[str]:
        """Those of `sids` some message row has."""
        if not sids:
            return set()
        marks = ", ".join("?" * len(sids))
        cur.execute(
            self.sql(f"SELECT message_sid FROM messages WHERE message_sid IN ({marks})"),
            tuple(sids),
        )
        return {sid for (sid,) in cur.fetchall()}

    def mark_sent(self, cur: Any, message_id: int, now: dt.datetime) -> None:
        """Record that Twilio took a REST reply, keeping a failure its callback already told."""
        # The status callback can beat this update (Twilio answers the send, then the phone
        # network rejects at once); clearing `error` blindly would erase why it failed.
        cur.execute(
            self.sql(
                "UPDATE messages SET status = 'sent', updated_at = ?, "
                f"error = CASE WHEN delivery IN {_NOT_DELIVERED_SQL} THEN error END "
                "WHERE id = ?"
            ),
            (self.ts(now), message_id),
        )

    def set_delivery(self, cur: Any, message_id: int, delivery: str, error: str | None) -> None:
        """Record Twilio's delivery status on a reply (and why it failed, if it did)."""
        # A failure's error goes when a later status says the reply arrived after all
        # ("undelivered", then "delivered" for the same message); any other error stays.
        cur.execute(
            self.sql(
                f"UPDATE messages SET error = CASE WHEN delivery IN {_NOT_DELIVERED_SQL} "
                "AND ? IS NULL THEN NULL ELSE COALESCE(?, error) END, delivery = ? WHERE id = ?"
            ),
            (error, error, delivery, message_id),
        )

    def pending(
        self, cur: Any, idle_since: dt.datetime, after_id: int = 0, limit: int = 100
    ) -> list[PendingRow]:
        """Messages after `after_id` still waiting (PENDING), unchanged since `idle_since`."""
        # No index on status: it would cost every text two more index pages (in, then out of
        # the index). The id range keeps this scan to recent rows instead (see recovery).
        cur.execute(
            self.sql(
                "SELECT m.id, m.direction, m.contact_id, m.persona_id, m.body, m.created_at, "
                "c.phone, c.thread_reset_at, m.error, c.opted_out, m.delivery, m.our_address "
                "FROM messages m JOIN contacts c ON c.id = m.contact_id "
                f"WHERE m.id > ? AND m.status IN {PENDING} "
                "AND COALESCE(m.updated_at, m.created_at) < ? ORDER BY m.id LIMIT ?"
            ),
            (after_id, self.ts(idle_since), limit),
        )
        return [
            PendingRow(
                i, d, c, p, b, self.parse_ts(at), phone, self.parse_ts(reset), err,  # type: ignore[arg-type]
                bool(out), delivery, ours,
            )
            for i, d, c, p, b, at, phone, reset, err, out, delivery, ours in cur.fetchall()
        ]  # fmt: skip

    def claim(self, cur: Any, message_id: int, idle_since: dt.datetime, now: dt.datetime) -> bool:
        """Take a pending message for this process (False: someone else took or finished it)."""
        cur.execute(
            self.sql(
                "UPDATE messages SET updated_at = ? WHERE id = ? "
                f"AND status IN {PENDING} AND COALESCE(updated_at, created_at) < ?"
            ),
            (self.ts(now), message_id, self.ts(idle_since)),
        )
        return cur.rowcount == 1

    def newer_inbound(self, cur: Any, contact_id: int, message_id: int) -> bool:
        """Whether this number sent a text after message `message_id` that the model answers."""
        # Its answer comes from a thread that holds the older text too, so a late answer to
        # that one would only arrive out of order. Texts that changed nothing about the
        # conversation do not count: #who, #list, HELP, an unknown #word, a picture, a text
        # over DAILY_LIMIT, ignored or refused ones (#reset and switches: `moved_on`).
        cur.execute(
            self.sql(
                "SELECT 1 FROM messages WHERE contact_id = ? AND direction = 'in' "
                "AND id > ? AND kind = 'chat' AND status <> 'ignored' LIMIT 1"
            ),
            (contact_id, message_id),
        )
        return cur.fetchone() is not None

    def limit_notice_sent(self, cur: Any, contact_id: int, day: dt.date) -> bool:
        """Whether this number got the DAILY_LIMIT notice on `day` (UTC) or later."""
        # The notice is the only reply of kind "refused" (texts from outside ALLOWED_NUMBERS
        # get none). Read through ix_messages_contact_created: that number's texts of the day.
        cur.execute(
            self.sql(
                "SELECT 1 FROM messages WHERE contact_id = ? AND created_at >= ? "
                "AND direction = 'out' AND kind = 'refused' LIMIT 1"
            ),
            (contact_id, self.ts(dt.datetime.combine(day, dt.time()))),
        )
        return cur.fetchone() is not None

    def moved_on(self, cur: Any, message_id: int) -> tuple[bool, int | None]:
        """(whether its number sent #reset or STOP after message `message_id`, its persona)."""
        # opted_out_at is kept by START: a STOP since the message ended its conversation.
        cur.execute(
            self.sql(
                "SELECT c.thread_reset_at, c.opted_out_at, m.created_at, c.persona_id "
                "FROM messages m JOIN contacts c ON c.id = m.contact_id WHERE m.id = ?"
            ),
            (message_id,),
        )
        row = cur.fetchone()
        if row is None:
            return False, None
        created_at = self.parse_ts(row[2])
        ended = [self.parse_ts(at) for at in row[:2] if at is not None]
        return any(at > created_at for at in ended), row[3]

    def opt_out_recipient(self, cur: Any, message_id: int, now: dt.datetime) -> bool:
        """Record the number reply `message_id` went to as opted out (False: it changed nothing).

        Not when the number has texted since: its own words (START, say) are newer than a
        report on an older reply, which a status callback can be.
        """
        cur.execute(
            self.sql(
                "UPDATE contacts SET opted_out = ?, opted_out_at = ? WHERE opted_out = ? "
                "AND id = (SELECT contact_id FROM messages WHERE id = ?) AND NOT EXISTS "
                "(SELECT 1 FROM messages WHERE contact_id = contacts.id AND direction = 'in' "
                "AND id > ?)"
            ),
            (True, self.ts(now), False, message_id, message_id),
        )
        return cur.rowcount == 1

    def opted_out(self, cur: Any, contact_id: int) -> bool:
        """Whether this number has opted out (PostgreSQL: the row stays locked until commit)."""
        # Locked like `contact` does, so a STOP being stored now either committed first or
        # waits for this transaction.
        cur.execute(
            self.sql(f"SELECT opted_out FROM contacts WHERE id = ?{self._for_update}"),
            (contact_id,),
        )
        row = cur.fetchone()
        return row is not None and bool(row[0])

    def last_message_id(self, cur: Any) -> int:
        """The highest message id so far (0 for none)."""
        cur.execute("SELECT max(id) FROM messages")
        return cur.fetchone()[0] or 0


class _Never(Exception):
    """An error no driver raises (a database that has no such failure)."""


class _Kept:
    """A connection kept for good, handed out as `with` gives a lent one."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __enter__(self) -> Any:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        return None


class ConnectionTimeout(Exception):
    """No pooled connection became free in time (every one is stuck in a transaction)."""


class ConnectionPool:
    """At most `size` database connections of one process, each lent for one transaction.

    Not SQLAlchemy's pool: its checkout (and the pre-ping round trip the engine's does) costs
    more than the statements of a text. The last one given back is lent first, so the
    others stay idle and a quiet process keeps them, never more than `size`.
    """

    def __init__(
        self, connect: Callable[[], Any], size: int, wait_s: float = CONNECTION_WAIT_S
    ) -> None:
        self._connect = connect
        self._size = size
        self._wait_s = wait_s
        self._idle: list[Any] = []
        self._open = 0
        self._changed = threading.Condition()

    @contextmanager
    def lend(self) -> Iterator[Any]:
        """A connection of the pool for the duration of the block (waits for a free one)."""
        conn = self._take()
        try:
            yield conn
        finally:
            with self._changed:
                self._idle.append(conn)  # a closed one too: the next _take replaces it
                self._changed.notify()

    def _take(self) -> Any:
        with self._changed:
            free = lambda: self._idle or self._open < self._size  # noqa: E731
            if not self._changed.wait_for(free, self._wait_s):
                raise ConnectionTimeout(
                    f"no database connection free within {self._wait_s:g} s "
                    f"(all {self._size} of this process are in transactions)"
                )
            if self._idle:
                conn = self._idle.pop()
                if not _lost(conn):
                    return conn
                # PostgreSQL restarted or failed over, or a proxy closed the idle connection.
                log.warning("Lost a database connection; opening a new one")
                _close_quietly(conn)
            else:
                self._open += 1
        try:
            return self._connect()  # outside the lock: connecting takes a round trip or more
        except BaseException:
            with self._changed:
                self._open -= 1
                self._changed.notify()
            raise


def _lost(conn: Any) -> bool:
    """Whether a kept-open PostgreSQL connection is closed, or its server hung up meanwhile."""
    if getattr(conn, "closed", False):  # a statement on it already failed
        return True
    # Between transactions the server sends nothing unasked, except when it ends the session
    # (restart, failover, an idle timeout: a FATAL notice, then EOF). One poll, no round trip.
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _close_quietly(conn: Any) -> None:
    """Close a connection that may already be broken."""
    try:
        conn.close()
    except Exception:  # already broken: nothing left to release
        log.debug("Closing a lost database connection failed", exc_info=True)
