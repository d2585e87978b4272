"""Run the app under gunicorn (production) or the Flask reloader (`--dev`)."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from phischer.config import TWILIO_WEBHOOK_LIMIT_S
from phischer.ports import bare_host, host_port

WORKERS = 2
THREADS = 4


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


def _post_fork(_server: Any, worker: Any) -> None:
    # The app was built before the fork (preload) so workers share the retrieval indexes;
    # pooled database connections must not be shared across processes, though.
    services = worker.app.application.extensions.get("phischer")
    if services is not None:
        services.db.dispose()
        # Sweep for what a crash or restart left unanswered now, not at the first new text:
        # on a quiet number that text would come hours later and supersede them all.
        services.sms.sweeper.get()


def gunicorn_options(host: str, port: int, workers: int = WORKERS, threads: int = THREADS) -> dict:
    """The settings `phischer serve` and the benchmark use."""
    return {
        "bind": host_port(host, port),  # gunicorn takes an IPv6 address only in brackets
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "preload_app": True,
        "post_fork": _post_fork,
        # A request may wait REPLY_TIMEOUT_S on the model; never kill it before Twilio gives up.
        "timeout": int(TWILIO_WEBHOOK_LIMIT_S * 2),
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
) -> None:
    """Serve until interrupted."""
    if dev:
        app.run(host=bare_host(host), port=port, debug=True, use_reloader=True)
        return
    GunicornServer(app, gunicorn_options(host, port, workers, threads)).run()
