"""DATABASE_URL as users and hosts write it: normalised, or refused in one line."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress

import pytest
from click.testing import CliRunner

from phischer import db
from phischer.cli import cli
from phischer.config import ConfigError
from phischer.db_url import normalize_database_url

HANG_UP_S = 8


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Heroku's scheme, and a bare postgresql:// (SQLAlchemy 2.1 would pick psycopg 3,
        # which the postgres extra does not install): both get the installed psycopg2.
        ("postgres://u:pw@db.example.com/app", "postgresql+psycopg2://u:pw@db.example.com/app"),
        (
            "postgresql://u@db.example.com:5433/app",
            "postgresql+psycopg2://u@db.example.com:5433/app",
        ),
        ("postgresql+psycopg2://u@h/app", "postgresql+psycopg2://u@h/app"),
        ("sqlite:///instance/phischer.db", "sqlite:///instance/phischer.db"),
        ("sqlite:////abs/path.db", "sqlite:////abs/path.db"),
    ],
)
def test_urls_are_normalised(raw, expected):
    assert normalize_database_url(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("notaurl", "DATABASE_URL is not a database URL: use e.g. sqlite:///"),
        ("foo://x", "DATABASE_URL=foo://x: SQLAlchemy has no such database"),
        ("mysql://u:hunter2@h/d", "DATABASE_URL=mysql://u:***@h/d needs the MySQLdb driver"),
        # The part after a bare @ would be taken for the host and shown in every error.
        ("postgresql://u:hun@ter2@h/d", "DATABASE_URL has an @ in its password or user name"),
        # SQLAlchemy's own ValueError, a traceback.
        ("postgresql://u:hunter2@h:5432x/d", "DATABASE_URL has a port that is not a number"),
        # Each connection its own empty database: the migrated tables were never seen.
        ("sqlite://", "DATABASE_URL=sqlite:// is an in-memory SQLite database"),
        ("sqlite:///:memory:", "DATABASE_URL=sqlite:///:memory: is an in-memory SQLite database"),
    ],
)
def test_unusable_urls_are_one_line(raw, message):
    with pytest.raises(ConfigError) as caught:
        normalize_database_url(raw)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value) and "ter2" not in str(caught.value)


def test_cli_names_an_unreachable_database_without_its_password(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://clone:hunter2@127.0.0.1:1/phischer")
    result = CliRunner().invoke(cli, ["persona", "list"])
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith(
        "Error: cannot reach the database postgresql+psycopg2://clone:***@127.0.0.1:1/phischer: "
    )
    assert "hunter2" not in result.output


def test_cli_refuses_a_bad_url_before_doing_anything(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", "notaurl")
    for command in (["db", "upgrade"], ["persona", "list"], ["seed"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1 and result.output.startswith("Error: DATABASE_URL is not")
    assert not (tmp_path / "instance").exists()


def test_a_database_that_never_answers_is_one_line_within_the_connect_timeout(monkeypatch):
    # A host that takes the connection and then says nothing (a dead server behind a proxy,
    # a half-open firewall): without a connect timeout `serve`, `db upgrade` and /healthz
    # would wait on it for good. This one hangs up after HANG_UP_S, well after the timeout.
    monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 2)  # libpq's least
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held = []

    def accept_and_say_nothing() -> None:
        with suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    threading.Timer(HANG_UP_S, lambda: [s.close() for s in [listener, *held]]).start()
    monkeypatch.setenv("DATABASE_URL", f"postgres://clone@127.0.0.1:{port}/phischer")
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert time.monotonic() - started < HANG_UP_S - 1
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith("Error: cannot reach the database") and "timeout" in line


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_cli_refuses_an_in_memory_database_in_one_line(monkeypatch, url):
    monkeypatch.setenv("DATABASE_URL", url)
    result = CliRunner().invoke(cli, ["seed"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: DATABASE_URL={url} is an in-memory SQLite database, which no other connection "
        "or process sees: give a file, e.g. sqlite:///instance/phischer.db"
    ]


def test_cli_names_a_file_that_is_not_a_database(monkeypatch, tmp_path):
    # DATABASE_URL pointed at some other file (a typo, a backup's archive): a traceback before.
    other = tmp_path / "notes.db"
    other.write_text("not a database\n" * 100)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{other}")
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: cannot reach the database sqlite:///{other}: file is not a database"
    ]
    assert other.read_text() == "not a database\n" * 100
