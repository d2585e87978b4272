"""Run the app under gunicorn (production) or the Flask reloader (`--dev`)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from contextlib import suppress
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from phischer.access_log import PathOnlyRequestHandler
from phischer.config import TWILIO_WEBHOOK_LIMIT_S
from phischer.db import BUSY_TIMEOUT_MS
from phischer.in_flight import InFlight
from phischer.ports import bare_host, host_port
from phischer.printing import plural

WORKERS = 2
THREADS = 4
# After Ctrl-C, what a worker is doing (a webhook request, a slow reply's model call or REST
# send) gets this long to finish; the rest is left to the recovery sweep (recovery.py).
QUIT_GRACE_S = 1.0
# A text not stored yet (waiting for the write lock) is not cut off at QUIT_GRACE_S: it would
# be lost, as Twilio does not retry a failed webhook. It gets as long as SQLite would wait.
RECORD_GRACE_S = BUSY_TIMEOUT_MS / 1000
# How long a request may take to arrive once its connection is queued for a thread (see
# ReadDeadline): Twilio sends its few KB at once.
READ_S = 5.0

log = logging.getLogger(__name__)


class GunicornServer(BaseApplication):
    """gunicorn with our app object and options, no config file or argv parsing."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        """Apply our options to gunicorn's config."""
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        """The WSGI app."""
        return self.application


class Worker(ThreadWorker):
    """gunicorn's gthread worker, made to stop in time whatever its threads are doing.

    gthread stops gracefully on SIGTERM (in-flight requests get graceful_timeout) and at
    once on SIGINT or SIGQUIT. Ctrl-C sends SIGINT to every process of the group, and the
    arbiter then sends its workers SIGQUIT. Two things kept a worker alive until the arbiter
    SIGKILLed it graceful_timeout later ("Worker was sent SIGKILL! Perhaps out of memory?"):

    - gthread's SIGINT/SIGQUIT handler shuts its request pool down under the pool's lock,
      which is not reentrant. Ctrl-C's SIGINT and the arbiter's SIGQUIT come within a
      millisecond of each other: when the second one interrupted the first one's handler
      inside that lock (or the main thread handing a connection to the pool), the handler
      waited on its own thread for good. On a busy machine about one Ctrl-C in five did.
    - Exiting, Python joins every ThreadPoolExecutor thread: gthread's (a request waiting
      up to REPLY_TIMEOUT_S for the model, a client that has not sent its request yet) and
      the slow replies' (a model call of up to 60 s, a REST send with its retries).

    So this worker's handler takes no lock and acts once, and the worker ends with
    os._exit once its work has had QUIT_GRACE_S (after SIGTERM: what is left of
    graceful_timeout) to finish. A text is committed before its reply is made, so what
    is cut off stays "processing" (or a reply "queued") and the recovery sweep answers
    (or sends) it when the server runs again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.quick = False  # Ctrl-C (SIGINT) or SIGQUIT: stop now, not gracefully
        self.exiting = False
        self.stop_started: float | None = None
        self.requests = InFlight()

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGINT/SIGQUIT: stop now (gthread's handler would take the pool's lock)."""
        # Ctrl-C's SIGINT and the arbiter's SIGQUIT both come: a second SystemExit, raised
        # in the middle of run()'s exit, would skip it and the exit would wait on threads.
        if self.exiting:
            return
        self.exiting = self.quick = True
        self.alive = False
        self.cfg.worker_int(self)
        sys.exit(0)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: stop gracefully, by the arbiter's graceful_timeout from now."""
        if self.stop_started is None:
            self.stop_started = time.monotonic()
        super().handle_exit(sig, frame)

    def enqueue_req(self, conn: Any) -> None:
        """Queue a connection for a thread: its request must have arrived READ_S from now."""
        if not isinstance(conn.sock, ReadDeadline):
            conn.sock = ReadDeadline(conn.sock)
        conn.sock.start()
        super().enqueue_req(conn)

    def handle_request(self, req: Any, conn: Any) -> bool:
        """Serve one request, counted so a quick stop can give it a moment to finish."""
        with self.requests.one():
            return super().handle_request(req, conn)

    def run(self) -> None:
        """gthread's loop, then an exit that does not wait for threads past the deadline."""
        code = 0
        try:
            super().run()
        except SystemExit as exc:  # handle_quit (stop now), or gunicorn's SIGABRT handler
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except Exception:
            self.log.exception("Exception in worker process")
            code = 1
        self.exiting = True  # from here on a late Ctrl-C must not cut the exit short
        finish_in_time(self.wsgi, self.requests, self.exit_deadline())
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)

    def exit_deadline(self) -> float:
        """When this worker must be gone: soon after Ctrl-C, before the SIGKILL after SIGTERM."""
        now = time.monotonic()
        if self.quick or self.stop_started is None:
            return now + QUIT_GRACE_S
        # The arbiter SIGKILLs graceful_timeout after its SIGTERM; keep a second's margin.
        return max(self.stop_started + self.cfg.graceful_timeout - 1.0, now)


