"""The SMS service: store the text, apply commands, ask the persona, store and deliver the reply."""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from phischer.backends import Backends
from phischer.backends.base import BackendError, PersonaView, Reply
from phischer.commands import Command, parse
from phischer.config import Settings, mask_number
from phischer.db import Database
from phischer.models import Contact, Message, Persona, utcnow
from phischer.personas import default_persona
from phischer.replies import RestSender, SendError, fit_sms
from phischer.thread import build_thread

log = logging.getLogger(__name__)

HELP_TEXT = (
    "You're texting a clone. #list: personas, #who: current one, #<keyword>: switch, "
    "#reset: fresh start. Reply STOP to opt out."
)
MEDIA_TEXT = "I can only read text messages for now."
LIMIT_TEXT = "That's all I can answer today. Talk tomorrow!"
NO_PERSONA_TEXT = "No clone is set up yet. Add one with `phischer persona add`."
OPT_IN_TEXT = "You're back in. Text HELP for commands, STOP to opt out."


@dataclass(frozen=True)
class Inbound:
    """The fields of Twilio's webhook request we use."""

    phone: str
    sid: str
    body: str
    num_media: int = 0


@dataclass
class Decision:
    """What the first transaction decided: an immediate reply, or a model call to make."""

    inbound_id: int
    contact_id: int
    replies: list[str] = field(default_factory=list)
    persona: PersonaView | None = None
    reset_at: dt.datetime | None = None


