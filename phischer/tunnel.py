"""Expose the local webhook to Twilio: a tunnel, the number's SMS URL pointed at it, undone on exit."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from twilio.rest import Client

from phischer import ngrok_agent
from phischer.atomic import atomic_files
from phischer.config import ConfigError, Settings, public_base_url
from phischer.instance_lock import folder_lock
from phischer.stopping import mark_stopping, sigterm_as_interrupt, stop_if_requested
from phischer.tunnel_types import Check, Echo, TunnelError, TunnelOpener
from phischer.twilio_client import make_twilio_client
from phischer.webhook_registration import (
    Registration,
    WhatsAppSender,
    apply_registration,
    find_number,
    forget_unless_refused,
    ngrok_host,
    plan_registration,
    restore_left_behind,
    restoring,
    stays_dead,
    taking_over,
)

# `phischer tunnel` and `phischer up` both go through `exposed()`. The public URL is shared with
# the running server through `<instance>/public_url` (Settings.tunnel_public_url() reads it when
# PUBLIC_URL is unset), so signatures are checked against the URL Twilio actually called.
PUBLIC_URL_FILE = "public_url"
STOP_HINT = "Ctrl-C to stop; the number's previous SMS URL is then restored."
# How often the wait looks for a stop whose KeyboardInterrupt a finalizer swallowed.
STOP_POLL_S = 0.5
# How often `phischer tunnel` looks whether the server it exposes still answers: one loopback
# connect a look, so a server that died is said within seconds, not by Twilio's error 11200.
SERVER_POLL_S = 2.0


class StoppedServing(TunnelError):
    """The server or the tunnel stopped while serving; the message says which and what to do."""


@dataclass(frozen=True)
class Exposure:
    """A live exposure: the public base URL, the webhook URL Twilio calls, the registration."""

    public_url: str
    sms_url: str
    port: int
    registration: Registration | None  # None: a WhatsApp sender, whose webhook is set by hand
    watch: tuple[Check, ...] = ()  # what wait_for_shutdown polls (the tunnel, the server)
    # Polled too, but to say a change rather than stop (the server `tunnel` does not run).
    notices: tuple[Callable[[], None], ...] = ()


def normalize_public_url(raw: str, source: str = "--public-url") -> str:
    """Check and tidy a user-given public base URL (absolute http(s), no trailing slash)."""
    try:
        return public_base_url(raw, source)
    except ConfigError as exc:
        raise TunnelError(str(exc)) from None


def resolve_public_url(option: str | None, settings: Settings) -> str | None:
    """The public URL to use instead of ngrok: --public-url, else PUBLIC_URL, else None."""
    if option:
        return normalize_public_url(option)
    if settings.public_url:
        return normalize_public_url(settings.public_url, "PUBLIC_URL")
    return None


# -- sharing the public URL with the server ---------------------------------------------------


def write_public_url(instance_path: Path, url: str) -> Path:
    """Write the public URL where Settings.tunnel_public_url() finds it (atomically)."""
    path = instance_path / PUBLIC_URL_FILE
    # A request arriving mid-write must see the old or the new URL, never half of one.
    with atomic_files(path, private=True) as (fh,):
        fh.write(url + "\n")
    return path


def remove_public_url(instance_path: Path, url: str) -> None:
    """Remove the public URL file if it still holds our URL (another tunnel may own it now)."""
    path = instance_path / PUBLIC_URL_FILE
    try:
        if path.read_text().strip() == url:
            path.unlink()
    except OSError:
        pass


def cleanup_step(echo: Echo, what: str, fn: Callable[[], object]) -> None:
    """Run one clean-up step; a failure is reported and the other steps still run."""
    try:
        result = fn()
    except Exception as exc:  # clean-up must go on whatever one step does
        echo(f"Warning: could not {what}: {exc}")
        return
    if isinstance(result, str):
        echo(result)


def _say_left_on(
    echo: Echo, settings: Settings, registration: Registration, public_url: str | None
) -> None:
    """--no-restore, on exit: what the number is left on, and what that asks of the user."""
    phone, sms_url = registration.phone_number, registration.sms_url
    if not public_url:
        echo(f"Warning: {stays_dead(phone, sms_url, ' (--no-restore)')}")
        return
    shared = settings.instance_path / PUBLIC_URL_FILE
    echo(
        f"The SMS URL of {phone} stays {sms_url} (--no-restore); {shared} keeps {public_url} "
        f"for the server's signature checks."
    )
    # The file lasts until another `up`/`tunnel` here replaces it; PUBLIC_URL lasts.
    if settings.public_url != public_url:
        echo(
            f"Hint: set PUBLIC_URL={public_url} in .env so `phischer serve` keeps validating "
            f"signatures for it."
        )


@contextmanager
def exposed(
    settings: Settings,
    client: Client,
    *,
    port: int,
    public_url: str | None = None,
    opener: TunnelOpener | None = None,
    restore: bool = True,
    guarded: bool = False,
    echo: Echo = print,
) -> Iterator[Exposure]:
    """Open the tunnel (unless `public_url`), share and register its URL; undo all on exit.

    `guarded`: the caller holds the folder lock, so numbers that killed runs here left on
    their URLs are restored first (else only said).
    """
    assert settings.twilio_phone_number, "make_twilio_client() checks TWILIO_PHONE_NUMBER first"
    instance = settings.instance_path
    # Look the number up first: a wrong TWILIO_PHONE_NUMBER should not cost a tunnel.
    try:
        number, whatsapp = find_number(client, settings.twilio_phone_number), None
    except WhatsAppSender as exc:
        # Serving is still of use: the user pastes the URL in the Console (said below).
        number, whatsapp = None, exc
    # TWILIO_PHONE_NUMBER may have changed since a run was killed: its number comes first.
    restore_left_behind(client, instance, number.sid if number else None, guarded, echo)
    with ExitStack() as stack:
        if number is not None and guarded:
            # Last on the way out: put back what a killed run left, if this run never took over.
            step = taking_over(client, number, instance, restore, echo)
            stack.callback(
                cleanup_step, echo, f"restore the SMS URL of {number.phone_number}", step
            )
        stop_if_requested()
        watch: tuple[Check, ...] = ()  # a URL of the user's own: nothing here to watch
        if public_url:
            base = public_url
            echo(f"Using the public URL {base} (no ngrok).")
            if ngrok_host(base):
                # Often a URL from an earlier run kept in .env: no agent of ours serves it.
                echo(f"Warning: {_by_hand_ngrok(base, port)}")
        else:
            tunnel = (opener or ngrok_agent.open_ngrok)(port)
            watch = (tunnel.check,)
            stack.callback(cleanup_step, echo, "close the tunnel", tunnel.close)
            base = normalize_public_url(tunnel.public_url, "the tunnel URL")
            echo(f"Tunnel open: {base} → http://127.0.0.1:{port}")
        stop_if_requested()
        write_public_url(instance, base)
        # --no-restore on a URL that outlives us (--public-url, PUBLIC_URL) keeps the file:
        # Twilio goes on calling it, and a running server must go on checking signatures
        # against it.
        keep_shared = False

        def unshare() -> None:
            if not keep_shared:
                remove_public_url(instance, base)

        stack.callback(unshare)
        if whatsapp is not None:
            echo(f"WhatsApp: {whatsapp.instruction(base + '/sms')}.")
            if not public_url:
                stack.callback(echo, _whatsapp_left_on(whatsapp.phone, base + "/sms"))
            yield Exposure(base, base + "/sms", port, registration=None, watch=watch)
            return
        registration = plan_registration(
            client, number, base + "/sms", instance, dies_with_run=not public_url
        )
        for warning in registration.warnings:
            echo(f"Warning: {warning}")
        # Undo steps go in before the change: a Ctrl-C or SIGTERM while Twilio applies it
        # still restores (restore_webhook looks at the number first).
        if restore:
            stack.push(restoring(client, registration, instance, echo))
        else:
            stack.callback(forget_unless_refused, registration, instance)
        stop_if_requested()
        apply_registration(client, registration, instance)
        if not restore:
            # An ngrok URL dies with the tunnel: nothing to keep checking against.
            keep_shared = bool(public_url)
            stack.callback(_say_left_on, echo, settings, registration, public_url)
        yield Exposure(
            public_url=base,
            sms_url=base + "/sms",
            port=port,
            registration=registration,
            watch=watch,
        )


def _by_hand_ngrok(base: str, port: int) -> str:
    """A public URL on ngrok given instead of a tunnel: only an agent run by hand serves it."""
    return (
        f"{base} is an ngrok address, and with a public URL (--public-url or PUBLIC_URL) "
        f"phischer opens no tunnel: texts reach this run only while an ngrok agent you started "
        f"serves that address to 127.0.0.1:{port}, else Twilio gets ngrok's 'endpoint offline' "
        f"(error 11200). To have phischer open the tunnel, unset PUBLIC_URL and leave out "
        f"--public-url"
    )


def _whatsapp_left_on(phone: str, sms_url: str) -> str:
    """On exit: the WhatsApp webhook pasted by hand stays on this run's ngrok URL."""
    return (
        f"WhatsApp: {phone}'s webhook stays {sms_url}, which stops working as the tunnel "
        f"closes: paste the next run's URL in the Twilio Console (texts fail with error 11200 "
        f"until then)"
    )


