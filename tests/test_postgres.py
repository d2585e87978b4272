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
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
import sqlalchemy as sa
from requests import Response
from werkzeug.serving import make_server

from phischer import create_app
from phischer.migrate import upgrade
from phischer.models import Contact, Message
from phischer.store import PG_CONNECTIONS
from tests.conftest import phischer_at_once, post_signed, sms_params, twiml_bodies, write_dataset

T = TypeVar("T")
BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
BINDIR = os.path.dirname(BINARIES[-1]) if BINARIES else ""


def _run(args: list[str], cwd: str) -> None:
    # initdb refuses to run as root: use the postgres account the package created.
    if os.geteuid() == 0:
        args = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(args)]
    subprocess.run(args, check=True, capture_output=True, cwd=cwd, timeout=60)


@pytest.fixture(scope="module")
def pg_url():
    if not BINARIES:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    # Not under pytest's tmp folder: it is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="phischer-pg-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    _run([f"{BINDIR}/initdb", "-D", str(root / "data"), "-A", "trust", "-U", "postgres"], str(root))
    base = f"postgresql+psycopg2://postgres@/postgres?host={root}&port={port}"
    pg_ctl(base, "start")
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE phischer")
    engine.dispose()
    yield f"postgresql+psycopg2://postgres@/phischer?host={root}&port={port}"
    pg_ctl(base, "stop", "-m", "immediate")
    shutil.rmtree(root, ignore_errors=True)


def pg_ctl(pg_url: str, action: str, *options: str) -> None:
    """Start or stop the throwaway cluster `pg_url` is on (its data is beside its socket)."""
    url = sa.engine.make_url(pg_url)
    root, port = url.query["host"], url.query["port"]
    if action == "start":
        quote = "'''"  # an empty listen_addresses, through pg_ctl's shell: Unix socket only
        options = ("-l", f"{root}/log", "-o", f"'-p {port} -k {root} -c listen_addresses={quote}")
    _run([f"{BINDIR}/pg_ctl", "-D", f"{root}/data", "-w", *options, action], root)


@contextmanager
def server_stopped(pg_url: str) -> Iterator[None]:
    """The PostgreSQL server really stopped during the block, as for a restart or an upgrade."""
    pg_ctl(pg_url, "stop", "-m", "fast")  # ends every session at once
    try:
        yield
    finally:
        pg_ctl(pg_url, "start")


@pytest.fixture
def make_pg_app(pg_url, settings, tmp_path):
    """A fresh schema on the PostgreSQL server and an app on it; keywords override settings."""
    apps = []

    def factory(*, fresh: bool = True, **overrides):
        # fresh=False: one more instance on the database as it is (multi-instance tests).
        if not fresh:
            app = create_app(settings.with_overrides(**{"database_url": pg_url, **overrides}))
            apps.append(app)
            return app
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


def test_every_twilio_status_fits_the_delivery_column_on_postgres(pg_app, twilio_post):
    """PostgreSQL refuses a string longer than its column; "partially_delivered" is 19."""
    from phischer.delivery import STATUS_ORDER
    from tests.test_delivery import callback, rows

    twilio_post("good night", target=pg_app)
    reply = [m for m in rows(pg_app) if m.direction == "out"][0]
    for status in sorted(STATUS_ORDER, key=STATUS_ORDER.get):
        assert callback(pg_app, reply.id, status).status_code == 200, status
    assert [m.delivery for m in rows(pg_app) if m.direction == "out"] == ["read"]
    assert callback(pg_app, reply.id, "partially_delivered").status_code == 200  # late


@contextmanager
def served(*apps) -> Iterator[list[str]]:
    """Each app behind its own threaded WSGI server, as instances behind a load balancer."""
    servers = [make_server("127.0.0.1", 0, app, threaded=True) for app in apps]
    threads = [
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        for server in servers
    ]
    for thread in threads:
        thread.start()
    try:
        yield [f"http://127.0.0.1:{server.server_port}/sms" for server in servers]
    finally:
        for server, thread in zip(servers, threads, strict=True):
            server.shutdown()
            thread.join()


def post_to_instances(apps, texts: list[tuple[int, dict]], workers: int) -> list[Response]:
    """POST signed (instance index, form) texts at once, each to its instance; the responses."""
    token = apps[0].extensions["phischer"].settings.auth_token()
    with served(*apps) as urls, ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda text: post_signed(urls[text[0]], token, text[1]), texts))


def post_concurrently(app, texts: list[tuple[str, str]], workers: int) -> list[list[str]]:
    """POST signed (body, From) texts at once through a threaded WSGI server; their replies."""
    responses = post_to_instances([app], [(0, sms_params(*text)) for text in texts], workers)
    assert all(r.status_code == 200 for r in responses)
    return [twiml_bodies(r.content) for r in responses]


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


