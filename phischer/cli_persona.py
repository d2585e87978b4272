"""`phischer persona add|edit|list|show|remove|route`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from phischer import personas
from phischer.cli import Context, friendly_errors, pass_ctx
from phischer.cli_options import Decorator, FiniteFloatRange, OrBlank, OrBlankOption
from phischer.models import Persona
from phischer.printing import pad, plural, table
from phischer.redact import redact

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# Each field as `persona show` and `persona edit` label it.
LABELS = {
    "name": "name",
    "keyword": "keyword",
    "backend": "backend",
    "model": "model",
    "base_url": "base url",
    "api_key_env": "api key env",
    "dataset": "dataset",
    "system_prompt": "system",
    "greeting": "greeting",
    "temperature": "temperature",
    "max_tokens": "max tokens",
    "is_default": "default",
}


def shown(field: str, value: object) -> str | None:
    """A field's value as `persona show` prints it (None: not printed)."""
    if value is None or value is False:
        return None
    if field == "keyword":
        return f"#{value}"
    if field == "base_url":
        # A server behind basic auth (https://user:password@host/v1): the password is not shown.
        return redact(str(value), numbers=False)
    return "yes" if value is True else str(value)


def describe(p: Persona, default: Persona | None, preferred: str | None) -> str:
    """A persona on a few lines, as `persona show` prints it.

    `default` is the persona numbers that never chose get (DEFAULT_PERSONA `preferred`, else
    the --default one, else the first), the one `persona list` stars.
    """
    fields = {f: label for f, label in LABELS.items() if f != "is_default"}
    rows = [(label, shown(field, getattr(p, field))) for field, label in fields.items()]
    # Which persona answers is what `default` tells a user, not the stored --default flag:
    # under DEFAULT_PERSONA=dex, "default yes" on another persona said the opposite of list.
    if default is not None and p.id == default.id:
        rows.append((LABELS["is_default"], "yes"))
    elif p.is_default and default is not None:
        rows.append(
            (
                LABELS["is_default"],
                f"no: DEFAULT_PERSONA={preferred} picks {default.name} instead (this "
                "persona has --default)",
            )
        )
    return "\n".join(f"{pad(k, 12)} {v}" for k, v in rows if v is not None)


def describe_change(field: str, old: object, new: object) -> str:
    """One line of `persona edit`: the field, its old value and its new one."""
    unset = "no" if field == "is_default" else "(none)"
    return f"{pad(LABELS[field], 12)} {shown(field, old) or unset} → {shown(field, new) or unset}"


@click.group("persona")
def persona_group() -> None:
    """Manage personas (clones) and which number talks to which."""


def persona_options(edit: bool) -> Decorator:
    """The options of `persona add`; for `persona edit`, none required and blank clears one."""
    # edit: None is "not given", so only what is given changes.
    numbers = OrBlank if edit else (lambda t: t)
    number_option = OrBlankOption if edit else click.Option
    options = [
        click.option(
            "--keyword",
            required=not edit,
            help="SMS keyword: texting #KEYWORD switches to it.",
        ),
        click.option(
            "--backend",
            type=click.Choice(personas.BACKENDS),
            default=None if edit else "retrieval",
            show_default=not edit,
            help="openai: any OpenAI-compatible server; retrieval: offline.",
        ),
        click.option(
            "--model",
            help="openai backend: model id (e.g. ft:gpt-4.1-mini:…, or a vLLM/Ollama model name).",
        ),
        click.option(
            "--base-url",
            help="openai backend: OpenAI-compatible http(s) base URL (overrides OPENAI_BASE_URL), "
            "e.g. http://127.0.0.1:8000/v1.",
        ),
        click.option(
            "--api-key-env",
            help="openai backend: name of the env variable holding this persona's key.",
        ),
        click.option(
            "--dataset",
            type=click.Path(dir_okay=False),
            help="Chat JSONL (from `phischer import`); the retrieval backend answers from it.",
        ),
        click.option(
            "--system",
            "system_prompt",
            help="System prompt (default: the one --dataset was built with, from its first "
            "example).",
        ),
        click.option("--greeting", help="Reply sent when someone switches to this persona."),
        click.option(
            "--temperature",
            type=numbers(FiniteFloatRange(personas.TEMPERATURE_MIN, personas.TEMPERATURE_MAX)),
            cls=number_option,
            help="Sampling temperature (openai backend; kept on a retrieval persona for its "
            "fine-tune).",
        ),
        click.option(
            "--max-tokens",
            type=numbers(click.IntRange(min=personas.MAX_TOKENS_MIN)),
            cls=number_option,
            help="Reply length cap in tokens (openai backend; kept on a retrieval persona for "
            "its fine-tune).",
        ),
        click.option(
            "--default/--no-default" if edit else "--default",
            "is_default",
            is_flag=True,
            default=None if edit else False,
            help="Use for numbers that never chose one"
            + (" (--no-default: no longer)." if edit else "."),
        ),
    ]

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


