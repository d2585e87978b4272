"""Persona changes made from the CLI while the server runs reach every worker without a restart.

Two apps on one SQLite file stand for two gunicorn workers (each has its own persona cache
and retrieval indexes); the last test runs the real server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from phischer.backends.base import PersonaView
from phischer.backends.retrieval import RECHECK_S, RetrievalBackend
from phischer.db import Database
from phischer.models import Message
from phischer.personas import (
    PERSONA_TTL_S,
    PersonaSpec,
    add_persona,
    remove_persona,
)
from phischer.server import _post_fork
from tests.conftest import (
    held_dataset,
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


@pytest.mark.parametrize("mode", ["inline", "async"])
def test_a_persona_removed_while_it_answers_slowly_still_gets_its_reply_out(
    make_app, personas, database, twilio_post, fake_openai, fake_twilio, twilio_rest, mode
):
    # Slower than a second (inline) or sent by REST, the reply is checked against what the
    # number did meanwhile: a removal is not the texter moving on to another persona.
    with database.write() as session:
        add_persona(
            session, PersonaSpec(name="Oz", keyword="oz", backend="openai", model="gpt-test")
        )
    app = make_app(openai_base_url=fake_openai.base_url, reply_mode=mode, **twilio_rest)
    twilio_post("#oz", target=app)

    def remove_then_answer(body: dict[str, Any]) -> str:
        with database.write() as session:  # `persona remove Oz` while the model works
            remove_persona(session, "Oz")
        time.sleep(1.1)  # past QUICK_MS: an inline reply is checked too
        return "still here"

    fake_openai.responder = remove_then_answer
    r = twilio_post("hello", target=app)
    app.extensions["phischer"].sms.shutdown()  # the REST send is done
    sent = [req.form["Body"] for req in fake_twilio.requests if req.path.endswith("/Messages.json")]
    assert (r.replies, sent) == ((["still here"], []) if mode == "inline" else ([], ["still here"]))
    with database.read() as session:
        reply = session.scalars(sa.select(Message).where(Message.direction == "out")).all()[-1]
    assert (reply.body, reply.status, reply.error) == (
        "still here",
        "replied" if mode == "inline" else "sent",
        None,
    )


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


def retrieval_of(app: Flask) -> RetrievalBackend:
    """The app's retrieval backend (each worker has its own indexes)."""
    return app.extensions["phischer"].sms.backends.get("retrieval")


def view_of(app: Flask, keyword: str) -> PersonaView:
    """The persona with `keyword`, once the app's cache has read the personas again."""
    directory = app.extensions["phischer"].sms.personas
    directory.reload()  # what its next text does within PERSONA_TTL_S
    view = directory.by_keyword(keyword)
    assert view is not None
    return view


def built_within(backend: RetrievalBackend, persona: PersonaView, timeout_s: float = 10.0) -> bool:
    """Whether the persona's index gets built within `timeout_s`, nothing asking for it."""
    deadline = time.monotonic() + timeout_s
    while not backend.built(persona):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_persona_added_while_serving_gets_its_index_built_before_its_first_text(
    workers, twilio_post, tmp_path
):
    add_cy(tmp_path)
    for app in workers:
        assert built_within(retrieval_of(app), view_of(app, "cy"))  # no text to Cy asked for it


