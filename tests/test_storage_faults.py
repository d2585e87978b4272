"""A database or output folder that cannot take a write (a full disk): nothing acknowledged is
lost, nothing half-written is left, and the user is told in one line.

A full disk is made with RLIMIT_FSIZE: a write that would take a file past it fails with
EFBIG, as it would with ENOSPC, for that process alone and without root. (Python ignores
SIGXFSZ, so the write fails instead of killing the process.)
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa

from phischer.models import Message
from tests.conftest import post_signed, serving, sms_params, twiml_bodies, write_dataset


def server_pids(port: int) -> list[int]:
    """The `phischer serve --port PORT` processes: gunicorn's arbiter and its workers."""
    wanted = f"serve\0--port\0{port}\0".encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if wanted in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # ended meanwhile
            continue
    return pids


@contextmanager
def disk_full(pids: list[int]) -> Iterator[None]:
    """No file of these processes may grow (or be written) until the block ends."""
    before = {pid: resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
              for pid in pids}  # fmt: skip
    try:
        yield
    finally:
        for pid, limits in before.items():
            resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)


def test_a_text_the_database_cannot_store_is_not_acknowledged_and_its_retry_is(
    settings, personas, database, tmp_path
):
    # A full disk made the webhook answer 200 with the fallback ("Try again in a bit"): Twilio
    # took the text as handled (no debugger error, no fallback URL, no retry) and it was lost.
    output: list[str] = []
    token = settings.auth_token()
    with serving(tmp_path, {"INSTANCE_PATH": str(settings.instance_path)}, output) as base:
        url = base + "/sms"
        assert post_signed(url, token, sms_params("good night", "+15550100114")).status_code == 200
        lost = sms_params("hey how are you", "+15550100114")
        with disk_full(server_pids(urlsplit(base).port)):
            refused = post_signed(url, token, lost)
            # It said ok: the database still answered its read.
            health = requests.get(base + "/healthz", timeout=10)
        assert health.status_code == 503
        assert requests.get(base + "/healthz", timeout=10).status_code == 200
        assert refused.status_code == 503
        assert refused.headers["Content-Type"].startswith("text/xml")
        assert twiml_bodies(refused.content) == []
        # Twilio's retry of the same MessageSid, once the disk has room: stored and answered.
        retried = post_signed(url, token, lost)
        assert retried.status_code == 200
        assert twiml_bodies(retried.content) == [
            "Splendid, thank you! Knitting a scarf for the cat."
        ]
        time.sleep(0.2)  # the log line of the retry
    with database.read() as s:
        bodies = s.scalars(sa.select(Message.body).where(Message.direction == "in")).all()
    assert bodies == ["good night", "hey how are you"]
    log = "".join(output)
    (line,) = [line for line in log.splitlines() if "not stored" in line]
    assert line.endswith(
        "ERROR phischer.webhook: text from …14 not stored, answered 503: disk I/O error"
    )
    assert "ERROR phischer.webhook: Health check failed: OperationalError: disk I/O error" in log
    assert "Traceback" not in log and "0100114" not in log


