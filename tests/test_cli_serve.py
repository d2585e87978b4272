"""`phischer text` / `chat` against a live server, `persona` and `db` commands, exit codes."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from werkzeug.serving import make_server

from phischer.cli import cli
from phischer.models import Contact, Persona
from phischer.ports import PortBusyError, host_port, http_url, listen
from phischer.printing import display_width
from tests.conftest import free_port, phischer_at_once, post_signed, run, serving, sms_params

# The smallest dataset the retrieval backend can answer from.
PAIR = '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'


@contextmanager
def on_loopback(app) -> Iterator[str]:
    """Serve `app` over real HTTP on a loopback port; yields its /sms URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/sms"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture
def live(app):
    """The app served over real HTTP on a loopback port."""
    with on_loopback(app) as url:
        yield url


def test_text_prints_the_reply(live):
    result = run("text", "--url", live, "what do you do for work?")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "I compute Bernoulli numbers, mostly by candlelight."


def test_text_reaches_a_server_on_this_machine_around_the_proxy(live, proxy_env):
    # HTTP_PROXY without NO_PROXY (a corporate laptop): requests sent the post for
    # 127.0.0.1 to the proxy, which answered 502, so `text` said the server answered 502.
    result = run("text", "--url", live, "what do you do for work?")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "I compute Bernoulli numbers, mostly by candlelight."
    assert proxy_env == []


def test_text_uses_from_and_keeps_memory_per_number(live):
    run("text", "--url", live, "--from", "+15550123", "#bo")
    assert run("text", "--url", live, "--from", "+15550123", "#who").output.strip() == (
        "You're texting Bo (#bo)."
    )
    assert run("text", "--url", live, "#who").output.strip() == "You're texting Ada (#ada)."


def contacts(database) -> list[str]:
    """The numbers the server has stored a contact for."""
    with database.read() as session:
        return sorted(session.scalars(sa.select(Contact.phone)))


@pytest.mark.parametrize(
    ("typed", "sent"),
    [
        ("+1 (555) 010-0142", "+15550100142"),
        ("001 555 010 0142", "+15550100142"),  # 00: the international prefix for +
        ("+1\u00a0555\u2013010\u20130142", "+15550100142"),  # as pasted
        ("+44 (0)7911 123456", "+447911123456"),  # the (0) is dialled at home only
    ],
)
def test_text_from_is_sent_as_twilio_sends_it(live, database, typed, sent):
    """Twilio's From is E.164, and the server's rules (routes, ALLOWED_NUMBERS) read it so."""
    routed = run("persona", "route", sent, "bo")
    assert routed.exit_code == 0, routed.output

    result = run("text", "--url", live, "--from", typed, "#who")
    assert (result.exit_code, result.output) == (0, "You're texting Bo (#bo).\n")
    chat = run("chat", "--url", live, "--from", typed, input="#who\n/quit\n")
    assert "clone> You're texting Bo (#bo)." in chat.output
    assert contacts(database) == [sent]


def test_text_from_allowed_numbers_is_matched_in_international_form(make_app, personas, database):
    app = make_app(allowed_numbers="+447911123456")
    with on_loopback(app) as url:
        result = run("text", "--url", url, "--from", "0044 (0)7911 123 456", "#who")
    assert (result.exit_code, result.output) == (0, "You're texting Ada (#ada).\n")
    assert contacts(database) == ["+447911123456"]


@pytest.mark.parametrize(
    ("typed", "sent"),
    [
        ("whatsapp:+1 555 010 0142", "whatsapp:+15550100142"),
        ("WhatsApp: 001 555 010 0142", "whatsapp:+15550100142"),
    ],
)
def test_text_from_keeps_a_channel_prefix(live, database, typed, sent):
    result = run("text", "--url", live, "--from", typed, "#who")
    assert (result.exit_code, result.output) == (0, "You're texting Ada (#ada).\n")
    assert contacts(database) == [sent]


@pytest.mark.parametrize(
    "typed",
    [
        "5550100",  # national: which country?
        "(555) 010-0114",
        "07911 123456",
        "+1 555 CALL NOW",
        "+123456",  # under 7 digits
        "12345",  # a short code never texts in
        "whatsapp:5550100",
        "what's app:+15550100",
        "",
    ],
)
@pytest.mark.parametrize("command", ["text", "chat"])
def test_text_from_refuses_a_number_twilio_never_sends(live, database, command, typed):
    args = ["--url", live, "--from", typed] + (["hi"] if command == "text" else [])
    result = run(command, *args, input="hi\n/quit\n")
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1] == (
        f"Error: Invalid value for '--from': {typed!r} is not a phone number in international "
        "form: give it as +<country code><number>, e.g. +15551234567 (or whatsapp:+15551234567)"
    )
    assert contacts(database) == []  # nothing was posted


def test_text_no_reply_is_said_with_why(live):
    result = run("text", "--url", live, "STOP")
    assert (result.exit_code, result.output) == (
        0,
        "(no reply in the webhook response: that is an opt-out word (STOP, QUIT, END, CANCEL, "
        "…), so it opted +15550100 out; its later texts are ignored until it sends START)\n",
    )
    chat = run("chat", "--url", live, "--from", "+15550100", input="hello?\n/quit\n")
    assert "clone> (no reply in the webhook response: +15550100 opted out (STOP)" in chat.output
    # `quit` typed to leave a chat (it is `/quit`) is an opt-out word: say so, not "STOP".
    chat = run("chat", "--url", live, "--from", "+15550101", input="quit\n/quit\n")
    assert (
        "clone> (no reply in the webhook response: that is an opt-out word (STOP, QUIT, END, "
        "CANCEL, …), so it opted +15550101 out;"
    ) in chat.output


def test_text_says_a_reply_by_rest_went_elsewhere(
    make_app, personas, database, fake_openai, fake_twilio, twilio_rest, monkeypatch
):
    # REPLY_MODE=async: the TwiML is empty and the reply goes by REST (here to the fake
    # Twilio), which `phischer text` cannot see; "(no reply)" alone would look like silence.
    from tests.conftest import set_model
    from tests.fake_twilio import AUTH_TOKEN

    with database.write() as session:
        set_model(session, "Ada", "m", base_url=fake_openai.base_url)
    app = make_app(reply_mode="async", **twilio_rest)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)  # as the server's, to sign with
    with on_loopback(app) as url:
        result = run("text", "--url", url, "--from", "+15550123", "hi")
    assert (result.exit_code, result.output) == (
        0,
        "(no reply in the webhook response: REPLY_MODE=async: the reply goes separately, as "
        "an SMS through Twilio's REST API to +15550123, which this simulator cannot receive "
        "(the server's log says if the send failed))\n",
    )
    app.extensions["phischer"].sms.shutdown()  # the REST send, made in the background
    sends = fake_twilio.calls("POST", "/Messages.json")
    assert [(c.form["To"], c.form["Body"]) for c in sends] == [("+15550123", "echo: hi")]


