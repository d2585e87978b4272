"""Many numbers texting at once through the real WSGI server (gunicorn) lose nothing."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
import sqlalchemy as sa

from phischer.config import TWILIO_WEBHOOK_LIMIT_S
from phischer.models import Contact, Message
from tests.conftest import post_signed, serving, set_model, sign, sms_params, twiml_bodies
from tests.fake_twilio import AUTH_TOKEN
from tests.test_serve_stop import async_env


@pytest.fixture
def gunicorn(settings, personas, tmp_path):
    with serving(tmp_path, {"INSTANCE_PATH": str(settings.instance_path)}) as base:
        yield base


def test_concurrent_texts_from_many_numbers(gunicorn, settings, database):
    token = settings.auth_token()
    url = gunicorn + "/sms"
    numbers = [f"+1555020{i:02d}" for i in range(40)]
    jobs = [(numbers[i % len(numbers)], f"hey how are you {i}") for i in range(240)]
    session = requests.Session()

    def send(job):
        phone, body = job
        params = sms_params(body, phone)
        r = post_signed(url, token, params, client=session)
        return r.status_code, twiml_bodies(r.content), params["MessageSid"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, jobs))
    assert [status for status, _, _ in results] == [200] * len(jobs)
    assert all(len(replies) == 1 and replies[0] for _, replies, _ in results)

    with database.read() as s:
        inbound = s.scalars(sa.select(Message).where(Message.direction == "in")).all()
        outbound = s.scalar(sa.select(sa.func.count()).where(Message.direction == "out"))
        contacts = s.scalars(sa.select(Contact)).all()
    assert sorted(m.message_sid for m in inbound) == sorted(sid for _, _, sid in results)
    assert {m.status for m in inbound} == {"replied"}
    assert outbound == len(jobs)
    assert len(contacts) == len(numbers)
    assert sum(c.replies_today for c in contacts) == len(jobs)


@pytest.mark.parametrize("mode", ["auto", "inline"])
def test_a_text_that_waited_for_a_free_thread_gets_its_reply_by_rest(
    mode, tmp_path, personas, database, fake_openai, fake_twilio
):
    # Every thread busy on a slow model: the next text waits for one, then for its own
    # model. REPLY_TIMEOUT_S counted only from then, so its TwiML went out after Twilio's
    # 15 s, when Twilio had hung up: the reply was lost, stored as "replied".
    fake_openai.stall("POST", "/v1/chat/completions", 9.0, body=b"first")
    fake_openai.stall("POST", "/v1/chat/completions", 6.5, body=b"second")
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    # REPLY_TIMEOUT_S=12: the first text's 9 s model is well inside it on a busy machine
    # (at the default 10 a second of load sent it by REST too); the second, which waits 9 s
    # for the thread, still has only 13 - 9 s left for its 6.5 s model.
    env = {**async_env(fake_twilio), "REPLY_MODE": mode, "REPLY_TIMEOUT_S": "12"}
    with serving(tmp_path, env, args=("--workers", "1", "--threads", "1")) as base:
        url = base + "/sms"
        answers = {}
        first = threading.Thread(
            target=lambda: answers.update(
                first=post_signed(url, AUTH_TOKEN, sms_params("first", "+15550101"))
            )
        )
        first.start()
        while not fake_openai.chat_calls:  # the one thread is now waiting on the model
            time.sleep(0.05)
        params = sms_params("second", "+15550102")
        signature = {"X-Twilio-Signature": sign(AUTH_TOKEN, url, params)}
        try:
            # As Twilio does, it waits 15 s for the answer (ReadTimeout past them).
            second = requests.post(
                url, data=params, headers=signature, timeout=TWILIO_WEBHOOK_LIMIT_S
            )
        except requests.ReadTimeout:
            second = None  # inline waits for the model: Twilio hung up first
        first.join()
        deadline = time.monotonic() + 15
        while not fake_twilio.calls("POST", "/Messages.json") and time.monotonic() < deadline:
            time.sleep(0.1)
    assert twiml_bodies(answers["first"].content) == ["echo: first"]  # in time: TwiML
    if mode == "auto":  # within Twilio's 15 s, without the reply
        assert (second.status_code, twiml_bodies(second.content)) == (200, [])
        assert second.headers["X-Phischer-No-Reply"] == "rest-slow"
    sent = fake_twilio.calls("POST", "/Messages.json")
    assert [(r.form["To"], r.form["Body"]) for r in sent] == [("+15550102", "echo: second")]
    with database.read() as s:
        reply = s.scalars(sa.select(Message).where(Message.body == "echo: second")).one()
    assert (reply.status, reply.message_sid) == ("sent", fake_twilio.messages[0]["sid"])


def post_after_a_wait(app, body: str, waited_s: float):
    """POST a signed text as gunicorn hands one over that waited `waited_s` s for a thread."""
    params = sms_params(body, "+15550100")
    signature = sign(AUTH_TOKEN, "http://localhost/sms", params)
    # server.ReadDeadline notes when the request reached the worker; the webhook reads it there.
    queued = SimpleNamespace(queued_at=time.monotonic() - waited_s)
    return app.test_client().post(
        "/sms",
        data=params,
        headers={"X-Twilio-Signature": signature},
        environ_base={"gunicorn.socket": queued},
    )


@pytest.mark.parametrize(
    ("mode", "model", "reply"),
    [
        ("inline", "openai", "echo: so what do you do for work?"),
        # The retrieval backend answers at once: inline in auto mode too.
        ("auto", "retrieval", "I compute Bernoulli numbers, mostly by candlelight."),
    ],
)
def test_a_text_past_twilios_wait_does_not_hold_its_thread(
    mode, model, reply, make_app, personas, database, fake_openai, fake_twilio, twilio_rest
):
    # A text that already waited past ANSWER_WITHIN_S for a free thread: Twilio has hung up,
    # so nothing is gained by making (and sending) its reply on the request thread, which
    # the texts queued behind it wait for. It answers at once; the reply goes by REST.
    if model == "openai":
        with database.write() as session:
            set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    app = make_app(reply_mode=mode, **twilio_rest)
    first = post_after_a_wait(app, "hey how are you", 0.0)  # in time: TwiML (index built)
    assert len(twiml_bodies(first.data)) == 1
    held = threading.Event()
    fake_twilio.after_next("POST", "/Messages.json", lambda: held.wait(20))
    try:
        with ThreadPoolExecutor(1) as pool:
            late = pool.submit(post_after_a_wait, app, "so what do you do for work?", 14.0)
            # Answered while Twilio still holds the REST send of its reply.
            answer = late.result(timeout=10)
    finally:
        held.set()
    assert (answer.status_code, twiml_bodies(answer.data)) == (200, [])
    assert answer.headers["X-Phischer-No-Reply"] == "rest-slow"
    app.extensions["phischer"].sms.shutdown()  # wait for the REST reply
    sent = fake_twilio.calls("POST", "/Messages.json")
    assert [(r.form["To"], r.form["Body"]) for r in sent] == [("+15550100", reply)]
    with database.read() as s:
        rows = s.scalars(sa.select(Message).order_by(Message.id)).all()
    assert [(m.direction, m.status) for m in rows[2:]] == [("in", "replied"), ("out", "sent")]


def test_without_twilio_credentials_a_late_text_still_gets_its_twiml(
    make_app, personas, database, fake_openai
):
    # TwiML is all there is then: Twilio may still read it, or its retry gets the stored reply.
    with database.write() as session:
        set_model(session, "Ada", "ft:gpt-4.1-mini:ada", base_url=fake_openai.base_url)
    app = make_app(reply_mode="inline", twilio_auth_token=AUTH_TOKEN)
    answer = post_after_a_wait(app, "so what do you do for work?", 14.0)
    assert twiml_bodies(answer.data) == ["echo: so what do you do for work?"]
