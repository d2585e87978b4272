"""The Twilio number's SMS URL: find the number, point it at us, and put it back on exit."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from twilio.base.exceptions import TwilioException
from twilio.rest import Client

from phischer.atomic import atomic_files
from phischer.redact import mask_number
from phischer.tunnel_types import Echo, TunnelError
from phischer.twilio_client import RETRY_BUDGET_S, idempotent, twilio_reason

log = logging.getLogger(__name__)

STATE_FILE = "tunnel_state.json"


# Twilio's WhatsApp sandbox: one number shared by every account, on none of them.
WHATSAPP_SANDBOX = "+14155238886"


class WhatsAppSender(TunnelError):
    """TWILIO_PHONE_NUMBER is a WhatsApp sender (or the sandbox), whose webhook only the Console sets."""

    def __init__(self, phone: str) -> None:
        self.phone = phone
        super().__init__(self.instruction("<public URL>/sms"))

    def instruction(self, sms_url: str) -> str:
        """What to paste where in the Twilio Console, for the webhook URL `sms_url`."""
        # Twilio's API sets a phone number's SMS URL; a WhatsApp sender has no such resource
        # on the account, and the sandbox's settings are the Console's alone.
        if self.phone == WHATSAPP_SANDBOX:
            return (
                f"{self.phone} is Twilio's WhatsApp sandbox, whose webhook only the Twilio "
                f"Console sets: open Messaging → Try it out → Send a WhatsApp message → Sandbox "
                f"settings, set 'When a message comes in' to {sms_url} (POST) and save"
            )
        return (
            f"{self.phone} is a WhatsApp sender, not a phone number of the account, and its "
            f"webhook is set in the Twilio Console: open Messaging → Senders → WhatsApp "
            f"senders → {self.phone}, set the webhook URL for incoming messages to {sms_url} "
            f"(POST) and save"
        )


@dataclass
class Registration:
    """What we changed on the Twilio number, so that it can be put back."""

    number_sid: str
    phone_number: str
    sms_url: str
    previous_url: str
    previous_method: str
    warnings: list[str] = field(default_factory=list)
    refused: bool = False  # Twilio refused the change: there is nothing to restore
    # The URL is the ngrok tunnel this run opened: it stops working when the run stops.
    dies_with_run: bool = False
    # The run that made the change (the state file's "pid"): only its own record is dropped.
    pid: int | None = field(default_factory=os.getpid)


class TwilioRefused(TunnelError):
    """Twilio answered a request with an error (`status`); the message says which and why."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


@contextmanager
def twilio_errors(action: str) -> Iterator[None]:
    """Turn Twilio SDK and network failures into one-line TunnelErrors."""
    try:
        yield
    except TwilioException as exc:
        status, reason = twilio_reason(exc)
        hint = {
            401: ": check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
            403: ": the credentials lack permission (use the account's own SID and token)",
        }.get(status or 0, "")
        raise TwilioRefused(
            f"Twilio refused to {action} (HTTP {status}, {reason}){hint}", status
        ) from None
    except requests.RequestException as exc:
        raise TunnelError(
            f"Could not reach Twilio to {action} ({type(exc).__name__}): check your network"
        ) from None


def find_number(client: Client, phone: str) -> Any:
    """The account's IncomingPhoneNumber equal to `phone` (E.164), or TunnelError (none / several)."""
    with twilio_errors("list your phone numbers"):
        # PhoneNumber is a pattern for Twilio (partial numbers match), so compare exactly.
        found = client.incoming_phone_numbers.list(phone_number=phone, limit=50)
    exact = [n for n in found if n.phone_number == phone]
    if not exact and _is_whatsapp_sender(client, phone):
        raise WhatsAppSender(phone)
    if not exact:
        similar = ", ".join(sorted({n.phone_number for n in found})[:5])
        also = f" (similar numbers there: {similar})" if similar else ""
        raise TunnelError(
            f"TWILIO_PHONE_NUMBER={phone} is not a number of Twilio account "
            f"{client.account_sid}{also}: use one listed under Phone Numbers → Active numbers, "
            f"in E.164 (+15551234567)"
        )
    if len(exact) > 1:
        sids = ", ".join(n.sid for n in exact)
        raise TunnelError(
            f"TWILIO_PHONE_NUMBER={phone} matches {len(exact)} numbers on account "
            f"{client.account_sid} ({sids}): remove the duplicates so exactly one remains"
        )
    return exact[0]


