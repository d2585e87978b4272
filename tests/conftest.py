"""Shared fixtures: a temp instance folder and migrated SQLite database per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from phischer.config import Settings
from phischer.db import Database
from phischer.migrate import upgrade

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep every test away from the developer's .env, instance folder and real services."""
    for var in (
        "DATABASE_URL", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_PHONE_NUMBER",
        "TWILIO_VALIDATE_SIGNATURE", "PUBLIC_URL", "TRUST_PROXY", "OPENAI_API_KEY",
        "OPENAI_BASE_URL", "ALLOWED_NUMBERS", "DEFAULT_PERSONA", "REPLY_MODE",
        "REPLY_TIMEOUT_S", "HISTORY_TURNS", "SESSION_GAP_HOURS", "MAX_REPLY_CHARS",
        "DAILY_LIMIT", "NGROK_AUTHTOKEN", "FALLBACK_REPLY", "MODEL_RETRIES",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    # Belt and braces: an accidental real call fails fast instead of reaching the internet.
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a temp instance folder and SQLite file."""
    return Settings.from_env(instance_path=tmp_path / "instance")


@pytest.fixture
def database(settings: Settings) -> Database:
    """A migrated temp database."""
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    yield db
    db.dispose()
