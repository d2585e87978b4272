"""`phischer persona edit`: a persona changed in place keeps its numbers and its history."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from phischer.models import Contact, Persona
from tests.conftest import BO_PAIRS, run, write_dataset

BO_HI = "yo. tired. u?"  # Bo to "hey how are you"
# What `add_vee` stores, field by field (after Ada and Bo of the `personas` fixture).
VEE = {
    "name": "Vee",
    "keyword": "vee",
    "backend": "openai",
    "model": "vee-lora",
    "base_url": "http://127.0.0.1:8000/v1",
    "api_key_env": "VEE_KEY",
    "dataset": None,
    "system_prompt": "You are Vee.",
    "greeting": "Vee here.",
    "temperature": 0.5,
    "max_tokens": 100,
    "is_default": False,
}


def add_vee() -> None:
    """An openai persona with every optional field set."""
    result = run("persona", "add", "Vee", "--keyword", "vee", "--backend", "openai",
                 "--model", "vee-lora", "--base-url", "http://127.0.0.1:8000/v1",
                 "--api-key-env", "VEE_KEY", "--system", "You are Vee.", "--greeting",
                 "Vee here.", "--temperature", "0.5", "--max-tokens", "100")  # fmt: skip
    assert result.exit_code == 0, result.output


def rows(database) -> dict[str, dict[str, Any]]:
    """Every persona's fields (and id), by keyword."""
    with database.read() as session:
        found = session.scalars(sa.select(Persona))
        return {p.keyword: {f: getattr(p, f) for f in ("id", *VEE)} for p in found}


@pytest.fixture
def vee(personas, database) -> dict[str, dict[str, Any]]:
    """Ada (default), Bo and Vee stored; returns their rows."""
    add_vee()
    return rows(database)


@pytest.mark.parametrize(
    ("flags", "changes"),
    [
        (["--name", " Vera "], {"name": "Vera"}),
        (["--keyword", "#VERA"], {"keyword": "vera"}),
        (["--model", "vee-lora-2"], {"model": "vee-lora-2"}),
        (["--base-url", "http://10.0.0.7:8000/v1"], {"base_url": "http://10.0.0.7:8000/v1"}),
        (["--base-url", ""], {"base_url": None}),
        (["--api-key-env", "GPU_KEY"], {"api_key_env": "GPU_KEY"}),
        (["--api-key-env", ""], {"api_key_env": None}),
        (["--system", "You are Vera."], {"system_prompt": "You are Vera."}),
        (["--system", ""], {"system_prompt": None}),
        (["--greeting", "Hi from Vee"], {"greeting": "Hi from Vee"}),
        (["--greeting", " "], {"greeting": None}),
        (["--temperature", "2"], {"temperature": 2.0}),
        (["--temperature", ""], {"temperature": None}),
        (["--max-tokens", "7"], {"max_tokens": 7}),
        (["--max-tokens", ""], {"max_tokens": None}),
        (["--backend", "openai", "--model", "vee-lora"], {}),
    ],
)
def test_each_option_changes_its_field_and_nothing_else(vee, database, flags, changes, monkeypatch):
    monkeypatch.setenv("GPU_KEY", "sk-gpu-secret")
    result = run("persona", "edit", "vee", *flags)
    assert result.exit_code == 0, result.output
    after = rows(database)
    keyword = changes.get("keyword", "vee")
    assert after[keyword] == {**vee["vee"], **changes}  # the same id: a change, not a new one
    assert {k: v for k, v in after.items() if k != keyword} == {
        k: v for k, v in vee.items() if k != "vee"
    }
    lines = result.output.splitlines()
    if not changes:
        assert lines == ["Persona Vee unchanged: it already has these values."]
        return
    name, kw = changes.get("name", "Vee"), changes.get("keyword", "vee")
    assert lines[0] == f"Edited persona {name} (#{kw}):"
    assert len(lines) == 1 + len(changes)  # one line per change
    assert "sk-gpu-secret" not in result.output  # the variable's name only, never its key


