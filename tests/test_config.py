"""Settings: every variable of DESIGN §3, validation, and .env.example listing them all."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from phischer.cli import log_level
from phischer.cli_serve import serve
from phischer.config import ENV_VARS, ConfigError, Settings, from_number, sender_number
from phischer.redact import mask_number
from tests.conftest import run

ROOT = Path(__file__).resolve().parent.parent
DESIGN_VARS = {
    "DATABASE_URL", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_PHONE_NUMBER",
    "TWILIO_VALIDATE_SIGNATURE", "PUBLIC_URL", "TRUST_PROXY", "OPENAI_API_KEY", "OPENAI_BASE_URL",
    "ALLOWED_NUMBERS", "DEFAULT_PERSONA", "REPLY_MODE", "REPLY_TIMEOUT_S", "HISTORY_TURNS",
    "SESSION_GAP_HOURS", "MAX_REPLY_CHARS", "DAILY_LIMIT",
}  # fmt: skip


def test_env_example_lists_every_variable():
    listed = set(re.findall(r"^# ([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    read = set(re.findall(r'"([A-Z][A-Z_]+)"', (ROOT / "phischer" / "config.py").read_text()))
    assert listed >= DESIGN_VARS
    assert read - {"INFO"} <= listed


# Read by phischer but not settings of it: the search path for the ngrok binary, and the
# flag Werkzeug's reloader sets for the server process it restarts.
NOT_SETTINGS = {"PATH", "WERKZEUG_RUN_MAIN"}


def _variables_read() -> set[str]:
    """Every environment variable phischer reads by name, wherever in the package."""
    source = "\n".join(p.read_text() for p in (ROOT / "phischer").rglob("*.py"))
    named = re.findall(r'(?:environ\.get\(|environ\[|getenv\(|envvar=)"([A-Z][A-Z0-9_]*)"', source)
    return (set(named) | ENV_VARS) - NOT_SETTINGS


def test_every_variable_phischer_reads_is_in_env_example_and_readme():
    # Not only config.py's: `serve --workers` takes WEB_CONCURRENCY, the CLI LOG_LEVEL.
    read = _variables_read()
    assert {"WEB_CONCURRENCY", "LOG_LEVEL", "NGROK_AUTHTOKEN"} <= read
    listed = set(re.findall(r"^# ([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read - listed == set()
    assert read - set(_readme_config_defaults()) == set()


def _readme_config_defaults() -> dict[str, str]:
    """README's Configuration table: each variable and its default column."""
    section = (ROOT / "README.md").read_text().split("\n## Configuration\n")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (`[A-Z_]+`(?:, `[A-Z_]+`)*) \| ([^|]+) \|", section, re.M)
    return {
        var: default.strip() for names, default in rows for var in re.findall(r"[A-Z_]+", names)
    }


def test_readme_env_example_and_settings_agree_on_variables_and_defaults():
    example = dict(re.findall(r"^# ([A-Z_]+)=(.*)$", (ROOT / ".env.example").read_text(), re.M))
    readme = _readme_config_defaults()
    assert set(readme) == set(example) >= DESIGN_VARS
    # Where README gives one literal default (`10`), .env.example shows the same value ...
    literal = {v: d.strip("`") for v, d in readme.items() if re.fullmatch(r"`[^`]+`", d)}
    assert literal == {v: example[v] for v in literal}
    assert readme["FALLBACK_REPLY"] == f'"{example["FALLBACK_REPLY"]}"'
    # ... and that value is what phischer uses when the variable is unset.
    assert log_level("") == literal.pop("LOG_LEVEL")
    workers = next(p for p in serve.params if p.name == "workers")
    assert (workers.envvar, str(workers.default)) == (
        "WEB_CONCURRENCY",
        literal.pop("WEB_CONCURRENCY"),
    )
    env = literal | {"FALLBACK_REPLY": example["FALLBACK_REPLY"]}
    assert Settings.from_env(env) == Settings.from_env({})


def test_defaults(tmp_path):
    s = Settings.from_env({}, instance_path=tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path.resolve()}/phischer.db"
    assert (s.reply_mode, s.reply_timeout_s, s.history_turns) == ("auto", 10.0, 20)
    assert (s.session_gap_hours, s.max_reply_chars, s.daily_limit) == (6.0, 1600, 200)
    assert s.twilio_validate_signature is True and s.trust_proxy is False
    assert s.allowed_numbers == frozenset()