@persona_group.command("add")
@click.argument("name")
@persona_options(edit=False)
@pass_ctx
def add(obj: Context, name: str, **options: object) -> None:
    """Add a persona NAME."""
    with obj.write() as session:
        p = personas.add_persona(session, personas.PersonaSpec(name=name, **options))  # type: ignore[arg-type]
    # Once committed: a commit that fails (a full disk) must not follow "Added persona".
    click.echo(f"Added persona {p.name} (#{p.keyword}, {p.backend}).")
    if p.system_prompt and options.get("system_prompt") is None:
        click.echo(f"System prompt (from the dataset): {p.system_prompt}")
    note_kept_sampling(p)
    note_unset_key(p)


@persona_group.command("edit")
@click.argument("name")
@click.option("--name", "new_name", help="Rename it (its numbers and history stay with it).")
@persona_options(edit=True)
@pass_ctx
def edit(obj: Context, name: str, new_name: str | None, **options: object) -> None:
    """Change persona NAME (by name or keyword): only the options given; '' clears one.

    It keeps its numbers (routes, #keyword choices) and its conversations.
    """
    changes = {field: value for field, value in options.items() if value is not None}
    if new_name is not None:
        changes["name"] = new_name
    preferred = obj.settings.default_persona
    with obj.write() as session:
        was_preferred = _named_by(session, preferred)
        p, changed = personas.edit_persona(session, name, changes)
        # Renamed or re-keyed: numbers that never chose would get another persona.
        unnamed = was_preferred is p and _named_by(session, preferred) is not p
    # Said once committed, as `add` does.
    if not changed:
        click.echo(f"Persona {p.name} unchanged: it already has these values.")
        return
    click.echo(f"Edited persona {p.name} (#{p.keyword}):")
    for field, (old, new) in changed.items():
        click.echo(describe_change(field, old, new))
    if changed.keys() & {"backend", "temperature", "max_tokens"}:
        note_kept_sampling(p)
    if "api_key_env" in changed:
        note_unset_key(p)
    if unnamed:
        click.echo(
            f"DEFAULT_PERSONA={preferred} no longer names this persona: set it to "
            f"{p.keyword} (in .env) and restart the server."
        )


def _named_by(session: Session, word: str | None) -> Persona | None:
    # The persona a NAME argument or setting (DEFAULT_PERSONA) names now.
    return personas.named(personas.list_personas(session), word) if word else None


def note_unset_key(p: Persona) -> None:
    """Say that the persona's key variable is not set here (stored anyway: the server's may be)."""
    # The CLI loaded .env at start, as the server does; an empty value is no key either.
    if p.api_key_env and not os.environ.get(p.api_key_env):
        click.echo(
            f"Note: {p.api_key_env} is not set in this shell or .env: texts to {p.name} fail "
            "until it is set where the server runs."
        )


