"""`phischer persona add|list|show|remove|route`."""

from __future__ import annotations

import click

from phischer import personas
from phischer.cli import Context, friendly_errors, pass_ctx
from phischer.cli_options import FiniteFloatRange
from phischer.models import Persona
from phischer.printing import pad


def describe(p: Persona) -> str:
    """A persona on a few lines, as `persona show` prints it."""
    rows = [
        ("name", p.name),
        ("keyword", f"#{p.keyword}"),
        ("backend", p.backend),
        ("model", p.model),
        ("base url", p.base_url),
        ("api key env", p.api_key_env),
        ("dataset", p.dataset),
        ("system", p.system_prompt),
        ("greeting", p.greeting),
        ("temperature", p.temperature),
        ("max tokens", p.max_tokens),
        ("default", "yes" if p.is_default else None),
    ]
    return "\n".join(f"{pad(k, 12)} {v}" for k, v in rows if v is not None)


@click.group("persona")
def persona_group() -> None:
    """Manage personas (clones) and which number talks to which."""


@persona_group.command("add")
@click.argument("name")
@click.option("--keyword", required=True, help="SMS keyword: texting #KEYWORD switches to it.")
@click.option(
    "--backend",
    type=click.Choice(personas.BACKENDS),
    default="retrieval",
    show_default=True,
    help="openai: any OpenAI-compatible server; retrieval: offline.",
)
@click.option(
    "--model",
    help="openai backend: model id (e.g. ft:gpt-4.1-mini:…, or a vLLM/Ollama model name).",
)
@click.option(
    "--base-url",
    help="openai backend: OpenAI-compatible http(s) base URL (overrides OPENAI_BASE_URL), "
    "e.g. http://127.0.0.1:8000/v1.",
)
@click.option(
    "--api-key-env", help="openai backend: name of the env variable holding this persona's key."
)
@click.option(
    "--dataset",
    type=click.Path(dir_okay=False),
    help="Chat JSONL (from `phischer import`); the retrieval backend answers from it.",
)
@click.option(
    "--system",
    "system_prompt",
    help="System prompt (default: the one --dataset was built with, from its first example).",
)
@click.option("--greeting", help="Reply sent when someone switches to this persona.")
@click.option(
    "--temperature",
    type=FiniteFloatRange(personas.TEMPERATURE_MIN, personas.TEMPERATURE_MAX),
    help="Sampling temperature (openai backend; kept on a retrieval persona for its fine-tune).",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=personas.MAX_TOKENS_MIN),
    help="Reply length cap in tokens (openai backend; kept on a retrieval persona for its "
    "fine-tune).",
)
@click.option("--default", "is_default", is_flag=True, help="Use for numbers that never chose one.")
@pass_ctx
def add(obj: Context, name: str, **options: object) -> None:
    """Add a persona NAME."""
    with obj.write() as session:
        p = personas.add_persona(session, personas.PersonaSpec(name=name, **options))  # type: ignore[arg-type]
        click.echo(f"Added persona {p.name} (#{p.keyword}, {p.backend}).")
        if p.system_prompt and options.get("system_prompt") is None:
            click.echo(f"System prompt (from the dataset): {p.system_prompt}")
        sampling = {"--temperature": p.temperature, "--max-tokens": p.max_tokens}
        kept = [flag for flag, value in sampling.items() if value is not None]
        if p.backend == "retrieval" and kept:
            # Not refused like --model: stored, and used once a fine-tune moves it to openai.
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
        click.echo("No personas yet: `phischer persona add NAME --keyword KW --dataset FILE`.")
        return
    click.echo(_list_line(" ", "NAME", "KEYWORD", "BACKEND", "ANSWERS FROM"))
    for p in found:
        mark = "*" if default is not None and p.id == default.id else " "
        click.echo(_list_line(mark, p.name, f"#{p.keyword}", p.backend, answers_from(p)))


def _list_line(mark: str, name: str, keyword: str, backend: str, source: str) -> str:
    """One line of `persona list` (its header too), in fixed columns."""
    return f"{mark} {pad(name, 20)} {pad(keyword, 13)} {pad(backend, 10)} {source}".rstrip()


def answers_from(p: Persona) -> str:
    """Where a persona's replies come from: its model (and server, if not the default), or dataset."""
    if p.backend != "openai":
        return p.dataset or ""
    # Two personas on the same model name at different servers (OpenAI and a local vLLM)
    # would look alike without it; no base URL means OPENAI_BASE_URL or OpenAI itself.
    return f"{p.model} at {p.base_url}" if p.base_url else p.model or ""


@persona_group.command("show")
@click.argument("name")
@pass_ctx
def show(obj: Context, name: str) -> None:
    """Show one persona (by name or keyword)."""
    with obj.db.read() as session, friendly_errors():
        click.echo(describe(personas.get_persona(session, name)))


@persona_group.command("remove")
@click.argument("name")
@pass_ctx
def remove(obj: Context, name: str) -> None:
    """Remove a persona (its numbers fall back to the default persona)."""
    with obj.write() as session:
        p = personas.remove_persona(session, name)
    click.echo(f"Removed persona {p.name}.")


@persona_group.command("route")
@click.argument("number")
@click.argument("name")
@pass_ctx
def route(obj: Context, number: str, name: str) -> None:
    """Route phone NUMBER (as +15550100114) to persona NAME (it can still switch by #keyword)."""
    with obj.write() as session:
        contact = personas.route_number(session, number, name)
        persona = personas.get_persona(session, name)
        click.echo(f"{contact.phone} now talks to {persona.name}.")


def register(cli: click.Group) -> None:
    """Attach the persona group to the main CLI."""
    cli.add_command(persona_group)
