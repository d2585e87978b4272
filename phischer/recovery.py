"""Texts a crash or restart left unanswered: answered late by REST, or recorded as failed.

A text is "processing" while its reply is made and an outbound reply "queued" until the
REST send returns. A process that dies in between leaves them so. Each serving process
sweeps for rows idle longer than RECOVER_AFTER_S (two minutes: no reply takes that long, inline
replies give up at REPLY_TIMEOUT_S, async ones at 60 s) and claims each one with a conditional
UPDATE, so two processes never answer the same text (each text is claimed when its late
answer starts; LATE_ANSWERS of them are answered at once). A reply whose REST send failed
because Twilio was unreachable or busy is left "send_retry", and is sent again the same way.
Before a reply is sent again Twilio is asked whether it already has it (same number, sender
and words, created since the reply was stored, not a message another row has or that is
another unsent reply's: see lookups): a process can die after Twilio took a send and before
it recorded that. Then it is only recorded as sent. A reply Twilio cannot be asked about
waits for a later look-up, up to a day, however old it is: it is never sent unchecked.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from phischer.config import DEFAULT_RECOVER_AFTER_S, GIVE_UP_AFTER_S
from phischer.daemon_pool import DaemonPool
from phischer.db import error_reason, storage_fault
from phischer.lookups import Lookups
from phischer.models import utcnow
from phischer.replies import SendError

if TYPE_CHECKING:
    from phischer.config import Settings
    from phischer.inbound import SmsService
    from phischer.store import PendingRow

log = logging.getLogger(__name__)

RECOVER_AFTER = dt.timedelta(seconds=DEFAULT_RECOVER_AFTER_S)
GIVE_UP_AFTER = dt.timedelta(seconds=GIVE_UP_AFTER_S)  # a reply this late makes no sense
SWEEP_EVERY_S = 60.0
# Texts a sweep answers at once: one by one, N texts left by a kill -9 took N model calls'
# time. A few, not all: each is a model call, which the webhook's new texts also wait for.
LATE_ANSWERS = 4

NO_REST = (
    "interrupted before the reply; set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and "
    "TWILIO_PHONE_NUMBER to answer such texts late"
)
TOO_OLD = "interrupted before the reply; too old to answer late"
# #reset, STOP (then START), another persona chosen, or a newer text (see SmsService.superseded).
MOVED_ON = "the number moved on first (#reset, STOP, another persona or a newer text)"
SUPERSEDED = f"interrupted before the reply; {MOVED_ON}"
NO_PERSONA = "interrupted before the reply; no persona to answer with"
OPTED_OUT = "interrupted before the reply; the number opted out"
SEND_INTERRUPTED = "interrupted before the REST send"
SEND_SUPERSEDED = f"not sent; {MOVED_ON}"
SEND_OPTED_OUT = "not sent; the number opted out"
SEND_GAVE_UP = "not sent within an hour; last try: "
# How long a reply Twilio could not be asked about waits for a look-up that works: one an
# earlier try may have got to the texter is not "send_failed" on the look-up's word alone.
LOOKUP_GIVE_UP_AFTER = dt.timedelta(days=1)
LOOKUP_GAVE_UP = "not sent; unknown whether an earlier try reached Twilio (no look-up for a day): "


def recover_after(settings: Settings) -> dt.timedelta:
    """How long a row stays idle before a sweep takes it over (RECOVER_AFTER_S)."""
    return dt.timedelta(seconds=settings.recover_after_s)


def retry_send(created_at: dt.datetime, now: dt.datetime, settings: Settings) -> bool:
    """Whether a reply whose REST send just failed transiently may wait for another try.

    The next try comes from a sweep at least RECOVER_AFTER_S from now; one that would find
    the reply past GIVE_UP_AFTER is not worth waiting for.
    """
    return now + recover_after(settings) - created_at < GIVE_UP_AFTER


@dataclass
class SweepResult:
    """What one sweep did."""

    answered: int = 0
    resent: int = 0
    already_sent: int = 0  # replies Twilio had taken before a crash: recorded, not sent again
    failed: int = 0
    retrying: int = 0  # replies Twilio still could not take (tried again at a later sweep)
    # (id, created_at) of the replies left for a later look-up: Twilio could not say whether
    # it has them. Kept for up to a day, so the Sweeper reads back that far (after_id).
    unchecked: list[tuple[int, dt.datetime]] = field(default_factory=list)


def sweep(service: SmsService, now: dt.datetime | None = None, after_id: int = 0) -> SweepResult:
    """Answer (or record as failed) every text after `after_id` an interrupted process left."""
    now = now or utcnow()
    idle_since = now - recover_after(service.settings)
    store = service.store
    result = SweepResult()
    with store.read() as cur:
        rows = store.pending(cur, idle_since, after_id)
    lookups = Lookups(service.sender)  # each number's messages listed once for its replies
    for row in rows:
        if row.direction == "out":
            lookups.need(row.phone, row.our_address, row.created_at)
    clock = _clock(now)
    # Texts are answered LATE_ANSWERS at a time, on daemon threads (a stopping server does
    # not wait for a model call); the replies Twilio could not take are sent from here, one
    # by one, so the `break` below can stop them while Twilio is still failing.
    pool = DaemonPool(max_workers=LATE_ANSWERS, name="phischer-late")
    late: list[Future[str]] = []
    try:
        for row in rows:
            if row.direction == "in":
                late.append(pool.submit(_take_text, service, row, idle_since, clock))
                continue
            outcome = _take_reply(service, row, idle_since, clock(), lookups)
            if outcome == UNCHECKED:
                result.unchecked.append((row.id, row.created_at))
            if outcome == "sent":
                result.resent += 1
            elif outcome == "already_sent":
                result.already_sent += 1
            elif outcome == "send_failed":
                result.failed += 1
            elif outcome:
                result.retrying += 1
                # Twilio is still unreachable or failing: each further send would wait out the
                # same retries (up to half a minute each). The rest wait for the next sweep.
                break
    finally:
        pool.shutdown()  # never under the write lock: the late answers need it to finish
    for future in late:
        outcome = future.result()
        result.answered += outcome == "answered"
        result.failed += outcome == "failed"
    if result.answered or result.resent or result.already_sent or result.failed or result.retrying:
        log.info(
            "Recovered interrupted texts: %d answered late, %d re-sent, %d already sent (not "
            "sent again), %d recorded as failed, %d still waiting for Twilio",
            result.answered, result.resent, result.already_sent, result.failed, result.retrying,
        )  # fmt: skip
    return result


def _clock(now: dt.datetime) -> Callable[[], dt.datetime]:
    """The sweep's time: `now`, moving on as the sweep does."""
    # A row is claimed with it when its turn comes: claimed with the sweep's start, a text
    # that waited minutes behind slow ones would look idle to another process's sweep, which
    # would take it over and ask the model again.
    started = time.monotonic()
    return lambda: now + dt.timedelta(seconds=time.monotonic() - started)


