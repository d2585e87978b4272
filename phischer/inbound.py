"""The SMS service: store the text, apply commands, ask the persona, store and deliver the reply."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from phischer import no_reply
from phischer.backends import Backends
from phischer.backends.base import Backend, BackendError, PersonaView, Reply
from phischer.commands import Command, parse, twilio_keyword
from phischer.config import (
    DEFAULT_FALLBACK_REPLY,
    SMS_BODY_MAX,
    TWILIO_WEBHOOK_LIMIT_S,
    Settings,
    from_number,
)
from phischer.daemon_pool import DaemonPool
from phischer.db import Database, ended_by_conflict, error_reason, storage_fault
from phischer.delivery import record_refusal, record_status
from phischer.in_flight import InFlight
from phischer.lookups import CLOCK_MARGIN, Lookups, match
from phischer.models import utcnow
from phischer.per_process import PerProcess
from phischer.personas import PersonaDirectory
from phischer.recovery import (
    OPTED_OUT,
    SEND_OPTED_OUT,
    SEND_SUPERSEDED,
    SUPERSEDED,
    retry_send,
)
from phischer.redact import mask_number
from phischer.replies import RestSender, SendError, same_words, sendable
from phischer.store import ContactRow, Store, stamp
from phischer.thread import SPOKEN, build_thread, rows_needed

log = logging.getLogger(__name__)

HELP_TEXT = (
    "You're texting a clone. #list: personas, #who: current one, #<keyword>: switch, "
    "#reset: fresh start. Reply STOP to opt out."
)
MEDIA_TEXT = "I can only read text messages for now."
LIMIT_TEXT = "That's all I can answer today. Talk tomorrow!"
NO_PERSONA_TEXT = "No clone is set up yet. Add one with `phischer persona add`."
OPT_IN_TEXT = "You're back in. Text HELP for commands, STOP to opt out."
RESET_TEXT = "Fresh start: I've forgotten this conversation."
KEYWORD_SHOWN = 30  # characters of an unknown #keyword echoed in "No #…"
# Twilio gives up on a webhook 15 s after sending it, and some of that went on the way (a
# tunnel, TLS): a TwiML reply must be out this long after the text reached the server.
ANSWER_WITHIN_S = TWILIO_WEBHOOK_LIMIT_S - 2.0

Result = tuple[Reply | None, str | None, int]  # (reply, error, latency in ms)
Answer = tuple[str, int]  # a reply for the TwiML: (text, id of its stored row)


class Stored(NamedTuple):
    """A reply `_store` stored: its text, row id, kind ("chat", or "fallback"), why not sent."""

    text: str
    id: int
    kind: str
    unsent: str = ""  # stored "send_failed" with this error: it must not go out


class NotStored(Exception):
    """The database could not store the text (disk full, read-only, …): it must not be answered."""


@dataclass(frozen=True)
class Handled:
    """The replies for the TwiML and, when there are none, why (a `no_reply` word)."""

    answers: list[Answer]
    no_reply: str = ""


@dataclass(frozen=True)
class Inbound:
    """The fields of Twilio's webhook request we use."""

    phone: str
    sid: str
    body: str
    num_media: int = 0
    opt_out_type: str = ""  # Twilio's OptOutType: STOP, START or HELP (Advanced Opt-Out)
    attachment: bool = False  # it carries more than text: media, or a shared location
    to: str | None = None  # the number or sender it was sent to (replies.our_address)
    arrived: float | None = None  # time.monotonic() when it reached the server (None: now)


@dataclass
class Decision:
    """What the first transaction decided: immediate replies, or a persona to ask."""

    inbound_id: int
    contact_id: int
    replies: list[Answer] = field(default_factory=list)
    persona: PersonaView | None = None
    reset_at: Any = None
    at: dt.datetime | None = None  # when the text was stored: its reply is stored after it
    # Who may store the outcome: the process that stored the text (None: while the row's
    # updated_at is still NULL), or a recovery sweep that claimed it at this time.
    claimed_at: Any = None
    outcome: str = ""  # what became of a text answered without the model, for the log line
    silence: str = ""  # why such a text gets no reply, if it gets none (a `no_reply` word)
    our_address: str | None = None  # where its replies go out from (None: the default)


