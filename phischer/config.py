"""Settings read once from the environment (and `.env`), validated in one place."""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from dotenv import find_dotenv, load_dotenv

from phischer.redact import add_secret

log = logging.getLogger(__name__)

REPLY_MODES = ("inline", "async", "auto")
# Twilio gives a webhook 15 s in all (error 11205); leave room for our own work.
TWILIO_WEBHOOK_LIMIT_S = 15.0
# Twilio's limit on a message body (error 21617 above it), in UTF-16 code units.
SMS_BODY_MAX = 1600
DEFAULT_FALLBACK_REPLY = "Sorry, I can't answer right now. Try again in a bit."
# How long a text or reply a crash left stays idle before the recovery sweep takes it over.
DEFAULT_RECOVER_AFTER_S = 120.0
# A text older than this is too old to answer late, a reply too old to send (recovery.py).
GIVE_UP_AFTER_S = 3600.0
# What phischer creates in the instance folder (the database, the development token, the
# tunnel's state) is this user's alone, whatever the umask: the database holds everyone's
# texts and numbers. The mode is only the most a file gets; the umask can only narrow it.
PRIVATE_FOLDER = 0o700
PRIVATE_FILE = 0o600


class ConfigError(ValueError):
    """A setting is missing or invalid; the message says how to fix it."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use true or false")


def _number(name: str, raw: str, kind: type) -> Any:
    """`raw` read as the setting `name`'s kind of number (its range is Settings' to check)."""
    try:
        value = kind(raw)
    except ValueError:
        whole = kind is int and _finite_float(raw)  # "1.5" is a number, not a count
        raise ConfigError(f"{name}={raw!r} is not {'a whole' if whole else 'a'} number") from None
    # float() accepts "nan", "inf" and "1e999" (inf); none of them is a usable setting.
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a finite number")
    return value


def _finite_float(raw: str) -> bool:
    """Whether `raw` reads as a finite float."""
    try:
        return math.isfinite(float(raw))
    except ValueError:
        return False


def _typed(value: float) -> str:
    """A number as a user types it: 0 and 15, not 0.0 and 15.0; 0.5 stays 0.5."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_range(name: str, value: float, limits: NumberRange) -> None:
    """Refuse a setting's value outside its range, in one line saying the range."""
    if not math.isfinite(value):  # an override (create_app, with_overrides) may be NaN
        raise ConfigError(f"{name}={value} is not a finite number")
    low, high, exclusive, why = limits
    if high is None:
        inside = low < value if exclusive else low <= value
        bounds = f"{'more than' if exclusive else 'at least'} {_typed(low)}"
    elif exclusive:
        inside = low < value < high
        bounds = f"more than {_typed(low)} and under {_typed(high)}"
    else:
        inside = low <= value <= high
        bounds = f"between {_typed(low)} and {_typed(high)}"
    if not inside:
        raise ConfigError(f"{name}={_typed(value)} must be {bounds}{why}")


# Twilio's From is E.164: "+", a country code that never starts with 0, at most 15 digits.
# ASCII digits only ([0-9], not \d): a fullwidth "１" is never in a From. Seven digits at
# least: shorter numbers are short codes or typos, and a route to one could never match.
E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")
# What people type between digits: spaces, dashes (ASCII and typographic), dots, parentheses.
NUMBER_SEPARATORS = re.compile(r"[\s\-.()\u2010-\u2015\u2212]")
# A Twilio short code (US, Canada, UK, …): 5 or 6 digits, no country code, never a leading 0.
SHORT_CODE_RE = re.compile(r"[1-9][0-9]{4,5}")
INTERNATIONAL_FORM = "+<country code><number>, e.g. +15551234567"


def not_international(raw: str) -> str:
    """Why `raw` was refused where international_number read None, and how to give it."""
    return (
        f"{raw.strip()!r} is not a phone number in international form: give it as "
        f"{INTERNATIONAL_FORM}"
    )


