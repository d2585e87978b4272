"""`phischer persona`: what a removal says it changed, and values no database could hold."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from phischer.models import Persona
from tests.conftest import run

OPENAI = ("--backend", "openai", "--model", "m")  # a persona that needs no dataset


def names(database) -> list[str]:
    """Every stored persona's name."""
    with database.read() as session:
        return list(session.scalars(sa.select(Persona.name).order_by(Persona.id)))


def lines(*args: str) -> tuple[int, list[str]]:
    """Run the CLI: its exit code and output lines."""
    result = run(*args)
    return result.exit_code, result.output.strip().splitlines()


def test_removing_the_default_says_who_its_numbers_and_the_rest_get_now(personas):
    for number in ("+15550100111", "+15550100112"):
        assert run("persona", "route", number, "Ada").exit_code == 0
    assert lines("persona", "remove", "Ada") == (0, [
        "Removed persona Ada.",
        "Its 2 numbers now talk to the default persona, Bo (#bo).",
        "Numbers that never chose a persona now get Bo (#bo) (`phischer persona edit NAME "
        "--default` picks another).",
    ])  # fmt: skip


def test_removing_a_persona_nobody_talks_to_says_only_that(personas):
    assert lines("persona", "remove", "Bo") == (0, ["Removed persona Bo."])


def test_removing_the_last_persona_says_its_numbers_have_none(personas):
    assert run("persona", "remove", "Bo").exit_code == 0
    assert run("persona", "route", "+15550100111", "Ada").exit_code == 0
    assert lines("persona", "remove", "Ada") == (0, [
        "Removed persona Ada.",
        "Its 1 number now talks to no persona: none is left.",
    ])  # fmt: skip


def test_removing_the_persona_default_persona_names_points_at_the_setting(personas, monkeypatch):
    monkeypatch.setenv("DEFAULT_PERSONA", "#BO")
    assert lines("persona", "remove", "bo") == (0, [
        "Removed persona Bo.",
        "DEFAULT_PERSONA=#BO no longer names a persona: numbers that never chose one get "
        "Ada (#ada); change it in .env and restart the server.",
    ])  # fmt: skip


def default_line(name: str) -> str | None:
    """The `default` line of `persona show NAME`, if it has one."""
    shown = run("persona", "show", name).output.splitlines()
    return next((line for line in shown if line.startswith("default ")), None)


def test_show_names_the_default_persona_list_stars(personas, monkeypatch):
    # Ada was added with --default: she is the default while DEFAULT_PERSONA is unset.
    assert (default_line("ada"), default_line("bo")) == ("default      yes", None)
    # DEFAULT_PERSONA wins over --default: `list` stars Bo, and `show` must not call Ada it.
    monkeypatch.setenv("DEFAULT_PERSONA", "bo")
    assert "* Bo" in run("persona", "list").output
    assert default_line("bo") == "default      yes"
    assert default_line("ada") == (
        "default      no: DEFAULT_PERSONA=bo picks Bo instead (this persona has --default)"
    )


def test_show_calls_the_first_persona_the_default_when_none_has_the_flag(personas):
    assert run("persona", "edit", "ada", "--no-default").exit_code == 0
    assert "* Ada" in run("persona", "list").output  # the first one answers
    assert (default_line("ada"), default_line("bo")) == ("default      yes", None)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["N" * 101, *OPENAI], "the persona name is 101 characters long: at most 100 fit"),
        (["Vee", "--backend", "openai", "--model", "m" * 201], "--model is 201 characters"),
        (
            ["Vee", "--backend", "openai", "--model", "m", "--api-key-env", "K" * 101],
            "--api-key-env is 101 characters",
        ),
        (
            ["Ada\nLovelace", *OPENAI],
            "persona name 'Ada\\nLovelace' must be one line, without tabs",
        ),
        (
            ["Ada\tLovelace", *OPENAI],
            "persona name 'Ada\\tLovelace' must be one line, without tabs",
        ),
    ],
)
def test_add_refuses_what_a_column_cannot_hold_in_one_line(personas, database, args, error):
    # SQLite stores any length; PostgreSQL would refuse the row with a traceback.
    code, output = lines("persona", "add", *args, "--keyword", "vee")
    assert (code, len(output)) == (1, 1) and output[0].startswith(f"Error: {error}")
    assert names(database) == ["Ada", "Bo"]


def test_edit_refuses_a_name_too_long_and_keeps_the_old_one(personas, database):
    code, output = lines("persona", "edit", "bo", "--name", "B" * 101)
    assert (code, output) == (
        1,
        ["Error: the persona name is 101 characters long: at most 100 fit"],
    )
    assert lines("persona", "edit", "bo", "--name", "B" * 100)[0] == 0  # as long as fits
    assert names(database) == ["Ada", "B" * 100]