def test_no_reply_explanations():
    from phischer import no_reply

    words = [v for k, v in vars(no_reply).items() if k[0].isupper() and isinstance(v, str)]
    words.remove(no_reply.HEADER)
    assert sorted(words) == sorted(no_reply.EXPLAINED)  # every word the server sends is explained
    assert no_reply.explain(None, "+1") == "(no reply in the webhook response)"
    # A word from a newer server is shown; anything else from an unknown server is not.
    assert no_reply.explain("later", "+1") == "(no reply in the webhook response: later)"
    assert no_reply.explain("\x1b[31mred", "+1") == "(no reply in the webhook response)"


def test_readme_names_every_no_reply_word():
    from phischer import no_reply

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    item = next(p for p in readme.split("\n- ") if p.startswith("A `POST /sms` answer without"))
    assert set(no_reply.EXPLAINED) <= set(re.findall(r"`([a-z-]+)`", item))


def test_text_server_down_is_one_line_exit_1():
    result = run("text", "--url", "http://127.0.0.1:9/sms", "hi")
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error: nothing answers at http://127.0.0.1:9/sms")
    assert "Traceback" not in result.output


def test_text_to_a_server_that_drops_the_request_does_not_say_nothing_answers():
    # A server stopped (Ctrl-C) or crashed while handling the text: it accepted the
    # connection and closed it without an answer, so "start the server" would mislead.
    port = free_port()
    with socket.create_server(("127.0.0.1", port)) as server:

        def drop_one() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)

        threading.Thread(target=drop_one, daemon=True).start()
        result = run("text", "--url", f"http://127.0.0.1:{port}/sms", "hi")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: the server at http://127.0.0.1:{port}/sms closed the connection without "
        "answering (it stopped or crashed while handling the text); a text it stored is taken "
        "up by its recovery sweep when it runs again\n"
    )


def test_text_wrong_token_is_explained(live, monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "not-the-servers-token")
    result = run("text", "--url", live, "hi")
    assert result.exit_code == 1
    assert "rejected the signature (403)" in result.output


