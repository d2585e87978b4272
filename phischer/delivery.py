"""What became of a reply after Twilio took it: the status callback, recorded on the row."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from phischer.models import utcnow
from phischer.store import NOT_DELIVERED, Store

log = logging.getLogger(__name__)

# Twilio's message statuses in the order a message goes through them. Callbacks can arrive
# out of order ("sent" after "delivered"): a status never replaces a later one. The phone's
# own word outranks the network's: "delivered" (or "read") after "undelivered" means it got
# there after all, while "undelivered" after "delivered" is a late or contradictory report.
# "canceled" (a scheduled send called off) never reached the phone, as the failures did not;
# "partially_delivered" (part of it arrived) did, in part.
STATUS_ORDER = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "undelivered": 4,
    "failed": 4,
    "canceled": 4,
    "partially_delivered": 5,
    "delivered": 6,
    "read": 7,
}

# The error codes a hobby setup meets most, and what to do about each.
ERROR_HINTS = {
    "30034": "the number is not registered for US A2P 10DLC: register it in the Twilio console",
    "30032": "the toll-free number is not verified: verify it in the Twilio console",
    "30007": "the carrier filtered the message as spam",
    "30003": "the phone is off or out of reach",
    "30005": "the number does not exist or is no longer in service",
    "30006": "the number is a landline or its carrier cannot take SMS",
    "30008": "the carrier reported an unknown error",
    "21610": "the texter opted out (STOP)",
    "21408": "SMS to that country is not enabled in the Twilio geo permissions",
    # WhatsApp takes a free-form message only within 24 hours of the texter's last one; a
    # REST reply sent later (a sweep answering late) needs an approved template instead.
    "63016": "WhatsApp allows a free-form reply only within 24 hours of the texter's last message",
}


# Twilio's refusal to text a number that opted out (STOP to this sender, which Twilio keeps
# whether or not phischer saw that STOP): every later reply would be refused the same way.
OPTED_OUT_CODE = 21610
_SID = re.compile(r"(?:SM|MM)[0-9a-f]{32}")  # Twilio's message sids


def record_refusal(store: Store, cur: Any, reply_id: int, code: int | None) -> None:
    """Take Twilio's 21610 refusal of reply `reply_id` as its number's opt-out."""
    # A STOP phischer never stored (sent while the server was down and Twilio gave up, or
    # to another app on this number): the texter asked for no more texts, so no more model
    # calls either. START (which Twilio forwards) opts back in, as after any STOP.
    if code == OPTED_OUT_CODE and store.opt_out_recipient(cur, reply_id, utcnow()):
        log.info("Reply %d: Twilio says its number opted out (21610); recorded", reply_id)


def describe_failure(status: str, code: str) -> str:
    """The error recorded on a reply Twilio could not deliver."""
    if not code:
        return f"Twilio: {status}"
    hint = ERROR_HINTS.get(code)
    return f"Twilio {code} ({status})" + (f": {hint}" if hint else "")


def record_status(store: Store, reply_id: int, form: Mapping[str, str]) -> bool:
    """Record a status callback on reply `reply_id`; False when it changes nothing."""
    status = form.get("MessageStatus", form.get("SmsStatus", "")).strip().lower()
    rank = STATUS_ORDER.get(status)
    if rank is None:
        return False
    code = form.get("ErrorCode", "").strip()
    if not (code.isascii() and code.isdigit() and len(code) <= 10):
        code = ""  # Twilio's codes are numbers; anything else is not worth recording
    with store.write() as cur:
        row = store.delivery_of(cur, reply_id)
        if row is None:
            return False
        delivery, sent, stored_sid = row
        sid = form.get("MessageSid", "")
        if stored_sid is None and _SID.fullmatch(sid):
            # A send whose answer was lost left the reply without it: kept, a sweep's look-up
            # of what Twilio has cannot take this message for another reply with its words.
            store.adopt_sid(cur, reply_id, sid)
        unsent = sent in ("send_retry", "send_failed")
        if unsent:
            # Twilio reports on it, so Twilio has it: the send whose answer was lost ("may or
            # may not have been sent"), or that a sweep gave up on, reached Twilio after all.
            store.mark_sent(cur, reply_id, utcnow())
        if delivery is not None and STATUS_ORDER.get(delivery, -1) > rank:
            return unsent
        error = describe_failure(status, code) if status in NOT_DELIVERED else None
        store.set_delivery(cur, reply_id, status, error)
        if error is not None:
            log.warning("Reply %d was not delivered: %s", reply_id, error)
            record_refusal(store, cur, reply_id, int(code) if code else None)
    return True