def test_a_late_reply_goes_out_from_the_number_texted_on_postgres(
    make_pg_app, fake_twilio, twilio_rest
):
    import datetime as dt

    from phischer.recovery import sweep
    from tests.test_recovery import interrupted, stored

    pg_app = make_pg_app(**twilio_rest)
    interrupted(pg_app, "good night", "SMpgto", dt.timedelta(minutes=5), to="+15550288")
    assert sweep(pg_app.extensions["phischer"].sms).answered == 1
    (send,) = fake_twilio.calls("POST", "/Messages.json")
    assert (send.form["To"], send.form["From"]) == ("+15550100", "+15550288")
    assert [m.our_address for m in stored(pg_app)] == ["+15550288", "+15550288"]


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


# -- several instances on one database (DESIGN §3) ------------------------------------------
# Each `make_pg_app(fresh=False)` is another instance: its own engine, connections, persona
# cache and recovery sweep, sharing only the database, as separate processes would.


def instances(make_pg_app, count: int = 2, **overrides) -> list:
    """`count` instances of phischer on one fresh database."""
    first = make_pg_app(**overrides)
    return [first] + [make_pg_app(fresh=False, **overrides) for _ in range(count - 1)]


def on_model(app, base_url: str, name: str = "Ada") -> None:
    """Point a persona at an OpenAI-compatible server (the loopback fake)."""
    from tests.conftest import set_model

    with app.extensions["phischer"].db.write() as session:
        set_model(session, name, "m", base_url=base_url)


def inbound_rows(app) -> list[Message]:
    with app.extensions["phischer"].db.read() as session:
        query = sa.select(Message).where(Message.direction == "in").order_by(Message.id)
        return list(session.scalars(query))


def at_once(fn: Callable[..., T], calls: list[tuple]) -> list[T]:
    """fn(*args) for each args in `calls`, each in its own thread, all started together."""
    start = threading.Barrier(len(calls), timeout=10)

    def run(args: tuple) -> T:
        start.wait()
        return fn(*args)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def post_twice_at_once(apps, params: dict) -> list[Response]:
    """POST the same signed text to the first two instances at the same moment."""
    token = apps[0].extensions["phischer"].settings.auth_token()
    with served(*apps[:2]) as urls:
        return at_once(post_signed, [(url, token, params) for url in urls])


def test_a_retry_landing_on_another_instance_is_stored_and_answered_once(make_pg_app, fake_openai):
    # Twilio's retry of a MessageSid reaches the other instance while the first is still
    # at the model: for new numbers (both instances create the contact) and a known one.
    apps = instances(make_pg_app)
    on_model(apps[0], fake_openai.base_url)
    fake_openai.behaviour, fake_openai.delay = "slow", 0.3
    texts = [sms_params(f"hello {i}", f"+1555060{i:02d}", f"SMtwice{i}") for i in range(4)]
    texts.append(sms_params("hello again", texts[0]["From"], "SMtwice-known"))
    for text in texts:
        responses = post_twice_at_once(apps, text)
        assert [r.status_code for r in responses] == [200, 200]
        assert [r.headers["Content-Type"].split(";")[0] for r in responses] == ["text/xml"] * 2
        # One copy is answered; the other gets nothing while the first is at the model.
        replies = sorted((twiml_bodies(r.content) for r in responses), key=len)
        assert replies == [[], [f"echo: {text['Body']}"]]
    assert len(fake_openai.chat_calls) == len(texts)
    assert [m.message_sid for m in inbound_rows(apps[1])] == [t["MessageSid"] for t in texts]
    # A later retry on either instance gets the stored reply, without the model.
    again = post_to_instances(apps, [(1, texts[0]), (0, texts[1])], workers=2)
    assert [twiml_bodies(r.content) for r in again] == [["echo: hello 0"], ["echo: hello 1"]]
    assert len(fake_openai.chat_calls) == len(texts)


def sweep_at_once(apps) -> list:
    """Each instance's recovery sweep, all started at the same moment; their results."""
    from phischer.recovery import sweep

    return at_once(sweep, [(app.extensions["phischer"].sms,) for app in apps])


def test_sweeps_of_two_instances_answer_and_send_each_left_text_once(
    make_pg_app, fake_twilio, twilio_rest, fake_openai
):
    import datetime as dt

    from tests.test_recovery import backdate, interrupted, queued_reply

    apps = instances(make_pg_app, **twilio_rest)
    on_model(apps[0], fake_openai.base_url)
    fake_openai.behaviour, fake_openai.delay = "slow", 0.02  # a model call takes a moment
    left = [
        interrupted(apps[0], f"text {i}", f"SMleft{i}", dt.timedelta(minutes=5), f"+1555070{i:02d}")
        for i in range(12)
    ]  # fmt: skip
    for i in range(12):
        out_id, _ = queued_reply(apps[1], f"SMqueued{i}", phone=f"+1555071{i:02d}")
        backdate(apps[1], out_id, dt.timedelta(minutes=5))
    results = sweep_at_once(apps)
    assert sum(r.answered for r in results) == 12 and sum(r.resent for r in results) == 12
    assert sum(r.failed + r.retrying for r in results) == 0
    sends = sorted(
        (c.form["To"], c.form["Body"]) for c in fake_twilio.calls("POST", "/Messages.json")
    )
    assert sends == sorted(
        [(f"+1555070{i:02d}", f"echo: text {i}") for i in range(12)]
        + [(f"+1555071{i:02d}", "hello") for i in range(12)]
    )
    assert len(fake_openai.chat_calls) == 12
    assert [m.status for m in inbound_rows(apps[0]) if m.id in left] == ["replied"] * 12
    assert [r.answered + r.resent for r in sweep_at_once(apps)] == [0, 0]