def test_text_from_a_folder_without_the_servers_token_says_so(live, monkeypatch, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("INSTANCE_PATH", str(elsewhere / "instance"))
    result = run("text", "--url", live, "hi")
    assert result.exit_code == 1
    assert result.output == (
        "Error: the server rejected the text (403): no TWILIO_AUTH_TOKEN is set and "
        f"{elsewhere / 'instance' / 'dev_auth_token'} does not exist, so the server runs from "
        "another folder: run this command there, or set the same TWILIO_AUTH_TOKEN for both\n"
    )
    assert not elsewhere.exists()  # no stray instance/ with a token nobody checks


def test_text_with_no_token_and_no_server_says_nothing_answers(tmp_path):
    result = run("text", "--url", "http://127.0.0.1:9/sms", "hi")
    assert result.output.startswith("Error: nothing answers at http://127.0.0.1:9/sms")
    assert not (tmp_path / "instance" / "dev_auth_token").exists()


def test_text_signs_for_public_url(make_app, personas, monkeypatch):
    monkeypatch.setenv("PUBLIC_URL", "https://clone.example.ngrok.app")
    app = make_app(public_url="https://clone.example.ngrok.app")
    with on_loopback(app) as url:
        assert run("text", "--url", url, "good night").output.strip() == (
            "Sleep well, dear. Dream of engines."
        )


def test_chat_session(live):
    result = run("chat", "--url", live, input="#list\ntell me a joke\n/quit\n")
    assert result.exit_code == 0
    assert "clone> Personas: #ada, #bo" in result.output
    assert "clone> Why did the loom blush? It saw the punch cards." in result.output


def test_persona_commands(tmp_path):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(PAIR)
    ok = run(
        "persona",
        "add",
        "Cleo",
        "--keyword",
        "Cleo",
        "--dataset",
        str(dataset),
        "--greeting",
        "hi!",
        "--default",
    )
    assert ok.exit_code == 0 and "Added persona Cleo (#cleo, retrieval)." in ok.output
    assert "* Cleo" in run("persona", "list").output
    shown = run("persona", "show", "cleo").output
    assert "keyword      #cleo" in shown and "greeting     hi!" in shown
    dup = run("persona", "add", "Cleo", "--keyword", "other", "--dataset", str(dataset))
    assert dup.exit_code == 1 and "already exists" in dup.output
    reserved = run("persona", "add", "X", "--keyword", "help", "--dataset", str(dataset))
    assert reserved.exit_code == 1 and "collides with the SMS command HELP" in reserved.output
    no_model = run("persona", "add", "Y", "--keyword", "y", "--backend", "openai")
    assert no_model.exit_code == 1 and "needs --model" in no_model.output
    missing = run("persona", "add", "Z", "--keyword", "z", "--dataset", "nope.jsonl")
    assert missing.exit_code == 1 and "does not exist" in missing.output
    routed = run("persona", "route", "+1 555 0100", "cleo")
    assert (
        routed.exit_code == 0 and "+15550100 now talks to Cleo." in routed.output
    )  # the name as stored
    bad_route = run("persona", "route", "+15550100", "nobody")
    assert bad_route.exit_code == 1 and "no persona 'nobody' (known: Cleo)" in bad_route.output
    assert run("persona", "remove", "Cleo").exit_code == 0
    assert "No personas yet" in run("persona", "list").output


def test_a_failed_statement_does_not_print_its_parameters(personas, settings):
    """SQLAlchemy appends a failed statement's parameters (numbers, bodies) to its error."""
    import sqlite3
    import traceback

    path = settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:  # the database refuses the row: a real failure
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON contacts BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
    with pytest.raises(sa.exc.IntegrityError) as raised:
        run("persona", "route", "+15553330001", "bo")
    printed = "".join(traceback.format_exception_only(raised.value))  # a traceback's last lines
    assert "INSERT INTO contacts" in printed and "5553330001" not in printed


def test_text_typed_in_another_encoding_is_one_clear_line(tmp_path):
    # A Latin-1 terminal sends "é" as the byte 0xE9, which Python passes on as "\udce9".
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(PAIR)
    result = run(
        "persona", "add", "Cleo", "--keyword", "cleo", "--dataset", str(dataset),
        "--greeting", "ol\udce9!",
    )  # fmt: skip
    expected = (
        "Error: some text given to phischer is not UTF-8 (bytes b'\\xe9'): set your terminal "
        "to UTF-8 (e.g. export LANG=C.UTF-8) and type it again\n"
    )
    assert (result.exit_code, result.output) == (1, expected)
    assert "No personas yet" in run("persona", "list").output
    # The same wherever such text is first encoded: here, the form `phischer text` posts.
    texted = run("text", "caf\udce9")
    assert (texted.exit_code, texted.output) == (1, expected)


def test_chat_says_so_for_a_line_in_another_encoding_and_goes_on(live):
    # A real process: the bytes reach it as a terminal in Latin-1 would send them.
    result = subprocess.run(
        [sys.executable, "-m", "phischer", "chat", "--url", live],
        input=b"caf\xe9\ntell me a joke\n/quit\n",
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:surrogateescape"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert b"Error: some text given to phischer is not UTF-8 (bytes b'\\xe9')" in result.stderr
    assert b"clone> Why did the loom blush? It saw the punch cards." in result.stdout


def test_persona_takes_the_datasets_system_prompt(tmp_path):
    built = tmp_path / "built.jsonl"
    prompt = "You are Zoë Martín. Reply to text messages the way Zoë Martín would."
    example = {
        "messages": [
            {"role": "system", "content": prompt},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
    }
    built.write_text("\n" + json.dumps(example) + "\n")
    added = run("persona", "add", "Zoe", "--keyword", "zoe", "--dataset", str(built))
    assert added.exit_code == 0 and f"System prompt (from the dataset): {prompt}" in added.output
    assert f"system       {prompt}" in run("persona", "show", "zoe").output
    # --system wins over the dataset's; a dataset without one leaves the prompt empty.
    run("persona", "add", "Own", "--keyword", "own", "--dataset", str(built), "--system", "Mine.")
    assert "system       Mine." in run("persona", "show", "own").output
    bare = tmp_path / "bare.jsonl"
    bare.write_text(PAIR + "not json\n")
    plain = run("persona", "add", "Plain", "--keyword", "plain", "--dataset", str(bare))
    assert plain.exit_code == 0 and "System prompt" not in plain.output
    # An openai persona may keep a dataset it was trained on, checked by `dataset check`.
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json")
    openai = ["--backend", "openai", "--model", "m", "--dataset", str(broken)]
    assert run("persona", "add", "B", "--keyword", "b", *openai).exit_code == 0
    for name in ("plain", "b"):
        assert "system " not in run("persona", "show", name).output


@pytest.mark.parametrize(
    "content",
    ['{"messages": [{"role": "user", "content": "a"}]}\n', "{not json", b"\xff\xfe\x00binary"],
)
def test_retrieval_persona_needs_a_dataset_it_can_answer_from(tmp_path, content):
    dataset = tmp_path / "d.jsonl"
    if isinstance(content, bytes):
        dataset.write_bytes(content)
    else:
        dataset.write_text(content)
    result = run("persona", "add", "X", "--keyword", "x", "--dataset", str(dataset))
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: dataset {dataset} ")
    assert "No personas yet" in run("persona", "list").output


# Lines the retrieval backend cannot read: every shape a hand-edited or foreign file may hold.
MALFORMED_LINES = [
    "not json",
    '["not", "an", "object"]',
    '"messages"',
    "null",
    '{"prompt": "hey", "completion": "hi"}',
    '{"messages": null}',
    '{"messages": "hey"}',
    '{"messages": 5}',
    '{"messages": [{"role": "user", "content": "hey"}, "hi"]}',
    '{"messages": [null, {"role": "assistant", "content": "hi"}]}',
    '{"messages": [{"role": 1, "content": "hey"}, {"role": "assistant", "content": "hi"}]}',
    '{"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "hi"}]}',
    '{"messages": [{"role": "user", "content": "hey"}, {"role": "assistant", "content": [1]}]}',
]


@pytest.mark.parametrize("bad", MALFORMED_LINES)
def test_persona_add_refuses_a_dataset_of_malformed_lines_in_one_line(tmp_path, bad):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(f"{bad}\n{bad}\n")
    result = run("persona", "add", "Y", "--keyword", "yy", "--dataset", str(dataset))
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line == (
        f"Error: dataset {dataset} has no user→assistant pairs to answer from (2 malformed "
        "lines skipped, first: line 1): build it with `phischer import` (and look at it with "
        "`phischer dataset check`)"
    )
    assert "No personas yet" in run("persona", "list").output


def test_persona_add_takes_a_dataset_with_some_malformed_lines(tmp_path, caplog):
    # The walkthrough's file: good examples among every kind of broken line.
    from pathlib import Path

    errors = Path(__file__).parent / "fixtures" / "datasets" / "errors.jsonl"
    with caplog.at_level("WARNING"):
        result = run("persona", "add", "Y", "--keyword", "yy", "--dataset", str(errors))
    assert result.exit_code == 0, result.output
    assert "Added persona Y (#yy, retrieval)." in result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"Dataset {errors}: skipped 6 malformed lines (first: line 2); "
        "`phischer dataset check` says what is wrong with them"
    ]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(MALFORMED_LINES) + "\n" + PAIR)
    added = run("persona", "add", "M", "--keyword", "mm", "--dataset", str(mixed))
    assert added.exit_code == 0, added.output


def test_route_pins_a_number(app, twilio_post, database):
    from phischer.personas import route_number

    with database.write() as session:
        route_number(session, "+15550142", "bo")
    assert twilio_post("#who", from_="+15550142").replies == ["You're texting Bo (#bo)."]
    assert twilio_post("#who", from_="+15550143").replies == ["You're texting Ada (#ada)."]


def test_a_route_holds_for_the_number_on_whatsapp_too(app, twilio_post, database):
    from phischer.personas import route_number

    with database.write() as session:
        route_number(session, "+15550142", "bo")
    # Its own contact (memory, opt-out, replies on WhatsApp), starting with the routed persona.
    assert twilio_post("#who", from_="whatsapp:+15550142").replies == ["You're texting Bo (#bo)."]
    assert twilio_post("#ada", from_="whatsapp:+15550142").replies == ["Ada here!"]
    assert twilio_post("#who", from_="+15550142").replies == ["You're texting Bo (#bo)."]
    assert twilio_post("#who", from_="whatsapp:+15550143").replies == ["You're texting Ada (#ada)."]


@pytest.mark.parametrize(
    "typed",
    [
        "+1 (555) 010-0142",
        "+1.555.010.0142",
        "001 555 010 0142",  # 00: the international prefix for +
        "+1\u00a0555\u2013010\u20130142",  # a no-break space and en dashes, as pasted
    ],
)
def test_route_stores_the_number_as_twilio_sends_it(app, twilio_post, typed):
    routed = run("persona", "route", typed, "bo")
    assert (routed.exit_code, routed.output) == (0, "+15550100142 now talks to Bo.\n")
    assert twilio_post("#who", from_="+15550100142").replies == ["You're texting Bo (#bo)."]
    uk = run("persona", "route", "+44 (0)7911 123456", "bo")  # the (0) is dialled at home only
    assert uk.output == "+447911123456 now talks to Bo.\n"


@pytest.mark.parametrize(
    "typed",
    [
        "(555) 010-0114",  # national: which country?
        "07911 123456",
        "0044 7911 12345678901234",  # over 15 digits
        "12+34567",
        "+1 555 CALL NOW",
        "123",
        "+123456",  # under 7 digits
        "+0 555 010 0114",  # no country code starts with 0
        "+\uff11\uff15\uff15\uff15\uff10\uff11\uff10\uff10\uff11\uff11\uff14",  # fullwidth digits
        "",
    ],
)
def test_route_refuses_a_number_no_text_could_come_from(personas, database, typed):
    routed = run("persona", "route", typed, "bo")
    assert routed.exit_code == 1
    assert routed.output == (
        f"Error: {typed!r} is not a phone number in international form: give it as "
        "+<country code><number>, e.g. +15551234567\n"
    )
    with database.read() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Contact)) == 0