def test_a_change_prints_old_and_new(vee, monkeypatch):
    monkeypatch.setenv("GPU_KEY", "sk-gpu-secret")  # set: no note that it is not
    result = run("persona", "edit", "Vee", "--base-url", "http://10.0.0.7:8000/v1",
                 "--api-key-env", "GPU_KEY", "--temperature", "", "--name", "Vera")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "Edited persona Vera (#vee):",
        "name         Vee → Vera",
        "base url     http://127.0.0.1:8000/v1 → http://10.0.0.7:8000/v1",
        "api key env  VEE_KEY → GPU_KEY",
        "temperature  0.5 → (none)",
    ]


def test_a_new_dataset_brings_its_system_prompt_unless_system_is_given(vee, database, tmp_path):
    new = write_dataset(tmp_path / "vee.jsonl", BO_PAIRS, system="You are the new Vee.")
    result = run("persona", "edit", "vee", "--dataset", str(new))
    assert result.exit_code == 0, result.output
    assert rows(database)["vee"] == {
        **vee["vee"],
        "dataset": str(new.resolve()),
        "system_prompt": "You are the new Vee.",
    }
    result = run("persona", "edit", "vee", "--dataset", str(new), "--system", "")
    assert result.exit_code == 0, result.output
    assert rows(database)["vee"]["system_prompt"] is None
    assert result.output.splitlines()[1:] == ["system       You are the new Vee. → (none)"]
    # Clearing the dataset keeps the prompt it brought.
    run("persona", "edit", "vee", "--system", "Kept.")
    assert run("persona", "edit", "vee", "--dataset", "").exit_code == 0
    assert rows(database)["vee"] == {**vee["vee"], "system_prompt": "Kept."}


def test_moving_to_retrieval_drops_the_server_and_keeps_sampling(vee, database, personas):
    result = run(
        "persona", "edit", "vee", "--backend", "retrieval", "--dataset", str(personas["bo"])
    )
    assert result.exit_code == 0, result.output
    assert rows(database)["vee"] == {
        **vee["vee"],
        "backend": "retrieval",
        "model": None,
        "base_url": None,
        "api_key_env": None,
        "dataset": str(personas["bo"].resolve()),
        "system_prompt": "You are Bo.",
    }
    assert result.output.splitlines()[-1] == (
        "--temperature and --max-tokens are kept for when a fine-tune moves this persona to the "
        "openai backend: retrieval answers do not use them."
    )
    back = run("persona", "edit", "vee", "--backend", "openai", "--model", "vee-lora")
    assert back.exit_code == 0, back.output
    assert rows(database)["vee"]["dataset"] == str(personas["bo"].resolve())  # kept


def test_default_moves_and_can_be_taken_back(vee, database):
    result = run("persona", "edit", "vee", "--default")
    assert result.output.splitlines() == ["Edited persona Vee (#vee):", "default      no → yes"]
    assert {k: r["is_default"] for k, r in rows(database).items()} == {
        "ada": False,
        "bo": False,
        "vee": True,
    }
    assert run("persona", "list").output.splitlines()[3].startswith("* Vee ")
    result = run("persona", "edit", "vee", "--no-default")
    assert result.output.splitlines() == ["Edited persona Vee (#vee):", "default      yes → no"]
    assert not any(r["is_default"] for r in rows(database).values())
    assert run("persona", "list").output.splitlines()[1].startswith("* Ada ")  # the first


def test_default_persona_setting_that_no_longer_names_it_is_pointed_out(vee, monkeypatch):
    monkeypatch.setenv("DEFAULT_PERSONA", "vee")
    # Still named (by its name, in any case): nothing to say.
    result = run("persona", "edit", "Vee", "--keyword", "vera")
    assert result.output.splitlines() == [
        "Edited persona Vee (#vera):",
        "keyword      #vee → #vera",
    ]
    result = run("persona", "edit", "Vee", "--name", "Vera")
    assert result.output.splitlines() == [
        "Edited persona Vera (#vera):",
        "name         Vee → Vera",
        "DEFAULT_PERSONA=vee no longer names this persona: set it to vera (in .env) and "
        "restart the server.",
    ]


