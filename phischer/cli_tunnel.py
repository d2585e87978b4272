"""`phischer tunnel` and `phischer up`: put the local webhook on a real Twilio number."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from phischer import tunnel, up
from phischer.cli import Context, friendly_errors, pass_ctx

F = TypeVar("F", bound=Callable[..., Any])


def _port(minimum: int, help_text: str) -> Callable[[F], F]:
    """The --port option, from `minimum` up."""
    return click.option(
        "--port",
        type=click.IntRange(minimum, 65535),
        default=5000,
        show_default=True,
        help=help_text,
    )


# `tunnel` points at a server already listening there; `up` listens itself, so 0 (any free
# port, shown in its banner) makes sense only for `up`.
_tunnel_port = _port(1, "Local port of the webhook (where `phischer serve` listens).")
_up_port = _port(0, "Local port to serve the webhook on (0: any free port).")
_public_url = click.option(
    "--public-url",
    metavar="URL",
    help="Your own public base URL (domain or tunnel) instead of ngrok; Twilio calls URL/sms. "
    "Default: PUBLIC_URL if set, else an ngrok tunnel.",
)


# -h as well as --help also when scripts/tunnel.py runs this command without the group.
@click.command("tunnel", context_settings={"help_option_names": ["-h", "--help"]})
@_tunnel_port
@_public_url
@click.option("--no-restore", is_flag=True, help="Leave the number on this URL when stopping.")
@pass_ctx
def tunnel_command(obj: Context, port: int, public_url: str | None, no_restore: bool) -> None:
    """Open an https ngrok tunnel to PORT and point TWILIO_PHONE_NUMBER's SMS URL at it.

    Run `phischer serve` alongside. On exit (Ctrl-C, SIGTERM) the number's previous SMS URL is
    restored and the tunnel closed; exit code 1 if Twilio refused the restore. The same, with
    exit code 1, if the ngrok agent stops meanwhile. If the server on PORT stops answering,
    one line says so (and one more when it is back); the tunnel stays open. One `tunnel` or
    `up` at a time per instance folder.
    """
    with friendly_errors():
        tunnel.run_tunnel(
            obj.settings, port=port, public_url=public_url, restore=not no_restore, echo=click.echo
        )


@click.command("up")
@_up_port
@_public_url
@pass_ctx
def up_command(obj: Context, port: int, public_url: str | None) -> None:
    """Migrate, serve, tunnel and register in one process: then text your Twilio number.

    Ctrl-C (or SIGTERM) restores the number's previous SMS URL and closes the tunnel (exit code
    1 if Twilio refused the restore). A reply still being made then gets a second; one cut
    off is answered by the recovery sweep at the next start. The same, with exit code 1, if
    the web server or the ngrok agent stops meanwhile. One `up` or `tunnel` at a time per
    instance folder.
    """
    with friendly_errors():
        up.run_up(obj.settings, port=port, public_url=public_url, echo=click.echo)


def register(cli: click.Group) -> None:
    """Attach `tunnel` and `up` to the main CLI."""
    cli.add_command(tunnel_command)
    cli.add_command(up_command)