@pytest.mark.parametrize("name", ["", "   ", "\t"])
def test_persona_add_refuses_an_empty_name(tmp_path, name):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(PAIR)
    result = run("persona", "add", name, "--keyword", "x", "--dataset", str(dataset))
    assert (result.exit_code, result.output) == (
        1,
        'Error: a persona needs a name, e.g. phischer persona add "Ada Lovelace" …\n',
    )
    assert "No personas yet" in run("persona", "list").output


def test_persona_names_are_stripped_and_unique_ignoring_case(tmp_path):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(PAIR)
    added = run("persona", "add", "  Zoë ", "--keyword", "zoe", "--dataset", str(dataset))
    assert added.output.startswith("Added persona Zoë (#zoe, retrieval).")
    for name in ("zoë", "ZOË", " Zoë"):
        again = run("persona", "add", name, "--keyword", "other", "--dataset", str(dataset))
        assert again.exit_code == 1
        (line,) = again.output.splitlines()
        if name.strip() == "Zoë":
            assert line == (
                "Error: persona 'Zoë' already exists: choose another name (`phischer persona "
                "edit` changes a persona)"
            )
        else:
            assert line == (
                f"Error: persona {name!r} already exists as 'Zoë' (names differ in case only): "
                "choose another name (`phischer persona edit` changes a persona)"
            )
    assert "name         Zoë" in run("persona", "show", "Zoë").output
    assert len(run("persona", "list").output.splitlines()) == 2  # the header and Zoë


def add_ada_and_bo(tmp_path: Path) -> Path:
    """Add Ada Lovelace (#ada) and Bo (#bo2) over one dataset; return the dataset."""
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(PAIR)
    for name, keyword in (("Ada Lovelace", "ada"), ("Bo", "bo2")):
        added = run("persona", "add", name, "--keyword", keyword, "--dataset", str(dataset))
        assert added.exit_code == 0, added.output
    return dataset


@pytest.mark.parametrize(
    ("name", "keyword", "message"),
    [
        ("ada", "lovelace", "persona 'Ada Lovelace' already answers to 'ada' (its keyword "
         "#ada): choose another name, or `persona show ada` could not tell the two apart"),
        ("#ADA", "lovelace", "persona 'Ada Lovelace' already answers to '#ADA' (its keyword "
         "#ada): choose another name, or `persona show #ADA` could not tell the two apart"),
        ("Grace", "bo", "persona 'Bo' already answers to 'bo' (its name): choose another "
         "keyword, or `persona show bo` could not tell the two apart"),
        ("Grace", "ada", "persona 'Ada Lovelace' already answers to 'ada' (its keyword #ada): "
         "choose another keyword, or `persona show ada` could not tell the two apart"),
    ],
)  # fmt: skip
def test_persona_add_refuses_a_word_another_persona_answers_to(tmp_path, name, keyword, message):
    dataset = add_ada_and_bo(tmp_path)
    result = run("persona", "add", name, "--keyword", keyword, "--dataset", str(dataset))
    assert (result.exit_code, result.output) == (1, f"Error: {message}\n")
    assert len(run("persona", "list").output.splitlines()) == 3  # the header, Ada and Bo
    assert "name         Ada Lovelace" in run("persona", "show", "ada").output


def test_a_word_two_stored_personas_answer_to_means_the_named_one(database, monkeypatch):
    # Stored before `persona add` refused it: "ada" is one persona's keyword, another's name.
    # Every NAME (DEFAULT_PERSONA too) means the same one: the persona of that name.
    monkeypatch.setenv("DEFAULT_PERSONA", "ada")
    with database.write() as session:
        session.add(Persona(name="Ada Lovelace", keyword="ada", backend="retrieval"))
        session.flush()  # the older row: a query by name or keyword would meet it first
        session.add(Persona(name="ada", keyword="other", backend="retrieval"))
    assert run("persona", "show", "ada").output.startswith("name         ada\n")
    routed = run("persona", "route", "+15550100114", "ada")
    assert routed.output == "+15550100114 now talks to ada.\n"
    assert run("persona", "show", "#ada").output.startswith("name         Ada Lovelace\n")
    marked = [line for line in run("persona", "list").output.splitlines() if line[0] == "*"]
    assert marked[0].split()[:2] == ["*", "ada"]


def test_a_persona_name_is_found_in_any_case(tmp_path):
    # `persona add` refuses a name that differs from another only in case, so a name in
    # any case means the one persona ("bo" is also what the clash message calls Bo).
    add_ada_and_bo(tmp_path)
    assert run("persona", "show", "ada lovelace").output.startswith("name         Ada Lovelace\n")
    assert run("persona", "show", "bo").output.startswith("name         Bo\n")
    assert run("persona", "route", "+15550100114", "BO").output == "+15550100114 now talks to Bo.\n"


def test_persona_list_has_a_header_and_shows_where_each_answers_from(tmp_path):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(PAIR)
    run("persona", "add", "Ada Lovelace", "--keyword", "ada", "--dataset", str(dataset))
    run("persona", "add", "Ada (local)", "--keyword", "adal", "--backend", "openai",
        "--model", "ada-lora", "--base-url", "http://127.0.0.1:8000/v1")  # fmt: skip
    run("persona", "add", "Ada (OpenAI)", "--keyword", "ada2", "--backend", "openai",
        "--model", "ft:gpt-4.1-mini:acme:ada:AbC", "--dataset", str(dataset))  # fmt: skip
    assert run("persona", "list").output.splitlines() == [
        "  NAME          KEYWORD  BACKEND    ANSWERS FROM",
        f"* Ada Lovelace  #ada     retrieval  {dataset.resolve()}",
        "  Ada (local)   #adal    openai     ada-lora at http://127.0.0.1:8000/v1",
        "  Ada (OpenAI)  #ada2    openai     ft:gpt-4.1-mini:acme:ada:AbC",
    ]
    # A name longer than any fixed column (20 wide before) moves the columns, not its line.
    run("persona", "add", "Augusta Ada King, Countess of Lovelace", "--keyword", "countess",
        "--dataset", str(dataset))  # fmt: skip
    lines = run("persona", "list").output.splitlines()
    assert {line.index("#") for line in lines[1:]} == {lines[0].index("KEYWORD")}
    assert {line.index("retrieval" if "#ada " in line or "#countess" in line else "openai")
            for line in lines[1:]} == {lines[0].index("BACKEND")}  # fmt: skip


def test_persona_list_lines_up_cjk_and_accented_names_by_terminal_columns(tmp_path):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(PAIR)
    for name, keyword in (("李小龍", "bruce"), ("Zoe\u0308 Çelik", "zoe"), ("Ada", "ada")):
        added = run("persona", "add", name, "--keyword", keyword, "--dataset", str(dataset))
        assert added.exit_code == 0, added.output
    header, *rows = run("persona", "list").output.splitlines()
    assert len(rows) == 3
    for line in rows:
        keyword = line[line.index("#") :].split()[0]
        assert display_width(line[: line.index(keyword)]) == header.index("KEYWORD")
        assert display_width(line[: line.index("retrieval")]) == header.index("BACKEND")


