"""What phischer creates in the instance folder is its user's alone, whatever the umask."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from phischer import instance_lock, tunnel, webhook_registration
from phischer.config import Settings
from phischer.db import Database
from phischer.migrate import upgrade


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: every file gets the mode it was created with, nothing narrows it."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    """The permission bits of `path`."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_the_database_token_and_tunnel_files_are_private(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    settings = Settings.from_env(instance_path=instance)
    settings.auth_token()  # the development token
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    try:
        with db.write() as session:  # the write lock, and a WAL while a connection is open
            session.execute(sa.text("CREATE TABLE t (x)"))
        database = instance / "phischer.db"
        journals = [database.with_name(f"phischer.db{end}") for end in ("-wal", "-shm")]
        assert all(p.exists() for p in journals)
        for path in [database, *journals, database.with_name("phischer.db.wlock")]:
            assert mode(path) == 0o600, path
    finally:
        db.dispose()
    with instance_lock.folder_lock(instance, "up"):
        tunnel.write_public_url(instance, "https://x.ngrok.app")
        webhook_registration._save_records(instance, {"PN0": {"pid": os.getpid()}})
        made = {p.name: mode(p) for p in instance.iterdir()}
    names = ["dev_auth_token", "phischer.db", "phischer.db.wlock", "phischer.db.migrating"]
    names += ["public_url", "tunnel.lock"]
    assert made == dict.fromkeys([*names, "tunnel_state.json"], 0o600)
    assert mode(instance) == 0o700


@pytest.mark.usefixtures("open_umask")
def test_a_database_folder_is_made_private_and_one_that_exists_is_left_alone(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(0o755)  # its owner's choice
    Database(f"sqlite:///{shared / 'a.db'}").dispose()
    Database(f"sqlite:///{tmp_path / 'new' / 'b.db'}").dispose()
    assert (mode(shared), mode(tmp_path / "new")) == (0o755, 0o700)
    assert mode(shared / "a.db") == mode(tmp_path / "new" / "b.db") == 0o600


def test_git_ignores_secrets_and_personal_data_but_not_the_example(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    (tmp_path / ".gitignore").write_text((root / ".gitignore").read_text())
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    private = [".env", ".env.local", "instance/phischer.db", "phischer.db", "phischer.db-wal",
               "phischer.db-shm", "phischer.db.wlock", "chats.jsonl", "export.zip",
               # The README's import examples, and exports as the apps name them, unpacked
               # at the top of the checkout.
               "discord-export/general [1].json", "DataExport_2024-03-05/result.json",
               "ChatExport_2024-03-05/result.json", "result.json",
               "Fictional Guild - general [222].csv", "WhatsApp Chat with Sam Rivera.txt",
               "Chat de WhatsApp con Sam.txt", "_chat.txt", "data/tweets.js",
               "your_facebook_activity/messages/inbox/sam_1/message_1.json",
               "messages/inbox/sam_1/message_1.json"]  # fmt: skip
    kept = [".env.example", "phischer/sample/personas.json", "requirements.txt",
            "constraints.txt", "pyproject.toml", "tests/fixtures/telegram/full/result.json",
            "scripts/sample_source/dex.txt"]  # fmt: skip
    names = [*private, *kept]
    checked = subprocess.run(
        ["git", "-C", str(tmp_path), "check-ignore", "--no-index", *names],
        capture_output=True,
        text=True,
    )
    assert checked.stdout.splitlines() == private


def test_git_ignores_every_file_a_database_at_the_top_of_the_checkout_brings(
    tmp_path: Path,
) -> None:
    # DATABASE_URL=sqlite:///phischer.db puts the database beside the code: whatever files
    # phischer makes next to it (journals, locks) hold or reveal texts and must stay out too.
    root = Path(__file__).resolve().parent.parent
    (tmp_path / ".gitignore").write_text((root / ".gitignore").read_text())
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    url = f"sqlite:///{tmp_path / 'phischer.db'}"
    upgrade(url)
    db = Database(url)
    try:
        with db.write() as session:  # the write lock, and a WAL while a connection is open
            session.execute(sa.text("CREATE TABLE t (x)"))
        made = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("phischer.db"))
        checked = subprocess.run(
            ["git", "-C", str(tmp_path), "check-ignore", "--no-index", *made],
            capture_output=True,
            text=True,
        )
    finally:
        db.dispose()
    assert "phischer.db.migrating" in made
    assert checked.stdout.splitlines() == made