class SmsService:
    """Handles one inbound SMS end to end; shared by all requests of an app."""

    def __init__(self, settings: Settings, db: Database, backends: Backends) -> None:
        self.settings = settings
        self.store = Store(db)
        self.backends = backends
        # Each persona the cache finds new gets its backend prepared (a retrieval index
        # built) in the background, so its first text does not wait for it; an index no
        # persona uses any more is dropped.
        self.personas = PersonaDirectory(
            db, settings.default_persona, on_new=self._warm, on_change=backends.personas_changed
        )
        self.sender = RestSender(settings)
        # Daemon threads: one still at the model when the process stops must not hold its exit.
        self._executor = DaemonPool(max_workers=8, name="phischer-reply")
        # Texts being stored: a stopping server waits for them (server.finish_in_time).
        self.recording = InFlight()
        # Each serving process sweeps for texts a crash left unanswered: gunicorn workers
        # from their start (server._post_fork), other servers from their first text. Never
        # in create_app, so gunicorn never forks a running thread.
        self.sweeper = PerProcess(self._start_sweeper)

    def handle(self, msg: Inbound) -> Handled:
        """Process a webhook call; return the replies for the TwiML (maybe none, and why)."""
        start = time.perf_counter()
        # Counted from its arrival: a text that waited for a free thread (every one busy on a
        # slow model) has less of Twilio's 15 s left. TwiML sent after them is lost.
        arrived = time.monotonic() if msg.arrived is None else msg.arrived
        self.sweeper.get()
        command = twilio_keyword(msg.body, msg.opt_out_type) or parse(msg.body)
        with self.recording.one():
            try:
                self._refresh_personas(command)
                decision = self._record(msg, command)
            except Exception as exc:
                # A worker's first connection to a deleted database made a new empty file:
                # its reads fail ("no such table") before a commit would tell.
                self._raise_if_not_stored(exc)
                if ended_by_conflict(exc):
                    # PostgreSQL undid the text's transaction (a deadlock): not stored, and
                    # Twilio's retry of it goes through.
                    raise NotStored(error_reason(exc, brief=True)) from exc
                raise
        if isinstance(decision, tuple):  # a retry of a MessageSid we already have
            kind, status, answers = decision
            outcome = "Twilio's retry of a stored text, answered as before"
            # No reply for the reason the first answer gave (it is the same text), else
            # because its reply goes by REST or is still being made.
            silence = _silence(kind, status, command) or no_reply.RETRY
        elif decision.persona is None:
            answers, outcome, silence = decision.replies, decision.outcome, decision.silence
        else:
            try:
                answers, outcome, silence = self._answer(msg, decision, arrived)
            except Exception as exc:
                # The file deleted or replaced while the model wrote: the text went into the
                # old file, and a 200 (the fallback) would have Twilio never send it again.
                self._raise_if_not_stored(exc)
                raise
        # One line per text, so `phischer serve` shows what it does. The number is masked
        # (personal data) and the body never logged; no query, just what is already known.
        log.info("text from %s → %s in %d ms", mask_number(msg.phone), outcome, _ms(start))
        return Handled(answers, "" if answers else silence)

    def _raise_if_not_stored(self, exc: Exception) -> None:
        """Raise NotStored if `exc` (or the SQLite file's state) says the database cannot store."""
        fault = exc if storage_fault(exc) else self.store.file_gone()
        if fault is not None:
            raise NotStored(error_reason(fault)) from exc

    def _refresh_personas(self, command: Command) -> None:
        """Re-read the personas once a second, and at once for #list or an unknown #keyword."""
        # A refresh is a query: here, not under the write lock, which every text of every
        # worker waits for. `persona add Cy` then `#cy` or `#list` must not get "No #cy" or
        # a list without Cy for the rest of the cache's second (in each worker).
        personas = self.personas
        personas.fresh()
        if command.action == "list" or (
            command.action == "switch" and personas.by_keyword(command.keyword or "") is None
        ):
            personas.reload()

    def shutdown(self, timeout: float | None = None) -> int:
        """Stop the recovery sweep; let async replies finish (within `timeout` s if given).

        With a timeout, replies not started yet are dropped and those still running after
        it are left to their daemon threads (the process is about to exit, and does not wait
        for them): their texts stay "processing", or their replies "queued", for the
        recovery sweep. Returns how many were still running.
        """
        sweeper = self.sweeper.peek()
        if sweeper is not None:
            # Its daemon thread may be in a late answer: a sweep claims each row it takes,
            # so one cut off is taken again RECOVER_AFTER_S later.
            sweeper.stop(timeout=5.0 if timeout is None else 0.0)
        # A thread ends once its reply (model call, then storing and sending) is done.
        return self._executor.shutdown(timeout)

    def prepare(self) -> None:
        """Read the personas now, starting what their backends build in the background."""
        # Once per serving process (a gunicorn worker after its fork), never in create_app:
        # a build thread running in the arbiter would not exist in its workers.
        try:
            self.personas.reload()
            # The first text reads them again, as it would have: a persona added a moment
            # after the start (`up` with none yet) must answer it, not wait for the TTL.
            self.personas.invalidate()
        except Exception as exc:  # no tables yet: create_app has said to run `db upgrade`
            log.debug("Personas not read ahead (%s)", type(exc).__name__)

    def _warm(self, persona: PersonaView) -> None:
        try:
            self.backends.get(persona.backend).warm(persona)
        except BackendError as exc:  # an unknown backend: its texts say so, each logged
            log.warning("Could not prepare persona %s: %s", persona.name, exc)

    def _start_sweeper(self) -> Any:
        from phischer.recovery import Sweeper

        sweeper = Sweeper(self)
        sweeper.start()
        return sweeper

    # -- transaction 1: store the inbound text and apply commands --------------------------

    def _record(self, msg: Inbound, command: Command) -> Decision | tuple[str, str, list[Answer]]:
        """Store the text and decide; for a MessageSid already stored, its kind, status, replies."""
        for attempt in (1, 2):
            try:
                with self.store.write() as cur:
                    return self._decide(cur, msg, command)
            except self.store.IntegrityError:
                # Either this MessageSid is stored already (a Twilio retry: same replies,
                # none while the first is still being answered), or one more try succeeds:
                # another instance created the same contact first, or a persona still in
                # this process's cache was removed (`persona remove` in another terminal),
                # so the personas are read again for it.
                with self.store.read() as cur:
                    stored = self.store.replies_to(cur, msg.sid)
                if stored is not None:
                    return stored
                if attempt == 2:
                    raise
                self.personas.reload()
        raise AssertionError("unreachable")

    def _decide(self, cur: Any, msg: Inbound, command: Command) -> Decision:
        # Runs under the database's write lock, which every text of every worker waits
        # for: only the statements and the decision that needs the contact row go here.
        clock = utcnow()
        store = self.store
        before = store.contact(cur, msg.phone, clock)
        contact = dataclasses.replace(before)
        now = stamp(clock, before.latest_at)
        # The day by the clock, not by `now`: a number whose messages a clock once set far
        # ahead stamped would otherwise keep that day's count until the clock got there.
        kind, status, text, persona = self._classify(cur, msg, command, contact, now, clock.date())
        inbound_id = store.insert_message(
            cur,
            contact_id=contact.id,
            persona_id=persona.id if persona else None,
            direction="in",
            kind=kind,
            body=msg.body,
            message_sid=msg.sid,
            num_media=msg.num_media,
            status=status,
            our_address=msg.to,
            created_at=now,
        )
        decision = Decision(
            inbound_id=inbound_id, contact_id=contact.id, at=now, our_address=msg.to
        )
        decision.outcome = _outcome(kind, status, command, persona)
        decision.silence = _silence(kind, status, command)
        if status == "processing":
            decision.persona, decision.reset_at = persona, contact.thread_reset_at
        elif text:
            # phischer's own replies (HELP, #list, START's confirmation, …) are not cut to
            # MAX_REPLY_CHARS: carriers want HELP to say how to stop, so a small limit must
            # not lose that. They still must fit one Twilio message (a long persona list).
            text = sendable(text, SMS_BODY_MAX)
            reply_id = store.insert_reply(
                cur, inbound_id, contact.id, contact.persona_id, kind, text, "replied", now,
                our_address=msg.to,
            )  # fmt: skip
            decision.replies.append((text, reply_id))
        store.save_contact(cur, before, contact)
        return decision

    def _classify(
        self,
        cur: Any,
        msg: Inbound,
        command: Command,
        contact: ContactRow,
        now: Any,
        today: dt.date,
    ) -> tuple[str, str, str, PersonaView | None]:
        """Decide (kind, status, reply text, persona) for a text; may change `contact`.

        status "processing" means: ask `persona` for the reply.
        """
        allowed = self.settings.allowed_numbers
        if allowed and from_number(msg.phone) not in allowed:
            if command.action in ("optout", "optin"):
                # STOP holds whatever the allow-list says: a number added to it later must
                # not be texted by a clone it told to stop. Still no reply (not allowed).
                self._command(contact, command, now)
            return "refused", "refused", "", None
        if contact.opted_out and command.action != "optin":
            return "optout", "ignored", "", None
        if command.action == "optin" and not contact.opted_out:
            # "Yes" and "start" are ordinary answers from someone who never opted out.
            command = Command("chat", text=msg.body.strip())
        if command.action not in ("chat", "switch"):
            text = self._command(contact, command, now)
            # Twilio's own reply went out already: a second one would only repeat it.
            return "command", "replied", "" if command.answered else text, None

        persona = self.personas.for_contact(contact.persona_id)
        if command.action == "switch":
            target = self.personas.by_keyword(command.keyword or "")
            if target is None:
                shown = command.keyword or ""
                if len(shown) > KEYWORD_SHOWN:  # "#" + 5,000 letters is not worth echoing
                    shown = shown[:KEYWORD_SHOWN] + "…"
                return "command", "replied", f"No #{shown}. {self._keywords()}", None
            contact.persona_id, persona = target.id, target
            if not command.text:
                # The persona's words, as its replies are: cut to MAX_REPLY_CHARS. One an SMS
                # shows nothing of (blanks, a zero-width space) gets the default, not silence.
                limit = self.settings.max_reply_chars
                greeting = sendable((target.greeting or "").strip(), limit) or sendable(
                    f"You're now texting {target.name}.", limit
                )
                return "command", "replied", greeting, target
        if not command.text:
            if msg.attachment or msg.num_media:
                return "media", "replied", MEDIA_TEXT, None
            return "chat", "ignored", "", None
        if persona is None:
            return "fallback", "failed", NO_PERSONA_TEXT, None

        if contact.reply_day != today:
            contact.reply_day, contact.replies_today = today, 0
        limit = self.settings.daily_limit
        contact.replies_today += 1  # reserved now, so concurrent texts cannot overshoot
        if contact.replies_today > limit:
            return "refused", "limited", self._limit_notice(cur, contact, now, today), persona
        return "chat", "processing", "", persona

    def _limit_notice(self, cur: Any, contact: ContactRow, now: Any, today: dt.date) -> str:
        """The notice for a text over DAILY_LIMIT: once a day per number, then silence."""
        if now.date() > today:
            # Stamped after a message a clock once set ahead stamped (see stamp()): the stored
            # times say nothing of the clock's day, so the count decides, as it did before.
            return LIMIT_TEXT if contact.replies_today == self.settings.daily_limit + 1 else ""
        # Asked of the stored notices, not told by the count: a DAILY_LIMIT lowered by a
        # restart leaves numbers already past it, whose first text over it is not limit + 1.
        # The contact row is locked (see Store.contact), so two texts cannot both send it.
        if self.store.limit_notice_sent(cur, contact.id, today):
            return ""
        return LIMIT_TEXT

    def _command(self, contact: ContactRow, command: Command, now: Any) -> str:
        if command.action == "optout":
            contact.opted_out, contact.opted_out_at = True, now
            return ""
        if command.action == "optin":
            # opted_out_at stays: when the number last opted out. A reply to a text from
            # before it must not go out late now (SmsService.superseded).
            contact.opted_out = False
            return OPT_IN_TEXT
        if command.action == "help":
            return HELP_TEXT
        if command.action == "list":
            return self._keywords()
        if command.action == "who":
            persona = self.personas.for_contact(contact.persona_id)
            if persona is None:
                return NO_PERSONA_TEXT
            return f"You're texting {persona.name} (#{persona.keyword})."
        if command.action == "reset":
            contact.thread_reset_at = now
            return RESET_TEXT
        raise AssertionError(command.action)

    def _keywords(self) -> str:
        keywords = [p.keyword for p in self.personas.all()]
        if not keywords:
            return NO_PERSONA_TEXT
        return "Personas: " + ", ".join(f"#{k}" for k in keywords)

    # -- the model call and transaction 2 --------------------------------------------------

    def _answer(
        self, msg: Inbound, decision: Decision, arrived: float
    ) -> tuple[list[Answer], str, str]:
        """Ask the persona; return the replies for the TwiML, what happened and why none.

        `arrived` (time.monotonic()) is when the text reached the server: Twilio reads the
        webhook's answer until ANSWER_WITHIN_S after it.
        """
        answer_by = arrived + ANSWER_WITHIN_S
        assert decision.persona is not None
        who = f"persona {decision.persona.name!r} ({decision.persona.backend})"
        backend, failure = self._backend_for(decision)
        if failure is not None:
            return self._answered(who, decision, failure)
        assert backend is not None
        mode = self.settings.reply_mode
        # (Without the Twilio settings the TwiML is all there is: a retry of the same
        # MessageSid, if Twilio makes one, gets the stored reply.)
        rest = self.settings.can_send_sms
        at_once = mode == "inline" or _answers_at_once(backend, decision.persona)
        # A text that already waited past the deadline for a thread is not answered on this
        # one: Twilio has stopped waiting, and the texts queued behind it have not.
        if at_once and not (rest and time.monotonic() > answer_by):
            result = self.generate(decision, backend)
            if not (rest and time.monotonic() > answer_by):
                return self._answered(who, decision, result)
            # The text waited for a thread, then the model: Twilio has stopped waiting, and
            # TwiML now would be lost while the reply was stored as "replied".
            self.deliver_later(msg.phone, decision, result)
            late = (
                f"done {time.monotonic() - arrived:.1f} s after the text came: too late for TwiML"
            )
            return [], f"{who} answers by REST ({late})", no_reply.REST_SLOW
        try:
            future: Future[Result] = self._executor.submit(self.generate, decision, backend)
        except RuntimeError:  # cannot schedule new futures after shutdown
            return self._stopping(who, decision)
        why = "slower than REPLY_TIMEOUT_S"
        if at_once:  # past the deadline before the model was asked
            why = _waited(time.monotonic() - arrived)
        elif mode == "auto":
            timeout = self.settings.reply_timeout_s
            left = answer_by - time.monotonic()
            if left < timeout:
                # What the text spent waiting for a thread comes off REPLY_TIMEOUT_S.
                waited = ANSWER_WITHIN_S - left
                why = (
                    _waited(waited)
                    if waited >= 0.1
                    # Not a wait: REPLY_TIMEOUT_S is past what Twilio leaves the reply.
                    else f"Twilio waits 15 s, so no reply waits past {ANSWER_WITHIN_S:g} s"
                )
                timeout = max(left, 0.0)
            try:
                result = future.result(timeout=timeout)
            except CancelledError:  # dropped by shutdown(timeout) before it started
                return self._stopping(who, decision)
            except FutureTimeout:
                if not self.settings.can_send_sms:
                    # Nobody could deliver a late reply: answer now with the fallback, and
                    # drop the model call if it is still queued behind others (no tokens
                    # spent on an answer nobody would receive).
                    future.cancel()
                    limit = self.settings.reply_timeout_s
                    error = _no_rest(f"model slower than REPLY_TIMEOUT_S={limit:g}")
                    if timeout < limit:
                        error = _no_rest(f"no reply in time ({why})")
                    return self._answered(who, decision, (None, error, int(timeout * 1000)))
            else:
                return self._answered(who, decision, result)
        future.add_done_callback(
            # Cancelled: dropped at shutdown before it started; the text stays "processing".
            lambda f: f.cancelled() or self.deliver_later(msg.phone, decision, f.result())
        )
        if at_once or mode == "auto":
            return [], f"{who} answers by REST ({why})", no_reply.REST_SLOW
        return [], f"{who} answers by REST", no_reply.REST_ASYNC

    def _stopping(self, who: str, decision: Decision) -> tuple[list[Answer], str, str]:
        """The answer to a text the stopping server no longer asks the model about."""
        if self.settings.can_send_sms:
            # No fallback: the text, still "processing", is answered by the recovery sweep
            # by REST when the server runs again.
            why = f"{who} not asked: the server is stopping (the recovery sweep answers)"
            return [], why, no_reply.STOPPING
        # Without Twilio credentials the sweep cannot send a late reply (it would only record
        # the text failed), so the fallback now is the one answer the texter can still get.
        return self._answered(who, decision, (None, _no_rest("server stopping"), 0))

    def _answered(
        self, who: str, decision: Decision, result: Result
    ) -> tuple[list[Answer], str, str]:
        """Store an inline reply (or fallback); return it, what happened and why none."""
        stored = self._store(decision, result, via_rest=False)
        if stored is None:
            late = f"{who} answered too late (the recovery sweep took the text over)"
            return [], late, no_reply.REST_LATE
        if stored.unsent == SEND_OPTED_OUT:
            return [], f"{who} replied after STOP (not sent)", no_reply.OPTED_OUT
        if stored.unsent:
            return [], f"{who} replied after #reset or a switch (not sent)", no_reply.SUPERSEDED
        if stored.kind != "fallback":
            what = "replied"
        elif result[0] is None:
            what = "failed, fallback sent"
        else:  # the model answered, with nothing an SMS can carry
            what = "reply unsendable, fallback sent"
        return [(stored.text, stored.id)], f"{who} {what}", ""

    def answer_late(self, phone: str, decision: Decision) -> None:
        """Ask the persona now and send the reply by REST (a text an interrupted process left)."""
        backend, result = self._backend_for(decision)  # result: the failure, if any
        if result is None:
            assert backend is not None
            result = self.generate(decision, backend)
        self.deliver_later(phone, decision, result)

    def _backend_for(self, decision: Decision) -> tuple[Backend | None, Result | None]:
        # A persona row may name a backend we do not know: that is a recorded failure.
        assert decision.persona is not None
        try:
            return self.backends.get(decision.persona.backend), None
        except BackendError as exc:
            return None, (None, str(exc), 0)

    def generate(self, decision: Decision, backend: Backend) -> Result:
        """Build the thread and ask the backend."""
        persona = decision.persona
        assert persona is not None
        start = time.perf_counter()
        turns = self.settings.history_turns
        # A backend that reads only the last few turns (retrieval) says so: fewer rows to fetch.
        cap = getattr(backend, "max_turns", None)
        if cap is not None:
            turns = min(turns, cap)
        try:
            with self.store.read() as cur:
                rows = self.store.history_pages(
                    cur,
                    decision.contact_id,
                    persona.id,
                    decision.reset_at,
                    rows_needed(turns),
                    SPOKEN,
                )
                messages = build_thread(
                    rows,
                    system_prompt=persona.system_prompt,
                    history_turns=turns,
                    gap_hours=self.settings.session_gap_hours,
                )
            reply = backend.reply(persona, messages)
            return reply, None, _ms(start)
        except BackendError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must still leave the user with an answer
            log.exception("Backend %s crashed", persona.backend)
            error = f"{type(exc).__name__}: {exc}"
        log.warning("Persona %s failed to answer: %s", persona.name, error)
        return None, error, _ms(start)

    def _store(self, decision: Decision, result: Result, *, via_rest: bool) -> Stored | None:
        """Store the outbound message and the inbound's outcome; return what was stored.

        None when the text is no longer this caller's to answer: a recovery sweep took it
        over (it looked abandoned) or already finished it. Answering anyway would send the
        texter a second reply. A reply that must not go out (the number opted out meanwhile,
        or for a REST reply a newer text or command, #reset or #keyword, came first) is
        stored as not sent, with why in `unsent`.
        """
        reply, error, latency = result
        persona = decision.persona
        assert persona is not None
        limit = self.settings.max_reply_chars
        # A model or dataset can hand back half an emoji (and an environment variable an
        # undecodable byte), which no database, UTF-8 or XML can hold, or control
        # characters XML cannot carry: cleaned here, once, for the row and the SMS alike.
        text = sendable(reply.text, limit) if reply is not None else ""
        if reply is not None and text:
            kind, model = "chat", reply.model or persona.model_label
        else:
            if reply is not None:  # nothing left to send: a failure, answered like one
                reply, error = None, "model reply has no characters an SMS can carry"
            kind, model = "fallback", persona.model_label
            text = sendable(self.settings.fallback_reply, limit) or DEFAULT_FALLBACK_REPLY
        result, out = (reply, error, latency), (kind, text, model)
        persona_id: int | None = persona.id
        for attempt in (1, 2, 3):
            try:
                return self._store_reply(decision, result, out, persona_id, via_rest)
            except self.store.IntegrityError:
                if persona_id is None:
                    raise
                # The persona was removed while it answered (`persona remove` in another
                # terminal): the reply still goes out, stored without a persona, as the
                # removal leaves the replies it made before.
                log.info("Persona %s was removed while it answered", persona.name)
                persona_id = None
            except self.store.Deadlock:
                # PostgreSQL ended this transaction to break a deadlock (with `persona
                # remove`, say): nothing was stored, and the other side has gone on.
                if attempt == 3:
                    raise
                log.info("Text %d: storing its reply again after a deadlock", decision.inbound_id)
        raise AssertionError("unreachable")

    def _store_reply(
        self,
        decision: Decision,
        result: Result,
        out: tuple[str, str, str],
        persona_id: int | None,
        via_rest: bool,
    ) -> Stored | None:
        """`_store`'s transaction: the text's outcome and the reply `out` (kind, text, model)."""
        reply, _, latency = result
        kind, text, model = out
        now = stamp(utcnow(), decision.at)
        store = self.store
        with store.write() as cur:
            # Checked in the transaction that stores the reply, so a STOP (or a newer text)
            # stored meanwhile is seen. An inline reply answers the webhook call itself, so
            # it arrives in order and a newer text leaves it wanted; but not after STOP
            # (Twilio blocks that on SMS, not on WhatsApp) or "Fresh start", in a thread
            # that would begin with it. However quick the model, Twilio may post the
            # number's next text to another thread meanwhile: every reply is checked.
            owned = False
            if via_rest:
                unwanted = self._unwanted(cur, decision)
            else:
                # The text's outcome is stored with the check in one statement (the hot
                # path: a local backend answers every text so); only a refusal asks why.
                assert decision.persona is not None
                wanted_from = decision.persona.id  # also when a removal left persona_id None
                owned = self._finish(cur, decision, now, result, wanted_from=wanted_from)
                unwanted = None if owned else self._unwanted(cur, decision, newer=False)
            # A sweep's late answer is dropped with the text's own error; a webhook's slow
            # reply is stored, as not sent, with why (it is what the persona said).
            dropped = unwanted[0] if unwanted and decision.claimed_at is not None else None
            unsent = unwanted[1] if unwanted and dropped is None else None
            if not owned:  # not stored yet: a REST reply, or an inline one no longer wanted
                owned = self._finish(cur, decision, now, result, dropped=dropped)
            if not owned:
                log.warning(
                    "Text %d was taken over by the recovery sweep; this late result is dropped",
                    decision.inbound_id,
                )
                return None
            if dropped:
                log.info("Late reply to text %d not sent: %s", decision.inbound_id, dropped)
                return None
            out_id = store.insert_reply(
                cur,
                decision.inbound_id,
                decision.contact_id,
                persona_id,
                kind,
                text,
                "send_failed" if unsent else "queued" if via_rest else "replied",
                now,
                error=unsent,
                model=model,
                latency_ms=latency,
                prompt_tokens=reply.prompt_tokens if reply else None,
                completion_tokens=reply.completion_tokens if reply else None,
                our_address=decision.our_address,
            )
        if unsent:
            log.info("Reply %d not sent: %s", out_id, unsent)
        return Stored(text, out_id, kind, unsent or "")

    def _finish(
        self,
        cur: Any,
        decision: Decision,
        now: dt.datetime,
        result: Result,
        dropped: str | None = None,
        wanted_from: int | None = None,
    ) -> bool:
        """Store the text's outcome, if it is still this caller's (see Store.finish_inbound)."""
        reply, error, latency = result
        return self.store.finish_inbound(
            cur,
            decision.inbound_id,
            now,
            decision.claimed_at,
            wanted_from,
            status="failed" if dropped or not reply else "replied",
            error=dropped or error,
            latency_ms=latency,
        )

    def _unwanted(self, cur: Any, decision: Decision, newer: bool = True) -> tuple[str, str] | None:
        """Why a reply to this text must not go out, as (text error, reply error), or None.

        The recovery sweep's rule: the number opted out, or it moved on while the model
        worked (`superseded`; by a newer text too only if `newer`).
        """
        if self.store.opted_out(cur, decision.contact_id):
            return OPTED_OUT, SEND_OPTED_OUT
        assert decision.persona is not None
        if self.superseded(
            cur, decision.contact_id, decision.inbound_id, decision.persona.id, newer
        ):
            return SUPERSEDED, SEND_SUPERSEDED
        return None

    def superseded(
        self,
        cur: Any,
        contact_id: int,
        message_id: int,
        persona_id: int | None,
        newer: bool = True,
    ) -> bool:
        """Whether the number moved on since message `message_id`, so a late reply is unwanted.

        It sent #reset or STOP (even if START came after), chose a persona other than
        `persona_id`, or (if `newer`) sent a newer text the model answers: the reply would
        arrive after "Fresh start" or an opt-out, from the persona the texter left, or out
        of order. #who, #list, HELP and the like leave it wanted.
        """
        ended, chosen = self.store.moved_on(cur, message_id)
        if ended:
            return True
        # No choice (None) is not a move: `persona remove` of the persona answering sets it
        # so, and its reply still goes out; nor is a new default the texter never saw.
        if persona_id is not None and chosen is not None and chosen != persona_id:
            return True
        return newer and self.store.newer_inbound(cur, contact_id, message_id)

    def deliver_later(self, phone: str, decision: Decision, result: Result) -> None:
        """Store a slow reply and send it through Twilio's REST API; record the outcome."""
        try:
            # Before the reply is checked and stored: a process's first client takes tens of
            # ms to make (twilio's imports), and a STOP recorded in between was not seen.
            self.sender.warm()
            stored = self._store(decision, result, via_rest=True)
            if stored is not None and not stored.unsent:
                self.send_stored(phone, stored.id, stored.text, sender=decision.our_address)
        except Exception:
            log.exception("Async delivery failed")

    def send_stored(
        self,
        phone: str,
        out_id: int,
        text: str,
        created_at: dt.datetime | None = None,
        sender: str | None = None,
    ) -> str:
        """Send a stored ("queued") reply by REST; record sent, send_failed, or a later retry.

        It goes out from `sender`, the number or sender the text was sent to (None, when
        that is not known: TWILIO_PHONE_NUMBER on the texter's channel).

        When Twilio could not be reached (or was busy), or may have taken the send without
        answering, the row becomes "send_retry" with the reason in `error`, and the recovery
        sweep (which first asks Twilio whether it has it) tries again every few minutes until
        the reply is an hour old (`recovery.retry_send`). Returns the status recorded.
        """
        try:
            sid = self.sender.send(phone, text, reply_id=out_id, from_=sender)
        except SendError as exc:
            return self.record_unsent(out_id, created_at, exc)
        with self.store.write() as cur:
            self.store.mark_sent(cur, out_id, utcnow())
            kept = self.store.adopt_sid(cur, out_id, sid)
        if not kept:
            # A sweep's look-up took this message for an earlier reply with the same words
            # while Twilio's answer was on its way: the texter got those words once.
            log.warning("Reply %d: Twilio's message %s is recorded on another reply", out_id, sid)
        return "sent"

    def taken_already(
        self,
        phone: str,
        out_id: int,
        text: str,
        created_at: dt.datetime,
        sender: str | None,
        lookups: Lookups | None = None,
    ) -> bool:
        """Whether Twilio already has reply `out_id`; if so it is recorded sent, with its sid.

        A process that died after Twilio took a send, before it recorded that, left the reply
        "queued" (or "send_retry", when Twilio took a send it did not answer). `lookups`: the
        sweep's listings, shared by its replies. Raises SendError when Twilio cannot tell.
        """
        listed = (lookups or Lookups(self.sender)).sent(phone, sender, created_at)
        listed = [t for t in listed if same_words(text, t.body)]
        if not listed:
            return False
        with self.store.write() as cur:
            # Not simply the oldest message with its words: one an earlier reply with the same
            # words never recorded, or a newer one's (Twilio took only that), would be taken
            # for this one, and the reply it is would be texted again.
            rivals = self.store.unsent_alike(cur, out_id, created_at - CLOCK_MARGIN)
            recorded = self.store.recorded_sids(cur, [t.sid for t in listed])
            found = match(out_id, listed, rivals, recorded)
            # The sid can still be another row's: a callback or a send of another process
            # recorded it since (PostgreSQL: not committed when `recorded` was read).
            if found is None or not self.store.adopt_sid(cur, out_id, found.sid):
                return False
            self.store.mark_sent(cur, out_id, utcnow())
        log.info("Reply %d: Twilio already had it (%s); not sent again", out_id, found.sid)
        # What became of it, as its status callback (which may never come) would say.
        code = "" if found.error_code is None else str(found.error_code)
        record_status(self.store, out_id, {"MessageStatus": found.status, "ErrorCode": code})
        return True

    def record_unsent(
        self, out_id: int, created_at: dt.datetime | None, exc: SendError, wait: bool = False
    ) -> str:
        """Record that reply `out_id`'s send failed (`exc` says why); return the status recorded.

        `wait`: a transient failure leaves it "send_retry" however old it is.
        """
        now = utcnow()
        # One Twilio may have taken waits for the sweep to ask, however late: given up at
        # once, a reply the texter got would be "send_failed" and left out of the thread.
        wait = wait or exc.maybe_sent or retry_send(created_at or now, now, self.settings)
        status = "send_retry" if exc.transient and wait else "send_failed"
        with self.store.write() as cur:
            if not self.store.update_message(
                cur, out_id, now, "delivery IS NULL", status=status, error=str(exc)
            ):
                # A status callback came first: Twilio took the reply, and only its
                # answer to the send was lost (a dropped connection, a read timeout).
                self.store.mark_sent(cur, out_id, now)
                return "sent"
            record_refusal(self.store, cur, out_id, exc.code)
        return status