class SmsService:
    """Handles one inbound SMS end to end; shared by all requests of an app."""

    def __init__(self, settings: Settings, db: Database, backends: Backends) -> None:
        self.settings = settings
        self.db = db
        self.backends = backends
        self.sender = RestSender(settings)
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="phischer-reply")

    # -- entry point -----------------------------------------------------------------------

    def handle(self, msg: Inbound) -> list[str]:
        """Process a webhook call; return the bodies to answer with in TwiML (maybe none)."""
        decision = self._record(msg)
        if decision is None:  # a retry of a MessageSid we already have
            return self._replies_for(msg.sid)
        if decision.persona is None:
            return decision.replies
        return self._answer(msg, decision)

    def shutdown(self) -> None:
        """Let pending async replies finish."""
        self._executor.shutdown(wait=True)

    # -- transaction 1: store the inbound text and apply commands -----------------------------

    def _record(self, msg: Inbound) -> Decision | None:
        for attempt in (1, 2):
            try:
                with self.db.write() as session:
                    return self._decide(session, msg)
            except IntegrityError:
                # Either this MessageSid is stored already (a Twilio retry), or another
                # request created the same contact first (then one more try succeeds).
                if self._inbound_id(msg.sid) is not None:
                    return None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _decide(self, session: Session, msg: Inbound) -> Decision:
        now = utcnow()
        contact = session.scalar(sa.select(Contact).where(Contact.phone == msg.phone))
        if contact is None:
            contact = Contact(phone=msg.phone)
            session.add(contact)
            session.flush()
        inbound = Message(
            contact_id=contact.id,
            direction="in",
            body=msg.body,
            message_sid=msg.sid,
            num_media=msg.num_media,
            kind="chat",
            status="received",
            created_at=now,
        )
        session.add(inbound)
        session.flush()  # raises IntegrityError on a duplicate MessageSid
        decision = Decision(inbound_id=inbound.id, contact_id=contact.id)

        def reply(kind: str, text: str, status: str = "replied") -> Decision:
            inbound.kind, inbound.status = kind, status
            if text:
                session.add(
                    Message(
                        contact_id=contact.id,
                        persona_id=contact.persona_id,
                        direction="out",
                        kind=kind,
                        body=text,
                        reply_to_id=inbound.id,
                        status="replied",
                        created_at=now,
                    )
                )
                decision.replies.append(text)
            return decision

        allowed = self.settings.allowed_numbers
        if allowed and msg.phone not in allowed:
            return reply("refused", "", status="refused")
        command = parse(msg.body)
        if contact.opted_out and command.action != "optin":
            return reply("optout", "", status="ignored")
        if command.action != "chat" and command.action != "switch":
            return reply("command", self._command(session, contact, command, now))

        persona = self._persona(session, contact)
        if command.action == "switch":
            target = session.scalar(sa.select(Persona).where(Persona.keyword == command.keyword))
            if target is None:
                return reply("command", f"No #{command.keyword}. {self._keywords(session)}")
            contact.persona_id = target.id
            persona = target
            if not command.text:
                inbound.persona_id = target.id
                return reply("command", target.greeting or f"You're now texting {target.name}.")
        if not command.text:
            if msg.num_media:
                return reply("media", MEDIA_TEXT)
            return reply("chat", "", status="ignored")
        if persona is None:
            return reply("fallback", NO_PERSONA_TEXT, status="failed")

        today = now.date()
        if contact.reply_day != today:
            contact.reply_day, contact.replies_today = today, 0
        if contact.replies_today >= self.settings.daily_limit:
            # The first text over the limit gets one notice; later ones get silence.
            notice = LIMIT_TEXT if contact.replies_today == self.settings.daily_limit else ""
            contact.replies_today += 1
            inbound.persona_id = persona.id
            return reply("refused", notice, status="limited")
        contact.replies_today += 1  # reserved now, so concurrent texts cannot overshoot
        inbound.persona_id = persona.id
        inbound.status = "processing"
        decision.persona = PersonaView.of(persona)
        decision.reset_at = contact.thread_reset_at
        return decision

    def _command(
        self, session: Session, contact: Contact, command: Command, now: dt.datetime
    ) -> str:
        if command.action == "optout":
            contact.opted_out, contact.opted_out_at = True, now
            log.info("Opt-out recorded for %s", mask_number(contact.phone))
            return ""
        if command.action == "optin":
            contact.opted_out, contact.opted_out_at = False, None
            return OPT_IN_TEXT
        if command.action == "help":
            return HELP_TEXT
        if command.action == "list":
            return self._keywords(session)
        if command.action == "who":
            persona = self._persona(session, contact)
            if persona is None:
                return NO_PERSONA_TEXT
            return f"You're texting {persona.name} (#{persona.keyword})."
        if command.action == "reset":
            contact.thread_reset_at = now
            return "Fresh start: I've forgotten this conversation."
        raise AssertionError(command.action)

    def _persona(self, session: Session, contact: Contact) -> Persona | None:
        if contact.persona_id is not None:
            persona = session.get(Persona, contact.persona_id)
            if persona is not None:
                return persona
        return default_persona(session, self.settings.default_persona)

    @staticmethod
    def _keywords(session: Session) -> str:
        keywords = session.scalars(sa.select(Persona.keyword).order_by(Persona.id)).all()
        if not keywords:
            return NO_PERSONA_TEXT
        return "Personas: " + ", ".join(f"#{k}" for k in keywords)

    # -- the model call and transaction 2 -----------------------------------------------------

    def _answer(self, msg: Inbound, decision: Decision) -> list[str]:
        persona = decision.persona
        assert persona is not None
        backend = self.backends.get(persona.backend)
        mode = self.settings.reply_mode
        if getattr(backend, "local", False) or mode == "inline":
            # A local backend answers in well under a millisecond: no thread hop needed.
            return [self._store(decision, self._generate(decision), via_rest=False)[0]]
        future: Future[tuple[Reply | None, str | None, int]] = self._executor.submit(
            self._generate, decision
        )
        if mode == "auto":
            try:
                result = future.result(timeout=self.settings.reply_timeout_s)
            except FutureTimeout:
                if not self.settings.twilio_account_sid:
                    # Nobody could deliver a late reply: answer now with the fallback.
                    error = (
                        f"model slower than REPLY_TIMEOUT_S={self.settings.reply_timeout_s:g} "
                        "and no TWILIO_ACCOUNT_SID for a late REST reply"
                    )
                    late = (None, error, int(self.settings.reply_timeout_s * 1000))
                    return [self._store(decision, late, via_rest=False)[0]]
                log.info("Reply for %s is slow: sending it by REST", mask_number(msg.phone))
            else:
                return [self._store(decision, result, via_rest=False)[0]]
        future.add_done_callback(lambda f: self._deliver_later(msg.phone, decision, f.result()))
        return []

    def _generate(self, decision: Decision) -> tuple[Reply | None, str | None, int]:
        """Build the thread and ask the backend; returns (reply, error, latency_ms)."""
        persona = decision.persona
        assert persona is not None
        start = time.perf_counter()
        try:
            with self.db.read() as session:
                messages = build_thread(
                    session,
                    contact_id=decision.contact_id,
                    persona_id=persona.id,
                    system_prompt=persona.system_prompt,
                    reset_at=decision.reset_at,
                    history_turns=self.settings.history_turns,
                    gap_hours=self.settings.session_gap_hours,
                )
            reply = self.backends.get(persona.backend).reply(persona, messages)
            return reply, None, _ms(start)
        except BackendError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must still leave the user with an answer
            log.exception("Backend %s crashed", persona.backend)
            error = f"{type(exc).__name__}: {exc}"
        log.warning("Persona %s failed to answer: %s", persona.name, error)
        return None, error, _ms(start)

    def _store(
        self, decision: Decision, result: tuple[Reply | None, str | None, int], *, via_rest: bool
    ) -> tuple[str, int]:
        """Store the outbound message and the inbound's outcome; return (text, outbound id)."""
        reply, error, latency = result
        persona = decision.persona
        assert persona is not None
        if reply is not None:
            text = fit_sms(reply.text, self.settings.max_reply_chars)
            kind, model = "chat", reply.model or persona.model_label
        else:
            text = fit_sms(self.settings.fallback_reply, self.settings.max_reply_chars)
            kind, model = "fallback", persona.model_label
        with self.db.write() as session:
            session.execute(
                sa.update(Message)
                .where(Message.id == decision.inbound_id)
                .values(status="replied" if reply else "failed", error=error, latency_ms=latency)
            )
            out = Message(
                contact_id=decision.contact_id,
                persona_id=persona.id,
                direction="out",
                kind=kind,
                body=text,
                reply_to_id=decision.inbound_id,
                status="queued" if via_rest else "replied",
                model=model,
                latency_ms=latency,
                prompt_tokens=reply.prompt_tokens if reply else None,
                completion_tokens=reply.completion_tokens if reply else None,
            )
            session.add(out)
            session.flush()
        return text, out.id

    def _deliver_later(
        self, phone: str, decision: Decision, result: tuple[Reply | None, str | None, int]
    ) -> None:
        """Store a slow reply and send it through Twilio's REST API; record the outcome."""
        try:
            text, out_id = self._store(decision, result, via_rest=True)
            try:
                sid = self.sender.send(phone, text)
                values: dict[str, object] = {"status": "sent", "message_sid": sid}
            except SendError as exc:
                values = {"status": "send_failed", "error": str(exc)}
            with self.db.write() as session:
                session.execute(sa.update(Message).where(Message.id == out_id).values(**values))
        except Exception:
            log.exception("Async delivery failed")

    # -- retries of the same MessageSid ----------------------------------------------------

    def _inbound_id(self, sid: str) -> int | None:
        with self.db.read() as session:
            return session.scalar(sa.select(Message.id).where(Message.message_sid == sid))

    def _replies_for(self, sid: str) -> list[str]:
        """The replies already given to this MessageSid (none while the first is in flight)."""
        with self.db.read() as session:
            inbound = sa.select(Message.id).where(Message.message_sid == sid).scalar_subquery()
            bodies = session.scalars(
                sa.select(Message.body)
                .where(Message.reply_to_id == inbound, Message.status == "replied")
                .order_by(Message.id)
            ).all()
        return list(bodies)


def _ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)