def test_daily_limit_and_stop_hold_across_instances(make_pg_app, fake_openai, twilio_post):
    apps = instances(make_pg_app, daily_limit=5)
    on_model(apps[0], fake_openai.base_url)
    # Explicit MessageSids: twilio_post numbers its own from another counter.
    jobs = [(i % 2, sms_params(f"hey {i}", "+15550800", f"SMlimit{i}")) for i in range(20)]
    replies = [twiml_bodies(r.content) for r in post_to_instances(apps, jobs, workers=8)]
    assert sorted(map(len, replies)) == [0] * 14 + [1] * 6
    assert sum(r == ["That's all I can answer today. Talk tomorrow!"] for r in replies) == 1
    assert len(fake_openai.chat_calls) == 5
    # STOP on one instance; the other answers nothing more, and asks no model.
    post = lambda app, body: twilio_post(body, "+15550801", target=app).replies  # noqa: E731
    assert post(apps[1], "hi") == ["echo: hi"]
    assert post(apps[0], "STOP") == []
    assert post(apps[1], "still there?") == []
    assert len(fake_openai.chat_calls) == 6
    assert post(apps[1], "START")[0].startswith("You're back in")
    assert post(apps[0], "back") == ["echo: back"]


def test_persona_switch_and_reset_are_seen_by_the_other_instance_at_once(
    make_pg_app, fake_openai, twilio_post, tmp_path
):
    from phischer.personas import PersonaSpec, add_persona
    from tests.conftest import BO_PAIRS

    apps = instances(make_pg_app)
    on_model(apps[0], fake_openai.base_url)
    with apps[0].extensions["phischer"].db.write() as session:
        bo = str(write_dataset(tmp_path / "bo.jsonl", BO_PAIRS, system="You are Bo."))
        add_persona(session, PersonaSpec(name="Bo", keyword="bo", dataset=bo))
    a, b = (lambda body, app=app: twilio_post(body, target=app).replies for app in apps)
    user_turns = lambda: [m["content"] for m in fake_openai.chat_calls[-1]["messages"][1:]]  # noqa: E731
    assert a("hello") == ["echo: hello"]
    assert b("how are you") == ["echo: how are you"]
    assert user_turns() == ["hello", "echo: hello", "how are you"]
    assert a("#reset") == ["Fresh start: I've forgotten this conversation."]
    assert b("after the reset") == ["echo: after the reset"]
    assert user_turns() == ["after the reset"]  # the reset made on the other instance holds
    assert b("#bo") == ["You're now texting Bo."]
    assert a("hey how are you") == ["yo. tired. u?"]  # Bo, chosen on the other instance
    assert a("#ada") == ["Ada here!"]
    assert b("#who") == ["You're texting Ada (#ada)."]
    assert b("and now?") == ["echo: and now?"]
    assert user_turns() == ["after the reset", "echo: after the reset", "and now?"]


@pytest.mark.parametrize("command", ["STOP", "#reset"])
def test_a_quick_reply_is_not_sent_after_a_command_through_the_other_instance(
    make_pg_app, fake_openai, twilio_post, command
):
    # The model answers at once, and while it does the number's next text reaches the other
    # instance: the reply checks the contact as PostgreSQL has it (timestamps included).
    from phischer.recovery import SEND_OPTED_OUT, SEND_SUPERSEDED
    from tests.test_recovery import command_while_answering, stored

    apps = instances(make_pg_app)
    on_model(apps[0], fake_openai.base_url)
    during = command_while_answering(
        fake_openai, lambda body: twilio_post(body, target=apps[1]), command
    )
    assert twilio_post("hello", target=apps[0]).replies == []
    assert during == (
        [] if command == "STOP" else ["Fresh start: I've forgotten this conversation."]
    )
    (reply,) = [m for m in stored(apps[0]) if m.body == "echo: hello"]
    error = SEND_OPTED_OUT if command == "STOP" else SEND_SUPERSEDED
    assert (reply.status, reply.error) == ("send_failed", error)
    assert twilio_post("#who" if command == "STOP" else "anyone?", target=apps[0]).replies == (
        [] if command == "STOP" else ["echo: anyone?"]
    )


def waiting_on_locks(pg_url: str, count: int) -> None:
    """Return once `count` sessions of the test database wait for a lock."""
    # Autocommit: within one transaction pg_stat_activity is the snapshot its first read took.
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + 20
            while conn.exec_driver_sql(query).scalar() < count:
                assert time.monotonic() < deadline, f"fewer than {count} sessions wait"
                time.sleep(0.02)
    finally:
        engine.dispose()


