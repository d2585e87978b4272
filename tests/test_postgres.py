"""The same webhook and migrations on a real PostgreSQL server (DESIGN §3: multi-instance).

A throwaway cluster is created with the machine's PostgreSQL server binaries (Debian's
`postgresql` package) in a temp folder, on a Unix socket, and removed afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from werkzeug.serving import make_server

from phischer import create_app
from phischer.migrate import upgrade
from phischer.models import Contact, Message
from tests.conftest import post_signed, sms_params, twiml_bodies, write_dataset

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _run(args: list[str], cwd: str) -> None:
    # initdb refuses to run as root: use the postgres account the package created.
    if os.geteuid() == 0:
        args = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(args)]
    subprocess.run(args, check=True, capture_output=True, cwd=cwd, timeout=60)


@pytest.fixture(scope="module")
def pg_url():
    if not BINARIES:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    bindir = os.path.dirname(BINARIES[-1])
    # Not under pytest's tmp folder: it is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="phischer-pg-"))
    data = root / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    _run([f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres"], str(root))
    _run([f"{bindir}/pg_ctl", "-D", str(data), "-w", "-l", str(root / "log"),
          "-o", f"'-p {port} -k {root} -c listen_addresses='''", "start"], str(root))  # fmt: skip
    base = f"postgresql+psycopg2://postgres@/postgres?host={root}&port={port}"
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE phischer")
    engine.dispose()
    yield f"postgresql+psycopg2://postgres@/phischer?host={root}&port={port}"
    _run([f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], str(root))
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_pg_app(pg_url, settings, tmp_path):
    """A fresh schema on the PostgreSQL server and an app on it; keywords override settings."""
    apps = []

    def factory(**overrides):
        engine = sa.create_engine(pg_url)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        engine.dispose()
        upgrade(pg_url)
        app = create_app(settings.with_overrides(database_url=pg_url, **overrides))
        apps.append(app)
        from phischer.personas import PersonaSpec, add_persona
        from tests.conftest import ADA_PAIRS

        with app.extensions["phischer"].db.write() as session:
            add_persona(session, PersonaSpec(name="Ada", keyword="ada", greeting="Ada here!",
                                             dataset=str(write_dataset(tmp_path / "a.jsonl", ADA_PAIRS))))  # fmt: skip
        return app

    yield factory
    for app in apps:
        app.extensions["phischer"].sms.shutdown()
        app.extensions["phischer"].db.dispose()


@pytest.fixture
def pg_app(make_pg_app):
    return make_pg_app()


def test_migrations_match_models_on_postgres(pg_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from phischer.models import Base

    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    upgrade(pg_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_a_url_without_driver_works_like_hosts_write_it(pg_url, monkeypatch):
    from click.testing import CliRunner

    from phischer.cli import cli

    # What a host hands out: no +driver (SQLAlchemy alone would reach for psycopg 3).
    monkeypatch.setenv("DATABASE_URL", pg_url.replace("postgresql+psycopg2://", "postgres://"))
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert (result.exit_code, result.output) == (0, "Database is up to date.\n")
    assert CliRunner().invoke(cli, ["persona", "list"]).exit_code == 0


def test_webhook_on_postgres(pg_app, twilio_post):
    post = lambda body, **kw: twilio_post(body, target=pg_app, **kw).replies  # noqa: E731
    assert post("good night", sid="SMpg1") == ["Sleep well, dear. Dream of engines."]
    assert post("good night", sid="SMpg1") == ["Sleep well, dear. Dream of engines."]
    assert post("#ada") == ["Ada here!"]
    assert post("#reset") == ["Fresh start: I've forgotten this conversation."]
    assert post("STOP") == [] and post("hi") == []
    assert post("START")[0].startswith("You're back in")
    assert twilio_post("nul\x00", target=pg_app).status_code == 200  # stored, not lost
    with pg_app.extensions["phischer"].db.read() as session:
        inbound = session.scalars(sa.select(Message).where(Message.direction == "in")).all()
        contact = session.scalar(sa.select(Contact))
    assert [m.kind for m in inbound] == ["chat", "command", "command", "command", "optout",
                                         "command", "chat"]  # fmt: skip
    assert inbound[-1].body == "nul"
    assert contact.opted_out is False and contact.replies_today == 2  # good night, nul
    assert contact.thread_reset_at is not None


def test_a_database_error_quoting_the_row_logs_no_whole_number(pg_app, pg_url, twilio_post, caplog):
    """PostgreSQL's DETAIL quotes the row it refused, number and all, into the traceback."""
    number = "+15553330001"
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:  # a constraint only this number fails: a real refusal
        conn.exec_driver_sql(f"ALTER TABLE contacts ADD CHECK (phone <> '{number}')")
    engine.dispose()
    with caplog.at_level("INFO"):
        response = twilio_post("hi", from_=number, target=pg_app)
    assert response.replies == ["Sorry, I can't answer right now. Try again in a bit."]
    (detail,) = [line for line in caplog.text.splitlines() if line.startswith("DETAIL:")]
    assert detail.startswith("DETAIL:  Failing row contains (") and ", …01, null, f," in detail
    assert number not in caplog.text