def note_kept_sampling(p: Persona) -> None:
    """Say that a retrieval persona's --temperature/--max-tokens wait for its fine-tune."""
    # Not refused like --model: stored, and used once a fine-tune moves it to openai.
    sampling = {"--temperature": p.temperature, "--max-tokens": p.max_tokens}
    kept = [flag for flag, value in sampling.items() if value is not None]
    if p.backend == "retrieval" and kept:
        one = len(kept) == 1
        click.echo(
            f"{' and '.join(kept)} {'is' if one else 'are'} kept for when a fine-tune moves "
            f"this persona to the openai backend: retrieval answers do not use "
            f"{'it' if one else 'them'}."
        )


@persona_group.command("list")
@pass_ctx
def list_(obj: Context) -> None:
    """List personas."""
    with obj.db.read() as session:
        found = personas.list_personas(session)
        default = personas.default_persona(session, obj.settings.default_persona)
    if not found:
        click.echo(f"No personas yet: {personas.ADD_PERSONA_HINT}.")
        return
    rows = [("  NAME", "KEYWORD", "BACKEND", "ANSWERS FROM")]
    for p in found:
        mark = "*" if default is not None and p.id == default.id else " "
        rows.append((f"{mark} {p.name}", f"#{p.keyword}", p.backend, answers_from(p)))
    # Columns as wide as their longest entry: a long name no longer pushes the rest along.
    for line in table(rows):
        click.echo(line)


def answers_from(p: Persona) -> str:
    """Where a persona's replies come from: its model (and server, if not the default), or dataset."""
    if p.backend != "openai":
        return p.dataset or ""
    # Two personas on the same model name at different servers (OpenAI and a local vLLM)
    # would look alike without it; no base URL means OPENAI_BASE_URL or OpenAI itself.
    return f"{p.model} at {shown('base_url', p.base_url)}" if p.base_url else p.model or ""


@persona_group.command("show")
@click.argument("name")
@pass_ctx
def show(obj: Context, name: str) -> None:
    """Show one persona (by name or keyword)."""
    preferred = obj.settings.default_persona
    with obj.db.read() as session, friendly_errors():
        p = personas.get_persona(session, name)
        default = personas.default_persona(session, preferred)
    click.echo(describe(p, default, preferred))


@persona_group.command("remove")
@click.argument("name")
@pass_ctx
def remove(obj: Context, name: str) -> None:
    """Remove a persona (its numbers fall back to the default persona)."""
    preferred = obj.settings.default_persona
    with obj.write() as session:
        before = personas.default_persona(session, preferred)
        p = personas.get_persona(session, name)
        numbers = personas.numbers_on(session, p)
        was_preferred = _named_by(session, preferred) is p
        personas.remove_persona(session, name)
        after = personas.default_persona(session, preferred)
    click.echo(f"Removed persona {p.name}.")
    # Where its texters and the numbers that never chose go now: said, not left to be found.
    heir = f"{after.name} (#{after.keyword})" if after else None
    if numbers:
        where = f"the default persona, {heir}" if heir else "no persona: none is left"
        verb = "talks" if numbers == 1 else "talk"
        click.echo(f"Its {plural(numbers, 'number')} now {verb} to {where}.")
    if was_preferred:
        click.echo(
            f"DEFAULT_PERSONA={preferred} no longer names a persona: numbers that never chose "
            f"one get {heir or 'no persona'}; change it in .env and restart the server."
        )
    elif before is p and heir:
        click.echo(
            f"Numbers that never chose a persona now get {heir} (`phischer persona edit NAME "
            "--default` picks another)."
        )


@persona_group.command("route")
@click.argument("number")
@click.argument("name")
@pass_ctx
def route(obj: Context, number: str, name: str) -> None:
    """Route phone NUMBER (as +15550100114) to persona NAME (it can still switch by #keyword)."""
    with obj.write() as session:
        contact = personas.route_number(session, number, name)
        persona = personas.get_persona(session, name)
    click.echo(f"{contact.phone} now talks to {persona.name}.")  # once committed


def register(cli: click.Group) -> None:
    """Attach the persona group to the main CLI."""
    cli.add_command(persona_group)
