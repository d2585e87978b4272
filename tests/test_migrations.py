"""Alembic migrations from an empty database match the models exactly."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from phischer.db import make_engine
from phischer.migrate import alembic_config, upgrade
from phischer.models import Base


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