# What the log line says for a text answered without the model, by (kind, status).
OUTCOMES = {
    ("refused", "refused"): "refused (not on ALLOWED_NUMBERS)",
    ("refused", "limited"): "over DAILY_LIMIT",
    ("optout", "ignored"): "ignored (the number opted out)",
    ("chat", "ignored"): "ignored (empty)",
    ("media", "replied"): "media only, not read",
    ("fallback", "failed"): "no persona set up",
}
COMMAND_OUTCOMES = {
    "optout": "opt-out recorded",
    "optin": "opt-in recorded",
    "help": "HELP",
    "list": "#list",
    "who": "#who",
    "reset": "#reset",
}


def _outcome(kind: str, status: str, command: Command, persona: PersonaView | None) -> str:
    """A few words on what became of a text that is not (or not yet) sent to the model."""
    if kind != "command":
        return OUTCOMES.get((kind, status), f"{kind} ({status})")
    if command.action != "switch":
        return COMMAND_OUTCOMES.get(command.action, command.action)
    # The unknown keyword is the texter's own words: not worth a log line's room.
    return f"switched to persona {persona.name!r}" if persona else "unknown #keyword"


# Why a text answered without the model gets no reply, by (kind, status).
SILENCES = {
    ("refused", "refused"): no_reply.NOT_ALLOWED,
    ("refused", "limited"): no_reply.DAILY_LIMIT,
    ("optout", "ignored"): no_reply.OPTED_OUT,
    ("chat", "ignored"): no_reply.EMPTY,
}