def write_text(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("ref", "flags", "message"),
    [
        ("vee", [], "nothing to change: give what to change, e.g. --base-url URL "
         "(`phischer persona edit --help` lists them)"),
        ("nobody", ["--greeting", "hi"], "no persona 'nobody' (known: Ada, Bo, Vee)"),
        ("vee", ["--name", " "], 'a persona needs a name, e.g. phischer persona add "Ada '
         'Lovelace" …'),
        ("vee", ["--name", "Bo"], "persona 'Bo' already exists: choose another name "
         "(`phischer persona edit` changes a persona)"),
        ("vee", ["--name", "ADA"], "persona 'ADA' already exists as 'Ada' (names differ in "
         "case only): choose another name (`phischer persona edit` changes a persona)"),
        ("vee", ["--name", "#bo"], "persona 'Bo' already answers to '#bo' (its keyword #bo): "
         "choose another name, or `persona show #bo` could not tell the two apart"),
        ("vee", ["--keyword", "bo"], "persona 'Bo' already answers to 'bo' (its keyword #bo): "
         "choose another keyword, or `persona show bo` could not tell the two apart"),
        ("vee", ["--keyword", "help"], "keyword 'help' collides with the SMS command HELP: "
         "choose another"),
        ("vee", ["--keyword", "#list"], "keyword 'list' collides with the SMS command #list: "
         "choose another"),
        ("vee", ["--keyword", "zoé"], "keyword 'zoé' must be ASCII letters, digits, '-' or '_' "
         "(at most 50), e.g. --keyword ada"),
        ("vee", ["--keyword", ""], "keyword '' must be ASCII letters, digits, '-' or '_' "
         "(at most 50), e.g. --keyword ada"),
        ("vee", ["--model", ""], "backend openai needs --model (e.g. gpt-4.1-mini or ft:...)"),
        ("vee", ["--base-url", "localhost:8000"], "--base-url 'localhost:8000' must be an "
         "http(s) URL, e.g. http://127.0.0.1:8000/v1"),
        ("vee", ["--backend", "retrieval"], "backend retrieval needs --dataset FILE (chat "
         "JSONL from `phischer import`)"),
        ("vee", ["--backend", "retrieval", "--model", "m", "--dataset", "{bo}"], "--model only "
         "applies to --backend openai, not retrieval (it answers from --dataset and calls no "
         "model): add --backend openai, or leave it out"),
        ("vee", ["--dataset", "nope.jsonl"], "dataset nope.jsonl does not exist"),
        ("vee", ["--api-key-env", "sk-pasted-key"], "--api-key-env takes the name of an "
         "environment variable (letters, digits and _, not starting with a digit), not its "
         "value, e.g. --api-key-env GPU_KEY"),
        ("bo", ["--model", "m"], "--model only applies to --backend openai, not retrieval (it "
         "answers from --dataset and calls no model): add --backend openai, or leave it out"),
        ("bo", ["--base-url", "http://127.0.0.1:8000/v1", "--api-key-env", "K"], "--base-url, "
         "--api-key-env only apply to --backend openai, not retrieval (it answers from "
         "--dataset and calls no model): add --backend openai, or leave them out"),
        ("bo", ["--dataset", ""], "backend retrieval needs --dataset FILE (chat JSONL from "
         "`phischer import`)"),
        ("bo", ["--dataset", "{empty}"], "dataset {empty} has no user→assistant pairs to "
         "answer from"),
        ("bo", ["--backend", "openai"], "backend openai needs --model (e.g. gpt-4.1-mini or "
         "ft:...)"),
    ],
)  # fmt: skip
def test_a_refused_edit_is_one_line_and_changes_nothing(vee, database, tmp_path, personas,
                                                        ref, flags, message):  # fmt: skip
    paths = {"bo": str(personas["bo"]), "empty": write_text(tmp_path / "e.jsonl", "")}
    flags = [flag.format(**paths) for flag in flags]
    result = run("persona", "edit", ref, *flags)
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: {message.format(**paths)}")
    assert rows(database) == vee