def test_a_text_during_the_build_ahead_waits_for_it_and_gets_cy(
    make_app, personas, twilio_post, tmp_path, monkeypatch
):
    started, release = threading.Event(), threading.Event()
    builds: list[Path] = []
    real_build = RetrievalBackend._build

    def slow_build(self: RetrievalBackend, path: Path) -> Any:
        builds.append(path)
        started.set()
        release.wait(10)  # a 100k-example dataset, as seen by a text arriving meanwhile
        return real_build(self, path)

    app = make_app()
    assert twilio_post("#list", "+15550999", target=app).replies == ["Personas: #ada, #bo"]
    for keyword in ("ada", "bo"):  # their builds ahead, started by that text, are done
        assert built_within(retrieval_of(app), view_of(app, keyword))
    monkeypatch.setattr(RetrievalBackend, "_build", slow_build)
    add_cy(tmp_path)
    assert run("persona", "route", "+15550111", "cy").exit_code == 0
    view_of(app, "cy")  # the worker sees Cy: its index starts building
    assert started.wait(10)
    answers: list[list[str]] = []
    text = threading.Thread(
        target=lambda: answers.append(
            twilio_post("hey how are you", "+15550111", target=app).replies
        )
    )
    text.start()
    text.join(0.3)
    assert text.is_alive()  # waiting for the build under way, not starting one of its own
    release.set()
    text.join(10)
    assert answers == [["cy here, all good"]]
    assert [p.name for p in builds] == ["cy.jsonl"]  # built once


@pytest.fixture
def unreadable_yet(personas: dict[str, Path]) -> Iterator[Callable[[], None]]:
    """Ada's dataset as a named pipe: its build waits until `release()` writes the dataset."""
    ada = personas["ada"]
    with held_dataset(ada, ada.read_bytes()) as release:
        yield release


@pytest.mark.parametrize("rest", [False, True], ids=["fallback", "by REST"])
def test_a_text_while_the_index_builds_longer_than_reply_timeout_is_not_held(
    make_app, personas, unreadable_yet, twilio_post, request, rest
):
    overrides = request.getfixturevalue("twilio_rest") if rest else {}
    app = make_app(reply_timeout_s=0.3, **overrides)
    answers: list[Any] = []
    text = threading.Thread(target=lambda: answers.append(twilio_post("good night", target=app)))
    text.start()
    text.join(5)
    assert not text.is_alive()  # answered after REPLY_TIMEOUT_S, not held past Twilio's 15 s
    (response,) = answers
    services = app.extensions["phischer"]
    if rest:
        assert response.replies == []  # the reply goes by REST once the index is built
        unreadable_yet()
        services.sms.shutdown()
        fake = request.getfixturevalue("fake_twilio")
        (send,) = fake.calls("POST", "/Messages.json")
        assert send.form["Body"] == "Sleep well, dear. Dream of engines."
    else:
        assert response.replies == [services.settings.fallback_reply]
        unreadable_yet()
        assert built_within(retrieval_of(app), view_of(app, "ada"))
        # Built: answered in the webhook again.
        assert twilio_post("good night", "+15550102", target=app).replies == [
            "Sleep well, dear. Dream of engines."
        ]


def test_each_gunicorn_worker_builds_the_indexes_after_its_fork(make_app, personas):
    app = make_app()
    backend = retrieval_of(app)
    ada = view_of(app, "ada")
    assert built_within(backend, ada)  # in a process that never forked: from its first read
    fresh = make_app()  # a preloaded app, as the arbiter holds it before forking
    backend = retrieval_of(fresh)
    assert not backend.built(ada)  # nothing built (nor any thread started) before the fork
    _post_fork(None, SimpleNamespace(app=SimpleNamespace(application=fresh)))
    assert built_within(backend, ada)
    assert built_within(backend, view_of(fresh, "bo"))


def test_an_index_no_persona_uses_any_more_is_let_go(workers, twilio_post, tmp_path):
    app = workers[0]
    backend = retrieval_of(app)
    ada, bo = view_of(app, "ada"), view_of(app, "bo")
    assert built_within(backend, ada) and built_within(backend, bo)
    cy = write_dataset(tmp_path / "cy.jsonl", [("hey how are you", "cy here, all good")])
    assert run("persona", "edit", "ada", "--dataset", str(cy)).exit_code == 0
    assert run("persona", "remove", "Bo").exit_code == 0
    edited = view_of(app, "ada")  # read again, as a text does within PERSONA_TTL_S
    assert not backend.built(ada) and not backend.built(bo)  # a server runs for months
    assert built_within(backend, edited)
    assert twilio_post("hey how are you", target=app).replies == ["cy here, all good"]
