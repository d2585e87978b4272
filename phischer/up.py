"""`phischer up`: migrate, serve the webhook in-process, tunnel and register, undo on exit."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from phischer.config import Settings
from phischer.instance_lock import folder_lock
from phischer.ports import PortBusyError, bare_host, http_url, listen
from phischer.stopping import sigterm_as_interrupt, stop_if_requested
from phischer.tunnel import (
    STOP_HINT,
    Exposure,
    cleanup_step,
    exposed,
    resolve_public_url,
    wait_until_stopped,
)
from phischer.tunnel_types import Echo, TunnelError, TunnelOpener
from phischer.twilio_client import make_twilio_client

if TYPE_CHECKING:
    from phischer.in_flight import InFlight

log = logging.getLogger(__name__)


def _listen(host: str, port: int) -> socket.socket:
    """Bind the server socket ourselves: werkzeug's make_server prints and exits on a busy port."""
    try:
        return listen(host, port)
    except PortBusyError as exc:
        raise TunnelError(str(exc)) from None


class _ServerThread(threading.Thread):
    """The thread `up` serves the webhook in, which remembers what ended it early."""

    def __init__(self, server: Any) -> None:
        super().__init__(name="phischer-http", daemon=True)
        self.server = server
        self.failure: BaseException | None = None

    def run(self) -> None:
        """Serve until shut down; an exception ends serving, and check() then says so."""
        try:
            self.server.serve_forever()
        except BaseException as exc:  # whatever it is, the webhook no longer answers
            self.failure = exc
            log.debug("The web server's thread failed", exc_info=True)

    def check(self) -> str | None:
        """None while serving, else what stopped the server (a Check for wait_for_shutdown)."""
        if self.is_alive():
            return None
        why = f"{type(self.failure).__name__}: {self.failure}" if self.failure else "it returned"
        return (
            f"The web server of this run stopped ({why}), so the run stopped too: start it "
            f"again (`phischer -v up` logs the error in full)"
        )


def _stop_app(app: Any, in_flight: InFlight) -> None:
    """Stop as `phischer serve` does on Ctrl-C: work in progress gets QUIT_GRACE_S to finish.

    A slow reply still at the model (up to a minute) is not waited for: its text stays
    stored "processing" and the recovery sweep answers it when the server runs again.
    """
    from phischer.server import QUIT_GRACE_S, finish_in_time

    finish_in_time(app, in_flight, time.monotonic() + QUIT_GRACE_S)
    services = app.extensions.get("phischer")
    if services is not None:
        services.db.dispose()


def text_now_banner(settings: Settings, exposure: Exposure, local_url: str) -> list[str]:
    """The lines `phischer up` prints once everything is live."""
    from phischer.db import Database
    from phischer.personas import ADD_PERSONA_HINT, default_persona, list_personas

    db = Database(settings.database_url)
    try:
        with db.read() as session:
            active = default_persona(session, settings.default_persona)
            keywords = [f"#{p.keyword}" for p in list_personas(session)]
            who = f"{active.name} (#{active.keyword})" if active is not None else None
    finally:
        db.dispose()
    phone = settings.twilio_phone_number
    if exposure.registration is not None:
        target, text = f"SMS URL of {phone}", f"Text {phone} now"
    else:  # a WhatsApp sender: the user pastes the URL (the line above the banner says where)
        target = f"paste as the WhatsApp webhook of {phone}"
        text = f"Message {phone} on WhatsApp once it is pasted"
    lines = [
        f"Serving  {local_url}  (health: {local_url}/healthz)",
        f"Twilio   {exposure.sms_url}  → {target}",
    ]
    if who is None:
        lines.append(
            f"{text} — but there is no persona yet: {ADD_PERSONA_HINT} (no restart needed)."
        )
    else:
        lines.append(f"{text}: you are talking to {who}.")
        lines.append(
            f"Keywords: {', '.join(keywords)} (switch persona), #list, #who, #reset, "
            f"STOP to opt out."
        )
    return lines


def run_up(
    settings: Settings,
    *,
    port: int = 5000,
    public_url: str | None = None,
    host: str = "127.0.0.1",
    opener: TunnelOpener | None = None,
    wait: Callable[[Exposure], None] | None = None,
    echo: Echo = print,
) -> None:
    """`phischer up`: migrate, serve in-process, tunnel and register; undo everything on exit."""
    from werkzeug.serving import make_server

    from phischer import create_app
    from phischer.access_log import PathOnlyRequestHandler
    from phischer.cli import migrate_or_explain
    from phischer.in_flight import InFlight

    client = make_twilio_client(settings)  # names a missing variable before any tunnel opens
    base = resolve_public_url(public_url, settings)
    # Locked first: a second `up` here is refused before it migrates, listens or calls Twilio.
    with folder_lock(settings.instance_path, "up") as guarded, ExitStack() as stack:
        migrate_or_explain(settings.database_url)
        # With a fixed URL the app gets it directly; with ngrok it reads <instance>/public_url,
        # which exposed() writes before Twilio is told about the tunnel.
        app_settings = settings.with_overrides(public_url=base) if base else settings
        stack.enter_context(sigterm_as_interrupt())
        sock = _listen(host, port)
        stack.callback(sock.close)
        app = create_app(app_settings)
        in_flight = InFlight()
        stack.callback(cleanup_step, echo, "stop the app", lambda: _stop_app(app, in_flight))
        stop_if_requested()

        def counted(environ: Any, start_response: Any) -> Any:
            # Counted, so that stopping gives a webhook request in progress its moment.
            with in_flight.one():
                return app(environ, start_response)

        # werkzeug wants "::1", not the URL form "[::1]" that ports.listen also takes.
        server = make_server(
            bare_host(host),
            port,
            counted,
            threaded=True,
            request_handler=PathOnlyRequestHandler,  # a GET text's number and words: not logged
            fd=sock.fileno(),
        )
        thread = _ServerThread(server)
        thread.start()
        # What a crash or restart left unanswered goes out now, not at the next text.
        app.extensions["phischer"].sms.sweeper.get()
        app.extensions["phischer"].sms.prepare()  # retrieval indexes, built in the background
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        bound = int(server.server_address[1])  # the real port when --port 0
        local_url = http_url(host, bound)
        with exposed(
            settings, client, port=bound, public_url=base, opener=opener, guarded=guarded, echo=echo
        ) as exposure:
            for line in text_now_banner(settings, exposure, local_url):
                echo(line)
            watched = replace(exposure, watch=(*exposure.watch, thread.check))
            hint = STOP_HINT if exposure.registration is not None else "Ctrl-C to stop."
            wait_until_stopped(wait, watched, echo, hint)