def run_limited(*args: str, cwd: Path, max_bytes: int) -> subprocess.CompletedProcess[str]:
    """`phischer ARGS` whose files may not grow past `max_bytes` (a disk that fills up)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.RLIM_INFINITY))

    command = [sys.executable, "-m", "phischer", *args]
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, preexec_fn=limit, timeout=120
    )


def test_a_split_the_disk_cannot_hold_says_so_in_one_line_and_leaves_the_old_files(tmp_path):
    # It ended in a traceback, and closing the unfinished files (flushing into the full disk)
    # failed again before they were removed: four hidden temp files were left behind.
    data = write_dataset(
        tmp_path / "ada.jsonl", [(f"hi {i}", f"hello {i} " * 40) for i in range(200)]
    )
    assert run_limited("dataset", "split", str(data), cwd=tmp_path, max_bytes=2**30).returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_dataset(data, [(f"yo {i}", f"hey {i} " * 40) for i in range(300)])
    before[data.name] = data.read_bytes()

    result = run_limited("dataset", "split", str(data), cwd=tmp_path, max_bytes=8192)

    assert result.returncode == 1
    assert result.stderr == f"Error: cannot write the split files in {tmp_path}: File too large\n"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_file_deleted_or_replaced_while_serving_takes_no_more_texts(
    settings, personas, database, tmp_path, how
):
    # `make clean` (or `rm`) under a running server, or a backup moved over the file: the
    # open connections went on committing texts into the old file, and said 200.
    output: list[str] = []
    token = settings.auth_token()
    path = database.path
    backup = path.with_name("backup.db")
    with serving(tmp_path, {"INSTANCE_PATH": str(settings.instance_path)}, output) as base:
        url = base + "/sms"
        assert post_signed(url, token, sms_params("good night", "+15550100114")).status_code == 200
        if how == "deleted":
            for name in (path.name, path.name + "-wal", path.name + "-shm"):
                path.with_name(name).unlink(missing_ok=True)
        else:
            shutil.copyfile(path, backup)
            os.replace(backup, path)
        # Several: each worker must refuse, the one that has not written yet too (its first
        # connection makes a new empty file where the old one was).
        for i in range(6):
            refused = post_signed(url, token, sms_params(f"hey {i}", "+15550100114"))
            assert refused.status_code == 503, "".join(output)
        assert requests.get(base + "/healthz", timeout=10).status_code == 503
        time.sleep(0.2)  # the log lines
    lines = [line for line in "".join(output).splitlines() if "not stored" in line]
    assert len(lines) == 6
    assert lines[0].endswith(
        f"text from …14 not stored, answered 503: the database file {path} was deleted or "
        "replaced while phischer served it: restart `phischer serve`"
    )


def test_a_database_file_replaced_while_the_model_writes_is_not_acknowledged(
    app, twilio_post, settings, monkeypatch
):
    # The text was committed to the file before the model ran; the file replaced meanwhile
    # made the reply's write fail, answered 200 with the fallback: Twilio never sent it again,
    # and the text was only in the old file, which no one reads.
    from phischer.backends.retrieval import RetrievalBackend

    db_file = settings.instance_path / "phischer.db"
    reply = RetrievalBackend.reply

    def reply_then_replace(self, persona, messages):
        made = reply(self, persona, messages)
        os.replace(db_file, f"{db_file}.old")  # a backup moved over it, in effect
        shutil.copy(f"{db_file}.old", db_file)
        return made

    monkeypatch.setattr(RetrievalBackend, "reply", reply_then_replace)
    response = twilio_post("hey how are you")
    assert response.status_code == 503
    assert response.replies == []


def test_a_persona_the_disk_cannot_hold_is_one_line_and_not_added(tmp_path):
    # A full disk ended `persona add` (any command that writes the database) in a traceback,
    # after "Added persona Cy".
    data = write_dataset(tmp_path / "cy.jsonl", [("hi", "hello")], system="You are Cy. " * 5000)
    add = ("persona", "add", "Cy", "--keyword", "cy", "--dataset", str(data))
    assert run_limited("db", "upgrade", cwd=tmp_path, max_bytes=2**30).returncode == 0

    # Room for SQLite's 32 KiB shared-memory file, not for the write-ahead log of a 60 KB row.
    result = run_limited(*add, cwd=tmp_path, max_bytes=32768)

    assert (result.returncode, result.stdout) == (1, "")
    db = tmp_path / "instance" / "phischer.db"
    assert result.stderr == f"Error: cannot use the database sqlite:///{db}: disk I/O error\n"
    listed = run_limited("persona", "list", cwd=tmp_path, max_bytes=2**30)
    assert "Cy" not in listed.stdout
    assert run_limited(*add, cwd=tmp_path, max_bytes=2**30).returncode == 0  # room again
