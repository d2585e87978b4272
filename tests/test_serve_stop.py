"""Ctrl-C stops `phischer serve` within seconds, even with a reply in progress."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from gunicorn.config import Config

from phischer.config import DEFAULT_FALLBACK_REPLY
from phischer.daemon_pool import DaemonPool
from phischer.models import Message
from phischer.server import QUIT_GRACE_S, Worker
from tests.conftest import free_port, post_signed, set_model, sign, sms_params
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN

# A hung worker was SIGKILLed by the arbiter graceful_timeout (20 s) after Ctrl-C.
STOPPED_WITHIN_S = 10


@dataclass
class Serving:
    """A `phischer serve` process in its own process group, and what it has printed."""

    proc: subprocess.Popen
    url: str
    output: list[str]

    def ctrl_c(self) -> float:
        """Interrupt it as Ctrl-C in its terminal does; how many seconds it took to stop."""
        started = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)  # every process of the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOPPED_WITHIN_S)
        return time.monotonic() - started


@contextlib.contextmanager
def serving(tmp_path: Path, env: dict[str, str]) -> Iterator[Serving]:
    """`phischer serve` on a free port, once it answers; killed if the test left it running."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "phischer", "serve", "--port", str(port)],
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        url = f"http://127.0.0.1:{port}/sms"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url.replace("/sms", "/healthz"), timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "".join(output)
                time.sleep(0.1)
        yield Serving(proc, url, output)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=5)


def inbound_texts(database) -> list[tuple[str, str]]:
    """(body, status) of every stored inbound text."""
    with database.read() as session:
        texts = session.scalars(sa.select(Message).where(Message.direction == "in")).all()
    return [(m.body, m.status) for m in texts]


def test_ctrl_c_with_a_slow_reply_in_progress_stops_at_once(
    tmp_path: Path, personas, database, fake_openai, fake_twilio
) -> None:
    # The model takes a minute (async replies may): Python's exit joined the reply's thread.
    fake_openai.behaviour, fake_openai.delay = "slow", 60.0
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    with serving(tmp_path, async_env(fake_twilio)) as server:
        posted = post_signed(server.url, AUTH_TOKEN, sms_params("hey how are you"))
        assert posted.status_code == 200
        deadline = time.monotonic() + 30
        while not fake_openai.chat_calls:  # the model is now working on the reply
            assert time.monotonic() < deadline, "".join(server.output)
            time.sleep(0.05)
        took = server.ctrl_c()
    log = "".join(server.output)
    assert took < STOPPED_WITHIN_S, f"still running {took:.0f} s after Ctrl-C:\n{log}"
    assert "SIGKILL" not in log
    assert "0 webhook requests and 1 slow reply unfinished" in log
    # The text stays stored, "processing": the recovery sweep answers it at the next start.
    assert inbound_texts(database) == [("hey how are you", "processing")]


def test_ctrl_c_stores_a_text_still_waiting_for_the_write_lock(
    tmp_path: Path, personas, database
) -> None:
    # Cut off at QUIT_GRACE_S before its commit, the text was lost: the recovery sweep
    # answers only stored texts, and Twilio does not retry a webhook that failed.
    answered: list[requests.Response] = []
    env = {**os.environ, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}
    with serving(tmp_path, env) as server:
        text = sms_params("still there?")
        with database.write_lock.hold():  # another process's writer, slow to commit
            poster = threading.Thread(
                target=lambda: answered.append(post_signed(server.url, AUTH_TOKEN, text))
            )
            poster.start()
            time.sleep(0.5)  # the text is at the lock
            started = time.monotonic()
            os.killpg(server.proc.pid, signal.SIGINT)  # Ctrl-C
            time.sleep(QUIT_GRACE_S + 0.5)  # longer than any request's grace
        server.proc.wait(timeout=STOPPED_WITHIN_S)
        took = time.monotonic() - started
        poster.join(timeout=10)
    log = "".join(server.output)
    assert took < STOPPED_WITHIN_S and "SIGKILL" not in log, log
    assert [body for body, _ in inbound_texts(database)] == ["still there?"]
    # Stored, it was answered as usual (the retrieval persona replies at once).
    assert [r.status_code for r in answered] == [200]
    assert "Splendid, thank you!" in answered[0].text  # the reply the dataset gives


def async_env(fake_twilio) -> dict[str, str]:
    """The environment of a server that sends every reply by REST (to the fake Twilio)."""
    return {
        **os.environ,
        "REPLY_MODE": "async",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_PHONE_NUMBER": "+15550199",
        "TWILIO_API_BASE_URL": fake_twilio.url,
        "PYTHONUNBUFFERED": "1",
    }


# A text posted from the main thread (as a program embedding the app might), and once the
# test says the model is at work (a line on stdin), a stop with a timeout.
SUBMIT_AND_STOP = """
import json, sys
from phischer import create_app
params, signature = json.loads(sys.argv[1])
app = create_app()
app.test_client().post("/sms", data=params, headers={"X-Twilio-Signature": signature})
sys.stdin.readline()
print(app.extensions["phischer"].sms.shutdown(timeout=0.2))
"""