def international_number(raw: str) -> str | None:
    """`raw` as E.164 (+15550100114), or None when it is not a number in international form."""
    # "+44 (0)20 …": the (0) is the national trunk prefix, dialled only from inside the
    # country and never part of the E.164 number.
    number = NUMBER_SEPARATORS.sub("", raw.replace("(0)", ""))
    if number.startswith("00"):  # the international prefix most of the world dials for "+"
        number = "+" + number[2:]
    # A number without "+" (07911 123456, 555 010 0114) is national: its country cannot be
    # known, and guessing one would store a number no text ever comes from.
    return number if E164_RE.fullmatch(number) else None


def sender_number(raw: str) -> str | None:
    """A Twilio sender as its API takes it: E.164 like international_number, or a short code."""
    number = international_number(raw)
    if number is None:
        # A short code has no country code and no "+": Twilio wants it as bare digits.
        code = NUMBER_SEPARATORS.sub("", raw)
        number = code if SHORT_CODE_RE.fullmatch(code) else None
    return number


def from_number(sender: str) -> str | None:
    """The E.164 number in a Twilio From: "+15550100", or a channel's "whatsapp:+15550100"."""
    return international_number(sender.rpartition(":")[2])


# The channel before the number in a From that is not an SMS: "whatsapp:+15550100".
CHANNEL_RE = re.compile(r"[a-z]+")


def twilio_from(raw: str) -> str | None:
    """`raw` as Twilio's From has it, or None: E.164 (as international_number reads it),
    after a channel's name when it has one ("WhatsApp: +1 555 0100" → "whatsapp:+15550100")."""
    channel, colon, number = raw.rpartition(":")
    e164 = international_number(number)
    if e164 is None or not colon:
        return e164
    channel = channel.strip().lower()
    return f"{channel}:{e164}" if CHANNEL_RE.fullmatch(channel) else None


def _allowed_numbers(raw: str) -> frozenset[str]:
    # Empty entries ("+15551230001,") are skipped; anything else must be a number in the
    # form Twilio's From has, or the allow-list would hold a number no text ever comes from
    # ("07911 123456" has no country) and silently refuse the person it was meant to allow.
    numbers = set()
    for entry in raw.split(","):
        if not entry.strip():
            continue
        number = international_number(entry)
        if number is None:
            raise ConfigError(
                f"ALLOWED_NUMBERS entry {entry.strip()!r} is not a phone number in "
                f"international form: give each as {INTERNATIONAL_FORM}, separated by commas"
            )
        numbers.add(number)
    return frozenset(numbers)


def _phone_number(name: str, raw: str) -> str | None:
    # Empty means unset (the commands that need it say so); anything else must be a sender
    # Twilio takes as From, or every REST reply would fail (21212, invalid From number).
    if not raw.strip():
        return None
    number = sender_number(raw)
    if number is None:
        _refuse_channel_address(name, raw)
        raise ConfigError(
            f"{name}={raw.strip()!r} is not a Twilio number: give it in international form, "
            f"{INTERNATIONAL_FORM}, or as a 5-6 digit short code"
        )
    return number


def _refuse_channel_address(name: str, raw: str) -> None:
    """Refuse a sender address copied with its channel ("whatsapp:+1…"), naming the bare number."""
    address = twilio_from(raw)
    channel, _, number = (address or "").rpartition(":")
    if channel:
        # REST replies already go out on the texter's channel (replies.reply_from): the
        # setting is the number alone, whatever channels it serves.
        raise ConfigError(
            f"{name}={raw.strip()!r} is a sender address: set the bare number {number}; "
            f"texters on {channel} are answered from {address} automatically"
        )


def is_http_url(url: str) -> bool:
    """True for an absolute http(s) URL with a host (what the SDKs and Twilio can call)."""
    try:
        parts = urlsplit(url)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        return False