def _take_text(
    service: SmsService, row: PendingRow, idle_since: dt.datetime, clock: Callable[[], dt.datetime]
) -> str:
    """Claim a left text and answer it late, or record why not: "answered", "failed" or ""."""
    now = clock()
    store = service.store
    with store.write() as cur:
        if not store.claim(cur, row.id, idle_since, now):
            return ""  # another process took it, or it finished meanwhile
        failure = _why_not(service, cur, row, now)
        if failure:
            store.update_message(cur, row.id, now, status="failed", error=failure)
            return "failed"
    _answer_late(service, row, claimed_at=now)
    return "answered"


def _take_reply(
    service: SmsService,
    row: PendingRow,
    idle_since: dt.datetime,
    now: dt.datetime,
    lookups: Lookups,
) -> str:
    """Claim a left reply and send it (`_settle_reply`); "" if another process had it."""
    store = service.store
    with store.write() as cur:
        if not store.claim(cur, row.id, idle_since, now):
            return ""
        if row.delivery is not None:
            # A status callback came for it: Twilio took the reply, and the process
            # died before it recorded the send. Sending it again would text it twice.
            store.update_message(cur, row.id, now, status="sent")
            return "already_sent"
    return _settle_reply(service, row, now, lookups)


# _settle_reply's outcome for a reply left "send_retry" until Twilio can be asked about it.
UNCHECKED = "unchecked"