def wait_for_shutdown(exposure: Exposure) -> None:
    """Block until Ctrl-C or SIGTERM (KeyboardInterrupt), or until what serves stops (StoppedServing)."""
    while True:
        # The signal's KeyboardInterrupt ends the sleep; a stop a finalizer swallowed ends here.
        stop_if_requested()
        # A dead server or tunnel would leave Twilio failing every text (11200) while the
        # terminal still says "Text … now": each check is a flag or a waitpid, cheap at 2 Hz.
        for check in exposure.watch:
            problem = check()
            if problem:
                raise StoppedServing(problem)
        for notice in exposure.notices:
            notice()
        time.sleep(STOP_POLL_S)


def wait_until_stopped(
    wait: Callable[[Exposure], None] | None, exposure: Exposure, echo: Echo, last_line: str
) -> None:
    """Say `last_line`, wait for a stop (or for what serves to stop), then say "Shutting down…"."""
    # A stop swallowed during startup: undo everything and leave with "Aborted!", as a stop
    # before the last line always does.
    stop_if_requested()
    try:
        # Printed inside the try: a signal right after the user sees it is a clean stop.
        echo(last_line)
        (wait or wait_for_shutdown)(exposure)
    except (KeyboardInterrupt, StoppedServing) as exc:
        mark_stopping()  # a TERM now (after Ctrl-C too) must not interrupt the restore
        echo("Shutting down…")
        if isinstance(exc, StoppedServing):
            raise  # restored and closed as on Ctrl-C, then said last, with exit code 1


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _server_change(port: int, answering: bool) -> str:
    """The line for the server on PORT starting or stopping to answer while `tunnel` runs."""
    if answering:
        return f"Server found on 127.0.0.1:{port}: texts reach it now."
    return (
        f"Warning: the server on 127.0.0.1:{port} stopped answering: texts now fail with Twilio "
        f"error 11200. Start it again with `phischer serve --port {port}` in another terminal; "
        f"this tunnel stays open."
    )