def public_base_url(raw: str, source: str = "PUBLIC_URL") -> str:
    """An absolute http(s) base URL without a trailing slash, or ConfigError naming `source`."""
    url = raw.strip().rstrip("/")
    if not is_http_url(url) or urlsplit(url).query:
        raise ConfigError(
            f"{source}={raw!r} must be an absolute base URL such as https://sms.example.com"
        )
    # phischer appends /sms to the whole string: after a #fragment that path never reaches
    # the server (Twilio would call the bare host), so the fragment cannot stay.
    if "#" in url:
        raise ConfigError(
            f"{source}={raw!r} has a #fragment, which would hide the /sms phischer adds from "
            f"Twilio: give the base URL without it ({url.split('#', 1)[0].rstrip('/')})"
        )
    # urlsplit accepts any port text and checks it only when .port is read; 0 is no port
    # Twilio could connect to either.
    try:
        bad_port = urlsplit(url).port == 0
    except ValueError:  # out of range, or not a number
        bad_port = True
    if bad_port:
        raise ConfigError(
            f"{source}={raw!r} has an impossible port: use one from 1 to 65535, or leave it out"
        )
    # A path prefix is fine (a proxy that serves phischer under /clone), but the webhook
    # path itself is a pasted webhook URL: phischer would register and check .../sms/sms.
    if urlsplit(url).path.lower().endswith("/sms"):
        raise ConfigError(
            f"{source}={raw!r} is the webhook URL; give the base URL without /sms "
            f"({url[: -len('/sms')]}): phischer adds /sms itself"
        )
    return url


def database_password(url: str) -> str | None:
    """The password in a database URL, decoded (None without one)."""
    try:
        password = urlsplit(url).password
    except ValueError:  # not a URL: DATABASE_URL's own check says so
        return None
    return unquote(password) if password else None


def hide_secrets(
    twilio_auth_token: str | None, openai_api_key: str | None, database_url: str
) -> None:
    """Have logs and output name these secrets (`redact.add_secret`) instead of showing them."""
    add_secret(twilio_auth_token, "TWILIO_AUTH_TOKEN")
    add_secret(openai_api_key, "OPENAI_API_KEY")
    add_secret(database_password(database_url), "DATABASE_URL password")


def env_unquoted(raw: str) -> str:
    """`raw` without the blanks, and one pair of matching quotes, an env file can leave around it."""
    # Tokens, SIDs and numbers never hold a quote or end in a blank: those are artefacts of
    # pasting or of the file (a CRLF line; docker --env-file keeps quotes), and a token
    # that keeps them fails every signature check with a 403 that is hard to trace.
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1].strip()
    return value


def load_env_file() -> None:
    """Load `.env` from the current folder (or the nearest parent) without overriding the env.

    usecwd: python-dotenv otherwise searches from this file's folder, so a project's `.env`
    was only found when phischer ran from a source checkout next to it.
    """
    path = find_dotenv(usecwd=True)
    try:
        load_dotenv(path, override=False)
    except UnicodeDecodeError as exc:
        # An editor that saved it in Latin-1 or Windows-1252 (an accent in FALLBACK_REPLY):
        # python-dotenv reads UTF-8 only, and its error was a traceback.
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path} is not UTF-8 (byte {exc.object[exc.start]:#04x} on line {line}): save it "
            "as UTF-8 in your editor"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror}): fix or remove it") from None


# The environment variables Settings reads (DESIGN §3, .env.example) and the field each sets.
_TEXT_VARS = {
    "DATABASE_URL": "database_url",
    "TWILIO_AUTH_TOKEN": "twilio_auth_token",
    "TWILIO_ACCOUNT_SID": "twilio_account_sid",
    "TWILIO_API_BASE_URL": "twilio_api_base_url",
    "PUBLIC_URL": "public_url",
    "OPENAI_API_KEY": "openai_api_key",
    "OPENAI_BASE_URL": "openai_base_url",
    "DEFAULT_PERSONA": "default_persona",
    "FALLBACK_REPLY": "fallback_reply",
}
_BOOL_VARS = {
    "TWILIO_VALIDATE_SIGNATURE": "twilio_validate_signature",
    "TRUST_PROXY": "trust_proxy",
}


# The API base URLs and an example of each: the SDKs append their paths to them, so one
# without a scheme or host ("127.0.0.1:11434/v1") failed every model call (or REST send)
# with a connection error that blamed the network, not the setting.
_API_URL_VARS = {
    "OPENAI_BASE_URL": "https://api.openai.com/v1 or http://127.0.0.1:11434/v1",
    "TWILIO_API_BASE_URL": "http://127.0.0.1:8080",
}