def test_parsing():
    s = Settings.from_env({
        "ALLOWED_NUMBERS": "+1 555 0100, 0015550101,",
        "TWILIO_VALIDATE_SIGNATURE": "False",
        "TRUST_PROXY": "yes",
        "PUBLIC_URL": "https://x.ngrok.app/",
        "REPLY_MODE": "INLINE",
        "HISTORY_TURNS": "4",
    })  # fmt: skip
    assert s.allowed_numbers == {"+15550100", "+15550101"}
    assert s.twilio_validate_signature is False and s.trust_proxy is True
    assert s.public_url == "https://x.ngrok.app"
    assert (s.reply_mode, s.history_turns) == ("inline", 4)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REPLY_MODE": "sometimes"}, "REPLY_MODE='sometimes': use one of inline, async, auto"),
        (
            {"REPLY_TIMEOUT_S": "15"},
            "REPLY_TIMEOUT_S=15 must be more than 0 and under 15 (Twilio drops webhooks",
        ),
        ({"REPLY_TIMEOUT_S": "0"}, "REPLY_TIMEOUT_S=0 must be more than 0 and under 15"),
        ({"REPLY_TIMEOUT_S": "soon"}, "REPLY_TIMEOUT_S='soon' is not a number"),
        ({"MAX_REPLY_CHARS": "2000"}, "MAX_REPLY_CHARS=2000 must be between 1 and 1600"),
        ({"DAILY_LIMIT": "-1"}, "DAILY_LIMIT=-1 must be at least 0"),
        # Bounds as a user types them: not "at least 0.0", nor the 0.001 that stood for "> 0".
        (
            {"SESSION_GAP_HOURS": "-1"},
            "SESSION_GAP_HOURS=-1 must be at least 0 hours (0: never start a new thread)",
        ),
        ({"RECOVER_AFTER_S": "0"}, "RECOVER_AFTER_S=0 must be more than 0 and under 3600"),
        (
            {"RECOVER_AFTER_S": "3600"},
            "RECOVER_AFTER_S=3600 must be more than 0 and under 3600 (an hour",
        ),
        ({"HISTORY_TURNS": "1.5"}, "HISTORY_TURNS='1.5' is not a whole number"),
        ({"TRUST_PROXY": "maybe"}, "TRUST_PROXY='maybe' is not a boolean"),
        # float() takes these; build_thread then raised on every text (timedelta overflow).
        ({"SESSION_GAP_HOURS": "nan"}, "SESSION_GAP_HOURS='nan' is not a finite number"),
        ({"SESSION_GAP_HOURS": "inf"}, "SESSION_GAP_HOURS='inf' is not a finite number"),
        ({"SESSION_GAP_HOURS": "1e999"}, "SESSION_GAP_HOURS='1e999' is not a finite number"),
        ({"REPLY_TIMEOUT_S": "NaN"}, "REPLY_TIMEOUT_S='NaN' is not a finite number"),
        ({"REPLY_TIMEOUT_S": "-inf"}, "REPLY_TIMEOUT_S='-inf' is not a finite number"),
        ({"HISTORY_TURNS": "inf"}, "HISTORY_TURNS='inf' is not a number"),
        # Signatures are checked against PUBLIC_URL: a malformed one would 403 every text.
        ({"PUBLIC_URL": "notaurl"}, "PUBLIC_URL='notaurl' must be an absolute base URL"),
        ({"PUBLIC_URL": "https://x.example.com?a=1"}, "must be an absolute base URL"),
        # The pasted webhook URL: it would register and check .../sms/sms.
        (
            {"PUBLIC_URL": "https://x.example.com/sms/"},
            "PUBLIC_URL='https://x.example.com/sms/' is the webhook URL; give the base URL "
            "without /sms (https://x.example.com)",
        ),
        ({"PUBLIC_URL": "https://x.example.com/clone/SMS"}, "(https://x.example.com/clone)"),
        # phischer would register https://sms.example.com#frag/sms: Twilio calls the bare host.
        (
            {"PUBLIC_URL": "https://sms.example.com/#frag"},
            "PUBLIC_URL='https://sms.example.com/#frag' has a #fragment, which would hide the "
            "/sms phischer adds from Twilio: give the base URL without it "
            "(https://sms.example.com)",
        ),
        ({"PUBLIC_URL": "https://sms.example.com#"}, "has a #fragment"),
        (
            {"PUBLIC_URL": "https://x.example.com:99999"},
            "PUBLIC_URL='https://x.example.com:99999' has an impossible port: use one from 1 to "
            "65535, or leave it out",
        ),
        ({"PUBLIC_URL": "https://x.example.com:0"}, "has an impossible port"),
        ({"PUBLIC_URL": "https://x.example.com:https/clone"}, "has an impossible port"),
        ({"TWILIO_PHONE_NUMBER": "abc"}, "TWILIO_PHONE_NUMBER='abc' is not a Twilio number"),
        # The SDKs append their paths to these: without a scheme every model call (or REST
        # send) failed with a connection error blaming the network.
        (
            {"OPENAI_BASE_URL": "127.0.0.1:11434/v1"},
            "OPENAI_BASE_URL='127.0.0.1:11434/v1' must be an http(s) URL, e.g. "
            "https://api.openai.com/v1 or http://127.0.0.1:11434/v1",
        ),
        ({"OPENAI_BASE_URL": "ftp://models.example.com/v1"}, "must be an http(s) URL"),
        ({"TWILIO_API_BASE_URL": "twilio"}, "TWILIO_API_BASE_URL='twilio' must be an http(s) URL"),
    ],
)
def test_invalid_values_say_what_to_fix(env, message):
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert message in str(err.value)