def _silence(kind: str, status: str, command: Command) -> str:
    """The `no_reply` word for a text answered without the model, should it get no reply."""
    if kind != "command":
        return SILENCES.get((kind, status), "")
    if command.action == "optout":
        return no_reply.OPT_OUT
    return no_reply.TWILIO_ANSWERED if command.answered else ""


def _answers_at_once(backend: Backend, persona: PersonaView) -> bool:
    """Whether `backend` answers `persona` in well under a millisecond (no thread hop needed)."""
    if not getattr(backend, "local", False):
        return False
    # A local backend still building the persona's index (the first text after the start,
    # to a big dataset: seconds, a minute for millions of exchanges) is waited for as a model
    # is: up to REPLY_TIMEOUT_S, then by REST, so Twilio (which gives up at 15 s) never
    # drops the reply.
    built = getattr(backend, "built", None)
    return built is None or built(persona)


def _waited(seconds: float) -> str:
    """Why a text's reply goes by REST when it waited `seconds` for a free thread."""
    return f"the text waited {seconds:.1f} s for a free thread; Twilio waits 15 s"


def _no_rest(why: str) -> str:
    """A text's error when it got the fallback as no late REST reply could go out."""
    return (
        f"{why} and no Twilio credentials for a late REST reply (TWILIO_ACCOUNT_SID, "
        "TWILIO_AUTH_TOKEN, TWILIO_PHONE_NUMBER)"
    )


def _ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)