def test_persona_remove_while_its_reply_is_stored_deadlocks_neither(
    pg_url, make_pg_app, fake_openai, twilio_post
):
    # `persona remove` deleted the persona, and PostgreSQL's ON DELETE SET NULL then needed
    # every message row of it, the text being answered included; the webhook, having updated
    # that text, waited for the persona's row to insert the reply: a deadlock, and PostgreSQL
    # cancelled one of them. Seen as "Unhandled error on /sms" while `persona remove` ran
    # under load: the texter got the fallback, and the text was left "processing" for the
    # recovery sweep to answer again by REST. The order is set here by a session holding the
    # persona's row (as `persona edit --keyword` does for a moment): remove first, then the
    # reply, wait on it.
    from phischer.personas import remove_persona

    app = make_pg_app()
    on_model(app, fake_openai.base_url)
    db = app.extensions["phischer"].db
    answering, answer = threading.Event(), threading.Event()

    def responder(body):
        answering.set()
        answer.wait(timeout=20)
        return "still here"

    fake_openai.responder = responder
    holder = sa.create_engine(pg_url)
    with ThreadPoolExecutor(2) as pool, holder.connect() as hold:
        texted = pool.submit(twilio_post, "hello", target=app)
        assert answering.wait(timeout=20)
        hold.exec_driver_sql("SELECT 1 FROM personas WHERE name = 'Ada' FOR UPDATE")

        def remove() -> None:
            with db.write() as session:
                remove_persona(session, "Ada")

        removed = pool.submit(remove)
        waiting_on_locks(pg_url, 1)  # the removal, on the held row
        answer.set()
        waiting_on_locks(pg_url, 2)  # and the webhook storing the reply
        hold.rollback()
        removed.result(timeout=20)
        answered = texted.result(timeout=20)
    holder.dispose()
    assert answered.replies == ["still here"]
    (text,) = inbound_rows(app)
    assert (text.status, text.persona_id) == ("replied", None)