def test_moving_to_retrieval_checks_the_dataset_it_will_answer_from(vee, database, tmp_path):
    # Stored on an openai persona unchecked (it only gave the system prompt): now it must answer.
    prompt_only = write_text(
        tmp_path / "p.jsonl", '{"messages": [{"role": "system", "content": "S"}]}\n'
    )
    assert run("persona", "edit", "vee", "--dataset", prompt_only).exit_code == 0
    before = rows(database)
    result = run("persona", "edit", "vee", "--backend", "retrieval")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: dataset {prompt_only} has no user→assistant pairs")
    assert rows(database) == before


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--temperature", "9"], "Invalid value for '--temperature': 9.0 is not in the range "
         "0.0<=x<=2.0."),
        (["--temperature", "nan"], "Invalid value for '--temperature': 'nan' is not a finite "
         "number."),
        (["--max-tokens", "0"], "Invalid value for '--max-tokens': 0 is not in the range x>=1."),
        (["--backend", "gpt"], "Invalid value for '--backend': 'gpt' is not one of 'openai', "
         "'retrieval'."),
    ],
)  # fmt: skip
def test_a_bad_option_value_is_a_usage_error_as_in_add(vee, database, flags, error):
    result = run("persona", "edit", "vee", *flags)
    assert result.exit_code == 2  # click's usage error, as `persona add` gives for these
    assert result.output.splitlines()[-1] == f"Error: {error}"
    assert rows(database) == vee


# -- through the webhook: what an edit keeps, and what a running server sees -------------


def test_routes_keyword_choices_and_history_survive_an_edit(
    app, twilio_post, database, fake_openai
):
    routed, chose = "+15550101", "+15550102"
    assert run("persona", "route", routed, "Bo").exit_code == 0
    assert twilio_post("#bo", chose).replies == ["You're now texting Bo."]
    for number in (routed, chose):
        assert twilio_post("hey how are you", number).replies == [BO_HI]
    # Bo's LoRA is trained: point Bo at the server that serves it, renamed and re-keyed.
    result = run("persona", "edit", "bo", "--name", "Bo (local)", "--keyword", "bol",
                 "--backend", "openai", "--model", "bo-lora", "--base-url",
                 fake_openai.base_url)  # fmt: skip
    assert result.exit_code == 0, result.output
    app.extensions["phischer"].sms.personas.ttl_s = 0.1  # a second is long for a test
    time.sleep(0.15)
    for number in (routed, chose):
        assert twilio_post("what do you do", number).replies == ["echo: what do you do"]
        assert twilio_post("#who", number).replies == ["You're texting Bo (local) (#bol)."]
    for call in fake_openai.chat_calls:  # the earlier turns with Bo are still the thread
        assert call["model"] == "bo-lora"
        assert call["messages"] == [
            {"role": "system", "content": "You are Bo."},
            {"role": "user", "content": "hey how are you"},
            {"role": "assistant", "content": BO_HI},
            {"role": "user", "content": "what do you do"},
        ]
    with database.read() as session:
        bo_id = session.scalar(sa.select(Persona.id).where(Persona.keyword == "bol"))
        chosen = dict(session.execute(sa.select(Contact.phone, Contact.persona_id)).all())
    assert chosen == {routed: bo_id, chose: bo_id}