class _ServerWatch:
    """Says once when the server `tunnel` exposes stops answering, and once when it answers again."""

    def __init__(self, port: int, answering: bool, echo: Echo) -> None:
        self.port = port
        self.answering = answering  # what the last look found: a line only when it changes
        self.echo = echo
        self.next_look = time.monotonic() + SERVER_POLL_S

    def __call__(self) -> None:
        """Look at most every SERVER_POLL_S (the wait calls this twice a second)."""
        # Not a reason to stop: the user may restart the server, and the tunnel and the
        # number's registration are still good for it.
        if time.monotonic() < self.next_look:
            return
        answering = _listening(self.port)
        self.next_look = time.monotonic() + SERVER_POLL_S
        if answering != self.answering:
            self.answering = answering
            self.echo(_server_change(self.port, answering))


def run_tunnel(
    settings: Settings,
    *,
    port: int = 5000,
    public_url: str | None = None,
    restore: bool = True,
    opener: TunnelOpener | None = None,
    wait: Callable[[Exposure], None] | None = None,
    echo: Echo = print,
) -> None:
    """`phischer tunnel`: expose an already running server and register it until stopped."""
    client = make_twilio_client(settings)
    base = resolve_public_url(public_url, settings)
    if settings.public_url and base and settings.public_url.rstrip("/") != base:
        echo(
            f"Warning: PUBLIC_URL={settings.public_url} differs from {base}; a server started with "
            f"it checks signatures against PUBLIC_URL and will answer 403"
        )
    with (
        folder_lock(settings.instance_path, "tunnel") as guarded,
        sigterm_as_interrupt(),
        exposed(
            settings,
            client,
            port=port,
            public_url=base,
            opener=opener,
            restore=restore,
            guarded=guarded,
            echo=echo,
        ) as exposure,
    ):
        if exposure.registration is not None:
            echo(f"Twilio will POST texts to {settings.twilio_phone_number} to {exposure.sms_url}")
        shared = settings.instance_path / PUBLIC_URL_FILE
        answering = _listening(port)
        if answering:
            echo(
                f"Server found on 127.0.0.1:{port}; if it runs from this folder it reads the "
                f"public URL from {shared} (else set PUBLIC_URL where it runs)."
            )
        else:
            echo(
                f"Warning: nothing listens on 127.0.0.1:{port} yet: start `phischer serve --port "
                f"{port}` (or use `phischer up`), else Twilio logs error 11200"
            )
        hint = STOP_HINT if restore else "Ctrl-C to stop (--no-restore: the number keeps this URL)."
        if exposure.registration is None:
            hint = "Ctrl-C to stop."  # a WhatsApp webhook: nothing was changed to put back
        watched = replace(exposure, notices=(_ServerWatch(port, answering, echo),))
        wait_until_stopped(wait, watched, echo, hint)