def _check_api_url(var: str, url: str | None, example: str) -> None:
    """Refuse an API base URL the SDK could not call (no http(s) scheme or no host)."""
    if url is not None and not is_http_url(url):
        raise ConfigError(f"{var}={url!r} must be an http(s) URL, e.g. {example}")


class NumberRange(NamedTuple):
    """The values a numeric setting takes: from `low` to `high` (None: no limit)."""

    low: float
    high: float | None = None
    exclusive: bool = False  # the bounds are not in it: more than `low` and under `high`
    why: str = ""  # said after the range, e.g. " (Twilio's body limit)"


# The numeric variables: the field each sets, its kind, and its range.
_NUMBER_VARS: dict[str, tuple[str, type, NumberRange]] = {
    "REPLY_TIMEOUT_S": (
        "reply_timeout_s",
        float,
        NumberRange(
            0,
            TWILIO_WEBHOOK_LIMIT_S,
            exclusive=True,
            why=" (Twilio drops webhooks after 15 s, error 11205)",
        ),
    ),
    "HISTORY_TURNS": ("history_turns", int, NumberRange(0)),
    "SESSION_GAP_HOURS": (
        "session_gap_hours",
        float,
        NumberRange(0, why=" hours (0: never start a new thread)"),
    ),
    "MAX_REPLY_CHARS": (
        "max_reply_chars",
        int,
        NumberRange(1, SMS_BODY_MAX, why=" (Twilio's body limit)"),
    ),
    "DAILY_LIMIT": ("daily_limit", int, NumberRange(0)),
    "MODEL_RETRIES": ("model_retries", int, NumberRange(0)),
    # The sweep would only find texts too old to answer: all marked failed, none sent.
    "RECOVER_AFTER_S": (
        "recover_after_s",
        float,
        NumberRange(
            0,
            GIVE_UP_AFTER_S,
            exclusive=True,
            why=" (an hour: a text the sweep finds later is too old to answer late)",
        ),
    ),
}
# Credentials and the number: read without the quotes and blanks around them (env_unquoted).
_UNQUOTED_VARS = frozenset({"TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_PHONE_NUMBER"})
ENV_VARS = frozenset(
    {"INSTANCE_PATH", "TWILIO_PHONE_NUMBER", "REPLY_MODE", "ALLOWED_NUMBERS"}
    | _TEXT_VARS.keys()
    | _BOOL_VARS.keys()
    | _NUMBER_VARS.keys()
)