def test_a_keyword_change_reaches_the_running_webhook(app, twilio_post, tmp_path):
    assert twilio_post("#list").replies == ["Personas: #ada, #bo"]  # the cache is warm
    assert run("persona", "edit", "bo", "--keyword", "bobby").exit_code == 0
    # The new keyword at once (one the cache does not know is read again) ...
    assert twilio_post("#bobby hey how are you").replies == [BO_HI]
    assert twilio_post("#who").replies == ["You're texting Bo (#bobby)."]
    # ... the old one within the cache's second.
    app.extensions["phischer"].sms.personas.ttl_s = 0.1
    time.sleep(0.15)
    assert twilio_post("#bo").replies == ["No #bo. Personas: #ada, #bobby"]
    assert twilio_post("#list").replies == ["Personas: #ada, #bobby"]


def test_a_new_dataset_answers_without_a_restart(app, twilio_post, tmp_path):
    assert twilio_post("hey how are you").replies == [
        "Splendid, thank you! Knitting a scarf for the cat."
    ]
    new = write_dataset(tmp_path / "ada2.jsonl", [("hey how are you", "Ada 2.0, at your service.")])
    assert run("persona", "edit", "ada", "--dataset", str(new)).exit_code == 0
    app.extensions["phischer"].sms.personas.ttl_s = 0.1
    time.sleep(0.15)
    assert twilio_post("hey how are you").replies == ["Ada 2.0, at your service."]


def test_readme_shows_persona_edit_as_printed(tmp_path):
    import shlex

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Personas\n")[1].split("\n## ")[0]
    lines = section.split("```console\n")[1].split("```")[0].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("$ phischer persona edit"))
    shown = list(itertools.takewhile(lambda line: not line.startswith("$"), lines[start + 1 :]))
    dataset = write_dataset(tmp_path / "ada.jsonl", BO_PAIRS)
    added = run("persona", "add", "Ada (local)", "--keyword", "adal", "--backend", "openai",
                "--model", "ada-lora", "--dataset", str(dataset), "--base-url",
                "http://127.0.0.1:8000/v1")  # fmt: skip
    assert added.exit_code == 0, added.output
    edited = run(*shlex.split(lines[start])[2:])
    assert edited.output.splitlines() == shown


@pytest.mark.parametrize("value", ["sk-abc123", "1KEY", "GPU KEY", "$GPU_KEY", "GPU_KEY=x", ""])
def test_add_refuses_an_api_key_env_that_is_no_variable_name(database, value):
    result = run("persona", "add", "Vee", "--keyword", "vee", "--backend", "openai",
                 "--model", "m", "--api-key-env", value)  # fmt: skip
    assert result.exit_code == 1
    assert result.output == (
        "Error: --api-key-env takes the name of an environment variable (letters, digits and "
        "_, not starting with a digit), not its value, e.g. --api-key-env GPU_KEY\n"
    )
    assert rows(database) == {}


def test_an_api_key_env_that_is_not_set_is_stored_with_a_note(database, vee, monkeypatch):
    monkeypatch.setenv("SET_KEY", "sk-set-secret")
    monkeypatch.setenv("EMPTY_KEY", "")  # no key either: the backend refuses it as unset
    note = "Note: {} is not set in this shell or .env: texts to {} fail until it is set where "
    note += "the server runs."
    added = run("persona", "add", "Wu", "--keyword", "wu", "--backend", "openai", "--model", "m",
                "--api-key-env", "_wu_key9")  # fmt: skip
    assert added.output.splitlines() == [
        "Added persona Wu (#wu, openai).",
        note.format("_wu_key9", "Wu"),
    ]
    edited = run("persona", "edit", "vee", "--api-key-env", "EMPTY_KEY")
    assert edited.output.splitlines()[-1] == note.format("EMPTY_KEY", "Vee")
    assert rows(database)["vee"]["api_key_env"] == "EMPTY_KEY"
    # Not given (its unset EMPTY_KEY is not news), or set: no note.
    for flags in (["--greeting", "hi"], ["--api-key-env", "SET_KEY"]):
        result = run("persona", "edit", "vee", *flags)
        assert result.exit_code == 0 and "Note:" not in result.output
        assert "sk-set-secret" not in result.output


