"""Many numbers texting at once through the real WSGI server (gunicorn) lose nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import sqlalchemy as sa

from phischer.models import Contact, Message
from tests.conftest import post_signed, serving, sms_params, twiml_bodies


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