def test_a_public_url_may_have_a_path_prefix():
    # A proxy serving phischer under /clone: Twilio calls /clone/sms, Flask sees /sms.
    s = Settings.from_env({"PUBLIC_URL": "https://x.example.com/clone/"})
    assert s.public_url == "https://x.example.com/clone"
    assert Settings.from_env({"PUBLIC_URL": "https://x.example.com/smsbot"}).public_url
    # A port of its own is fine too, and so is an IPv6 address.
    assert Settings.from_env({"PUBLIC_URL": "https://[2001:db8::1]:8443/"}).public_url == (
        "https://[2001:db8::1]:8443"
    )


def test_session_gap_overrides_are_checked_too(tmp_path):
    base = Settings.from_env({}, instance_path=tmp_path)
    assert base.with_overrides(session_gap_hours=0).session_gap_hours == 0  # 0: never split
    assert base.with_overrides(session_gap_hours=1e300).session_gap_hours == 1e300
    for bad, said in (
        (float("nan"), "SESSION_GAP_HOURS=nan is not a finite number"),
        (float("inf"), "SESSION_GAP_HOURS=inf is not a finite number"),
        (-1.0, "SESSION_GAP_HOURS=-1 must be at least 0 hours"),
    ):
        with pytest.raises(ConfigError, match=said):
            base.with_overrides(session_gap_hours=bad)


@pytest.mark.parametrize(
    ("raw", "bad"),
    [
        ("abc", "abc"),
        ("+15559870002, 12", "12"),
        # National numbers: their country cannot be known, and "+07911123456" is no From.
        ("+15559870002, 07911 123456", "07911 123456"),
        ("5559870002", "5559870002"),
        ("12345", "12345"),  # a short code never texts anyone
        ("+1555", "+1555"),
        ("+15559870002,+1-5", "+1-5"),
        ("1+5559870002", "1+5559870002"),
        ("+", "+"),
    ],
)
def test_allowed_numbers_typo_names_the_bad_entry(raw, bad):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"ALLOWED_NUMBERS": raw})
    message = str(err.value)
    assert message == (
        f"ALLOWED_NUMBERS entry {bad!r} is not a phone number in international form: give "
        "each as +<country code><number>, e.g. +15551234567, separated by commas"
    )
    assert "5559870002" not in message.replace(bad, "")  # valid entries are not echoed


def test_allowed_numbers_skip_empty_entries():
    s = Settings.from_env({"ALLOWED_NUMBERS": " ,+1555 0100, ,+1 555 123 0001,"})
    assert s.allowed_numbers == {"+15550100", "+15551230001"}


