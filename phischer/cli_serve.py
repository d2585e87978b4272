"""`phischer serve`, `seed`, `text` and `chat`."""

from __future__ import annotations

import os

import click

from phischer.cli import Context, pass_ctx
from phischer.simulator import DEFAULT_FROM, DEFAULT_URL, SimResult, SimulatorError, send_text

_url = click.option("--url", default=DEFAULT_URL, show_default=True, help="The webhook to post to.")
_from = click.option(
    "--from", "from_", default=DEFAULT_FROM, show_default=True, help="Sender number."
)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--dev", is_flag=True, help="Flask's debug server with the reloader.")
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn workers.")
@click.option("--threads", default=4, show_default=True, type=int, help="Threads per worker.")
@pass_ctx
def serve(obj: Context, host: str, port: int, dev: bool, workers: int, threads: int) -> None:
    """Serve the webhook (POST /sms, GET /healthz) under gunicorn."""
    from phischer import create_app
    from phischer.ports import PortBusyError, listen
    from phischer.server import serve as run

    # A busy port is one line here, before gunicorn retries it for seconds. Not in the
    # reloader's child (--dev): its parent already holds the port and hands it over.
    if os.environ.get("WERKZEUG_RUN_MAIN") != "true":
        try:
            listen(host, port).close()
        except PortBusyError as exc:
            raise click.ClickException(str(exc)) from None
    obj.db  # noqa: B018  (migrates before the workers start)
    app = create_app(obj.settings)
    url = f"http://{host}:{port}"
    click.echo(f"phischer is answering texts at {url}/sms")
    click.echo(f'Try it in another terminal:  phischer text --url {url}/sms "hey, how are you?"')
    click.echo("Text #list to see the personas, #<keyword> to switch. Ctrl-C stops.")
    run(app, host, port, dev=dev, workers=workers, threads=threads)


@click.command("seed")
@pass_ctx
def seed(obj: Context) -> None:
    """Add the bundled fictional sample personas if there are no personas yet."""
    from phischer.seed import seed_samples

    added = seed_samples(obj.settings, obj.db)
    if not added:
        click.echo("Personas already exist; nothing seeded.")
    for s in added:
        click.echo(
            f"Seeded sample persona {s.name} (#{s.keyword}, {s.examples} examples, "
            f"{s.exchanges} exchanges)."
        )


@click.command("text")
@_url
@_from
@click.argument("message")
@pass_ctx
def text(obj: Context, url: str, from_: str, message: str) -> None:
    """Send MESSAGE to the clone, signed like Twilio, and print the reply."""
    result = _send(obj, message, url, from_)
    for reply in result.replies:
        click.echo(reply)
    if not result.replies:
        click.echo("(no reply)", err=True)


@click.command("chat")
@_url
@_from
@pass_ctx
def chat(obj: Context, url: str, from_: str) -> None:
    """Chat with the clone interactively (Ctrl-D or /quit to leave)."""
    click.echo("Texting the clone. #list shows personas, #<keyword> switches, /quit leaves.")
    while True:
        try:
            message = click.prompt("you", prompt_suffix="> ")
        except (EOFError, click.Abort):
            click.echo()
            return
        if message.strip() in ("/quit", "/exit"):
            return
        result = _send(obj, message, url, from_)
        for reply in result.replies or ["(no reply)"]:
            click.echo(f"clone> {reply}")


def _send(obj: Context, message: str, url: str, from_: str) -> SimResult:
    # A server that is down or refuses the signature is one line and exit 1.
    try:
        return send_text(obj.settings, message, url=url, from_=from_)
    except SimulatorError as exc:
        raise click.ClickException(str(exc)) from None


def register(cli: click.Group) -> None:
    """Attach the serving commands to the main CLI."""
    for command in (serve, seed, text, chat):
        cli.add_command(command)