def _settle_reply(service: SmsService, row: PendingRow, now: dt.datetime, lookups: Lookups) -> str:
    """Send a claimed reply row, or record why not; the status recorded ("already_sent", UNCHECKED)."""
    store = service.store
    checked: SendError | None = None
    # Twilio is asked first whether it has the reply: the process that sent it may have died
    # after Twilio took it, before it recorded that (or Twilio took a send it never answered).
    # Asked before the reasons not to send too: a reply the texter read is part of the thread
    # even if they have texted since. Past the hour as well (a server down overnight): such
    # a row is never sent again, but one Twilio has is "sent", not "send_failed", so the
    # model sees what the texter read. (The look-up reads at most LOOKUP_MAX messages.)
    if service.settings.can_send_sms:
        try:
            if service.taken_already(
                row.phone, row.id, row.body, row.created_at, row.our_address, lookups
            ):
                return "already_sent"
        except SendError as exc:
            checked = exc
    if checked is not None and checked.transient:
        # Twilio could not say (unreachable, busy). Not sent unchecked: that could text it
        # twice. Nor "send_failed", however old, or although the texter moved on: an earlier
        # try (a 5xx, a crash mid-send) may have reached them, and they would read what the
        # model is told was never said. It waits for a look-up, up to LOOKUP_GIVE_UP_AFTER.
        if now - row.created_at <= LOOKUP_GIVE_UP_AFTER:
            status = service.record_unsent(row.id, row.created_at, checked, wait=True)
            return UNCHECKED if status == "send_retry" else status
        gave_up = SendError(LOOKUP_GAVE_UP + str(checked))  # not transient: final
        return service.record_unsent(row.id, row.created_at, gave_up)
    with store.write() as cur:
        failure = _why_not(service, cur, row, now)
        if failure:
            store.update_message(cur, row.id, now, status="send_failed", error=failure)
            return "send_failed"
    if checked is not None:
        # Twilio refused to say (401, 403: wrong credentials): final, as a refused send is.
        return service.record_unsent(row.id, row.created_at, checked)
    return service.send_stored(row.phone, row.id, row.body, row.created_at, row.our_address)


def _why_not(service: SmsService, cur: object, row: PendingRow, now: dt.datetime) -> str | None:
    """Why this row cannot be delivered late (None: it can)."""
    newer = service.superseded
    if row.direction == "out":
        # STOP came after the reply was stored: the number wants nothing more. Read again
        # here: the rows were listed before this sweep's earlier late answers and sends,
        # which can take minutes. (A late answer checks when it is stored: inbound._store.)
        if row.opted_out or service.store.opted_out(cur, row.contact_id):
            return SEND_OPTED_OUT
        if not service.settings.can_send_sms:
            return SEND_INTERRUPTED
        if now - row.created_at > GIVE_UP_AFTER:
            # A "send_retry" reply carries its last failure: say that, not "interrupted".
            return SEND_GAVE_UP + row.error if row.error else SEND_INTERRUPTED
        # A late answer to a text the texter has since followed up would arrive out of order.
        return SEND_SUPERSEDED if newer(cur, row.contact_id, row.id, row.persona_id) else None
    if row.opted_out:
        return OPTED_OUT
    if not service.settings.can_send_sms:
        return NO_REST
    if now - row.created_at > GIVE_UP_AFTER:
        return TOO_OLD
    if newer(cur, row.contact_id, row.id, row.persona_id):
        return SUPERSEDED
    if service.personas.for_contact(row.persona_id) is None:
        return NO_PERSONA
    return None