def refusals(key: str) -> set[str]:
    """What `persona add` and `persona edit` print for `--api-key-env KEY`, both refusing it."""
    outputs = set()
    for command in (["add", "Gus", "--keyword", "gus", "--backend", "openai", "--model", "m"],
                    ["edit", "vee"]):  # fmt: skip
        result = run("persona", *command, "--api-key-env", key)
        assert result.exit_code == 1
        outputs.add(result.output)
    return outputs


def test_a_key_the_shell_put_for_its_name_is_refused_and_never_shown(vee, database, monkeypatch):
    # `--api-key-env $GPU_KEY`: the shell expands it, and a Groq-style key is a valid name.
    key = "gsk_0123456789abcdefghijklmnopqrstuvwxyz"
    monkeypatch.setenv("GPU_KEY", key)
    assert refusals(key) == {
        "Error: --api-key-env takes a variable's name, and this is the value of GPU_KEY: "
        "give --api-key-env GPU_KEY (without a $, which puts the value there)\n"
    }
    assert rows(database) == vee
    assert run("persona", "edit", "vee", "--api-key-env", "GPU_KEY").exit_code == 0


def test_show_and_list_hide_a_password_in_the_base_url(vee):
    url = "https://clone:hunter2-basic-auth@gpu.example.com/v1"
    assert run("persona", "edit", "vee", "--base-url", url).exit_code == 0
    shown = "https://clone:***@gpu.example.com/v1"
    for command in (["show", "vee"], ["list"]):
        output = run("persona", *command).output
        assert shown in output and "hunter2" not in output
    edited = run("persona", "edit", "vee", "--base-url", "http://127.0.0.1:8000/v1").output
    assert f"base url     {shown} → http://127.0.0.1:8000/v1" in edited


def test_show_and_list_hide_a_key_in_the_base_urls_query(vee):
    # A gateway that takes its key in the query string: the key is not printed either.
    url = "https://gw.example.com/v1?api-key=gw-key-0123456789&region=eu"
    assert run("persona", "edit", "vee", "--base-url", url).exit_code == 0
    for command in (["show", "vee"], ["list"]):
        output = run("persona", *command).output
        assert "https://gw.example.com/v1?api-key=***&region=eu" in output
        assert "0123456789" not in output


def test_help_shows_the_ranges_persona_add_shows() -> None:
    # A blank value clears the field, so edit's type is not click's range type: its --help
    # lost the [0.0<=x<=2.0] and [x>=1] that `persona add --help` shows for the same check.
    ranges = ("[0.0<=x<=2.0]", "[x>=1]")
    for command in ("add", "edit"):
        shown = " ".join(run("persona", command, "--help").output.split())
        assert all(r in shown for r in ranges), (command, shown)


@pytest.mark.parametrize(
    "key",
    [
        "gsk_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7" * 2,  # Groq: letters of both cases and digits
        "hf_" + "QwErTyUiOpAsDfGhJkLzXcVbNmQwErTyUi",  # Hugging Face: letters of both cases
        "a4f9" * 16,  # Together: 64 hex digits
    ],
)
def test_a_key_pasted_for_its_variables_name_is_refused_and_never_shown(
    vee, database, monkeypatch, key
):
    # Not in the environment (copied from the provider's page): stored, the server logged it
    # on every text ("… is not set") and `persona show` printed it.
    assert refusals(key) == {
        "Error: --api-key-env takes a variable's name, and this looks like a key itself: "
        "put the key in a variable where the server runs (GPU_KEY=… in .env) and give its "
        "name, e.g. --api-key-env GPU_KEY\n"
    }
    assert rows(database) == vee
    # Names of words stay names, however long, and so does a key-like one that is set here.
    monkeypatch.setenv(key, "the-key")
    for name in ("MY_OPENROUTER_API_KEY_FOR_THE_GPU_BOX", "OPENROUTERAPIKEYPRODUCTION2", key):
        assert run("persona", "edit", "vee", "--api-key-env", name).exit_code == 0
    assert rows(database)["vee"]["api_key_env"] == key
