"""Persona changes made from the CLI while the server runs reach every worker without a restart.

Two apps on one SQLite file stand for two gunicorn workers (each has its own persona cache
and retrieval indexes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import run, write_dataset


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


def test_a_default_moved_while_serving_applies_within_a_second(workers, twilio_post, tmp_path):
    add_cy(tmp_path, "--default")
    for app in workers:
        app.extensions["phischer"].sms.personas.ttl_s = 0.1  # a second is long for a test
    time.sleep(0.15)
    for i, app in enumerate(workers):
        r = twilio_post("hey how are you", f"+1555012{i}", target=app)
        assert r.replies == ["cy here, all good"]
