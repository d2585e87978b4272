"""DATABASE_URL as users write it (and hosts hand it out) -> a URL SQLAlchemy can open."""

from __future__ import annotations

import importlib.util

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from phischer.config import ConfigError

# PostgreSQL drivers in order of preference: the `postgres` extra installs psycopg2, while
# SQLAlchemy 2.1 picks psycopg (3) for a bare postgresql:// URL.
PG_DRIVERS = (("psycopg2", "psycopg2"), ("psycopg", "psycopg"))
POSTGRES_HINT = "pip install -e '.[postgres]'"


def shown(url: URL | str) -> str:
    """The URL with its password hidden, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def normalize_database_url(raw: str) -> str:
    """Parse DATABASE_URL; pick an installed PostgreSQL driver; raise ConfigError (one line)."""
    # Heroku and others still hand out postgres://, which SQLAlchemy no longer accepts.
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://") :]
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(
            "DATABASE_URL is not a database URL: use e.g. sqlite:///instance/phischer.db "
            "or postgresql://user:password@host/dbname"
        ) from None
    except ValueError:  # SQLAlchemy's int() of the port, which it does not wrap
        raise ConfigError(
            "DATABASE_URL has a port that is not a number: use e.g. "
            "postgresql://user:password@host:5432/dbname"
        ) from None
    if url.host and "@" in url.host:
        # A password with a bare @ ends at the first one: the rest would be taken for the
        # host, and error messages (which hide only the password) would show it.
        raise ConfigError(
            "DATABASE_URL has an @ in its password or user name: write it as %40 "
            "(postgresql://user:p%40ss@host/dbname)"
        )
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        # Each connection gets a database of its own: the migration's tables were gone
        # before the first command read one ("no such table: personas", a traceback).
        raise ConfigError(
            f"DATABASE_URL={raw} is an in-memory SQLite database, which no other "
            "connection or process sees: give a file, e.g. sqlite:///instance/phischer.db"
        )
    if url.drivername == "postgresql":
        for driver, module in PG_DRIVERS:
            if importlib.util.find_spec(module) is not None:
                url = url.set(drivername=f"postgresql+{driver}")
                break
    try:
        url.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise ConfigError(f"DATABASE_URL={shown(url)}: SQLAlchemy has no such database") from None
    except ImportError as exc:
        hint = (
            POSTGRES_HINT
            if url.get_backend_name() == "postgresql"
            else "install it, or use SQLite or PostgreSQL (what phischer is tested on)"
        )
        raise ConfigError(
            f"DATABASE_URL={shown(url)} needs the {exc.name or url.get_driver_name()} "
            f"driver: {hint}"
        ) from None
    return url.render_as_string(hide_password=False)