class ReadDeadline:
    """A client socket whose reads end (as if the client had gone) READ_S after it was queued.

    gthread reads a request's headers and body in one of the worker's few threads, blocking:
    eight clients sending a byte every few seconds held every thread of the default server
    indefinitely, and Twilio's texts waited past its 15 s and were lost. Past the deadline a
    read takes only what has already arrived, then returns b"", which gunicorn and werkzeug
    take for a client that went away: the connection is closed and the thread is free. The
    deadline runs from when the connection was queued, so slow clients queued behind busy
    threads end at once, while a request that arrived whole is read whole whatever its wait.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._deadline = 0.0
        # When the request reached this worker (monotonic): Twilio's 15 s run from about
        # then, not from when a thread got to it (SmsService reads it through the environ's
        # gunicorn.socket).
        self.queued_at: float | None = None

    def start(self) -> None:
        """A request is coming: its deadline is READ_S from now."""
        self.queued_at = time.monotonic()
        self._deadline = self.queued_at + READ_S

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes, waiting for them until the deadline (then b"")."""
        left = max(self._deadline - time.monotonic(), 0.0)
        prior = self._sock.gettimeout()  # gunicorn bounds its drain of an unread body with one
        self._sock.settimeout(left if prior is None else min(prior, left))
        try:
            return self._sock.recv(size)
        except (TimeoutError, BlockingIOError):
            if prior is not None and prior < left:
                raise  # gunicorn's own timeout, which it handles
            return b""
        finally:
            self._sock.settimeout(prior)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def finish_in_time(app: Any, requests: InFlight, deadline: float) -> None:
    """Give webhook requests and slow replies in progress until `deadline` (monotonic) to finish.

    A text still waiting to be stored gets until it is (at most RECORD_GRACE_S), and its
    request the same grace again from then.

    What is still running then is left behind (the process is about to exit; its threads
    do not hold the exit up): its text stays stored "processing", or its reply "queued",
    and the recovery sweep answers or sends it when the server runs again. Used by the
    gunicorn worker (`serve`) and by `up`.
    """
    started = time.monotonic()
    left = requests.wait_idle(deadline)
    services = getattr(app, "extensions", {}).get("phischer")
    if left and services is not None and services.sms.recording.count:
        # Texts not stored yet get until they are (the recovery sweep cannot answer a text
        # that is not in the database), then the grace every request had.
        services.sms.recording.wait_idle(time.monotonic() + RECORD_GRACE_S)
        left = requests.wait_idle(time.monotonic() + (deadline - started))
    replies = 0
    if services is not None:
        replies = services.sms.shutdown(timeout=max(deadline - time.monotonic(), 0.0))
    if left or replies:
        log.warning(
            "Stopped with %s and %s unfinished: the recovery sweep takes over their stored "
            "texts when the server runs again",
            plural(left, "webhook request"),
            plural(replies, "slow reply", "slow replies"),
        )


def _post_fork(_server: Any, worker: Any) -> None:
    # The app was built before the fork (preload); pooled database connections must not be
    # shared across processes, though.
    services = worker.app.application.extensions.get("phischer")
    if services is not None:
        services.db.dispose()
        # Each worker builds its personas' retrieval indexes in a thread of its own, while
        # it already serves: a thread started before the fork would not run in the worker.
        services.sms.prepare()
        # Sweep for what a crash or restart left unanswered now, not at the first new text:
        # on a quiet number that text would come hours later and supersede them all.
        services.sms.sweeper.get()


def gunicorn_options(
    host: str,
    port: int,
    workers: int = WORKERS,
    threads: int = THREADS,
    fd: int | None = None,
) -> dict:
    """The settings `phischer serve` and the benchmark use (`fd`: a listening socket to serve on)."""
    # gunicorn takes an IPv6 address only in brackets.
    bind = f"fd://{fd}" if fd is not None else host_port(host, port)
    return {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": Worker,
        "preload_app": True,
        "post_fork": _post_fork,
        # A request may wait REPLY_TIMEOUT_S on the model; never kill it before Twilio gives up.
        "timeout": int(TWILIO_WEBHOOK_LIMIT_S * 2),
        # gunicorn believes X-Forwarded-Proto, X-Forwarded-Ssl and SCRIPT_NAME/PATH_INFO
        # headers from 127.0.0.1, where ngrok's agent or a local proxy passes on whatever a
        # client sent: they changed the URL the signature is checked against (a bad
        # SCRIPT_NAME was a 500) even with TRUST_PROXY=false. Forwarded headers are the app's
        # to read, and only under TRUST_PROXY=true (ProxyFix).
        "forwarded_allow_ips": "",
        "graceful_timeout": 20,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
    }


def serve(
    app: Flask,
    host: str,
    port: int,
    *,
    dev: bool = False,
    workers: int = WORKERS,
    threads: int = THREADS,
    sock: socket.socket | None = None,
) -> None:
    """Serve until interrupted; on `sock` when given (bound and listening on host:port)."""
    if dev:
        if sock is not None:
            sock.close()  # werkzeug's reloader binds the port itself and hands it to its child
        # Without Werkzeug's interactive debugger: Twilio never sees its pages (every error is
        # TwiML), while its /console runs Python for whoever has the PIN it logs, on a port a
        # tunnel may expose. Debug mode and the reloader stay.
        app.run(
            host=bare_host(host),
            port=port,
            debug=True,
            use_reloader=True,
            use_debugger=False,
            request_handler=PathOnlyRequestHandler,  # a GET text's number and words: not logged
        )
        return
    # Detached: gunicorn closes the descriptor it is given, so the socket must not own it.
    fd = sock.detach() if sock is not None else None
    GunicornServer(app, gunicorn_options(host, port, workers, threads, fd)).run()
