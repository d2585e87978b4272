"""Persona changes made from the CLI while the server runs reach every worker without a restart.

Two apps on one SQLite file stand for two gunicorn workers (each has its own persona cache
and retrieval indexes); the last test runs the real server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from phischer.backends.retrieval import RECHECK_S
from phischer.db import Database
from phischer.models import Message
from phischer.personas import (
    PERSONA_TTL_S,
    PersonaSpec,
    add_persona,
    remove_persona,
)
from tests.conftest import (
    post_signed,
    run,
    serving,
    set_model,
    sms_params,
    twiml_bodies,
    write_dataset,
)

ADA_HI = "Splendid, thank you! Knitting a scarf for the cat."  # Ada to "hey how are you"
BO_HI = "yo. tired. u?"


@pytest.fixture
def workers(make_app: Callable[..., Flask], personas: dict[str, Path], twilio_post) -> list[Flask]:
    """Two apps on one database, each having read the personas (its cache is warm)."""
    apps = [make_app(), make_app()]
    for app in apps:
        assert twilio_post("#list", "+15550999", target=app).replies == ["Personas: #ada, #bo"]
    return apps


def add_cy(tmp_path: Path, *flags: str) -> None:
    """`phischer persona add Cy --keyword cy` on a one-answer dataset, as in another terminal."""
    cy = write_dataset(tmp_path / "cy.jsonl", [("hey how are you", "cy here, all good")])
    result = run("persona", "add", "Cy", "--keyword", "cy", "--dataset", str(cy), *flags)
    assert result.exit_code == 0, result.output


def inbound(database: Database) -> list[Message]:
    """Every stored text, oldest first."""
    with database.read() as session:
        query = sa.select(Message).where(Message.direction == "in").order_by(Message.id)
        return list(session.scalars(query))


def test_a_persona_added_while_serving_answers_its_keyword_at_once(workers, twilio_post, tmp_path):
    add_cy(tmp_path)
    for app in workers:  # well within the cache's second: a #keyword it does not know re-reads
        assert twilio_post("#cy", target=app).replies == ["You're now texting Cy."]
        assert twilio_post("#list", target=app).replies == ["Personas: #ada, #bo, #cy"]
        assert twilio_post("#nobody", target=app).replies == [
            "No #nobody. Personas: #ada, #bo, #cy"
        ]


def test_a_number_routed_to_a_new_persona_talks_to_it_on_its_next_text(
    workers, twilio_post, tmp_path
):
    add_cy(tmp_path)
    assert run("persona", "route", "+15550111", "cy").exit_code == 0
    for app in workers:
        r = twilio_post("hey how are you", "+15550111", target=app)
        assert r.replies == ["cy here, all good"]


def test_removing_a_routed_persona_hands_its_numbers_to_the_default(workers, twilio_post, database):
    numbers = ["+15550110", "+15550111"]  # one for each worker
    for number in numbers:
        assert run("persona", "route", number, "Bo").exit_code == 0
        assert twilio_post("hey how are you", number, target=workers[0]).replies == [BO_HI]
    assert run("persona", "remove", "Bo").exit_code == 0
    for app, number in zip(workers, numbers, strict=True):  # both still hold Bo in their cache
        r = twilio_post("hey how are you", number, target=app)
        assert (r.status_code, r.replies) == (200, [ADA_HI])
        assert twilio_post("#bo", number, target=app).replies == ["No #bo. Personas: #ada"]
    assert {m.status for m in inbound(database)[-4:]} == {"replied"}


def test_removing_the_default_persona_hands_its_numbers_to_the_next(workers, twilio_post, database):
    assert run("persona", "remove", "Ada").exit_code == 0
    for i, app in enumerate(workers):  # both still hold Ada as the default in their cache
        r = twilio_post("hey how are you", f"+1555011{i}", target=app)
        assert (r.status_code, r.replies) == (200, [BO_HI])
        assert twilio_post("#who", f"+1555011{i}", target=app).replies == [
            "You're texting Bo (#bo)."
        ]
    assert {m.status for m in inbound(database)[-4:]} == {"replied"}


def test_a_persona_removed_while_it_answers_still_gets_its_reply_out(
    make_app, database, twilio_post, fake_openai
):
    with database.write() as session:
        add_persona(
            session, PersonaSpec(name="Oz", keyword="oz", backend="openai", model="gpt-test")
        )
    app = make_app(openai_base_url=fake_openai.base_url)

    def remove_then_answer(body: dict[str, Any]) -> str:
        with database.write() as session:  # `persona remove Oz` while the model works
            remove_persona(session, "Oz")
        return "still here"

    fake_openai.responder = remove_then_answer
    r = twilio_post("hello", target=app)
    assert (r.status_code, r.replies) == (200, ["still here"])
    (text,) = inbound(database)
    assert (text.status, text.error) == ("replied", None)  # not left for the recovery sweep
    with database.read() as session:
        reply = session.scalar(sa.select(Message).where(Message.direction == "out"))
    assert (reply.body, reply.persona_id, reply.model) == ("still here", None, "gpt-test")


def test_a_default_moved_while_serving_applies_within_a_second(workers, twilio_post, tmp_path):
    add_cy(tmp_path, "--default")
    for app in workers:
        app.extensions["phischer"].sms.personas.ttl_s = 0.1  # a second is long for a test
    time.sleep(0.15)
    for i, app in enumerate(workers):
        r = twilio_post("hey how are you", f"+1555012{i}", target=app)
        assert r.replies == ["cy here, all good"]


def test_changes_made_while_gunicorn_serves(settings, personas, database, tmp_path, fake_openai):
    # The real server: two workers forked from a preloaded app, each with its own caches.
    # Every text goes on a new connection, so both workers get some of them.
    env = {"INSTANCE_PATH": str(settings.instance_path), "OPENAI_BASE_URL": fake_openai.base_url}
    with serving(tmp_path, env) as base:

        def text(body: str, number: str) -> list[str]:
            r = post_signed(base + "/sms", settings.auth_token(), sms_params(body, number))
            assert r.status_code == 200
            return twiml_bodies(r.content)

        numbers = [f"+155503{i:02d}" for i in range(8)]
        for number in numbers:  # every worker has read the personas
            assert text("#list", number) == ["Personas: #ada, #bo"]
        add_cy(tmp_path)
        for number in numbers:
            assert text("#cy", number) == ["You're now texting Cy."]
            assert text("#list", number) == ["Personas: #ada, #bo, #cy"]

        # Chats imported again: `phischer import` writes a new file and renames it over.
        write_dataset(tmp_path / "cy.new", [("hey how are you", "cy 2.0 here")]).rename(
            tmp_path / "cy.jsonl"
        )
        time.sleep(RECHECK_S + 0.2)
        for number in numbers:
            assert text("hey how are you", number) == ["cy 2.0 here"]

        with database.write() as session:  # what a fine-tune does once its model is ready
            set_model(session, "Cy", "ft:cy")
        time.sleep(PERSONA_TTL_S + 0.2)
        for number in numbers:
            assert text("hey how are you", number) == ["echo: hey how are you"]
        assert {call["model"] for call in fake_openai.chat_calls} == {"ft:cy"}

        assert run("persona", "remove", "Cy").exit_code == 0
        for number in numbers:  # at once: no worker answers from a persona that is gone
            assert text("hey how are you", number) == [ADA_HI]
    assert {m.status for m in inbound(database)} == {"replied"}
