"""Alembic migrations from an empty database match the models exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from phischer.db import Database, make_engine
from phischer.finetune import jobs
from phischer.migrate import alembic_config, upgrade
from phischer.models import Base
from tests.conftest import phischer_at_once


def test_upgrade_from_empty_matches_models(settings):
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert sa.inspect(conn).get_table_names() == sorted(
            ["alembic_version", *Base.metadata.tables]
        )
    engine.dispose()


def test_single_head_and_downgrade_round_trip(settings):
    cfg = alembic_config(settings.database_url)
    assert len(ScriptDirectory.from_config(cfg).get_heads()) == 1
    upgrade(settings.database_url)
    command.downgrade(cfg, "base")
    engine = make_engine(settings.database_url)
    assert sa.inspect(engine).get_table_names() == ["alembic_version"]
    engine.dispose()
    upgrade(settings.database_url)


def test_sqlite_pragmas(database):
    with database.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def upgraded_from(settings, revision: str, *rows: tuple[str, tuple]) -> None:
    """Migrate to `revision`, run the `rows` statements there, then upgrade to head."""
    command.upgrade(alembic_config(settings.database_url), revision)
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        for statement, params in rows:
            conn.exec_driver_sql(statement, params)
    engine.dispose()
    upgrade(settings.database_url)


def test_partial_indexes_keep_rows_and_still_reject_duplicate_sids(settings):
    message = (
        "INSERT INTO messages (contact_id, direction, kind, body, message_sid, status, "
        "num_media, created_at) VALUES (1, 'in', 'chat', 'hi', ?, 'replied', 0, "
        "'2026-01-01 00:00:00.000000')"
    )
    upgraded_from(
        settings,
        "0002",
        ("INSERT INTO contacts (phone, opted_out, replies_today, created_at) "
         "VALUES ('+15550100', 0, 0, '2026-01-01 00:00:00.000000')", ()),
        # two replies with no sid: allowed before and after
        *((message, (sid,)) for sid in ("SMone", None, None)),
    )  # fmt: skip
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM messages").scalar() == 3
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO messages (contact_id, direction, kind, body, message_sid, status, "
            "num_media, created_at) VALUES (1, 'in', 'chat', 'again', 'SMone', 'replied', 0, "
            "'2026-01-01 00:00:00.000000')"
        )
    engine.dispose()


def test_jobs_stored_before_0006_are_kept_and_found_on_any_server(settings):
    upgraded_from(
        settings,
        "0005",
        ("INSERT INTO finetune_jobs (job_id, provider, base_model, status, created_at, "
         "updated_at) VALUES ('ftjob-1', 'openai', 'gpt-4.1-mini', 'running', "
         "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000')", ()),
    )  # fmt: skip
    db = Database(settings.database_url)
    with db.write() as session:
        old = jobs.find_job(session, "ftjob-1", "http://127.0.0.1:8000/v1")
        assert (old.job_id, old.server, old.status) == ("ftjob-1", None, "running")
        # The same id from a server now recorded with it: both kept, this server's first.
        jobs.record_job(
            session, job_id="ftjob-1", server="http://127.0.0.1:8000/v1", base_model="m"
        )
        assert jobs.find_job(session, "ftjob-1", "http://127.0.0.1:8000/v1").server is not None
        assert jobs.find_job(session, "ftjob-1", "https://api.openai.com/v1").id == old.id
    db.dispose()


def test_processes_migrating_a_new_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    # `make run` in two terminals, or `phischer up` beside `phischer serve`: each migrates
    # first. SQLite runs the DDL outside a transaction, so without the lock the others
    # crashed (tracebacks) on tables and constraints the first was creating. Three rounds:
    # a race lost in one round in five or so still fails here.
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'round{round_}.db'}"
        runs = phischer_at_once(
            4, "db", "upgrade", cwd=tmp_path, DATABASE_URL=url, INSTANCE_PATH=str(tmp_path / "i")
        )
        assert [code for code, _ in runs] == [0] * 4, runs
        outputs = [out for _, out in runs]
        assert sum("Database migrated from an empty database" in o for o in outputs) == 1, outputs
        assert sum("Database is up to date." in o for o in outputs) == 3, outputs
        engine = make_engine(url)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        engine.dispose()


def test_a_migration_that_fails_halfway_leaves_nothing_behind(settings):
    # A migration cut off halfway (Ctrl-C, a crash, or as here a statement that fails) must
    # leave the database as it found it: before, SQLite kept each CREATE as it ran, and
    # every later command failed on "table personas already exists".
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        # Index names are global in SQLite: this one makes 0001's last statement fail,
        # after it created every table.
        conn.exec_driver_sql("CREATE TABLE squatter (a)")
        conn.exec_driver_sql("CREATE INDEX ix_messages_reply_to_id ON squatter (a)")
    with pytest.raises(sa.exc.OperationalError, match="ix_messages_reply_to_id already exists"):
        upgrade(settings.database_url)
    with engine.begin() as conn:
        assert sa.inspect(conn).get_table_names() == ["squatter"]
        conn.exec_driver_sql("DROP TABLE squatter")
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    assert upgrade(settings.database_url) == (None, head)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def _revisions_before_head() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [r.revision for r in script.walk_revisions() if r.revision != script.get_current_head()]


@pytest.mark.parametrize("revision", _revisions_before_head())
def test_upgrading_from_any_revision_keeps_which_text_each_reply_answers(settings, revision):
    # Batch mode rebuilds `messages` on SQLite (copy, DROP, rename). With foreign keys on,
    # the DROP deleted every row first, and ON DELETE SET NULL cleared each copied reply's
    # reply_to_id: a retried MessageSid no longer found its reply.
    message = (
        "INSERT INTO messages (contact_id, direction, kind, body, message_sid, status, "
        "num_media, created_at, reply_to_id) VALUES (1, ?, 'chat', ?, ?, 'replied', 0, "
        "'2026-01-01 00:00:00.000000', ?)"
    )
    upgraded_from(
        settings,
        revision,
        ("INSERT INTO contacts (phone, opted_out, replies_today, created_at) "
         "VALUES ('+15550100', 0, 0, '2026-01-01 00:00:00.000000')", ()),
        (message, ("in", "hi", "SMin", None)),
        (message, ("out", "hello", None, 1)),
    )  # fmt: skip
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, body, reply_to_id FROM messages ORDER BY id")
        assert rows.fetchall() == [(1, "hi", None), (2, "hello", 1)]
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
    engine.dispose()