def test_keyword_must_be_ascii():
    result = run("persona", "add", "Zoé", "--keyword", "zoé", "--backend", "openai", "--model", "m")
    assert (result.exit_code, result.output) == (
        1,
        "Error: keyword 'zoé' must be ASCII letters, digits, '-' or '_' (at most 50), "
        "e.g. --keyword ada\n",
    )


def test_db_upgrade_and_help(tmp_path, monkeypatch):
    from alembic.script import ScriptDirectory

    from phischer.migrate import alembic_config, upgrade

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert run("db", "upgrade").output.strip() == (
        f"Database migrated from an empty database to revision {head} (the latest)."
    )
    assert run("db", "upgrade").output.strip() == "Database is up to date."
    # a database some revisions behind says where it came from
    url = f"sqlite:///{tmp_path / 'old.db'}"
    assert upgrade(url, "0004") == (None, "0004")
    monkeypatch.setenv("DATABASE_URL", url)
    assert run("db", "upgrade").output.strip() == (
        f"Database migrated from revision 0004 to revision {head} (the latest)."
    )
    for command in (
        ["serve"],
        ["text"],
        ["chat"],
        ["persona", "add"],
        ["persona", "route"],
        ["db", "upgrade"],
        ["seed"],
    ):
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


@pytest.mark.parametrize("sid_only", [False, True])
def test_async_replies_without_twilio_credentials_are_refused_at_serve(monkeypatch, sid_only):
    monkeypatch.setenv("REPLY_MODE", "async")
    if sid_only:  # half the credentials is none: every reply would be send_failed
        monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "0" * 32)
    result = run("serve", "--port", str(free_port()))
    assert result.exit_code == 1
    assert result.output == (
        "Error: REPLY_MODE=async sends every reply through Twilio's REST API: set "
        "TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER, or use "
        "REPLY_MODE=auto\n"
    )
    assert run("persona", "list").exit_code == 0  # only serving needs them


def test_bad_setting_is_one_line(monkeypatch):
    monkeypatch.setenv("REPLY_TIMEOUT_S", "30")
    result = run("persona", "list")
    assert result.exit_code == 1
    assert "REPLY_TIMEOUT_S=30 must be more than 0 and under 15" in result.output


def test_dev_token_is_generated_once_and_shared(tmp_path):
    from phischer.config import Settings

    a = Settings.from_env().auth_token()
    b = Settings.from_env().auth_token()
    assert a == b and len(a) == 32
    token_file = tmp_path / "instance" / "dev_auth_token"
    assert token_file.read_text() == a
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"


def test_persona_add_openai_flags_are_stored():
    result = run("persona", "add", "Vee", "--keyword", "vee", "--backend", "openai",
                 "--model", "ft:gpt-4.1-mini:acme:vee:abc", "--base-url", "http://127.0.0.1:8000/v1",
                 "--api-key-env", "VEE_KEY", "--system", "You are Vee.", "--temperature", "0.7",
                 "--max-tokens", "120")  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = run("persona", "show", "vee").output
    for line in ("backend      openai", "model        ft:gpt-4.1-mini:acme:vee:abc",
                 "base url     http://127.0.0.1:8000/v1", "api key env  VEE_KEY",
                 "system       You are Vee.", "temperature  0.7", "max tokens   120"):  # fmt: skip
        assert line in shown
    bad = run("persona", "add", "W", "--keyword", "w", "--backend", "gpt")
    assert bad.exit_code == 2 and "'gpt' is not one of 'openai', 'retrieval'" in bad.output


def test_serve_on_a_busy_port_is_one_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--port", str(port)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: Cannot listen on 127.0.0.1:{port} (Address already in use): stop the program "
        "using it or pass --port N"
    ]