def _env_text(value: Any) -> str | None:
    """A value given for an environment variable in code, as the text the variable would hold."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | set | frozenset):  # ALLOWED_NUMBERS as a collection
        return ",".join(map(str, value))
    return str(value)


# Variables of .env.example that the `phischer` command reads, not create_app: what to do instead.
COMMAND_ONLY = {
    "LOG_LEVEL": "set the level in your own program (logging.basicConfig(level=...))",
    "WEB_CONCURRENCY": "the program that serves the app chooses its workers (gunicorn -w)",
    "NGROK_AUTHTOKEN": "`phischer up` and scripts/tunnel.py open the tunnel",
}


@dataclass(frozen=True)
class Settings:
    """Every setting of DESIGN §3, plus a few operational ones."""

    database_url: str = ""
    instance_path: Path = field(default_factory=lambda: Path("instance"))
    twilio_auth_token: str | None = None
    twilio_account_sid: str | None = None
    twilio_phone_number: str | None = None
    twilio_api_base_url: str | None = None  # tests point the REST client at a loopback fake
    twilio_validate_signature: bool = True
    public_url: str | None = None
    trust_proxy: bool = False
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    allowed_numbers: frozenset[str] = frozenset()
    default_persona: str | None = None
    reply_mode: str = "auto"
    reply_timeout_s: float = 10.0
    history_turns: int = 20
    session_gap_hours: float = 6.0
    max_reply_chars: int = SMS_BODY_MAX
    daily_limit: int = 200
    fallback_reply: str = DEFAULT_FALLBACK_REPLY
    model_retries: int = 1
    recover_after_s: float = DEFAULT_RECOVER_AFTER_S

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(
                self, "database_url", f"sqlite:///{(self.instance_path / 'phischer.db').resolve()}"
            )
        # Whatever these are handed to may quote them back in an error: logs never show them.
        hide_secrets(self.twilio_auth_token, self.openai_api_key, self.database_url)
        if self.reply_mode not in REPLY_MODES:
            raise ConfigError(
                f"REPLY_MODE={self.reply_mode!r}: use one of {', '.join(REPLY_MODES)}"
            )
        # Checked here, not where the environment is read, so overrides are checked too
        # (build_thread turned a NaN SESSION_GAP_HOURS into "never split" silently).
        for var, (attr, _, limits) in _NUMBER_VARS.items():
            _check_range(var, getattr(self, attr), limits)
        if self.public_url:
            # Signatures are checked against it: a malformed one would 403 every text.
            object.__setattr__(self, "public_url", public_base_url(self.public_url))
        for var, example in _API_URL_VARS.items():
            _check_api_url(var, getattr(self, _TEXT_VARS[var]), example)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `env` (default: os.environ after loading `.env`)."""
        if env is None:
            load_env_file()
            env = dict(os.environ)

        def get(name: str) -> str | None:
            # Blank is unset: `FALLBACK_REPLY=" "` must not make the fallback an empty SMS.
            value = env.get(name)
            if value is not None and name in _UNQUOTED_VARS:
                value = env_unquoted(value)
            return value if value is not None and value.strip() else None

        # Before any value is checked: the error for a bad one quotes it, and it may be a
        # secret pasted into the wrong variable too (the token where the number goes).
        hide_secrets(get("TWILIO_AUTH_TOKEN"), get("OPENAI_API_KEY"), get("DATABASE_URL") or "")
        add_secret(env_unquoted(env.get("NGROK_AUTHTOKEN", "")), "NGROK_AUTHTOKEN")
        kw: dict[str, Any] = {}
        if (v := get("INSTANCE_PATH")) is not None:
            kw["instance_path"] = Path(v)
        for var, attr in _TEXT_VARS.items():
            if (v := get(var)) is not None:
                kw[attr] = v
        if (v := get("TWILIO_PHONE_NUMBER")) is not None:
            kw["twilio_phone_number"] = _phone_number("TWILIO_PHONE_NUMBER", v)
        if (v := get("REPLY_MODE")) is not None:
            kw["reply_mode"] = v.strip().lower()
        for var, attr in _BOOL_VARS.items():
            if (v := get(var)) is not None:
                kw[attr] = _bool(var, v)
        for var, (attr, kind, _) in _NUMBER_VARS.items():
            if (v := get(var)) is not None:
                kw[attr] = _number(var, v, kind)
        if (v := get("ALLOWED_NUMBERS")) is not None:
            kw["allowed_numbers"] = _allowed_numbers(v)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """Settings from the environment with `config` on top (what create_app(dict) takes).

        Keys are the environment variables (`REPLY_MODE`, read and checked as in `.env`) or
        the fields (`reply_mode`, taken as they are); any other key is a ConfigError naming it.
        """
        known = {f.name for f in fields(cls)}
        # .env.example lists these, but they are the `phischer` command's: an app leaves the
        # logging, the workers and the tunnel of the program it runs in alone.
        for var, instead in COMMAND_ONLY.items():
            if var in config:
                raise ConfigError(
                    f"{var} is read by the phischer command, not create_app: {instead}"
                )
        unknown = sorted(str(k) for k in config if k not in ENV_VARS and k not in known)
        if unknown:
            raise ConfigError(
                f"unknown setting(s): {', '.join(unknown)}: use the variables of .env.example "
                "(REPLY_MODE) or their lower-case field names (reply_mode)"
            )
        load_env_file()
        env = dict(os.environ)
        for var in ENV_VARS & config.keys():
            text = _env_text(config[var])
            if text is None:
                env.pop(var, None)
            else:
                env[var] = text
        return cls.from_env(env, **{k: v for k, v in config.items() if k in known})

    def with_overrides(self, **overrides: Any) -> Settings:
        """Return a copy with some fields replaced (validated again)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **overrides)

    @property
    def can_send_sms(self) -> bool:
        """Whether replies can go out by Twilio's REST API: SID, auth token and number set."""
        # All three: with one missing every late reply would be stored as send_failed and
        # the texter would get nothing, not even the fallback (which is sent in time).
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_phone_number)

    def auth_token(self) -> str:
        """The Twilio signature key: TWILIO_AUTH_TOKEN, else a local development token."""
        return self.twilio_auth_token or dev_auth_token(self.instance_path)

    def signing_token(self) -> str | None:
        """The key a client signs with: TWILIO_AUTH_TOKEN, else an existing development token.

        Never generates one: a token made here could only be refused by a server that runs
        from another folder (and would leave a stray instance/ behind).
        """
        return self.twilio_auth_token or existing_dev_auth_token(self.instance_path)

    def tunnel_public_url(self) -> str | None:
        """PUBLIC_URL, else the URL a running `phischer tunnel`/`up` wrote to the instance folder."""
        return self.public_url or self.public_url_file()

    def public_url_file(self) -> str | None:
        """The URL a `phischer tunnel`/`up` wrote to the instance folder, even under PUBLIC_URL."""
        try:
            value = (self.instance_path / "public_url").read_text().strip()
        except OSError:
            return None
        return value.rstrip("/") or None


