"""Alembic environment: the same DATABASE_URL as the app; batch mode so SQLite can ALTER."""

from __future__ import annotations

from alembic import context

from phischer.config import Settings
from phischer.migrate import migration_engine
from phischer.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # `phischer db upgrade` passes the URL in; plain `alembic upgrade head` reads the env.
    return config.attributes.get("database_url") or Settings.from_env().database_url


def run_migrations_offline() -> None:
    """Emit SQL without a database connection (`alembic upgrade head --sql`)."""
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations against the database."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = migration_engine(_url())
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        # One transaction for the whole upgrade, on SQLite too (see migration_engine): Alembic
        # would otherwise commit SQLite's DDL as it goes.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
