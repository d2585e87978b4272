"""The `phischer` command line: a click group of thin commands that each call one service."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from phischer.config import ConfigError, Settings
from phischer.redact import install_output, redact

if TYPE_CHECKING:  # SQLAlchemy is imported only by commands that use the database
    from sqlalchemy.orm import Session

    from phischer.db import Database


class Context:
    """Settings and database, created on first use so `--help` never touches the disk."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._db: Database | None = None

    @property
    def settings(self) -> Settings:
        """Settings from the environment; a bad value is one clear line and exit 1."""
        if self._settings is None:
            try:
                self._settings = Settings.from_env()
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
        return self._settings

    @property
    def db(self) -> Database:
        """The database, migrated to head on first use (cheap when it already is)."""
        if self._db is None:
            from phischer.db import Database

            migrate_or_explain(self.settings.database_url)
            self._db = Database(self.settings.database_url)
        return self._db

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction whose domain errors become one-line CLI errors."""
        with self.db.write() as session, friendly_errors():
            yield session


def migrate_or_explain(database_url: str) -> tuple[str | None, str | None]:
    """Migrate to head, returning the revision before and after; unreachable: one line."""
    import sqlite3

    from sqlalchemy.exc import DatabaseError, OperationalError

    from phischer.db import error_reason
    from phischer.db_url import normalize_database_url, shown
    from phischer.migrate import upgrade

    url = normalize_database_url(database_url)
    try:
        return upgrade(url)
    except DatabaseError as exc:
        # SQLite's "file is not a database" (DATABASE_URL names some other file) is a bare
        # DatabaseError, not an OperationalError; other DatabaseErrors are bugs to show whole.
        if not isinstance(exc, OperationalError) and type(exc.orig) is not sqlite3.DatabaseError:
            raise
        reason = error_reason(exc)
        raise click.ClickException(f"cannot reach the database {shown(url)}: {reason}") from None


def storage_error(ctx: click.Context, exc: Exception) -> click.ClickException | None:
    """`Error: …` for a database that cannot be used now (disk full, a deadlock, …); else None."""
    if "phischer.db" not in sys.modules:  # the command never touched a database
        return None
    from phischer.db import ended_by_conflict, error_reason, storage_fault
    from phischer.db_url import normalize_database_url, shown

    conflict = ended_by_conflict(exc)
    if not (conflict or storage_fault(exc)):
        return None
    obj = ctx.find_object(Context)
    settings = None if obj is None else obj._settings  # read: the database was used
    where = "" if settings is None else f" {shown(normalize_database_url(settings.database_url))}"
    if conflict:
        # Another writer (a text being answered) and this command waited for each other.
        return click.ClickException(
            f"the database{where} undid this change, which clashed with another made at the "
            f"same moment ({error_reason(exc, brief=True)}): run the command again"
        )
    return click.ClickException(f"cannot use the database{where}: {error_reason(exc)}")


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn our ValueError subclasses (bad input) into `Error: …` with exit code 1."""
    try:
        yield
    except UnicodeEncodeError:
        raise  # LazyGroup.invoke says it for every command alike
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def not_utf8(exc: UnicodeEncodeError) -> str:
    """What to say about text that UTF-8 cannot encode (usually typed in another encoding)."""
    # Python hands bytes a terminal typed in another encoding (Latin-1 "é" is 0xE9) to the
    # program as lone surrogates: the codec's own message would not say what to do.
    bad = exc.object[exc.start : exc.end]
    if isinstance(bad, str) and all("\udc80" <= c <= "\udcff" for c in bad):
        raw = bad.encode("utf-8", "surrogateescape")
        return (
            f"some text given to phischer is not UTF-8 (bytes {raw!r}): set your terminal "
            "to UTF-8 (e.g. export LANG=C.UTF-8) and type it again"
        )
    return str(exc)


pass_ctx = click.make_pass_decorator(Context, ensure=True)


# Commands that live in their own modules, by name. They are imported only when used
# (or listed by --help): importing all of them costs ~0.5 s of SQLAlchemy, Flask,
# twilio and openai that `phischer import` or `text` never need.
_EXTENSIONS: dict[str, str] = {
    "persona": "phischer.cli_persona",
    "import": "phischer.cli_import",
    "serve": "phischer.cli_serve",
    "seed": "phischer.cli_serve",
    "text": "phischer.cli_serve",
    "chat": "phischer.cli_serve",
    "dataset": "phischer.cli_dataset",
    "finetune": "phischer.cli_finetune",
    "tunnel": "phischer.cli_tunnel",
    "up": "phischer.cli_tunnel",
}