def _is_whatsapp_sender(client: Client, phone: str) -> bool:
    """Whether `phone` is the WhatsApp sandbox or one of the account's WhatsApp senders."""
    if phone == WHATSAPP_SANDBOX:
        return True
    try:
        with twilio_errors("list your WhatsApp senders"):
            senders = client.messaging.v2.channels_senders.stream(channel="whatsapp", page_size=50)
            return any(s.sender_id == f"whatsapp:{phone}" for s in senders)
    except TunnelError as exc:  # credentials that may not read senders: the usual error then
        log.debug("Could not check WhatsApp senders: %s", exc)
        return False


def handled_elsewhere(client: Client, number: Any, sms_url: str) -> list[str]:
    """Warnings for settings that make Twilio ignore the number's own SMS URL."""
    phone = number.phone_number
    warnings = []
    # Twilio links a number to its Messaging Service through this field too (an MG… sid):
    # that case is the service's, checked below, and harmless when it defers to the number.
    app_sid = number.sms_application_sid or ""
    if app_sid and not app_sid.startswith("MG"):
        warnings.append(
            f"{phone} sends incoming SMS to TwiML App {number.sms_application_sid} "
            f"(sms_application_sid), which ignores the number's SMS URL: in the Twilio console "
            f"open Phone Numbers → Active numbers → {phone} → Messaging configuration and set "
            f"'A message comes in' to Webhook, or set that app's Messaging Request URL to "
            f"{sms_url} (POST)"
        )
    try:
        with twilio_errors("list your Messaging Services"):
            for service in client.messaging.v1.services.stream(page_size=50):
                members = client.messaging.v1.services(service.sid).phone_numbers.stream(
                    page_size=50
                )
                if service.sid != app_sid and not any(
                    m.sid == number.sid or m.phone_number == phone for m in members
                ):
                    continue
                if service.use_inbound_webhook_on_number:
                    continue
                inbound = service.inbound_request_url or "none (messages are dropped)"
                warnings.append(
                    f"{phone} belongs to Messaging Service '{service.friendly_name}' "
                    f"({service.sid}), whose incoming-message setting wins over the number's "
                    f"SMS URL (now: {inbound}): in the Twilio console open Messaging → Services → "
                    f"{service.friendly_name} → Integration and choose 'Send a webhook' with "
                    f"{sms_url} (POST) or 'Defer to sender's webhook', or remove the number "
                    f"from the service"
                )
    except TunnelError as exc:
        which = f"Messaging Service {app_sid}" if app_sid.startswith("MG") else "one"
        warnings.append(
            f"could not check Messaging Services ({exc}); if {phone} is in {which}, its "
            f"incoming settings may win over the number's SMS URL"
        )
    return warnings


# What a record holds. The file maps number SIDs to records (before, it held one record alone).
_RECORD_KEYS = ("number_sid", "phone_number", "sms_url", "previous_url", "previous_method")


