"""`phischer import FORMAT PATH --me NAME -o OUT.jsonl`: a chat export -> chat fine-tuning JSONL."""

from __future__ import annotations

from pathlib import Path

import click

from phischer.cli import friendly_errors
from phischer.import_run import run_import
from phischer.stopping import sigterm_as_interrupt

# A second Ctrl-C while a stopped import cleans up: the cleanup takes a moment at most.
_STILL_STOPPING = (
    b"Still stopping (removing the unfinished output, ending the worker processes); press "
    b"Ctrl-C again to quit at once.\n"
)


@click.command("import")
# A plain argument, not click.Choice: an unknown format is then one line and exit 1 like
# every other bad input, instead of a usage error.
@click.argument("fmt", metavar="{messenger,twitter,discord,whatsapp,telegram}")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--me", required=True, help="The person to clone: their name (or id) in the export.")
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output chat JSONL (a .conversations file is written beside it).",
)
@click.option("--system", help="System prompt (default names --me; {me} is filled in).")
@click.option(
    "--gap-hours",
    type=float,
    default=6,
    show_default=True,
    help="A silence longer than this starts a new conversation.",
)
@click.option(
    "--max-turns",
    type=int,
    default=12,
    show_default=True,
    help="At most this many user/assistant messages per example.",
)
@click.option(
    "--mask-pii",
    is_flag=True,
    help="Replace emails, phone numbers and URLs (in texts and in names) with placeholders.",
)
def import_command(fmt: str, path: Path, me: str, out: Path, **options: object) -> None:
    """Turn a chat export (zip, folder or file) into a fine-tuning JSONL."""
    # ImportErrorMessage and other bad input are ValueErrors: friendly_errors makes them
    # one line and exit 1. SIGTERM and SIGHUP (`kill`, `timeout`, a closed terminal) stop
    # the import like Ctrl-C: left at their default they killed this process alone, leaving
    # its temp output files behind and its worker processes waiting on it forever.
    with friendly_errors(), sigterm_as_interrupt(_STILL_STOPPING):
        try:
            result = run_import(fmt, path, me, out, **options)  # type: ignore[arg-type]
        except OSError as exc:  # e.g. the output folder is not writable
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or out}") from None
    click.echo(result.format())


def register(cli: click.Group) -> None:
    """Add `phischer import` to the CLI."""
    cli.add_command(import_command)