def test_a_cli_change_postgres_ends_in_a_deadlock_is_one_line_saying_to_run_it_again(
    pg_url, make_pg_app, twilio_post, tmp_path
):
    # PostgreSQL ends one of two transactions that wait for each other (a text being
    # answered, say): `persona remove` ended in a traceback quoting its UPDATE.
    app = make_pg_app()
    assert twilio_post("#ada", target=app).replies == ["Ada here!"]  # the number chose Ada
    holder = sa.create_engine(pg_url)
    env = {**os.environ, "DATABASE_URL": pg_url, "INSTANCE_PATH": str(tmp_path / "instance")}
    with holder.connect() as hold:
        # Holds the texts of Ada's that `persona remove` clears (as a reply being stored does)...
        hold.exec_driver_sql("SELECT 1 FROM messages WHERE persona_id IS NOT NULL FOR UPDATE")
        removing = subprocess.Popen(
            [sys.executable, "-m", "phischer", "persona", "remove", "Ada"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            waiting_on_locks(pg_url, 1)  # the removal, having cleared the number's choice
            # ... then waits for the number's row the removal holds: PostgreSQL's deadlock
            # check ends the removal, which waited first.
            hold.exec_driver_sql("UPDATE contacts SET replies_today = replies_today")
            output, _ = removing.communicate(timeout=30)
        finally:
            removing.kill()
        hold.rollback()
    holder.dispose()
    assert removing.returncode == 1, output
    assert output.startswith("Error: the database ") and output.count("\n") == 1, output
    assert "moment (deadlock detected): run the command again" in output
    assert "UPDATE" not in output and "Traceback" not in output
    with app.extensions["phischer"].db.read() as session:  # nothing of it was kept
        assert session.scalar(sa.select(sa.func.count()).select_from(Contact).where(
            Contact.persona_id.is_not(None))) == 1  # fmt: skip


def test_status_callbacks_racing_on_two_instances_keep_the_latest_status(make_pg_app, twilio_post):
    # Twilio's callbacks for one reply come in any order and can reach two instances at
    # once: a late "sent" must never replace "undelivered" (nor erase why it failed).
    from tests.test_delivery import callback, rows

    apps = instances(make_pg_app)
    for i in range(30):
        twilio_post("good night", f"+1555090{i:02d}", sid=f"SMcallback{i}", target=apps[0])
    for reply in [m.id for m in rows(apps[0]) if m.direction == "out"]:
        calls = [(apps[0], reply, "undelivered", "30003"), (apps[1], reply, "sent", "")]
        assert [r.status_code for r in at_once(callback, calls)] == [200, 200]
    error = "Twilio 30003 (undelivered): the phone is off or out of reach"
    assert [(m.delivery, m.error) for m in rows(apps[1]) if m.direction == "out"] == [
        ("undelivered", error)
    ] * 30


def until(done: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Wait until done() is true (fail after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting after {timeout_s:g} s")
        time.sleep(0.01)


def drop_connections(pg_url: str) -> None:
    """End every other session on the database, as a PostgreSQL restart or failover does."""
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) {others}")
        # pg_terminate_backend only signals them: wait until they are gone.
        until(lambda: not conn.exec_driver_sql(f"SELECT count(*) {others}").scalar())
    engine.dispose()


def test_an_instance_goes_on_after_the_database_dropped_its_connections(
    make_pg_app, twilio_post, pg_url, fake_twilio, twilio_rest
):
    from phischer.recovery import sweep
    from tests.test_delivery import callback, rows

    app = make_pg_app(**twilio_rest)
    answer = ["Sleep well, dear. Dream of engines."]
    assert twilio_post("good night", sid="SMbefore", target=app).replies == answer
    drop_connections(pg_url)
    # Each text stored and answered, not the fallback for every text until a restart.
    for sid, phone in (("SMafter1", "+15550901"), ("SMafter2", "+15550902")):
        assert twilio_post("good night", phone, sid=sid, target=app).replies == answer
    assert callback(app, rows(app)[-1].id, "delivered").status_code == 200
    drop_connections(pg_url)
    assert sweep(app.extensions["phischer"].sms).answered == 0  # the sweep's reads too
    assert [m.message_sid for m in rows(app) if m.direction == "in"] == [
        "SMbefore", "SMafter1", "SMafter2"
    ]  # fmt: skip
    assert rows(app)[-1].delivery == "delivered"


def test_a_connection_dropped_mid_text_costs_that_text_only(
    make_pg_app, twilio_post, pg_url, caplog
):
    app = make_pg_app()
    assert twilio_post("good night", "+15550910", target=app).status_code == 200
    engine = sa.create_engine(pg_url)
    with engine.connect() as locker, ThreadPoolExecutor(1) as pool:
        # The text waits on the contact's row lock; then its session ends under it.
        locker.exec_driver_sql("SELECT 1 FROM contacts FOR UPDATE")
        waiting = pool.submit(twilio_post, "hey how are you", "+15550910", sid="SMcut", target=app)
        until(
            lambda: locker.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).scalar()
        )
        # Not stored: a 503, not the fallback's 200 that told Twilio it was handled.
        cut = waiting.result(timeout=10)
        assert (cut.status_code, cut.replies) == (503, [])
    engine.dispose()
    # The log says why (not "connection already closed" from rolling back a dead one) ...
    assert "not stored, answered 503: server closed the connection" in caplog.text
    assert "already closed" not in caplog.text
    # ... and the next text on that thread has a connection again: Twilio's retry, say.
    answer = ["Splendid, thank you! Knitting a scarf for the cat."]
    assert twilio_post("hey how are you", "+15550910", sid="SMcut", target=app).replies == answer


def text_and_health(
    app, twilio_post, sid: str, phone: str = "+15550100114"
) -> tuple[int, list[str], int]:
    """POST a text (SID `sid`), then GET /healthz: (its status, its replies, health's status)."""
    text = twilio_post("hey how are you", phone, sid=sid, target=app)
    return text.status_code, text.replies, app.test_client().get("/healthz").status_code


SPLENDID = ["Splendid, thank you! Knitting a scarf for the cat."]
ANSWERED = (200, SPLENDID, 200)  # the text answered, and /healthz ok


def test_a_text_postgres_undoes_to_break_a_deadlock_is_not_acknowledged_and_its_retry_is(
    pg_app, pg_url, twilio_post, caplog
):
    # Storing a text PostgreSQL ended for a deadlock (40P01, here raised by a trigger, as the
    # server raises it for a real one) got 200 and the fallback: not stored, and Twilio, told
    # it was handled, never sent it again. Run again, the same transaction goes through.
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION clash() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
            "'deadlock detected' USING ERRCODE = '40P01'; END $$ LANGUAGE plpgsql; "
            "CREATE TRIGGER clash BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION clash()"
        )
        assert text_and_health(pg_app, twilio_post, "SMclash") == (503, [], 200)
        assert not inbound_rows(pg_app)
        conn.exec_driver_sql("DROP TRIGGER clash ON messages; DROP FUNCTION clash()")
    engine.dispose()
    assert "not stored, answered 503: deadlock detected" in caplog.text
    assert text_and_health(pg_app, twilio_post, "SMclash") == ANSWERED


def test_a_text_while_the_database_server_is_down_is_not_acknowledged_and_its_retry_is(
    pg_app, pg_url, twilio_post, caplog
):
    # PostgreSQL stopped (restarting, upgraded, failing over): each text got 200 with the
    # fallback and a traceback in the log, so Twilio took it as handled and it was lost.
    assert text_and_health(pg_app, twilio_post, "SMbefore", "+15550100100") == ANSWERED
    with server_stopped(pg_url):
        assert text_and_health(pg_app, twilio_post, "SMdown") == (503, [], 503)
    # Back: the connections it held are dead, and are replaced without a restart of phischer.
    assert text_and_health(pg_app, twilio_post, "SMdown") == ANSWERED
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert lines[0].startswith("text from …14 not stored, answered 503: connection to server on ")
    assert lines[1].startswith("Health check failed: OperationalError: connection to server on ")
    assert len(lines) == 2 and "0100114" not in caplog.text


def test_the_recovery_sweep_says_a_database_outage_once_and_when_it_is_over(pg_app, pg_url, caplog):
    # A traceback every minute while PostgreSQL restarted buried the lines that mattered.
    from phischer.recovery import Sweeper

    sweeper = Sweeper(pg_app.extensions["phischer"].sms, every_s=60)  # driven by hand
    with server_stopped(pg_url):
        for _ in range(3):
            sweeper.sweep_logged()
    sweeper.sweep_logged()
    sweeper.sweep_logged()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "phischer.recovery"]
    assert [level for level, _ in lines] == ["WARNING", "WARNING"]
    assert lines[0][1].startswith("Recovery sweep: the database cannot be used (connection to ")
    assert lines[0][1].endswith("; trying again every 60 s")
    assert lines[1][1] == "Recovery sweep: the database is back; swept"
    assert "Traceback" not in caplog.text


