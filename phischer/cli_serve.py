"""`phischer serve`, `seed`, `text` and `chat`."""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import sys

import click

from phischer.cli import Context, not_utf8, pass_ctx
from phischer.config import Settings, no_auth_token, not_international, twilio_from
from phischer.ports import bare_host
from phischer.printing import plural
from phischer.simulator import DEFAULT_FROM, DEFAULT_URL, SimResult, SimulatorError, send_text

# Port 0 ("any free port") would leave the banner pointing nowhere, so serve wants a real one.
PORT = click.IntRange(1, 65535)
AT_LEAST_ONE = click.IntRange(min=1)

_url = click.option("--url", default=DEFAULT_URL, show_default=True, help="The webhook to post to.")


def _as_twilio_from(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--from as Twilio would post it: the server's rules (ALLOWED_NUMBERS, routes) read E.164."""
    sender = twilio_from(value)
    if sender is None:
        raise click.BadParameter(f"{not_international(value)} (or whatsapp:+15551234567)")
    return sender


_from = click.option(
    "--from",
    "from_",
    metavar="NUMBER",
    default=DEFAULT_FROM,
    show_default=True,
    callback=_as_twilio_from,
    help="Sender phone number in international form, as Twilio sends it (spaces, 00 and (0) "
    "are fine; whatsapp:+… too). Each has its own memory, persona and opt-out.",
)


@click.command("serve")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (IPv6 too: ::1 or [::1]; 0.0.0.0 for every interface).",
)
@click.option("--port", default=5000, show_default=True, type=PORT, help="Port to listen on.")
@click.option(
    "--dev",
    is_flag=True,
    help="Flask's debug server with the reloader, without its interactive debugger (keep "
    "--host on 127.0.0.1).",
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=AT_LEAST_ONE,
    # Heroku-like platforms size WEB_CONCURRENCY to the machine, as gunicorn's own CLI reads.
    envvar="WEB_CONCURRENCY",
    show_envvar=True,
    help="gunicorn workers.",
)
@click.option(
    "--threads", default=4, show_default=True, type=AT_LEAST_ONE, help="Threads per worker."
)
@pass_ctx
def serve(obj: Context, host: str, port: int, dev: bool, workers: int, threads: int) -> None:
    """Serve the webhook (POST /sms, POST /sms/status, GET /healthz) under gunicorn."""
    from phischer import create_app
    from phischer.inbound import NO_PERSONA_TEXT
    from phischer.personas import ADD_PERSONA_HINT, list_personas
    from phischer.ports import PortBusyError, http_url, listen
    from phischer.server import serve as run

    with obj.db.read() as session:  # migrates first, before the workers start
        no_persona = not list_personas(session)
    obj.db.dispose()  # no pooled connection for gunicorn's workers to inherit
    app = create_app(obj.settings)
    # A busy port is one line here, before gunicorn retries it for seconds. The socket is
    # handed to gunicorn: closed and bound again, a second `serve` started at the same time
    # passed this check too, said it was answering, then failed after gunicorn's five
    # retries. Bound last, so that until the server runs a connection is refused, not held
    # unanswered. Not in the reloader's child (--dev): its parent holds the port already.
    sock = None
    if os.environ.get("WERKZEUG_RUN_MAIN") != "true":
        try:
            sock = listen(host, port)
        except PortBusyError as exc:
            raise click.ClickException(str(exc)) from None
    url = f"{http_url(host, port)}/sms"
    if reachable_from_outside(host) and uses_dev_token(obj.settings):
        # On a host's platform (Procfile: --host 0.0.0.0) the generated token goes unnoticed
        # until Twilio's first text is refused; say it before that.
        click.echo(
            f"Warning: {no_auth_token(obj.settings)}: Twilio's texts get 403. Set "
            "TWILIO_AUTH_TOKEN to your Twilio account's Auth Token.",
            err=True,
        )
    click.echo(f"phischer is answering texts at {url}")
    click.echo(f'Try it in another terminal:  {text_hint(url)} "hey, how are you?"')
    click.echo("Text #list to see the personas, #<keyword> to switch. Ctrl-C stops.")
    if no_persona:
        # `phischer serve` alone (the README's "another port") seeds nothing, unlike `make run`.
        click.echo(
            f'No personas yet, so every text gets "{NO_PERSONA_TEXT}": {ADD_PERSONA_HINT} '
            "(no restart needed)."
        )
    run(app, host, port, dev=dev, workers=workers, threads=threads, sock=sock)


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
            f"Seeded sample persona {s.name} (#{s.keyword}, {plural(s.examples, 'example')}, "
            f"{plural(s.exchanges, 'exchange')})."
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
        click.echo(result.silence(from_), err=True)


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
        try:
            result = _send(obj, message, url, from_)
        except UnicodeEncodeError as exc:  # one line typed in another encoding: say so, go on
            click.echo(f"Error: {not_utf8(exc)}", err=True)
            continue
        for reply in result.replies or [result.silence(from_)]:
            click.echo(f"clone> {reply}")


def reachable_from_outside(host: str) -> bool:
    """Whether `--host` listens beyond this machine (0.0.0.0, ::, a LAN or public address)."""
    name = bare_host(host).lower()
    if name == "localhost":
        return False
    try:
        return not ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name: it may well resolve to a public address
        return True


def uses_dev_token(settings: Settings) -> bool:
    """Whether signatures are checked with the generated development token, not Twilio's."""
    return settings.twilio_validate_signature and not settings.twilio_auth_token


def text_hint(url: str) -> str:
    """The `text` command the user can paste into another shell to reach the server at `url`.

    `phischer` when that name on PATH is the script now running; else the script's path
    (relative to the current directory when under it), as `make run` starts `.venv/bin/phischer`
    without activating the venv; else `python -m phischer` with this interpreter (by name if
    PATH finds this very interpreter, else by its path). `--url` is left out when it is the
    default `text` posts to anyway.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    on_path = shutil.which("phischer")
    if argv0 and on_path and _same_file(on_path, argv0):
        program = "phischer"
    elif os.path.splitext(os.path.basename(argv0))[0] == "phischer":
        program = shlex.quote(_shell_path(argv0))
    else:
        # By path, not realpath: a venv's python links to the system one but has the venv's
        # packages, so only this very path (or the same path found on PATH) runs phischer.
        python = os.path.basename(sys.executable)
        found = shutil.which(python)
        if found and os.path.abspath(found) == os.path.abspath(sys.executable):
            program = f"{python} -m phischer"
        else:
            program = f"{shlex.quote(_shell_path(sys.executable))} -m phischer"
    url_part = "" if url == DEFAULT_URL else f" --url {shlex.quote(url)}"
    return f"{program} text{url_part}"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _shell_path(path: str) -> str:
    """`path` relative to the current directory if under it (./x for a file right here)."""
    full = os.path.abspath(path)
    cwd = os.getcwd()
    try:
        if os.path.commonpath([full, cwd]) != cwd:
            return full
    except ValueError:  # another drive (Windows)
        return full
    relative = os.path.relpath(full, cwd)
    return relative if os.sep in relative else f".{os.sep}{relative}"


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