def test_make_run_on_a_busy_port_says_the_make_variable(tmp_path):
    # It said "pass --port N": `make run --port N` is make's own option, and fails.
    root = Path(__file__).resolve().parent.parent
    venv = Path(sys.prefix)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        # The real Makefile, run in tmp_path with this interpreter's venv as installed.
        done = subprocess.run(
            ["make", "-s", "-f", str(root / "Makefile"), "-C", str(tmp_path), f"VENV={venv}",
             "-o", f"{venv}/.installed-run", "run", f"PORT={port}"],
            env={**os.environ, "PYTHONPATH": str(root)},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode != 0
    assert (
        f"Error: Cannot listen on 127.0.0.1:{port} (Address already in use): stop the "
        "program using it or run `make run PORT=N`"
    ) in done.stderr.splitlines()


def test_two_serves_started_together_on_one_port_one_serves_the_other_says_so(tmp_path):
    # `make run` in two terminals: both found the port free, the loser said "phischer is
    # answering texts at …", then logged gunicorn's "Connection in use" for five seconds.
    port = free_port()
    command = [sys.executable, "-m", "phischer", "serve", "--port", str(port)]
    # Migrated first: the two meet at the port, not at the migration lock.
    subprocess.run([*command[:3], "db", "upgrade"], cwd=tmp_path, check=True, capture_output=True)
    procs = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for _ in range(2)
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        assert loser.communicate(timeout=10)[0].splitlines() == [
            f"Error: Cannot listen on 127.0.0.1:{port} (Address already in use): stop the "
            "program using it or pass --port N"
        ]
        assert loser.returncode == 1
        assert winner.poll() is None
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            proc.communicate(timeout=30)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")


@needs_ipv6
def test_listen_takes_the_address_family_of_the_host():
    # ::1 as typed, or as a URL writes it; a name with both kinds of address stays on IPv4,
    # the one gunicorn binds for a name.
    cases = [
        ("::1", socket.AF_INET6, "::1"),
        ("[::1]", socket.AF_INET6, "::1"),
        ("127.0.0.1", socket.AF_INET, "127.0.0.1"),
        ("localhost", socket.AF_INET, "127.0.0.1"),
    ]
    for host, family, address in cases:
        with listen(host, 0) as sock:
            assert (sock.family, sock.getsockname()[0]) == (family, address), host


def test_host_port_puts_an_ipv6_address_in_brackets():
    assert [host_port(h, 5085) for h in ("::1", "[::1]", "127.0.0.1", "localhost")] == [
        "[::1]:5085",
        "[::1]:5085",
        "127.0.0.1:5085",
        "localhost:5085",
    ]
    assert http_url("::1", 5000) == "http://[::1]:5000"


@needs_ipv6
def test_serve_on_a_busy_ipv6_port_is_one_line():
    with socket.socket(socket.AF_INET6) as busy:
        busy.bind(("::1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run("serve", "--host", "::1", "--port", str(port))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: Cannot listen on [::1]:{port} ({os.strerror(errno.EADDRINUSE)}): stop the "
        "program using it or pass --port N"
    ]


@needs_ipv6
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_serve_answers_on_ipv6_under_gunicorn(tmp_path, host):
    """gunicorn binds an IPv6 address only in brackets; the banner's URL needs them too."""
    import requests

    port = free_port()
    base = f"http://[::1]:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "phischer", "serve", "--host", host, "--port", str(port)],
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                health = requests.get(f"{base}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail(f"serve --host {host} did not answer on {base}")
        assert health.json() == {"status": "ok"}
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert f"phischer is answering texts at {base}/sms" in output.splitlines(), output
    assert f"--url '{base}/sms'" in output


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("192.0.2.1", "192.0.2.1"),  # TEST-NET-1: never this machine's
        pytest.param("2001:db8::1", "[2001:db8::1]", marks=needs_ipv6),  # IPv6 documentation
    ],
)
def test_a_host_that_is_not_this_machines_is_named_as_the_problem(host, shown):
    """Not "stop the program using it": no program can free an address this machine lacks."""
    port = free_port()
    with pytest.raises(PortBusyError) as info:
        listen(host, port)
    assert str(info.value) == (
        f"Cannot listen on {shown}:{port} ({os.strerror(errno.EADDRNOTAVAIL)}): {host} is not an "
        f"address of this machine: pass --host 127.0.0.1 (or [::1] for IPv6)"
    )
    result = run("serve", "--host", host, "--port", str(port))
    assert (result.exit_code, result.output.strip()) == (1, f"Error: {info.value}")


def test_seed_adds_the_samples_once_and_says_how_big_they_are():
    assert run("db", "upgrade").exit_code == 0
    first = run("seed")
    assert first.exit_code == 0
    seeded = re.findall(
        r"Seeded sample persona (.+) \(#(\w+), (\d+) examples, (\d+) exchanges\)\.", first.output
    )
    assert [(name, kw) for name, kw, _, _ in seeded] == [
        ("Marguerite Okafor", "marguerite"),
        ("Dex Varga", "dex"),
    ]
    # The issue asks for at least 150 exchanges per sample persona.
    assert all(int(exchanges) >= 150 for _, _, _, exchanges in seeded)
    assert "* Marguerite Okafor" in run("persona", "list").output
    again = run("seed")
    assert (
        again.exit_code == 0 and again.output.strip() == "Personas already exist; nothing seeded."
    )


def test_seed_into_an_instance_path_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    # The database elsewhere, INSTANCE_PATH a file: the samples' folder was a traceback.
    (tmp_path / "taken").write_text("")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'phischer.db'}")
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "taken"))
    result = CliRunner().invoke(cli, ["seed"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: cannot create {tmp_path / 'taken' / 'samples'} for the sample datasets (Not a "
        "directory): set INSTANCE_PATH (or DATABASE_URL) to a folder you can write"
    ]
    assert run("persona", "list").output.startswith("No personas yet")


def test_seeds_started_together_add_the_samples_once_and_all_succeed(tmp_path: Path) -> None:
    # `make run` in two terminals: every seed found no persona, and all but one crashed
    # (a traceback) on a sample another had just added.
    for round_ in range(3):  # without the one transaction, nearly always lost in one of them
        instance = tmp_path / f"round{round_}"
        runs = phischer_at_once(6, "seed", cwd=tmp_path, INSTANCE_PATH=str(instance))
        assert [code for code, _ in runs] == [0] * 6, runs
        outputs = [out for _, out in runs]
        assert sum("Seeded sample persona Dex Varga" in o for o in outputs) == 1, outputs
        assert sum(o == "Personas already exist; nothing seeded.\n" for o in outputs) == 5
        engine = sa.create_engine(f"sqlite:///{instance / 'phischer.db'}")
        with engine.connect() as conn:
            names = conn.scalars(sa.select(Persona.name).order_by(Persona.id)).all()
        engine.dispose()
        assert names == ["Marguerite Okafor", "Dex Varga"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "Invalid value for '--port': 70000 is not in the range 1<=x<=65535."),
        (["--port", "0"], "Invalid value for '--port': 0 is not in the range 1<=x<=65535."),
        (
            ["--workers", "0"],
            "Invalid value for '--workers' (env var: 'WEB_CONCURRENCY'): 0 is not in the range "
            "x>=1.",
        ),
        (["--threads", "0"], "Invalid value for '--threads': 0 is not in the range x>=1."),
    ],
)
def test_serve_refuses_a_bad_port_or_pool_size(args, message):
    result = run("serve", *args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == f"Error: {message}"
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("notaurl", "Invalid URL 'notaurl': No scheme supplied."),
        ("http://[::1", "'[::1' is not a valid host or port"),
        ("ftp://127.0.0.1/sms", "No connection adapters were found"),
    ],
)
def test_text_to_a_bad_url_is_one_line_exit_1(url, reason):
    result = run("text", "--url", url, "hi")
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: cannot post to {url}: ") and reason in line
    # requests' words do not say what to do: the line ends with a URL that works.
    assert line.endswith("; pass the full webhook URL, e.g. --url http://127.0.0.1:5000/sms")
    assert "Traceback" not in result.output


def test_text_to_a_bad_url_signed_for_a_public_url_is_one_line(monkeypatch):
    # With PUBLIC_URL the URL is split to be signed before anything is posted.
    monkeypatch.setenv("PUBLIC_URL", "https://clone.example.ngrok.app")
    result = run("text", "--url", "http://[::1", "hi")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: cannot post to http://[::1: Invalid IPv6 URL; "
        "pass the full webhook URL, e.g. --url http://127.0.0.1:5000/sms"
    )


def test_chat_to_a_bad_url_is_one_line_exit_1():
    result = run("chat", "--url", "notaurl", input="hi\n")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: cannot post to notaurl: ")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("flags", "exit_code", "message"),
    [
        (["--temperature", "9"], 2, "'--temperature': 9.0 is not in the range 0.0<=x<=2.0"),
        (["--temperature", "-0.1"], 2, "'--temperature': -0.1 is not in the range 0.0<=x<=2.0"),
        (["--temperature", "nan"], 2, "'--temperature': 'nan' is not a finite number."),
        (["--max-tokens", "-5"], 2, "'--max-tokens': -5 is not in the range x>=1"),
        (["--max-tokens", "0"], 2, "'--max-tokens': 0 is not in the range x>=1"),
        (["--base-url", "localhost:8000"], 1, "--base-url 'localhost:8000' must be an http(s) URL"),
        (["--base-url", "http://"], 1, "--base-url 'http://' must be an http(s) URL"),
        (["--base-url", "ftp://127.0.0.1/v1"], 1, "must be an http(s) URL, e.g. http://127.0.0.1"),
    ],
)
def test_persona_add_refuses_values_every_text_would_fail_on(flags, exit_code, message):
    result = run("persona", "add", "Vee", "--keyword", "vee", "--backend", "openai",
                 "--model", "m", *flags)  # fmt: skip
    assert result.exit_code == exit_code
    assert message in result.output and "Traceback" not in result.output
    assert "No personas yet" in run("persona", "list").output


def test_readme_shows_persona_adds_refusal_of_a_temperature_as_printed():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Personas\n")[1].split("\n## ")[0]
    paragraph = next(p for p in section.split("\n\n") if "`--temperature` takes 0 to 2" in p)
    said = " ".join(paragraph.split())
    error = re.search(r"`(Error: Invalid value for '--temperature': [^`]+)`", said).group(1)
    hint = re.search(r"`(Try 'phischer persona add [^`]+)`", said).group(1)
    result = CliRunner().invoke(
        cli,
        ["persona", "add", "Vee", "--keyword", "vee", "--backend", "openai", "--model", "m",
         "--temperature", "3"],
        prog_name="phischer",
    )  # fmt: skip
    assert f"exit code {result.exit_code}" in said and result.exit_code == 2
    assert result.output.splitlines() == [
        "Usage: phischer persona add [OPTIONS] NAME",
        hint,
        "",
        error,
    ]


