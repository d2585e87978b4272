"""phischer: text a clone of a real person over SMS."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from phischer import redact
from phischer.config import ConfigError, Settings

# Here, not in create_app or the CLI: every process that runs phischer code imports this
# package first (gunicorn's workers, the CLI, a test), so no log record escapes it.
redact.install()

if TYPE_CHECKING:  # Flask is imported by create_app, not by every CLI command
    from flask import Flask, Response

log = logging.getLogger(__name__)
__all__ = ["create_app"]


@dataclass
class Services:
    """Everything a request needs, built once per app."""

    settings: Settings
    db: Any  # phischer.db.Database
    sms: Any  # phischer.inbound.SmsService
    signatures: Any  # phischer.security.SignatureChecker


def create_app(config: Settings | Mapping[str, Any] | None = None) -> Flask:
    """Flask app factory: settings read once, database and backends shared by requests.

    `config` is a Settings, or a mapping laid over the environment: the variables of
    `.env.example` (`{"REPLY_MODE": "inline"}`), Settings fields (`reply_mode`), or Flask's
    own configuration keys (`TESTING`), which go to `app.config` as in flaskr.
    """
    from flask import Flask, request
    from werkzeug.exceptions import HTTPException

    from phischer.backends import Backends
    from phischer.backends.base import BackendError
    from phischer.db import Database
    from phischer.inbound import SmsService
    from phischer.personas import list_personas, named, pick_default
    from phischer.replies import twiml
    from phischer.security import SignatureChecker
    from phischer.webhook import bp, xml

    flask_config: dict[str, Any] = {}
    if isinstance(config, Settings):
        settings = config
    else:
        ours = dict(config or {})
        flask_config = {k: ours.pop(k) for k in list(ours) if k in Flask.default_config}
        settings = Settings.from_config(ours)
    if settings.reply_mode == "async" and not settings.can_send_sms:
        # Every reply would be stored as send_failed and nobody would ever be answered.
        raise ConfigError(
            "REPLY_MODE=async sends every reply through Twilio's REST API: set "
            "TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_PHONE_NUMBER, or use "
            "REPLY_MODE=auto"
        )

    app = Flask(__name__, instance_path=str(settings.instance_path.resolve()))
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # Twilio's form posts are a few KB
    app.config.update(flask_config)
    if settings.trust_proxy:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Only now may X-Forwarded-Proto/Host shape request.url (and so the signed URL).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)
    if not settings.twilio_validate_signature:
        log.warning(
            "TWILIO_VALIDATE_SIGNATURE=false: anyone who finds this URL can text as any "
            "number. Use only for local experiments."
        )

    db = Database(settings.database_url)
    backends = Backends(settings)
    app.extensions["phischer"] = Services(
        settings=settings,
        db=db,
        sms=SmsService(settings, db, backends),
        signatures=SignatureChecker(settings),
    )
    app.register_blueprint(bp)

    # Retrieval indexes are not built here, before gunicorn forks: each serving process
    # builds them in a thread of its own (SmsService.prepare), so the server starts at once.
    # The backends are made here, though: their modules (openai, bm25s and the tokenizer's
    # tables) are then loaded once, shared by the workers, not in each after its fork.
    used: set[str] = set()  # the backends the personas use
    try:
        with db.read() as session:
            stored = list_personas(session)
            used = {p.backend for p in stored}
            preferred = settings.default_persona
            if stored and preferred and named(stored, preferred) is None:
                log.warning(
                    "DEFAULT_PERSONA=%r matches no persona name or keyword: numbers that never "
                    "chose one get %s",
                    preferred,
                    pick_default(stored, None).name,
                )
    except Exception as exc:  # no tables yet: `phischer db upgrade` has not run
        log.warning("Database not ready (%s): run `phischer db upgrade`", type(exc).__name__)
    for name in used:
        with suppress(BackendError):  # an unknown one: its texts say so
            backends.get(name)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # Twilio texts a text/plain body to the user, so errors are bare status codes.
        return xml(twiml(), status=exc.code or 500)

    @app.errorhandler(Exception)
    def crashed(exc: Exception) -> Response:
        log.exception("Unhandled error on %s", request.path)
        if request.path == "/sms":
            # Never a 5xx to Twilio for a user's text: answer with the fallback instead.
            return xml(twiml(settings.fallback_reply))
        return xml(twiml(), status=500)

    return app