def _load_records(instance_path: Path) -> dict[str, dict[str, Any]]:
    """The state file's records of changed SMS URLs, by number SID ({} without a readable file)."""
    try:
        state = json.loads((instance_path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(state, dict):
        return {}
    records = {state.get("number_sid"): state} if "number_sid" in state else state
    return {
        sid: r
        for sid, r in records.items()
        if isinstance(r, dict) and all(isinstance(r.get(k), str) for k in _RECORD_KEYS)
    }


def _save_records(instance_path: Path, records: dict[str, dict[str, Any]]) -> None:
    if not records:
        (instance_path / STATE_FILE).unlink(missing_ok=True)
        return
    # Whole or not at all: a half-written record would lose the URL it exists to keep.
    with atomic_files(instance_path / STATE_FILE, private=True) as (fh,):
        fh.write(json.dumps(records))


def _forget(instance_path: Path, registration: Registration) -> None:
    """Drop the record `registration` wrote, and no other."""
    # Another run's record (even of this number) is the only copy of the URL it must restore.
    records = _load_records(instance_path)
    record = records.get(registration.number_sid)
    if record is not None and record.get("pid") == registration.pid:
        del records[registration.number_sid]
        _save_records(instance_path, records)


# Where ngrok's agents get their public addresses (free, paid and legacy domains).
NGROK_DOMAINS = ("ngrok-free.app", "ngrok-free.dev", "ngrok.app", "ngrok.dev", "ngrok.io")


def ngrok_host(url: str) -> bool:
    """Whether `url` is an address an ngrok agent serves (a laptop's, while its agent runs)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:  # whatever the console let someone type
        return False
    return any(host == d or host.endswith("." + d) for d in NGROK_DOMAINS)


def plan_registration(
    client: Client, number: Any, sms_url: str, instance_path: Path, *, dies_with_run: bool = False
) -> Registration:
    """What `apply_registration` will change: the new URL, the previous URL and method, warnings."""
    phone = number.phone_number
    warnings = handled_elsewhere(client, number, sms_url)
    previous_url, previous_method = number.sms_url or "", number.sms_method or "POST"
    # A run killed with SIGKILL could not restore; its record says what the URL was before it.
    state = _load_records(instance_path).get(number.sid, {})
    if state.get("sms_url") == previous_url:
        previous_url, previous_method = state["previous_url"], state["previous_method"]
        log.debug("Previous run of %s did not restore; using its saved URL", mask_number(phone))
    if previous_url != sms_url and ngrok_host(previous_url):
        # ngrok addresses are a laptop's, for a session: most likely another phischer run
        # (another folder or machine), live or long gone. Either way the user should know.
        warnings.append(
            f"{phone} pointed at {previous_url}, an ngrok tunnel: if another `phischer up` or "
            f"`phischer tunnel` serves it, it gets no texts while this run lasts; if it is "
            f"left from an earlier run, it is dead, and so is what this run puts back when "
            f"it stops"
        )
    elif previous_url == sms_url and dies_with_run:
        # ngrok gives a free account the same address on every run, so an earlier
        # `--no-restore` run left the number on this very tunnel: "back" is a closed tunnel.
        warnings.append(
            f"{phone} already pointed at {sms_url}, this tunnel's address, left by an earlier "
            f"run (--no-restore, or one that never restored): it stays there when this run stops"
        )
    return Registration(
        number_sid=number.sid,
        phone_number=phone,
        sms_url=sms_url,
        previous_url=previous_url,
        previous_method=previous_method,
        warnings=warnings,
        dies_with_run=dies_with_run,
    )


def apply_registration(client: Client, registration: Registration, instance_path: Path) -> None:
    """Point the number's SMS URL at `registration.sms_url` (POST), recorded in the state file first."""
    phone, sid = registration.phone_number, registration.number_sid
    records = _load_records(instance_path)
    prior = records.get(sid)
    # Recorded before the request: a run killed or interrupted while Twilio applies it
    # (the change may or may not have landed) still knows the URL to put back.
    transient = ("warnings", "refused", "dies_with_run")
    records[sid] = {k: v for k, v in asdict(registration).items() if k not in transient}
    _save_records(instance_path, records)
    number = client.incoming_phone_numbers(registration.number_sid)
    try:
        with twilio_errors(f"update the SMS URL of {phone}"):
            # Setting a URL is idempotent: a moment of trouble at Twilio is sent again.
            idempotent(
                client, lambda: number.update(sms_url=registration.sms_url, sms_method="POST")
            )
    except TunnelError as exc:
        if not _surely_refused(exc):
            # A 5xx or a lost answer may come after Twilio applied it: the record stays, and
            # the restore step looks at the number (restore_webhook) and puts it back.
            raise
        registration.refused = True
        # Nothing changed: keep what an earlier, killed run recorded.
        if prior:
            _save_records(instance_path, {**_load_records(instance_path), sid: prior})
        else:
            _forget(instance_path, registration)
        raise
    log.debug("Registered the SMS URL of %s", mask_number(phone))


def _surely_refused(exc: TunnelError) -> bool:
    """Whether Twilio answered that it did not apply a request (4xx): not a 5xx, nor no answer."""
    status = exc.status if isinstance(exc, TwilioRefused) else None
    return status is not None and 400 <= status < 500


def _current_url(client: Client, registration: Registration, deadline: float) -> str:
    """The number's SMS URL now (read again after a 429, a 5xx or a connection error)."""
    number = client.incoming_phone_numbers(registration.number_sid)
    with twilio_errors(f"read the SMS URL of {registration.phone_number}"):
        return idempotent(client, number.fetch, deadline).sms_url or ""


def _put_back(client: Client, registration: Registration, deadline: float) -> None:
    """Set the previous SMS URL and method again (retried as for reading: it is idempotent)."""
    number = client.incoming_phone_numbers(registration.number_sid)
    with twilio_errors(f"restore the SMS URL of {registration.phone_number}"):
        idempotent(
            client,
            lambda: number.update(
                sms_url=registration.previous_url, sms_method=registration.previous_method
            ),
            deadline,
        )


def restore_webhook(client: Client, registration: Registration, instance_path: Path) -> str | None:
    """Put the previous SMS URL back (unless someone changed it meanwhile); say what happened."""
    if registration.refused:
        return None
    phone = registration.phone_number
    # One budget for both requests: the user waits for this after Ctrl-C.
    deadline = time.monotonic() + RETRY_BUDGET_S
    now = _current_url(client, registration, deadline)
    if now != registration.sms_url:
        _forget(instance_path, registration)
        if now == registration.previous_url:  # interrupted before Twilio applied the change
            return f"The SMS URL of {phone} was not changed ({now or '(empty)'})."
        return f"Left the SMS URL of {phone} as is: it was changed to {now!r} meanwhile."
    _put_back(client, registration, deadline)
    _forget(instance_path, registration)
    if registration.dies_with_run and registration.previous_url == registration.sms_url:
        return f"Warning: {stays_dead(phone, now, ', as before this run')}"
    shown = registration.previous_url or "(empty)"
    return f"Restored the SMS URL of {phone} to {shown} ({registration.previous_method})."


def _recorded(record: dict[str, Any]) -> Registration:
    """The registration a run's record (instance state file) holds."""
    return Registration(**{k: record[k] for k in _RECORD_KEYS}, pid=record.get("pid"))


def restore_left_behind(
    client: Client, instance_path: Path, keep_sid: str | None, guarded: bool, echo: Echo
) -> None:
    """Restore the numbers other than `keep_sid` that killed runs here left on their URLs.

    A run killed with SIGKILL while TWILIO_PHONE_NUMBER was another number left that number
    on its dead URL, and its record is the only copy of the URL before. `guarded` (this run
    holds the folder lock) means no live run owns such a record: it is restored as that run
    would have. The record stays while trying again can help; the user is told the URL
    before whenever it was not restored.
    """
    for sid, record in _load_records(instance_path).items():
        if sid == keep_sid:
            continue  # this run's number: plan_registration takes that record over
        left = _recorded(record)
        if not guarded:  # a file system without locks: the record may be a live run's
            why = "this folder cannot be locked, so that run may still be live, and phischer leaves it"
            echo(f"Warning: {left_behind(left, why, again=False)}")
            continue
        line = _restore_left(client, left, instance_path)
        if line:
            echo(line)


def taking_over(
    client: Client, number: Any, instance_path: Path, restore: bool, echo: Echo
) -> Callable[[], str | None]:
    """Say that a killed run left this run's number on its URL; the exit step for that record.

    Call only while holding the folder lock (else the record may be a live run's). This run
    takes the record over once Twilio applies its own change (plan_registration). The step
    returned restores the number as the killed run would have if this run stops before
    that (the tunnel would not open, a stop during startup, Twilio refused the change):
    otherwise the number stays on a dead URL, and only the next run would mend it.
    """
    record = _load_records(instance_path).get(number.sid)
    if (
        record is None
        or record.get("pid") == os.getpid()
        or record["sms_url"] != (number.sms_url or "")
    ):
        # No record, or the killed run had not changed the number (or someone changed it
        # since): plan_registration then uses the number's own URL, as without a record.
        return lambda: None
    left = _recorded(record)
    before = f"{left.previous_url or '(empty)'} ({left.previous_method})"
    then = (
        f"this run puts back {before}, its SMS URL before that run, when it stops"
        if restore
        else f"its SMS URL before that run was {before}, which --no-restore does not put back"
    )
    echo(
        f"A run from this folder that was killed left {left.phone_number} on {left.sms_url}: {then}."
    )
    if not restore:
        # As said: left as it is (the record stays, for a later run that restores).
        return lambda: None

    def restore_if_not_taken() -> str | None:
        still = _load_records(instance_path).get(left.number_sid)
        if still is None or still.get("pid") != left.pid:  # taken over: this run restores
            return None
        return _restore_left(client, left, instance_path)

    return restore_if_not_taken


def _restore_left(client: Client, left: Registration, instance_path: Path) -> str | None:
    """Restore one number a killed run left; the line to say (None: it had not changed it)."""
    deadline = time.monotonic() + RETRY_BUDGET_S
    try:
        now = _current_url(client, left, deadline)
        if now == left.sms_url:
            _put_back(client, left, deadline)
    except TunnelError as exc:
        # 404: the number is no longer on the account (released, or another account's).
        gone = isinstance(exc, TwilioRefused) and exc.status == 404
        if gone:
            _forget(instance_path, left)
        return f"Warning: {left_behind(left, str(exc), again=not gone)}"
    _forget(instance_path, left)
    if now == left.previous_url:  # killed before Twilio applied its change
        log.debug("%s was not changed by the run that was killed", mask_number(left.phone_number))
        return None
    if now != left.sms_url:
        why = f"it was changed to {now!r} since, so phischer leaves it"
        return f"Warning: {left_behind(left, why, again=False)}"
    shown = left.previous_url or "(empty)"
    return (
        f"Restored the SMS URL of {left.phone_number} to {shown} ({left.previous_method}), "
        f"which a run from this folder that was killed had left on {left.sms_url}."
    )


def left_behind(left: Registration, why: str, *, again: bool) -> str:
    """A killed run's number, not restored: `why`, and how to put back its URL before that run."""
    return (
        f"a run from this folder that was killed left {left.phone_number} on {left.sms_url}; "
        f"{why}: {_by_hand(left, again)}"
    )


def forget_unless_refused(registration: Registration, instance_path: Path) -> None:
    """--no-restore: drop the record, unless the change was refused (then it is an older run's)."""
    if not registration.refused:
        _forget(instance_path, registration)


def restore_failure(registration: Registration, exc: Exception | None) -> str:
    """One line for a restore that failed (None: was cut short): why, and what to set by hand."""
    phone = registration.phone_number
    # A TunnelError already says what was tried ("Twilio refused to restore the SMS URL of …").
    if exc is None:
        reason = f"quit before the SMS URL of {phone} was restored"
    elif isinstance(exc, TunnelError):
        reason = str(exc)
    else:
        reason = f"could not restore the SMS URL of {phone} ({type(exc).__name__}: {exc})"
    return f"{reason}: {_by_hand(registration, again=True)}"


def _by_hand(registration: Registration, again: bool) -> str:
    """What to set in the Twilio console; `again`: a next run would also do it."""
    previous, phone = registration.previous_url, registration.phone_number
    back = f"set it back to {previous} ({registration.previous_method})" if previous else "clear it"
    where = f"{back} in the Twilio console (Phone Numbers → Active numbers → {phone})"
    if again:
        return f"{where}, or run `phischer tunnel` again: it repairs it"
    return f"to give it the URL it had before that run, {where}"


def restoring(
    client: Client, registration: Registration, instance_path: Path, echo: Echo
) -> Callable[..., bool]:
    """The exit step that puts the number's previous SMS URL back.

    A failure on a clean stop is raised once the other steps have run, so the command exits 1
    and a supervisor can tell the number was left on a closed URL. When the block is already
    failing (an error, a stop during startup: exit 1 either way) it is a warning, not to mask
    that.
    """

    def restore(exc_type: type[BaseException] | None, *_: object) -> bool:
        try:
            result = restore_webhook(client, registration, instance_path)
        except KeyboardInterrupt:  # Ctrl-C pressed on to quit at once: what is left to do
            echo(f"Warning: {restore_failure(registration, None)}")
            raise
        except Exception as exc:  # the other clean-up steps must still run
            line = restore_failure(registration, exc)
            if exc_type is not None:
                echo(f"Warning: {line}")
                return False
            raise TunnelError(line) from None
        if result:
            echo(result)
        return False

    return restore


def stays_dead(phone: str, sms_url: str, why: str) -> str:
    """The number is left on this run's ngrok URL, which closes with it: what that means."""
    return (
        f"the SMS URL of {phone} stays {sms_url}{why}, which stops working as the tunnel "
        f"closes: texts fail (Twilio error 11200) until you point the number elsewhere in the "
        f"Twilio console or run `phischer up` or `tunnel` again"
    )