def test_persona_add_takes_sampling_and_base_url_at_their_limits():
    for name, temperature, max_tokens in (("A", "0", "1"), ("B", "2", "200"), ("C", "0.7", "1")):
        result = run("persona", "add", name, "--keyword", name, "--backend", "openai",
                     "--model", "m", "--temperature", temperature, "--max-tokens", max_tokens,
                     "--base-url", "http://127.0.0.1:8000/v1")  # fmt: skip
        assert result.exit_code == 0, result.output
    shown = run("persona", "show", "b").output
    assert "temperature  2.0" in shown and "max tokens   200" in shown
    assert "base url     http://127.0.0.1:8000/v1" in shown
    https = run("persona", "add", "D", "--keyword", "d", "--backend", "openai", "--model", "m",
                "--base-url", "HTTPS://api.example.com/v1")  # fmt: skip
    assert https.exit_code == 0, https.output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "gpt-4.1-mini"], "--model only applies to --backend openai, not retrieval "
         "(it answers from --dataset and calls no model): add --backend openai, or leave it out"),
        (["--base-url", "http://127.0.0.1:8000/v1", "--api-key-env", "VEE_KEY"],
         "--base-url, --api-key-env only apply to --backend openai, not retrieval (it answers "
         "from --dataset and calls no model): add --backend openai, or leave them out"),
    ],
)  # fmt: skip
def test_retrieval_persona_refuses_the_model_flags_it_never_reads(tmp_path, flags, message):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(PAIR)
    result = run("persona", "add", "Vee", "--keyword", "vee", "--dataset", str(dataset), *flags)
    assert (result.exit_code, result.output) == (1, f"Error: {message}\n")
    assert "No personas yet" in run("persona", "list").output


def test_model_without_backend_openai_names_the_flag_not_the_missing_dataset():
    # `--model` alone most likely forgot `--backend openai`: say that, not "needs --dataset".
    result = run("persona", "add", "Vee", "--keyword", "vee", "--model", "m")
    assert result.exit_code == 1
    assert result.output.startswith("Error: --model only applies to --backend openai")


def test_retrieval_persona_keeps_sampling_for_its_fine_tune_and_says_so(tmp_path):
    # A fine-tune switches the persona to openai and keeps these: they are not ignored.
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(PAIR)
    result = run("persona", "add", "Vee", "--keyword", "vee", "--dataset", str(dataset),
                 "--temperature", "0.7")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "--temperature is kept for when a fine-tune moves this persona to the openai backend: "
        "retrieval answers do not use it."
    )
    assert "temperature  0.7" in run("persona", "show", "vee").output


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", 9.0, "--temperature 9 must be between 0 and 2, e.g. --temperature 0.7"),
        ("max_tokens", 0, "--max-tokens 0 must be at least 1, e.g. --max-tokens 200"),
        ("base_url", "localhost:8000", "--base-url 'localhost:8000' must be an http(s) URL, e.g."),
        ("base_url", "http://[::1", "--base-url 'http://[::1' must be an http(s) URL"),
    ],
)
def test_add_persona_checks_the_same_for_every_caller(database, field, value, message):
    from phischer.personas import PersonaError, PersonaSpec, add_persona, list_personas

    spec = PersonaSpec(name="Vee", keyword="vee", backend="openai", model="m", **{field: value})
    with pytest.raises(PersonaError) as refused, database.write() as session:
        add_persona(session, spec)
    assert str(refused.value).startswith(message)
    with database.read() as session:
        assert list_personas(session) == []


def test_serve_on_a_database_without_personas_says_how_to_add_them(tmp_path):
    # The README's "another port" is `phischer serve --port`, which seeds nothing, unlike
    # `make run`: without a word, every text gets "No clone is set up yet" and the user
    # does not know the samples are one command away.
    hint = (
        "add the bundled samples with `phischer seed` (as `make run` does), or your own with "
        "`phischer persona add NAME --keyword KW --dataset FILE`"
    )
    output: list[str] = []
    with serving(tmp_path, output=output):
        pass
    assert (
        f'No personas yet, so every text gets "No clone is set up yet. Add one with '
        f'`phischer persona add`.": {hint} (no restart needed).\n'
    ) in output
    assert run("persona", "list").output == f"No personas yet: {hint}.\n"
    assert run("seed").exit_code == 0
    output.clear()
    with serving(tmp_path, output=output):
        pass
    assert not [line for line in output if "No personas yet" in line]


# -- the banner's "Try it in another terminal" command ------------------------------------


@pytest.fixture
def scripts(tmp_path, monkeypatch):
    """Two phischer console scripts and a python under the working folder; nothing on PATH."""
    made = {}
    for name, rel in (("venv", ".venv/bin/phischer"), ("other", "other/bin/phischer"),
                      ("python", ".venv/bin/python")):  # fmt: skip
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        made[name] = str(path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("shutil.which", lambda name: None)
    return made


def test_hint_says_phischer_when_path_finds_the_running_script(scripts, monkeypatch):
    from phischer.cli_serve import text_hint

    monkeypatch.setattr("sys.argv", [scripts["venv"], "serve"])
    on_path = {"phischer": scripts["venv"]}
    monkeypatch.setattr("shutil.which", on_path.get)
    assert text_hint("http://127.0.0.1:5000/sms") == "phischer text"
    # The same file reached by a relative argv[0] (as `make run` starts it) is the same script.
    monkeypatch.setattr("sys.argv", [".venv/bin/phischer", "serve"])
    assert text_hint("http://127.0.0.1:5000/sms") == "phischer text"


def test_hint_gives_the_scripts_path_when_path_finds_another_or_none(scripts, monkeypatch):
    from phischer.cli_serve import text_hint

    monkeypatch.setattr("sys.argv", [scripts["venv"], "serve"])
    assert text_hint("http://127.0.0.1:5000/sms") == ".venv/bin/phischer text"
    on_path = {"phischer": scripts["other"]}  # another install's phischer comes first on PATH
    monkeypatch.setattr("shutil.which", on_path.get)
    assert text_hint("http://127.0.0.1:5000/sms") == ".venv/bin/phischer text"
    # Run from elsewhere: the absolute path; from the script's own folder: ./phischer.
    monkeypatch.chdir(scripts["other"].rsplit("/", 2)[0])
    assert text_hint("http://127.0.0.1:5000/sms") == f"{scripts['venv']} text"
    monkeypatch.chdir(scripts["venv"].rsplit("/", 1)[0])
    assert text_hint("http://127.0.0.1:5000/sms") == "./phischer text"


def test_hint_for_python_dash_m(scripts, monkeypatch, tmp_path):
    from phischer.cli_serve import text_hint

    main = str(tmp_path / "src" / "phischer" / "__main__.py")
    monkeypatch.setattr("sys.argv", [main, "serve"])
    monkeypatch.setattr("sys.executable", scripts["python"])
    assert text_hint("http://127.0.0.1:5000/sms") == ".venv/bin/python -m phischer text"
    # An activated venv: PATH finds this very interpreter.
    monkeypatch.setattr("shutil.which", {"python": scripts["python"]}.get)
    assert text_hint("http://127.0.0.1:5000/sms") == "python -m phischer text"
    # A python outside the working folder, and a `python` on PATH that only links to it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr("shutil.which", {"python": str(tmp_path / "usr" / "python")}.get)
    assert text_hint("http://127.0.0.1:5000/sms") == f"{scripts['python']} -m phischer text"


def test_hint_keeps_url_only_when_it_is_not_texts_default(scripts, monkeypatch):
    from phischer.cli_serve import text_hint
    from phischer.simulator import DEFAULT_URL

    monkeypatch.setattr("sys.argv", [scripts["venv"], "serve"])
    assert DEFAULT_URL == "http://127.0.0.1:5000/sms"
    assert text_hint(DEFAULT_URL) == ".venv/bin/phischer text"
    assert text_hint("http://127.0.0.1:5001/sms") == (
        ".venv/bin/phischer text --url http://127.0.0.1:5001/sms"
    )
    assert text_hint("http://0.0.0.0:5000/sms") == (
        ".venv/bin/phischer text --url http://0.0.0.0:5000/sms"
    )


def test_show_or_remove_a_missing_persona_is_one_line_exit_1(tmp_path):
    for command in ("show", "remove"):
        result = run("persona", command, "nobody")
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            "Error: no persona 'nobody' (known: none yet: add one with `phischer persona add`)"
        ]
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(PAIR)
    added = run("persona", "add", "Cleo", "--keyword", "cleo", "--dataset", str(dataset))
    assert added.exit_code == 0, added.output
    for command in ("show", "remove"):
        result = run("persona", command, "nobody")
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == ["Error: no persona 'nobody' (known: Cleo)"]
    assert "Cleo" in run("persona", "list").output  # a failed remove removes nothing