class LazyGroup(click.Group):
    """A group whose extension commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command name, without importing anything."""
        return sorted(set(super().list_commands(ctx)) | set(_EXTENSIONS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """The command, importing (and registering) its module when needed."""
        if name not in self.commands and name in _EXTENSIONS:
            module = importlib.import_module(_EXTENSIONS[name])
            register: Callable[[click.Group], Any] = module.register
            register(self)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a bad setting or non-UTF-8 typed text is one line, exit 1."""
        # Settings are read lazily, deep inside whichever command needs them (the database
        # folder, the development token, …): one place turns them all into `Error: …`.
        # So is text typed in another encoding, which fails wherever it is first encoded
        # (the database, an HTTP form, a file).
        try:
            try:
                return super().invoke(ctx)
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
            except UnicodeEncodeError as exc:
                raise click.ClickException(not_utf8(exc)) from None
            except Exception as exc:
                # A database that cannot store now (a full disk, read-only, its server down
                # or restarting) fails whichever command writes: the user's to fix, not a bug.
                error = storage_error(ctx, exc)
                if error is None:
                    raise
                raise error from None
        except click.ClickException as exc:
            # Every `Error: …` line passes here, with what an SDK or server said inside it
            # (a 401 that quotes the key it refused). Numbers stay: at the terminal they
            # are the user's own, typed or configured.
            exc.message = redact(exc.message, numbers=False)
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (may show phone numbers).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """phischer: text a clone of a real person over SMS."""
    configure_logging(verbose)
    unset_blank_web_concurrency()
    ctx.ensure_object(Context)


def unset_blank_web_concurrency() -> None:
    """Drop a blank WEB_CONCURRENCY (after .env is loaded): blank means unset, for gunicorn too."""
    # `serve --workers` takes it blank as unset, but gunicorn reads it with int() as its
    # config module is imported (by serve, and by `up` as it stops): `WEB_CONCURRENCY=` in
    # .env, or docker compose's `${WEB_CONCURRENCY}` with it unset, was a traceback.
    if os.environ.get("WEB_CONCURRENCY") == "":
        del os.environ["WEB_CONCURRENCY"]


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool) -> None:
    """LOG_LEVEL (from the environment or .env), or DEBUG with -v; libraries kept quiet."""
    from phischer.config import load_env_file
    from phischer.ngrok_agent import AGENT_LOG

    load_env_file()  # so a LOG_LEVEL in .env counts too
    level = "DEBUG" if verbose else log_level(os.environ.get("LOG_LEVEL", ""))
    logging.basicConfig(
        level=getattr(logging, level),
        format=LOG_FORMAT,
    )
    # Alembic narrates every migration check at INFO, the OpenAI SDK every retry and its
    # HTTP client (httpx2 since openai 3.5, httpx before) every request, and pyngrok every
    # line of the ngrok agent's log; phischer reports the outcome in one line, so keep them
    # quiet unless asked.
    for noisy in ("alembic", "openai", "httpx", "httpx2", "pyngrok"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # The ngrok agent's own log, relayed by pyngrok at the agent's levels: an agent refused at
    # startup printed its logfmt line on top of phischer's one-line error, and a dropped
    # session a line per retry; phischer.ngrok_agent says each in one line of its own.
    logging.getLogger(AGENT_LOG).setLevel(logging.DEBUG if verbose else logging.CRITICAL)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(raw: str) -> str:
    """LOG_LEVEL as a logging level name (INFO when unset), or ConfigError naming the choices."""
    level = raw.strip().upper() or "INFO"
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL={raw!r} must be one of {', '.join(LOG_LEVELS)}")
    return level


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(obj: Context) -> None:
    """Migrate the database (DATABASE_URL) to the latest schema."""

    before, after = migrate_or_explain(obj.settings.database_url)
    if before == after:
        click.echo("Database is up to date.")
    else:
        start = f"revision {before}" if before else "an empty database"
        click.echo(f"Database migrated from {start} to revision {after} (the latest).")


def main() -> None:
    """Console-script entry point."""
    # What phischer prints goes through the log records' redaction too, secrets hidden and
    # numbers kept: a note with a server's words in it, a traceback Python prints itself.
    install_output()
    try:
        cli(prog_name="phischer")
    except KeyboardInterrupt:
        sys.exit(130)