def test_a_text_cut_off_by_statement_timeout_is_not_acknowledged(make_pg_app, pg_url, twilio_post):
    # A server too slow to store the text within its statement_timeout (a hosted plan's):
    # the fallback's 200 lost the text. Here a row held locked makes the statement wait.
    make_pg_app()
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("DROP ROLE IF EXISTS hurried")
        conn.exec_driver_sql("CREATE ROLE hurried LOGIN SUPERUSER")
        conn.exec_driver_sql("ALTER ROLE hurried SET statement_timeout = '500ms'")
    engine.dispose()
    app = make_pg_app(fresh=False, database_url=pg_url.replace("//postgres@", "//hurried@"))
    assert twilio_post("good night", "+15550100114", target=app).status_code == 200
    engine = sa.create_engine(pg_url)
    with engine.connect() as locker:
        locker.exec_driver_sql("SELECT 1 FROM contacts FOR UPDATE")
        # Cut off after 0.5 s, before the 5 s lock_timeout (which gets the fallback).
        assert text_and_health(app, twilio_post, "SMslow") == (503, [], 200)
    engine.dispose()
    assert text_and_health(app, twilio_post, "SMslow") == ANSWERED


@contextmanager
def read_only(pg_url: str) -> Iterator[None]:
    """The database read-only for sessions opened during the block (as on a standby)."""
    admin_url = pg_url.replace("/phischer?", "/postgres?")  # ALTER DATABASE is a write too
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("ALTER DATABASE phischer SET default_transaction_read_only = on")
    try:
        drop_connections(pg_url)  # the setting holds for new sessions
        yield
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql("ALTER DATABASE phischer RESET default_transaction_read_only")
        admin.dispose()
        drop_connections(pg_url)


def test_a_read_only_database_fails_its_texts_and_health_check(pg_app, pg_url, twilio_post, caplog):
    # A standby after a failover, or a plan over its quota made read-only: every text got
    # 503, and /healthz still said ok (it only read).
    assert text_and_health(pg_app, twilio_post, "SMbefore", "+15550100100") == ANSWERED
    with read_only(pg_url):
        assert text_and_health(pg_app, twilio_post, "SMreadonly") == (503, [], 503)
    assert "answered 503: cannot execute SELECT FOR UPDATE in a read-only " in caplog.text
    assert "Health check failed: ReadOnlyDatabase: the database is read-only" in caplog.text
    assert text_and_health(pg_app, twilio_post, "SMreadonly") == ANSWERED


def test_cli_writes_to_a_read_only_database_fail_in_one_line(pg_url, monkeypatch, tmp_path):
    # `persona add` ended in a traceback quoting its INSERT; `db upgrade` with a migration to
    # run, in one quoting its CREATE TABLE.
    from click.testing import CliRunner

    from phischer.cli import cli
    from phischer.db_url import shown

    monkeypatch.setenv("DATABASE_URL", pg_url)
    data = str(write_dataset(tmp_path / "cy.jsonl", [("hi", "hello")]))
    add = ["persona", "add", "Cy", "--keyword", "cy", "--dataset", data]
    refused = f"Error: cannot use the database {shown(pg_url)}: cannot execute"
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)  # read_only ends sessions
    for migrated in (True, False):
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        if migrated:
            upgrade(pg_url)
        with read_only(pg_url):
            added, upgraded = (CliRunner().invoke(cli, args) for args in (add, ["db", "upgrade"]))
        if migrated:
            expected = [(1, f"{refused} INSERT in a read-only transaction\n"),
                        (0, "Database is up to date.\n")]  # fmt: skip
        else:
            expected = [(1, f"{refused} CREATE TABLE in a read-only transaction\n")] * 2
        assert [(r.exit_code, r.output) for r in (added, upgraded)] == expected
    engine.dispose()