def _answer_late(service: SmsService, row: PendingRow, claimed_at: dt.datetime) -> None:
    from phischer.inbound import Decision

    persona = service.personas.for_contact(row.persona_id)
    # The contact's current reset; one made after this text (a #reset that raced the
    # sweep) would leave the text itself out of the thread and the model with nothing.
    reset_at = row.thread_reset_at
    if reset_at is not None and reset_at > row.created_at:
        reset_at = None
    decision = Decision(
        inbound_id=row.id,
        contact_id=row.contact_id,
        persona=persona,
        reset_at=reset_at,
        at=row.created_at,
        claimed_at=claimed_at,
        our_address=row.our_address,
    )
    service.answer_late(row.phone, decision)


class Sweeper:
    """Runs `sweep` at once and then every SWEEP_EVERY_S in a daemon thread.

    The first sweep reads every message; later ones only those after the last id seen at a
    sweep older than GIVE_UP_AFTER plus a margin. Anything before that was already stale at
    that sweep, so it was handled then; this keeps each sweep to about an hour of texts.
    """

    def __init__(self, service: SmsService, every_s: float = SWEEP_EVERY_S) -> None:
        self.service = service
        self.every_s = every_s
        self.marks: list[tuple[dt.datetime, int]] = []  # (sweep time, last id then)
        self.unchecked: dict[int, dt.datetime] = {}  # replies left for a look-up: created_at
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="phischer-recovery", daemon=True)
        self.database_down = False  # the last sweep met a database that could not be used

    def start(self) -> None:
        """Start sweeping."""
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current sweep (waiting for it at most `timeout` s)."""
        self._stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=timeout)

    def run_once(self, now: dt.datetime | None = None) -> SweepResult:
        """One sweep over the messages that may still need it."""
        now = now or utcnow()
        store = self.service.store
        with store.read() as cur:
            last_id = store.last_message_id(cur)
        result = sweep(self.service, now, after_id=self.after_id(now))
        self.marks.append((now, last_id))
        self.unchecked.update(result.unchecked)
        return result

    def after_id(self, now: dt.datetime) -> int:
        """The id below which every message was already swept while stale (0: sweep all)."""
        # The margin covers a reply whose last REST retry (see retry_send) failed just
        # before GIVE_UP_AFTER: it turns idle RECOVER_AFTER_S later, and a sweep must see it.
        margin = 3 * recover_after(self.service.settings)
        horizon = now - GIVE_UP_AFTER - margin
        old = [i for t, i in self.marks if t <= horizon]
        if not old:
            return 0
        # Only the newest old mark matters from now on.
        self.marks = [(t, i) for t, i in self.marks if t > horizon or i == old[-1]]
        # A reply left for a look-up stays pending for up to a day: read back to the oldest
        # until then (one another process settled meanwhile too: such a sweep reads more).
        kept = now - LOOKUP_GIVE_UP_AFTER - margin
        self.unchecked = {i: at for i, at in self.unchecked.items() if at > kept}
        return min([old[-1], *(i - 1 for i in self.unchecked)])

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sweep_logged()
            self._stop.wait(self.every_s)

    def sweep_logged(self) -> None:
        """One sweep whose failure is logged, never raised: a sweep must not stop the server."""
        try:
            self.run_once()
        except Exception as exc:
            if not storage_fault(exc):
                log.exception("Recovery sweep failed")
                return
            # A database that is down (a PostgreSQL restart, a full disk) is said once per
            # outage, in one line: a traceback every minute would bury what the texts say.
            if not self.database_down:
                log.warning(
                    "Recovery sweep: the database cannot be used (%s); trying again every %g s",
                    error_reason(exc),
                    self.every_s,
                )
            self.database_down = True
            return
        if self.database_down:
            log.warning("Recovery sweep: the database is back; swept")
            self.database_down = False
