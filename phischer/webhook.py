"""Blueprint: POST /sms (Twilio's webhook), POST /sms/status (its status callbacks), GET /healthz."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, abort, current_app, jsonify, request

from phischer import no_reply
from phischer.db import error_reason
from phischer.delivery import record_status
from phischer.inbound import Inbound, NotStored
from phischer.models import PHONE_MAX, SID_MAX
from phischer.redact import mask_number
from phischer.replies import our_address, twiml, twiml_replies
from phischer.security import form_params

log = logging.getLogger(__name__)
bp = Blueprint("webhook", __name__)
NUM_MEDIA_MAX = 2**31 - 1


def _services():  # type: ignore[no-untyped-def]
    return current_app.extensions["phischer"]


def _signed_form() -> tuple[Any, Mapping[str, Any]]:
    """The app's services and the request's form, or 403 when Twilio did not sign it."""
    services = _services()
    # The request itself, not the proxy: the form and the signature read it a dozen times.
    this = request._get_current_object()  # type: ignore[attr-defined]
    form = form_params(this)
    if not services.signatures.is_valid(this, form):
        abort(403)
    return services, form


def xml(body: str, status: int = 200) -> Response:
    """A TwiML response (never text/plain: Twilio would text that body to the user)."""
    return Response(body, status=status, mimetype="text/xml")


@bp.post("/sms")
def sms() -> Response:
    """Twilio's incoming-message webhook."""
    services, form = _signed_form()
    phone = form.get("From", "").strip()
    sid = form.get("MessageSid", "").strip() or form.get("SmsMessageSid", "").strip()
    if not phone or not sid:
        abort(400, "From and MessageSid are required")
    # Twilio's are short (E.164, 34-character SIDs); anything longer or with NUL is not Twilio
    # and would not fit the columns (PostgreSQL would refuse the row after the fact).
    if len(phone) > PHONE_MAX or len(sid) > SID_MAX or "\x00" in phone + sid:
        abort(400, "From or MessageSid is malformed")
    try:
        # Twilio sends 0-10; the column is a 32-bit integer (SQLite refuses past 64 bits).
        num_media = min(max(0, int(form.get("NumMedia", "0") or 0)), NUM_MEDIA_MAX)
    except ValueError:
        num_media = 0
    body = form.get("Body", "")
    if not body.strip():
        # A WhatsApp quick-reply button tapped: its label is what the texter "said".
        body = form.get("ButtonText", "")
    inbound = Inbound(
        phone=phone,
        sid=sid,
        # PostgreSQL text cannot hold NUL; nobody types one, so it is dropped, not refused.
        body=body.replace("\x00", ""),
        num_media=num_media,
        opt_out_type=form.get("OptOutType", ""),
        # A WhatsApp location, or media whose NumMedia was lost: not text either.
        attachment=bool(num_media or "Latitude" in form or "MediaUrl0" in form),
        # The number or sender texted: REST replies must come from it, as TwiML ones do.
        to=our_address(form.get("To", ""), phone),
        # When gunicorn queued the request for a thread (server.ReadDeadline); None elsewhere.
        arrived=getattr(request.environ.get("gunicorn.socket"), "queued_at", None),
    )
    try:
        handled = services.sms.handle(inbound)
    except NotStored as exc:
        # Not a 200: TwiML would tell Twilio the text was taken, and the fallback reply
        # the texter that it was heard. A 503 shows in Twilio's debugger (11200), makes
        # Twilio call the number's fallback URL, and lets a retry (the same MessageSid)
        # store it once the database takes writes again.
        log.error("text from %s not stored, answered 503: %s", mask_number(phone), exc)
        return xml(twiml(), status=503)
    response = xml(twiml_replies(handled.answers))
    if handled.no_reply:
        # For `phischer text`/`chat`, which see only this answer: why it holds no message
        # (a reply by REST, an opt-out, …). Twilio ignores headers it does not know.
        response.headers[no_reply.HEADER] = handled.no_reply
    return response


@bp.post("/sms/status")
def sms_status() -> Response:
    """Twilio's status callback for a reply (`action` of its <Message>, or a REST send's)."""
    services, form = _signed_form()
    reply = request.args.get("reply", "")
    # Our own ids: digits, and small enough for a 64-bit column.
    if not (reply.isascii() and reply.isdigit() and len(reply) < 19):
        abort(400, "reply must be a message id")
    record_status(services.sms.store, int(reply), form)
    return xml(twiml())


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness, and whether the database takes writes (as each text needs)."""
    services = _services()
    try:
        services.sms.store.check_file()
        services.db.check_writable()
    except Exception as exc:
        log.error("Health check failed: %s: %s", type(exc).__name__, error_reason(exc))
        response = jsonify(status="error")
        response.status_code = 503
        return response
    return jsonify(status="ok")