def test_serve_prints_a_line_per_text_with_the_number_masked(settings, personas, tmp_path):
    # What `phischer serve` shows under gunicorn: the CLI's logging reaches the workers.

    output: list[str] = []
    with serving(tmp_path, {"INSTANCE_PATH": str(settings.instance_path)}, output) as base:
        url = base + "/sms"
        posted = post_signed(url, settings.auth_token(), sms_params("good night", "+15550100114"))
        assert posted.status_code == 200
        deadline = time.monotonic() + 10
        while not any("text from" in line for line in output) and time.monotonic() < deadline:
            time.sleep(0.05)
    (line,) = [line for line in output if "text from" in line]
    assert re.search(
        r" INFO phischer.inbound: text from …14 → persona 'Ada' \(retrieval\) replied in \d+ ms$",
        line.rstrip("\n"),
    ), line
    assert not [line for line in output if "0100114" in line]


def test_serve_takes_its_worker_count_from_web_concurrency(tmp_path):
    # Heroku-like platforms size WEB_CONCURRENCY to the machine; gunicorn's own CLI honours it.
    port = free_port()
    env = {**os.environ, "WEB_CONCURRENCY": "3", "INSTANCE_PATH": str(tmp_path)}
    command = [sys.executable, "-m", "phischer", "serve", "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(_children(proc.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # not more than 3, either
        assert len(_children(proc.pid)) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            # The parent's pid is the 2nd field after the ")" closing the command's name.
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def test_dev_token_file_left_empty_is_written_again(tmp_path):
    from phischer.config import Settings

    # A process stopped between creating the file and writing the token left it empty: an
    # empty key would make every signature check fail until someone deleted the file.
    (tmp_path / "instance").mkdir()
    token_file = tmp_path / "instance" / "dev_auth_token"
    token_file.write_text("")
    token = Settings.from_env().auth_token()
    assert len(token) == 32 and token_file.read_text() == token
    assert Settings.from_env().auth_token() == token
    assert sorted(p.name for p in token_file.parent.iterdir()) == ["dev_auth_token"]


def test_processes_starting_together_share_one_dev_token(tmp_path):
    script = "from phischer.config import Settings; print(Settings.from_env().auth_token())"
    for round_ in range(3):
        env = {**os.environ, "INSTANCE_PATH": str(tmp_path / str(round_))}
        procs = [subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for _ in range(6)]  # fmt: skip
        tokens = {proc.communicate(timeout=60)[0].strip() for proc in procs}
        assert len(tokens) == 1 and len(tokens.pop()) == 32, tokens


def test_serve_takes_a_blank_web_concurrency_for_unset(tmp_path):
    # `WEB_CONCURRENCY=` in .env (or compose's ${WEB_CONCURRENCY} with it unset): --workers
    # took it as unset, but gunicorn's int() on import was a traceback.
    (tmp_path / ".env").write_text("WEB_CONCURRENCY=\n")
    output: list[str] = []
    with serving(tmp_path, output=output) as base:
        assert requests.get(base + "/healthz", timeout=10).json() == {"status": "ok"}
    assert "Traceback" not in "".join(output)


def test_serve_without_a_token_on_a_read_only_instance_says_to_set_it(tmp_path, monkeypatch):
    # A platform's read-only (or throwaway) file system: the development token cannot be
    # written, and "set INSTANCE_PATH (or DATABASE_URL)" pointed at the wrong fix: Twilio
    # signs with the account's Auth Token, never with a token generated there.
    (tmp_path / "read-only").write_text("")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'phischer.db'}")
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "read-only" / "instance"))
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--port", "1"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        f"Error: cannot create {tmp_path / 'read-only' / 'instance'} for the local development "
        "token (Not a directory): set TWILIO_AUTH_TOKEN (your Twilio account's Auth Token, which "
        "Twilio's texts need anyway), or INSTANCE_PATH to a folder you can write"
    )


@pytest.mark.parametrize(
    ("host", "token", "warned"),
    [
        ("0.0.0.0", None, True),
        ("0.0.0.0", "0123456789abcdef0123456789abcdef", False),
        ("127.0.0.1", None, False),
    ],
)
def test_serving_beyond_this_machine_without_a_token_warns(
    tmp_path, monkeypatch, host, token, warned
):
    # The Procfile's `serve --host 0.0.0.0` on a platform whose config vars lack the token:
    # it started as if all was well, and only Twilio's first text (a 403) told. `make run`
    # on 127.0.0.1 uses the development token on purpose and is not warned.
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    output: list[str] = []
    env = {"TWILIO_AUTH_TOKEN": token} if token else {}
    with serving(tmp_path, env, output, args=("--host", host)):
        pass
    instance = Path(os.environ.get("INSTANCE_PATH", "instance"))
    warning = (
        "Warning: TWILIO_AUTH_TOKEN is not set, so signatures are checked with the development "
        f"token in {instance / 'dev_auth_token'}: Twilio's texts get 403. Set "
        "TWILIO_AUTH_TOKEN to your Twilio account's Auth Token.\n"
    )
    assert (warning in output) is warned, "".join(output)