WRITABLE_FOLDER = "set INSTANCE_PATH (or DATABASE_URL) to a folder you can write"
# A host's read-only or throwaway file system (Heroku, Render, Fly) cannot keep the generated
# token, and Twilio never signs with it: the real token is the fix there, not another folder.
SET_AUTH_TOKEN = (
    "set TWILIO_AUTH_TOKEN (your Twilio account's Auth Token, which Twilio's texts need "
    "anyway), or INSTANCE_PATH to a folder you can write"
)


def ensure_folder(folder: Path, what: str, fix: str = WRITABLE_FOLDER) -> None:
    """Create `folder` (private, and parents), or raise ConfigError saying what needed it and why not."""
    try:
        # An existing folder is left as it is: its owner may have opened it on purpose.
        folder.mkdir(PRIVATE_FOLDER, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {folder} for {what} ({exc.strerror}): {fix}") from None


NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}


def dev_token_path(instance_path: Path) -> Path:
    """Where the local development token is (or would be) generated."""
    return instance_path / "dev_auth_token"


def no_auth_token(settings: Settings) -> str:
    """What checking signatures without TWILIO_AUTH_TOKEN means, for a warning or a 403's log line."""
    return (
        "TWILIO_AUTH_TOKEN is not set, so signatures are checked with the development token "
        f"in {dev_token_path(settings.instance_path)}"
    )


def existing_dev_auth_token(instance_path: Path) -> str | None:
    """The local development token if one was generated in `instance_path`, else None."""
    try:
        return dev_token_path(instance_path).read_text().strip() or None
    except OSError:
        return None


def dev_auth_token(instance_path: Path) -> str:
    """Read (or create once) the local development token shared by serve, text and chat."""
    path = dev_token_path(instance_path)
    token = existing_dev_auth_token(instance_path)
    if token:
        return token
    ensure_folder(instance_path, "the local development token", SET_AUTH_TOKEN)
    token = secrets.token_hex(16)
    # Written whole under a temp name, then linked into place: a link is never made over an
    # existing file, so two processes starting together agree on one token, and one that
    # reads it never finds the file there but still empty.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        try:
            os.link(tmp, path)
        except FileExistsError:
            existing = existing_dev_auth_token(instance_path)
            if existing:
                return existing
            # Empty: left by a process stopped between creating and writing it (as versions
            # before this one could be); an empty key would refuse every signature.
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno not in NO_HARD_LINKS:
                raise
            os.replace(tmp, path)  # a file system without hard links (FAT, some mounts)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror}): {SET_AUTH_TOKEN}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("Generated a local development Twilio token in %s", path)
    return token