def test_allowed_numbers_read_numbers_as_persona_route_does():
    # Each of these was stored as a number no Twilio From ever equals ("+4402079460000",
    # "+00442079460000"), so the allow-list silently refused the person it named.
    s = Settings.from_env(
        {"ALLOWED_NUMBERS": "+44 (0)20 7946 0000, 0044 20 7946 0001, +1 (555) 010-0114"}
    )
    assert s.allowed_numbers == {"+442079460000", "+442079460001", "+15550100114"}


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("+1 (555) 123-4567", "+15551234567"),
        ("+44 (0)20 7946 0000", "+442079460000"),
        ("0044 20 7946 0000", "+442079460000"),
        ("12345", "12345"),  # short codes: bare digits, as Twilio's From takes them
        ("123 456", "123456"),
    ],
)
def test_twilio_phone_number_is_an_international_number_or_a_short_code(raw, stored):
    assert Settings.from_env({"TWILIO_PHONE_NUMBER": raw}).twilio_phone_number == stored


@pytest.mark.parametrize(
    "raw", ["07911 123456", "5551234567", "1234", "1234567", "01234", "MG" + "0" * 32, "+1-5"]
)
def test_twilio_phone_number_refuses_what_twilio_would_refuse_as_from(raw):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"TWILIO_PHONE_NUMBER": raw})
    assert str(err.value) == (
        f"TWILIO_PHONE_NUMBER={raw!r} is not a Twilio number: give it in international form, "
        "+<country code><number>, e.g. +15551234567, or as a 5-6 digit short code"
    )


def test_phone_helpers():
    assert sender_number(" +1 (555) 010-0 ") == "+15550100"
    assert from_number("+15550100") == from_number("whatsapp:+15550100") == "+15550100"
    assert from_number("12345") is None
    assert mask_number("+15550100") == "…00"
    assert "5550" not in mask_number("+15550100")


def test_dotenv_is_read_from_the_current_folder(tmp_path, monkeypatch):
    # The autouse fixture already chdir'd into tmp_path; .env lives where the user runs.
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    monkeypatch.setenv("DAILY_LIMIT", "9")  # the environment wins over .env
    (tmp_path / ".env").write_text("REPLY_TIMEOUT_S=7\nDAILY_LIMIT=3\nLOG_LEVEL=WARNING\n")
    try:
        settings = Settings.from_env()
        assert settings.reply_timeout_s == 7 and settings.daily_limit == 9
    finally:
        for var in ("REPLY_TIMEOUT_S", "LOG_LEVEL"):  # load_dotenv wrote them to os.environ
            # Not monkeypatch.delenv: its undo would put back the value .env gave.
            os.environ.pop(var, None)


def test_log_level_from_dotenv_quiets_the_cli(tmp_path, monkeypatch):
    import logging

    from click.testing import CliRunner

    from phischer.cli import cli

    monkeypatch.delenv("LOG_LEVEL", raising=False)
    (tmp_path / ".env").write_text("LOG_LEVEL=WARNING\n")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # let basicConfig configure a fresh root
    monkeypatch.setattr(root, "level", root.level)
    try:
        result = CliRunner().invoke(cli, ["persona", "list"])
        assert result.exit_code == 0, result.output
        assert root.level == logging.WARNING
        assert logging.getLogger("openai").level == logging.WARNING
    finally:
        os.environ.pop("LOG_LEVEL", None)  # not monkeypatch.delenv: its undo restores .env's