def test_a_reply_cut_off_by_shutdown_does_not_hold_the_process_exit(
    personas, database, fake_openai, fake_twilio
) -> None:
    # Python's exit joined the reply's thread: concurrent.futures joins its pool threads,
    # and one started from the main thread is no daemon. The model takes a minute.
    fake_openai.behaviour, fake_openai.delay = "slow", 60.0
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    params = sms_params("hey how are you")
    signed = [params, sign(AUTH_TOKEN, "http://localhost/sms", params)]
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen(
        [sys.executable, "-c", SUBMIT_AND_STOP, json.dumps(signed)],
        env={**async_env(fake_twilio), "PYTHONPATH": repo},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not fake_openai.chat_calls:  # the model is now working on the reply
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        out, err = proc.communicate("stop\n", timeout=STOPPED_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOPPED_WITHIN_S} s after shutdown(timeout=0.2)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out) == (0, "1\n"), err  # one reply left at the model


@pytest.fixture
def worker():
    """A gthread Worker as the arbiter builds it, with its request pool."""
    made = Worker(1, os.getpid(), [], None, 30, Config(), None)
    made.tpool = made.get_thread_pool()
    yield made
    made.tpool.shutdown()
    made.tmp.close()


def test_the_quit_signal_handler_takes_no_lock_the_main_thread_may_hold(worker) -> None:
    # gthread's own handler shuts its pool down, under the lock the main thread holds while
    # it hands a connection to the pool, or while it runs that same handler for Ctrl-C's
    # SIGINT when the arbiter's SIGQUIT comes: the signal then deadlocked the worker.
    exits: list[object] = []

    def signalled() -> None:
        try:
            worker.handle_quit(signal.SIGINT, None)
        except SystemExit as exc:
            exits.append(exc.code)

    with worker.tpool._shutdown_lock:  # what tpool.submit() holds
        handler = threading.Thread(target=signalled, daemon=True)
        handler.start()
        handler.join(timeout=5)
        assert exits == [0]
    assert worker.quick and not worker.alive
    # The second signal (the arbiter's SIGQUIT) must not cut the worker's exit short.
    worker.handle_quit(signal.SIGQUIT, None)
    assert exits == [0]


def test_a_shutdown_with_a_timeout_leaves_slow_replies_to_the_recovery_sweep(
    make_app, personas, database, fake_openai, twilio_rest, twilio_post
) -> None:
    fake_openai.behaviour, fake_openai.delay = "slow", 2.0
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    app = make_app(reply_timeout_s=0.2, **twilio_rest)
    assert twilio_post("hey how are you", target=app).replies == []  # goes by REST later
    started = time.monotonic()
    assert app.extensions["phischer"].sms.shutdown(timeout=0.3) == 1  # still at the model
    assert time.monotonic() - started < 1.5
    # A text that comes in meanwhile is stored; the sweep answers it, not the fallback now.
    meanwhile = twilio_post("are you there", target=app)
    assert meanwhile.status_code == 200 and meanwhile.replies == []
    assert meanwhile.headers["X-Phischer-No-Reply"] == "stopping"
    with database.read() as session:
        texts = session.scalars(sa.select(Message).where(Message.direction == "in")).all()
    assert [(m.body, m.status) for m in texts] == [
        ("hey how are you", "processing"),
        ("are you there", "processing"),
    ]


def test_without_twilio_credentials_a_text_while_stopping_gets_the_fallback_now(
    make_app, personas, database, fake_openai, twilio_post
) -> None:
    # The recovery sweep could not text a late reply (it would record the text failed), so
    # the fallback now is better than nothing ever.
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    app = make_app()  # REPLY_MODE=auto, no Twilio credentials
    assert app.extensions["phischer"].sms.shutdown(timeout=0.3) == 0
    meanwhile = twilio_post("are you there", target=app)
    assert meanwhile.replies == [DEFAULT_FALLBACK_REPLY]
    assert "X-Phischer-No-Reply" not in meanwhile.headers
    assert fake_openai.chat_calls == []  # not asked: the process is about to exit
    with database.read() as session:
        text = session.scalars(sa.select(Message).where(Message.direction == "in")).one()
    assert text.status == "failed"
    assert text.error.startswith("server stopping and no Twilio credentials for a late REST")


def test_the_reply_pool_drops_queued_calls_and_leaves_running_ones_at_a_timed_shutdown() -> None:
    pool = DaemonPool(max_workers=2, name="test-pool")
    release = threading.Event()
    running = [pool.submit(release.wait, 10) for _ in range(2)]
    queued = pool.submit(lambda: "never")
    seen: list[bool] = []
    queued.add_done_callback(lambda f: seen.append(f.cancelled()))
    while not all(f.running() for f in running):
        time.sleep(0.01)
    assert len({t.name for t in threading.enumerate() if t.name.startswith("test-pool")}) == 2
    started = time.monotonic()
    assert pool.shutdown(timeout=0.2) == 2  # both still running, left to their threads
    assert time.monotonic() - started < 1.0
    assert seen == [True]
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    release.set()
    assert [f.result(timeout=5) for f in running] == [True, True]
    assert pool.shutdown() == 0