def test_delivery_reports_on_postgres(pg_app, twilio_post):
    from tests.test_delivery import callback, rows

    twilio_post("good night", target=pg_app)
    reply = [m for m in rows(pg_app) if m.direction == "out"][0]
    assert callback(pg_app, reply.id, "delivered").status_code == 200
    assert callback(pg_app, reply.id, "sent").status_code == 200  # late: changes nothing
    assert [(m.delivery, m.error) for m in rows(pg_app) if m.direction == "out"] == [
        ("delivered", None)
    ]


def post_concurrently(app, texts: list[tuple[str, str]], workers: int) -> list[list[str]]:
    """POST signed (body, From) texts at once through a threaded WSGI server; their replies."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/sms"
    token = app.extensions["phischer"].settings.auth_token()
    try:

        def send(text: tuple[str, str]) -> list[str]:
            r = post_signed(url, token, sms_params(*text))
            assert r.status_code == 200
            return twiml_bodies(r.content)

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(send, texts))
    finally:
        server.shutdown()
        thread.join()


def test_concurrent_texts_on_postgres(pg_app):
    texts = [("hey how are you", f"+1555030{i % 20:02d}") for i in range(120)]
    replies = post_concurrently(pg_app, texts, workers=8)
    assert all(len(r) == 1 for r in replies)
    with pg_app.extensions["phischer"].db.read() as session:
        count = session.scalar(sa.select(sa.func.count()).select_from(Message))
        contacts = session.scalars(sa.select(Contact)).all()
    assert count == 240
    assert len(contacts) == 20 and sum(c.replies_today for c in contacts) == 120


def test_daily_limit_holds_for_concurrent_texts_from_one_number_on_postgres(make_pg_app):
    # Each text's transaction reads the contact's counter and writes it back; without a row
    # lock two texts read the same count (the write lock is SQLite's only), and the number
    # got more replies than DAILY_LIMIT.
    pg_app = make_pg_app(daily_limit=5)
    texts = [(f"hey how are you {i}", "+15550400") for i in range(40)]
    replies = post_concurrently(pg_app, texts, workers=16)
    notices = [r for r in replies if r == ["That's all I can answer today. Talk tomorrow!"]]
    answers = [r for r in replies if r and r not in notices]
    assert (len(answers), len(notices)) == (5, 1)
    with pg_app.extensions["phischer"].db.read() as session:
        contact = session.scalar(sa.select(Contact))
        statuses = session.scalars(sa.select(Message.status).where(Message.direction == "in")).all()
    assert contact.replies_today == 40
    assert sorted(statuses) == ["limited"] * 35 + ["replied"] * 5


def test_recovery_sweep_on_postgres(make_pg_app, fake_twilio, twilio_rest):
    import datetime as dt

    from phischer.recovery import sweep
    from tests.test_recovery import interrupted, stored

    pg_app = make_pg_app(**twilio_rest)
    service = pg_app.extensions["phischer"].sms
    inbound_id = interrupted(pg_app, "good night", "SMpgcrash", dt.timedelta(minutes=5))
    assert sweep(service).answered == 1
    assert sweep(service).answered == 0  # claimed and answered once
    sends = fake_twilio.calls("POST", "/Messages.json")
    assert [c.form["Body"] for c in sends] == ["Sleep well, dear. Dream of engines."]
    inbound, outbound = stored(pg_app)
    assert (inbound.id, inbound.status) == (inbound_id, "replied")
    assert (outbound.reply_to_id, outbound.status) == (inbound_id, "sent")


def test_a_reply_twilio_could_not_take_is_retried_on_postgres(
    make_pg_app, fake_twilio, twilio_rest
):
    from phischer.backends.base import Reply
    from phischer.commands import parse
    from phischer.inbound import Inbound
    from phischer.models import utcnow
    from phischer.recovery import RECOVER_AFTER, sweep
    from tests.test_recovery import stored

    pg_app = make_pg_app(**twilio_rest)
    service = pg_app.extensions["phischer"].sms
    service.sender.retry_delays_s = ()
    decision = service._record(Inbound(phone="+15550100", sid="SMpgbusy", body="hi"), parse("hi"))
    fake_twilio.fail_messages(503, 20503, "Service unavailable")
    service.deliver_later("+15550100", decision, (Reply(text="later"), None, 900))
    outbound = stored(pg_app)[1]
    assert outbound.status == "send_retry" and "20503" in outbound.error
    assert sweep(service, now=utcnow() + RECOVER_AFTER).resent == 1
    outbound = stored(pg_app)[1]
    assert (outbound.status, outbound.error) == ("sent", None)
    assert [c.form["Body"] for c in fake_twilio.calls("POST", "/Messages.json")] == [
        "later",
        "later",
    ]