def test_two_servers_sweep_and_take_a_retry_as_one(
    make_pg_app, pg_url, fake_openai, fake_twilio, twilio_rest, settings, tmp_path
):
    # The same as above with real processes: two `phischer serve` (two gunicorn workers
    # each), all four sweeping for left texts as they start.
    import datetime as dt
    from contextlib import ExitStack

    from tests.conftest import serving
    from tests.test_recovery import backdate, interrupted, queued_reply

    app = make_pg_app(**twilio_rest)
    on_model(app, fake_openai.base_url)
    fake_openai.behaviour, fake_openai.delay = "slow", 0.3  # sweeps last while others start
    for i in range(8):
        interrupted(app, f"text {i}", f"SMleft{i}", dt.timedelta(minutes=5), f"+1555070{i:02d}")
        out_id, _ = queued_reply(app, f"SMqueued{i}", phone=f"+1555071{i:02d}")
        backdate(app, out_id, dt.timedelta(minutes=5))
    app.extensions["phischer"].sms.shutdown()
    env = {"DATABASE_URL": pg_url, "INSTANCE_PATH": str(settings.instance_path)}
    env.update({name.upper(): value for name, value in twilio_rest.items()})
    sends = lambda: fake_twilio.calls("POST", "/Messages.json")  # noqa: E731
    with ExitStack() as stack:
        bases = [stack.enter_context(serving(tmp_path, env)) for _ in range(2)]
        until(lambda: len(sends()) >= 16, timeout_s=30)
        token = twilio_rest["twilio_auth_token"]
        text = sms_params("one more", "+15550700", "SMtwice-servers")
        responses = at_once(post_signed, [(f"{base}/sms", token, text) for base in bases])
        time.sleep(1)  # room for a second sweep's duplicate sends, were there any
    assert sorted((c.form["To"], c.form["Body"]) for c in sends()) == sorted(
        [(f"+1555070{i:02d}", f"echo: text {i}") for i in range(8)]
        + [(f"+1555071{i:02d}", "hello") for i in range(8)]
    )
    assert [r.status_code for r in responses] == [200, 200]
    assert sorted((twiml_bodies(r.content) for r in responses), key=len) == [
        [], ["echo: one more"]
    ]  # fmt: skip
    assert len(fake_openai.chat_calls) == 8 + 1
    assert [m.message_sid for m in inbound_rows(app)].count("SMtwice-servers") == 1


def test_instances_migrating_a_fresh_database_at_once_all_succeed(pg_url, tmp_path):
    # A release phase and several web instances starting together each migrate first: one
    # creates the schema, the others wait for it and find it done instead of crashing on it.
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()
    runs = phischer_at_once(
        4, "db", "upgrade", cwd=tmp_path, DATABASE_URL=pg_url, INSTANCE_PATH=str(tmp_path)
    )
    assert [code for code, _ in runs] == [0] * 4, runs
    outputs = [out for _, out in runs]
    assert sum("Database migrated from an empty database" in o for o in outputs) == 1, outputs
    assert sum("Database is up to date." in o for o in outputs) == 3, outputs


def connection_limited(pg_url: str, limit: int) -> str:
    """The URL of a role allowed `limit` connections, as a small hosted plan allows."""
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:  # superusers are exempt from limits: a role of its own
        conn.exec_driver_sql("DROP ROLE IF EXISTS limited")
        conn.exec_driver_sql(f"CREATE ROLE limited LOGIN CONNECTION LIMIT {limit}")
        conn.exec_driver_sql("GRANT USAGE ON SCHEMA public TO limited")
        conn.exec_driver_sql("GRANT ALL ON ALL TABLES IN SCHEMA public TO limited")
        conn.exec_driver_sql("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO limited")
    engine.dispose()
    return pg_url.replace("//postgres@", "//limited@")


def test_a_burst_on_one_instance_leaves_connections_for_the_others(
    make_pg_app, pg_url, fake_openai, fake_twilio, twilio_rest
):
    # Each thread kept a connection of its own for good: after one burst of slow replies an
    # instance held one per reply thread, a plan's limit was full, and every text the other
    # instance (or this one) could not store got the fallback, until a restart.
    on_model(make_pg_app(**twilio_rest), fake_openai.base_url)
    url = connection_limited(pg_url, 12)
    apps = [make_pg_app(fresh=False, database_url=url, reply_timeout_s=0.05, **twilio_rest)
            for _ in range(2)]  # fmt: skip
    fake_openai.behaviour, fake_openai.delay = "slow", 0.5  # answered by REST
    burst = [(0, sms_params(f"burst {i}", f"+1555095{i:02d}")) for i in range(24)]
    later = [(1, sms_params(f"later {i}", f"+1555096{i:02d}")) for i in range(4)]
    sends = lambda: sorted(c.form["Body"] for c in fake_twilio.calls("POST", "/Messages.json"))  # noqa: E731
    for texts in (burst, later):  # the second instance's texts after the burst's
        # Stored and answered by REST: no fallback in the TwiML.
        responses = post_to_instances(apps, texts, workers=12)
        assert [twiml_bodies(r.content) for r in responses] == [[]] * len(texts)
    until(lambda: len(sends()) == 28)
    assert sends() == sorted(f"echo: {t['Body']}" for _, t in burst + later)


def lock_waits(engine: sa.Engine) -> int:
    """How many sessions wait for a lock (read in a transaction of its own: a fresh count)."""
    with engine.connect() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        return conn.exec_driver_sql(query).scalar()


