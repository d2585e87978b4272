"""Persona service: add, edit, list, show, remove, route a number; pick a contact's persona."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from phischer.backends.base import PersonaView
from phischer.commands import HASH_COMMANDS, RESERVED_WORDS
from phischer.config import international_number, is_http_url, not_international
from phischer.db import Database
from phischer.models import Contact, Message, Persona
from phischer.redact import MIN_SECRET_CHARS

BACKENDS = ("openai", "retrieval")
KEYWORD_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What the OpenAI chat API accepts; a value outside would make every text to the persona fail.
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.0, 2.0
MAX_TOKENS_MIN = 1
# How long the webhook's persona cache is trusted: a change from the CLI (or a finished
# fine-tune) reaches every worker within this, without a restart.
PERSONA_TTL_S = 1.0
# What to do about having no persona, said by `persona list`, `serve` and `up`: a server
# started with `phischer serve` instead of `make run` has not seeded the samples.
ADD_PERSONA_HINT = (
    "add the bundled samples with `phischer seed` (as `make run` does), or your own with "
    "`phischer persona add NAME --keyword KW --dataset FILE`"
)


class PersonaError(ValueError):
    """A persona operation cannot be done; the message says why and how to fix it."""


@dataclass(frozen=True)
class PersonaSpec:
    """What `persona add` asks for."""

    name: str
    keyword: str
    backend: str = "retrieval"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    dataset: str | None = None
    system_prompt: str | None = None
    greeting: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    is_default: bool = False


SPEC_FIELDS = tuple(f.name for f in fields(PersonaSpec))
# What points an openai persona at its server: never read by a retrieval persona.
MODEL_FIELDS = ("model", "base_url", "api_key_env")
# What a blank value clears in `persona edit` (name, keyword and backend are required; a
# blank system prompt is kept blank until stored, so the dataset's does not replace it).
OPTIONAL_FIELDS = frozenset(SPEC_FIELDS) - {
    "name",
    "keyword",
    "backend",
    "is_default",
    "system_prompt",
}


def validate_keyword(keyword: str) -> str:
    """Normalise a keyword (lower case, no leading #) and refuse reserved or malformed ones."""
    kw = keyword.strip().lstrip("#").lower()
    if not KEYWORD_RE.match(kw):
        raise PersonaError(
            f"keyword {keyword!r} must be ASCII letters, digits, '-' or '_' (at most 50), "
            "e.g. --keyword ada"
        )
    if kw in RESERVED_WORDS:
        # Name the command as it is texted: #list, #who and #reset take the '#'; STOP, HELP
        # and the other opt-out/opt-in/help words are commands only without it.
        command = f"#{kw}" if kw in HASH_COMMANDS else kw.upper()
        raise PersonaError(
            f"keyword {kw!r} collides with the SMS command {command}: choose another"
        )
    return kw


def e164_number(raw: str) -> str:
    """A phone number as Twilio sends it (E.164, e.g. +15550100114), or PersonaError."""
    number = international_number(raw)
    if number is None:
        raise PersonaError(not_international(raw))
    return number


def dataset_system_prompt(path: Path) -> str | None:
    """The system prompt a chat JSONL was built with (its first example's), if it has one."""
    try:
        with path.open(encoding="utf-8-sig") as fh:
            first = next((line for line in fh if line.strip()), "")
        example = json.loads(first)
    except (OSError, ValueError, RecursionError):  # incl. UnicodeDecodeError, JSONDecodeError
        return None  # not our format: `dataset check` is where it gets explained
    messages = example.get("messages") if isinstance(example, dict) else None
    head = messages[0] if isinstance(messages, list) and messages else None
    if isinstance(head, dict) and head.get("role") == "system":
        content = head.get("content")
        return content if isinstance(content, str) and content.strip() else None
    return None


def check_sampling(temperature: float | None, max_tokens: int | None) -> None:
    """Refuse a temperature or reply-length cap the chat API would reject on every text."""
    if temperature is not None and not TEMPERATURE_MIN <= temperature <= TEMPERATURE_MAX:
        raise PersonaError(
            f"--temperature {temperature:g} must be between {TEMPERATURE_MIN:g} and "
            f"{TEMPERATURE_MAX:g}, e.g. --temperature 0.7"
        )
    if max_tokens is not None and max_tokens < MAX_TOKENS_MIN:
        raise PersonaError(
            f"--max-tokens {max_tokens} must be at least {MAX_TOKENS_MIN}, e.g. --max-tokens 200"
        )


def check_base_url(base_url: str, flag: str = "--base-url") -> None:
    """Refuse a base URL the OpenAI SDK cannot call (no http(s) scheme or no host)."""
    if not is_http_url(base_url):
        raise PersonaError(
            f"{flag} {base_url!r} must be an http(s) URL, e.g. http://127.0.0.1:8000/v1"
        )


def check_env_name(name: str) -> None:
    """Refuse an --api-key-env that no shell or .env could set (a value pasted for the name)."""
    if not ENV_NAME_RE.fullmatch(name):
        # Never echo it: a key pasted where its variable's name goes would end up on screen.
        raise PersonaError(
            "--api-key-env takes the name of an environment variable (letters, digits and _, "
            "not starting with a digit), not its value, e.g. --api-key-env GPU_KEY"
        )
    if name not in os.environ and len(name) >= MIN_SECRET_CHARS:
        # `--api-key-env $GPU_KEY`: the shell put the key there, and many keys (gsk_…, hf_…,
        # hex) are valid names; stored, `persona show` would print it.
        holder = next((var for var, value in os.environ.items() if value == name), None)
        if holder is not None:
            raise PersonaError(
                f"--api-key-env takes a variable's name, and this is the value of {holder}: "
                f"give --api-key-env {holder} (without a $, which puts the value there)"
            )
        if looks_like_a_key(name):
            # A key pasted from the provider's page (not set here): stored, the server would
            # log it at WARNING on every text ("gsk_… is not set"), and `persona show` print it.
            raise PersonaError(
                "--api-key-env takes a variable's name, and this looks like a key itself: put "
                "the key in a variable where the server runs (GPU_KEY=… in .env) and give its "
                "name, e.g. --api-key-env GPU_KEY"
            )


# A run this long between underscores is no word of a variable's name.
KEY_RUN_CHARS = 20


def looks_like_a_key(name: str) -> bool:
    """Whether a variable name reads as a key: a long run of small letters with capitals or digits."""
    # Variables are words, mostly in capitals (OPENROUTER_API_KEY_2); keys are random runs
    # (gsk_aB3d…, hf_QwEr…, Together's 64 hex digits).
    return any(
        len(run) >= KEY_RUN_CHARS
        and any(c.islower() for c in run)
        and any(c.isupper() or c.isdigit() for c in run)
        for run in name.split("_")
    )


def _check_answerable(path: Path) -> None:
    # The retrieval backend answers from the dataset's (text, reply) pairs: a file without
    # any would make every text to the persona fail, so refuse it now, in one line.
    # Malformed lines are skipped (one warning), as the server does; only a file left with
    # no pair at all is refused, and the refusal stays one line.
    from phischer.backends.retrieval import read_pairs, warn_skipped

    try:
        pairs = read_pairs(path)
    except OSError as exc:
        raise PersonaError(f"dataset {path} cannot be read as a chat JSONL file ({exc})") from None
    if not pairs.answers:
        raise PersonaError(
            f"{pairs.none_to_answer(path)}: build it with `phischer import` (and look at it "
            "with `phischer dataset check`)"
        )
    warn_skipped(path, pairs)


def _refuse_model_flags(spec: PersonaSpec) -> None:
    # The retrieval backend calls no model, and a fine-tune that later moves the persona to
    # openai sets the model and drops the URL and key variable: these would never be read.
    # (--temperature and --max-tokens are kept: they apply after such a fine-tune.)
    given = [
        flag
        for flag, value in (
            ("--model", spec.model),
            ("--base-url", spec.base_url),
            ("--api-key-env", spec.api_key_env),
        )
        if value is not None
    ]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise PersonaError(
            f"{', '.join(given)} only {verb} to --backend openai, not retrieval (it answers "
            "from --dataset and calls no model): add --backend openai, or leave "
            f"{'it' if len(given) == 1 else 'them'} out"
        )


def check_name(personas: Sequence[Persona], name: str) -> str:
    """The name stripped, refused when empty or taken by one of `personas` in any case."""
    stripped = name.strip()
    if not stripped:
        raise PersonaError('a persona needs a name, e.g. phischer persona add "Ada Lovelace" …')
    if any(unicodedata.category(c) == "Cc" for c in stripped):
        # A line break or tab would break `persona list`'s columns and the #who reply.
        raise PersonaError(f"persona name {stripped!r} must be one line, without tabs")
    # Compared in Python, not with SQL lower(): SQLite lower-cases ASCII only ("ZOË").
    for taken in (p.name for p in personas):
        if taken == stripped:
            raise PersonaError(
                f"persona {stripped!r} already exists: choose another name (`phischer persona "
                "edit` changes a persona)"
            )
        if taken.casefold() == stripped.casefold():
            # `persona show ada` and `persona show Ada` could not tell them apart.
            raise PersonaError(
                f"persona {stripped!r} already exists as {taken!r} (names differ in case "
                "only): choose another name (`phischer persona edit` changes a persona)"
            )
    return stripped


def add_persona(session: Session, spec: PersonaSpec) -> Persona:
    """Create a persona after checking its name, keyword, backend, sampling, URL and dataset."""
    values = _checked(spec, list_personas(session), SPEC_FIELDS)
    if spec.is_default:
        session.execute(sa.update(Persona).values(is_default=False))
    persona = Persona(**values)
    session.add(persona)
    session.flush()
    return persona


def edit_persona(
    session: Session, name: str, changes: Mapping[str, Any]
) -> tuple[Persona, dict[str, tuple[Any, Any]]]:
    """Change persona `name` as `changes` says, checked as add does; return it and (old, new)s."""
    # `changes` has PersonaSpec's field names; a blank value clears an optional field. The
    # persona keeps its id: its routes, the numbers that chose it and its history stay.
    if not changes:
        raise PersonaError(
            "nothing to change: give what to change, e.g. --base-url URL (`phischer persona "
            "edit --help` lists them)"
        )
    persona = get_persona(session, name)
    others = [p for p in list_personas(session) if p.id != persona.id]
    current = {f: getattr(persona, f) for f in SPEC_FIELDS}
    given = {f: _cleared(f, v) for f, v in changes.items()}
    merged = {**current, **given}
    if merged["backend"] == "retrieval":
        # It calls no model: where the old one was served is dropped (as a fine-tune drops
        # the old server the other way), and given anyway it is refused as `persona add` does.
        merged.update({f: given.get(f) for f in MODEL_FIELDS})
    if given.get("dataset") and "system_prompt" not in given:
        merged["system_prompt"] = None  # taken from the new dataset, as `persona add` does
    checked = set(given)
    if merged["backend"] == "retrieval" and persona.backend != "retrieval":
        checked.add("dataset")  # now what it answers from: it must answer, as on add
    values = _checked(PersonaSpec(**merged), others, checked)
    changed = {f: (current[f], v) for f, v in values.items() if v != current[f]}
    if changed.get("is_default") == (False, True):
        session.execute(sa.update(Persona).values(is_default=False))
    for field, (_, new) in changed.items():
        setattr(persona, field, new)
    session.flush()
    return persona, changed


def _cleared(field: str, value: Any) -> Any:
    # A blank value clears an optional field; a required one (name, keyword) is passed on
    # to be refused by its own check, and a model or dataset by what the backend needs.
    blank = isinstance(value, str) and not value.strip()
    return None if blank and field in OPTIONAL_FIELDS else value


def _checked(spec: PersonaSpec, others: Sequence[Persona], given: Collection[str]) -> dict:
    """The columns `spec` stores: the fields in `given` checked, and what its backend needs."""
    # Only what is given: an edit of the greeting must not fail on a dataset being written
    # again, or on a name clash in a database from before that was checked.
    name = check_name(others, spec.name) if "name" in given else spec.name
    keyword = validate_keyword(spec.keyword) if "keyword" in given else spec.keyword
    if spec.backend not in BACKENDS:
        raise PersonaError(f"backend {spec.backend!r}: use one of {', '.join(BACKENDS)}")
    if spec.backend == "openai" and not spec.model:
        raise PersonaError("backend openai needs --model (e.g. gpt-4.1-mini or ft:...)")
    if spec.backend == "retrieval":
        _refuse_model_flags(spec)  # first: `--model M` alone most likely forgot --backend openai
        if not spec.dataset:
            raise PersonaError(
                "backend retrieval needs --dataset FILE (chat JSONL from `phischer import`)"
            )
    check_sampling(spec.temperature, spec.max_tokens)
    if spec.base_url is not None:
        check_base_url(spec.base_url)
    if spec.api_key_env is not None and "api_key_env" in given:
        check_env_name(spec.api_key_env)
    dataset = spec.dataset or None
    system_prompt = spec.system_prompt
    if spec.dataset and "dataset" in given:
        path = Path(spec.dataset).expanduser()
        if not path.is_file():
            raise PersonaError(f"dataset {spec.dataset} does not exist")
        dataset = str(path.resolve())
        if spec.backend == "retrieval":
            _check_answerable(path)
        # The clone answers best under the prompt its examples were built with (DESIGN §7).
        if system_prompt is None:
            system_prompt = dataset_system_prompt(path)
    if {"name", "keyword"} & set(given):
        check_unambiguous(others, name, keyword)
    check_lengths(
        {"name": name, **{f: getattr(spec, f) for f in MODEL_FIELDS}, "dataset": dataset}, given
    )
    return {
        "name": name,
        "keyword": keyword,
        "backend": spec.backend,
        "model": spec.model,
        "base_url": spec.base_url,
        "api_key_env": spec.api_key_env,
        "dataset": dataset,
        "system_prompt": system_prompt if system_prompt and system_prompt.strip() else None,
        "greeting": (spec.greeting or "").strip() or None,  # blank: the default confirmation
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
        "is_default": spec.is_default,
    }


# How each length-limited field is given on the command line, for its refusal.
FLAGS = {"name": "the persona name", "model": "--model", "base_url": "--base-url"}
FLAGS |= {"api_key_env": "--api-key-env", "dataset": "--dataset (its full path)"}


def check_lengths(values: Mapping[str, str | None], given: Collection[str]) -> None:
    """Refuse a given value longer than its column holds (PostgreSQL would refuse the row)."""
    # SQLite stores any length, so without this a database moved to PostgreSQL (or a
    # PostgreSQL one) would fail with a traceback instead of a one-line error.
    for field, value in values.items():
        limit = Persona.__table__.c[field].type.length
        if field in given and value is not None and len(value) > limit:
            # Only the lengths: a value pasted into --api-key-env may be a key.
            raise PersonaError(
                f"{FLAGS[field]} is {len(value)} characters long: at most {limit} fit"
            )


def get_persona(session: Session, name: str) -> Persona:
    """Find a persona by name or keyword, or raise PersonaError listing the ones that exist."""
    found = list_personas(session)
    persona = named(found, name)
    if persona is None:
        known = ", ".join(p.name for p in found) or "none yet: add one with `phischer persona add`"
        raise PersonaError(f"no persona {name!r} (known: {known})")
    return persona


def list_personas(session: Session) -> list[Persona]:
    """Every persona, oldest first."""
    return list(session.scalars(sa.select(Persona).order_by(Persona.id)))


def numbers_on(session: Session, persona: Persona) -> int:
    """How many numbers talk to `persona` (routed to it or switched to it by #keyword)."""
    query = sa.select(sa.func.count()).select_from(Contact)
    return session.scalar(query.where(Contact.persona_id == persona.id)) or 0


def remove_persona(session: Session, name: str) -> Persona:
    """Delete a persona; contacts on it fall back to the default persona."""
    persona = get_persona(session, name)
    session.execute(
        sa.update(Contact).where(Contact.persona_id == persona.id).values(persona_id=None)
    )
    # What ON DELETE SET NULL would do, but before the delete: a text being answered holds its
    # row while it stores the reply, which then waits for the persona's row. Deleted first,
    # the persona's row made the cascade wait for that text's: a deadlock on PostgreSQL, and
    # the text got the fallback. Waiting here holds no row the reply needs.
    session.execute(
        sa.update(Message)
        .where(Message.persona_id == persona.id)
        # updated_at as it was (not the ORM's onupdate): a text still being answered is
        # its webhook's while NULL, and a sweep's claim is its time (Store.finish_inbound).
        .values(persona_id=None, updated_at=Message.updated_at)
    )
    session.delete(persona)
    session.flush()
    return persona


def route_number(session: Session, number: str, name: str) -> Contact:
    """Pin a phone number to a persona (creating the contact if needed)."""
    phone = e164_number(number)
    persona = get_persona(session, name)
    contact = session.scalar(sa.select(Contact).where(Contact.phone == phone))
    if contact is None:
        contact = Contact(phone=phone)
        session.add(contact)
    contact.persona_id = persona.id
    session.flush()
    return contact


def default_persona(session: Session, preferred: str | None) -> Persona | None:
    """DEFAULT_PERSONA if set and known, else the persona marked default, else the first."""
    return pick_default(list_personas(session), preferred)


def as_keyword(word: str) -> str:
    """The keyword a NAME argument names (`#ADA` and `Ada` name the persona keyed `ada`)."""
    return word.lstrip("#").lower()


def named(personas: Sequence[Persona], ref: str) -> Persona | None:
    """The persona named `ref` (in any case), else whose keyword `ref` names (`as_keyword`)."""
    # Name first: a database from before `check_unambiguous` may hold a name that is another
    # persona's keyword, and the same word must then mean the same persona every time. Any
    # case, as `check_name` refuses names that differ only in case ("ada" finds "Ada"); the
    # exact spelling first, for a database from before that.
    folded = ref.casefold()
    return (
        next((p for p in personas if p.name == ref), None)
        or next((p for p in personas if p.name.casefold() == folded), None)
        or next((p for p in personas if p.keyword == as_keyword(ref)), None)
    )


def check_unambiguous(personas: Sequence[Persona], name: str, keyword: str) -> None:
    """Refuse a name or keyword that a NAME argument would take for one of `personas`."""
    # `persona show/route/remove` and `finetune start --persona` find a persona by its name
    # or its keyword: a word meaning two personas would pick one of them silently.
    for other in personas:
        clash = _clash(other, name, keyword)
        if clash is not None:
            word, flag, why = clash
            raise PersonaError(
                f"persona {other.name!r} already answers to {word!r} ({why}): choose another "
                f"{flag}, or `persona show {word}` could not tell the two apart"
            )


def _clash(other: Persona, name: str, keyword: str) -> tuple[str, str, str] | None:
    # (the word both would answer to, which of ours it is, why `other` answers to it)
    if other.keyword == keyword:
        return keyword, "keyword", f"its keyword #{other.keyword}"
    if other.keyword == as_keyword(name):
        return name, "name", f"its keyword #{other.keyword}"
    if as_keyword(other.name) == keyword:
        return keyword, "keyword", "its name"
    return None


def pick_default(personas: Sequence[Persona], preferred: str | None) -> Persona | None:
    """The default among `personas` (oldest first), by the rule of `default_persona`."""
    chosen = named(personas, preferred) if preferred else None
    if chosen is not None:
        return chosen
    return next((p for p in personas if p.is_default), personas[0] if personas else None)


class PersonaDirectory:
    """Personas for the webhook, re-read at most once per `ttl_s` seconds.

    Personas change rarely (CLI, fine-tuning) while every text needs one; a short cache
    saves a query per text, and a change made elsewhere is seen within `ttl_s`. A persona
    the cache does not know yet is looked up at once (`reload`, `for_contact`). `on_new` is
    called with each persona a read finds new or changed (every one, on the first read), so
    what it needs can be prepared before its first text; `on_change` first, with all the
    personas, when a read finds any added, changed or removed, so what only the old ones
    needed can be let go.
    """

    def __init__(
        self,
        db: Database,
        preferred_default: str | None,
        ttl_s: float = PERSONA_TTL_S,
        on_new: Callable[[PersonaView], None] | None = None,
        on_change: Callable[[list[PersonaView]], None] | None = None,
    ) -> None:
        self.db = db
        self.on_new = on_new
        self.on_change = on_change
        self.preferred_default = preferred_default
        self.ttl_s = ttl_s
        self._loaded_at = -1e18
        self._by_id: dict[int, PersonaView] = {}
        self._by_keyword: dict[str, PersonaView] = {}
        self._default: PersonaView | None = None
        self._lock = threading.Lock()

    def fresh(self) -> None:
        """Re-read the personas if the cache is older than `ttl_s`."""
        if time.monotonic() - self._loaded_at < self.ttl_s:
            return
        with self._lock:
            if time.monotonic() - self._loaded_at < self.ttl_s:
                return
            with self.db.read() as session:  # one query: the default is one of them
                rows = list_personas(session)
                views = [PersonaView.of(p) for p in rows]
                default = pick_default(rows, self.preferred_default)
            # Before on_new: what it starts preparing must count as in use once it is ready.
            if self.on_change is not None and {v.id: v for v in views} != self._by_id:
                self.on_change(views)
            if self.on_new is not None:
                for view in views:  # a few personas, once per ttl_s at most
                    if self._by_id.get(view.id) != view:
                        self.on_new(view)
            self._by_id = {v.id: v for v in views}
            self._by_keyword = {v.keyword: v for v in views}
            self._default = self._by_id.get(default.id) if default else None
            self._loaded_at = time.monotonic()

    def invalidate(self) -> None:
        """Forget the cache (the next lookup reads the database)."""
        self._loaded_at = -1e18

    def reload(self) -> None:
        """Re-read the personas now: what a text asks for may have been added a moment ago."""
        self.invalidate()
        self.fresh()

    def all(self) -> list[PersonaView]:
        """Every persona, oldest first."""
        self.fresh()
        return list(self._by_id.values())

    def by_keyword(self, keyword: str) -> PersonaView | None:
        """The persona with this keyword, or None."""
        self.fresh()
        return self._by_keyword.get(keyword)

    def for_contact(self, persona_id: int | None) -> PersonaView | None:
        """The contact's chosen persona, else the default one."""
        self.fresh()
        if persona_id is not None and persona_id not in self._by_id:
            # Routed (`persona route`) or switched in another worker to a persona added
            # after this cache was read: the row exists (a removal sets the id to NULL), so
            # read again rather than answer from the default until the second is up. Under
            # the webhook's write lock, but once per new persona and process.
            self.reload()
        return self._by_id.get(persona_id) if persona_id in self._by_id else self._default