@pytest.mark.parametrize("raw", ["LOUD", "verbose", "10"])
def test_a_bad_log_level_is_one_line(tmp_path, monkeypatch, raw):
    from click.testing import CliRunner

    from phischer.cli import cli

    monkeypatch.setenv("LOG_LEVEL", raw)
    result = CliRunner().invoke(cli, ["persona", "list"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: LOG_LEVEL={raw!r} must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL\n"
    )


def test_a_bad_openai_base_url_stops_every_command_in_one_line(monkeypatch):
    """Not a fallback on every text, nor a finetune upload retried against `notaurl/`."""
    from click.testing import CliRunner

    from phischer.cli import cli

    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8000/v1")
    for command in (["persona", "list"], ["finetune", "list"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1, result.output
        assert result.output == (
            "Error: OPENAI_BASE_URL='localhost:8000/v1' must be an http(s) URL, e.g. "
            "https://api.openai.com/v1 or http://127.0.0.1:11434/v1\n"
        )


def test_api_base_urls_of_any_http_server_are_taken():
    s = Settings.from_env(
        {"OPENAI_BASE_URL": "http://[::1]:8000/v1/", "TWILIO_API_BASE_URL": "https://h.test"}
    )
    assert (s.openai_base_url, s.twilio_api_base_url) == ("http://[::1]:8000/v1/", "https://h.test")


@pytest.mark.parametrize(
    ("raw", "level"), [(" debug ", "DEBUG"), ("warn", "WARNING"), ("", "INFO")]
)
def test_log_level_names_are_forgiving_about_case_and_warn(raw, level):
    from phischer.cli import log_level

    assert log_level(raw) == level


def test_the_openai_sdks_http_client_does_not_log_each_request(tmp_path, monkeypatch):
    import logging

    from click.testing import CliRunner

    from phischer.cli import cli

    monkeypatch.delenv("LOG_LEVEL", raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    result = CliRunner().invoke(cli, ["persona", "list"])
    assert result.exit_code == 0, result.output
    # openai 3.5x logs "HTTP Request: POST …" at INFO through httpx2: a CLI error that
    # should be one line came out as two.
    for name in ("httpx2", "httpx", "openai"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
    assert logging.getLogger("phischer").isEnabledFor(logging.INFO)


def test_empty_twilio_number_is_unset_and_a_number_is_normalised():
    assert Settings.from_env(env={"TWILIO_PHONE_NUMBER": " "}).twilio_phone_number is None
    number = Settings.from_env(env={"TWILIO_PHONE_NUMBER": "+1 (555) 123-4567"})
    assert number.twilio_phone_number == "+15551234567"


@pytest.mark.parametrize(
    "raw",
    [
        '"{}"',  # docker --env-file keeps the quotes
        " '{}' ",
        "{}\r",  # a CRLF .env
        '  " {} "  ',
    ],
)
def test_twilio_credentials_and_number_lose_the_quotes_and_blanks_an_env_file_left(tmp_path, raw):
    """A token with a stray quote or space would fail every signature check with a 403."""
    sid, token = "AC" + "1" * 32, "0123456789abcdef0123456789abcdef"
    s = Settings.from_env(
        {
            "TWILIO_ACCOUNT_SID": raw.format(sid),
            "TWILIO_AUTH_TOKEN": raw.format(token),
            "TWILIO_PHONE_NUMBER": raw.format("+1 555 123 4567"),
        },
        instance_path=tmp_path,
    )
    assert (s.twilio_account_sid, s.auth_token()) == (sid, token)
    assert s.twilio_phone_number == "+15551234567"


def test_quotes_around_nothing_are_unset_and_inner_quotes_stay(tmp_path):
    s = Settings.from_env(
        {"TWILIO_AUTH_TOKEN": '""', "FALLBACK_REPLY": '"brb"'}, instance_path=tmp_path
    )
    assert s.twilio_auth_token is None
    # Only credentials and the number: a reply text may well be quoted on purpose.
    assert s.fallback_reply == '"brb"'


def test_an_instance_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from phischer.cli import cli

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("INSTANCE_PATH", str(blocker / "instance"))
    for command in (["persona", "list"], ["db", "upgrade"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1, result.output
        (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
        assert f"cannot create {blocker / 'instance'} for the" in line
        assert "set INSTANCE_PATH" in line and "Traceback" not in result.output


def test_a_blank_setting_is_an_unset_one(tmp_path):
    """FALLBACK_REPLY=" " would send an empty SMS; blank values fall back to the defaults."""
    from phischer.config import DEFAULT_FALLBACK_REPLY

    s = Settings.from_env(
        {"FALLBACK_REPLY": "   ", "TWILIO_AUTH_TOKEN": " \t", "DEFAULT_PERSONA": " "},
        instance_path=tmp_path,
    )
    assert s.fallback_reply == DEFAULT_FALLBACK_REPLY
    assert (s.twilio_auth_token, s.default_persona) == (None, None)
    assert Settings.from_env({"FALLBACK_REPLY": "brb"}).fallback_reply == "brb"


def test_create_app_takes_a_mapping_of_env_names_fields_and_flask_keys(tmp_path, monkeypatch):
    """create_app(config): the §3 names as in .env, the field names, and Flask's own keys."""
    from phischer import create_app

    monkeypatch.setenv("HISTORY_TURNS", "7")  # the environment stays underneath
    app = create_app(
        {
            "REPLY_MODE": "INLINE",  # read like the variable: any case
            "DAILY_LIMIT": 5,  # a value, not only its text
            "TWILIO_VALIDATE_SIGNATURE": False,
            "ALLOWED_NUMBERS": ["+1 555 123 0001"],
            "instance_path": tmp_path / "inst",
            "TESTING": True,
        }
    )
    s = app.extensions["phischer"].settings
    assert (s.reply_mode, s.daily_limit, s.history_turns) == ("inline", 5, 7)
    assert s.twilio_validate_signature is False
    assert s.allowed_numbers == frozenset({"+15551230001"})
    assert s.instance_path == tmp_path / "inst"
    assert app.testing
    app.extensions["phischer"].db.dispose()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"REPLYMODE": "inline"}, "unknown setting(s): REPLYMODE: use the variables of"),
        ({"REPLY_MODE": "fast"}, "REPLY_MODE='fast': use one of inline, async, auto"),
        ({"DAILY_LIMIT": "lots"}, "DAILY_LIMIT='lots' is not a number"),
        ({"LOG_LEVEL": "DEBUG"}, "LOG_LEVEL is read by the phischer command, not create_app"),
        ({"WEB_CONCURRENCY": "4"}, "WEB_CONCURRENCY is read by the phischer command"),
        ({"NGROK_AUTHTOKEN": "x1"}, "NGROK_AUTHTOKEN is read by the phischer command"),
    ],
)
def test_create_app_names_a_bad_key_or_value(tmp_path, config, message):
    from phischer import create_app

    with pytest.raises(ConfigError) as excinfo:
        create_app({"instance_path": tmp_path, **config})
    assert message in str(excinfo.value)


@pytest.mark.parametrize("raw", ["whatsapp:+14155550100", " WhatsApp: +1 415 555 0100"])
def test_twilio_phone_number_copied_as_a_whatsapp_address_names_the_bare_number(raw):
    # The Console shows a WhatsApp sender as whatsapp:+1…; the setting is the number alone.
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"TWILIO_PHONE_NUMBER": raw})
    assert str(err.value) == (
        f"TWILIO_PHONE_NUMBER={raw.strip()!r} is a sender address: set the bare number "
        "+14155550100; texters on whatsapp are answered from whatsapp:+14155550100 automatically"
    )


def test_a_dotenv_saved_in_another_encoding_is_one_line_naming_it(tmp_path):
    from click.testing import CliRunner

    from phischer.cli import cli

    # Windows-1252, as an editor may save an accented FALLBACK_REPLY: a traceback before.
    (tmp_path / ".env").write_bytes("DAILY_LIMIT=5\nFALLBACK_REPLY=Désolé\n".encode("cp1252"))
    result = CliRunner().invoke(cli, ["persona", "list"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: {tmp_path / '.env'} is not UTF-8 (byte 0xe9 on line 2): save it as UTF-8 in "
        "your editor"
    ]


@pytest.mark.parametrize(
    ("secret_var", "secret", "checked_var"),
    [
        # Pasted twice from the console: the token also where the number goes.
        ("TWILIO_AUTH_TOKEN", "c0ffee" + "a1" * 13, "TWILIO_PHONE_NUMBER"),
        ("OPENAI_API_KEY", "vllm-local-key-4a7e9c1b2d", "REPLY_TIMEOUT_S"),
        ("NGROK_AUTHTOKEN", "2abcNgrokTok3nQ9w8e7r6t5", "ALLOWED_NUMBERS"),
        ("DATABASE_URL", "postgresql://u:PgPassw0rd-7f3e@db/x", "HISTORY_TURNS"),
    ],
)
def test_a_secret_in_another_variable_is_hidden_in_that_variables_error(
    monkeypatch: pytest.MonkeyPatch, secret_var: str, secret: str, checked_var: str
) -> None:
    """Settings quote a value they refuse: a secret pasted there too is named, never shown."""
    monkeypatch.setenv(secret_var, secret)
    value = secret.split(":")[-1].split("@")[0]  # DATABASE_URL's password
    monkeypatch.setenv(checked_var, value)
    result = run("persona", "list")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {checked_var}")
    assert value not in result.output
    shown = "DATABASE_URL password" if secret_var == "DATABASE_URL" else secret_var
    assert f"<{shown}>" in result.output