def test_a_contact_locked_elsewhere_holds_up_its_own_texts_only(make_pg_app, pg_url):
    # A transaction left open on a contact's row (a psql session, an instance cut off from
    # the network mid-text) made that number's texts wait on it for good, each on one of the
    # process's connections: once they were all taken, no other text could be stored.
    app = make_pg_app()
    token = app.extensions["phischer"].settings.auth_token()
    post = lambda url, body, phone: post_signed(url, token, sms_params(body, phone))  # noqa: E731
    engine = sa.create_engine(pg_url)
    with served(app) as (url,), ThreadPoolExecutor(4) as pool, engine.connect() as locker:
        assert post(url, "good night", "+15550920").status_code == 200
        locker.exec_driver_sql("SELECT 1 FROM contacts FOR UPDATE")
        stuck = [pool.submit(post, url, f"hi {i}", "+15550920") for i in range(PG_CONNECTIONS)]
        until(lambda: lock_waits(engine) == PG_CONNECTIONS)
        other = pool.submit(post, url, "hey how are you", "+15550921")
        assert twiml_bodies(other.result(timeout=30).content) == [
            "Splendid, thank you! Knitting a scarf for the cat."
        ]
        # The locked number's texts end with the fallback, not with Twilio's timeout.
        fallback = ["Sorry, I can't answer right now. Try again in a bit."]
        replies = [twiml_bodies(f.result(timeout=30).content) for f in stuck]
        assert replies == [fallback] * len(stuck)
        locker.rollback()
        assert twiml_bodies(post(url, "hey how are you", "+15550920").content) == [
            "Splendid, thank you! Knitting a scarf for the cat."
        ]
    engine.dispose()


# -- one Twilio message sid, two rows racing for it -------------------------------------------
# Two replies with the same words to one number: Twilio's message for one of them can be
# claimed by the other's sweep look-up (it cannot tell them apart) while the status callback
# of its own reply, on another instance, records its sid. Neither commits before the other
# checks, so both saw the sid free; the unique index made the second fail (a 500 to Twilio's
# callback, or a sweep that raised and left the reply to be looked up again).

SID = "SM" + "ab" * 16


def two_hellos(pg_url, make_pg_app, twilio_rest):
    """An app on PostgreSQL with two stored "hello" replies to one number, and an engine."""
    from tests.test_recovery import queued_reply

    app = make_pg_app(**twilio_rest)
    first, _ = queued_reply(app, "SMhello1")
    second, _ = queued_reply(app, "SMhello2")
    return app, first, second, sa.create_engine(pg_url)


@contextmanager
def sid_written_elsewhere(engine: sa.Engine, message_id: int, sid: str) -> Iterator[None]:
    """Another instance's transaction that gave `message_id` the `sid`, committed on exit."""
    with engine.begin() as conn:
        conn.execute(sa.update(Message).where(Message.id == message_id).values(message_sid=sid))
        yield


def test_a_callback_racing_a_sweep_for_its_sid_is_recorded_on_postgres(
    pg_url, make_pg_app, twilio_rest
):
    from tests.test_delivery import callback
    from tests.test_recovery import stored

    app, first, second, engine = two_hellos(pg_url, make_pg_app, twilio_rest)
    with ThreadPoolExecutor(1) as pool:
        with sid_written_elsewhere(engine, second, SID):
            answer = pool.submit(callback, app, first, "delivered", sid=SID)
            until(lambda: lock_waits(engine) == 1)  # it waits on the other's sid
        assert answer.result(timeout=10).status_code == 200
    by_id = {m.id: m for m in stored(app)}
    assert (by_id[first].delivery, by_id[first].message_sid) == ("delivered", None)
    assert by_id[second].message_sid == SID
    engine.dispose()


def test_a_sweep_racing_a_callback_for_a_sid_sends_its_own_reply_on_postgres(
    pg_url, make_pg_app, fake_twilio, twilio_rest
):
    import datetime as dt

    from phischer.recovery import sweep
    from tests.test_recovery import backdate, stored

    app, first, second, engine = two_hellos(pg_url, make_pg_app, twilio_rest)
    service = app.extensions["phischer"].sms
    service.shutdown()  # no background sweep
    assert service.send_stored("+15550100", first, "hello") == "sent"
    (taken,) = fake_twilio.messages
    with engine.begin() as conn:  # its answer lost: the callback below brings the sid
        conn.execute(sa.update(Message).where(Message.id == first).values(message_sid=None))
    backdate(app, second, dt.timedelta(minutes=5))
    with ThreadPoolExecutor(1) as pool:
        with sid_written_elsewhere(engine, first, taken["sid"]):
            swept = pool.submit(sweep, service)
            until(lambda: lock_waits(engine) == 1)
        result = swept.result(timeout=10)
    # The look-up's only match is the first reply's message: the second was never sent.
    assert (result.already_sent, result.resent) == (0, 1)
    by_id = {m.id: m for m in stored(app)}
    assert by_id[first].message_sid == taken["sid"]
    assert (by_id[second].status, by_id[second].message_sid) == (
        "sent",
        fake_twilio.messages[1]["sid"],
    )
    engine.dispose()


def test_a_newer_reply_with_the_same_words_is_credited_to_itself_on_postgres(
    make_pg_app, fake_twilio, twilio_rest
):
    from tests.test_resend import assert_newer_hello_credited_to_itself

    assert_newer_hello_credited_to_itself(make_pg_app(**twilio_rest), fake_twilio)
