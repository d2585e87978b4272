"""Why a webhook answer holds no reply: a response header the server sets, the simulator reads.

Twilio ignores response headers it does not know, so the TwiML stays what Twilio expects (an
empty `<Response/>` when the reply goes by REST or not at all). The values are fixed ASCII
words: no number, persona, message text or error detail, which belong in the server's log.
Only Twilio and whoever holds the auth token (a signed request) ever sees them.
"""

from __future__ import annotations

import re

HEADER = "X-Phischer-No-Reply"

REST_ASYNC = "rest-async"  # REPLY_MODE=async: the reply goes by Twilio's REST API
REST_SLOW = "rest-slow"  # slower than REPLY_TIMEOUT_S, or than Twilio's 15 s: the same
REST_LATE = "rest-late"  # the recovery sweep took the text over; it answers by REST
OPT_OUT = "opt-out"  # this text opted the number out
OPTED_OUT = "opted-out"  # the number had opted out already
NOT_ALLOWED = "not-allowed"  # not on ALLOWED_NUMBERS
DAILY_LIMIT = "daily-limit"  # over DAILY_LIMIT, its one notice already sent
EMPTY = "empty"  # nothing to answer
TWILIO_ANSWERED = "twilio-answered"  # Advanced Opt-Out sent its own START/HELP reply
RETRY = "retry"  # a MessageSid stored before, its reply by REST or still being made
STOPPING = "stopping"  # the server is stopping: the recovery sweep answers it after a restart
SUPERSEDED = "superseded"  # #reset or another persona chosen while the model answered it
WORD = re.compile(r"[a-z][a-z0-9-]{0,39}")

_BY_REST = (
    "the reply goes separately, as an SMS through Twilio's REST API to {number}, "
    "which this simulator cannot receive (the server's log says if the send failed)"
)
EXPLAINED = {
    REST_ASYNC: "REPLY_MODE=async: " + _BY_REST,
    REST_SLOW: "the model took longer than REPLY_TIMEOUT_S (or the text waited for a free "
    "thread until Twilio's 15 s were nearly up), so " + _BY_REST,
    REST_LATE: "the model was so slow that the recovery sweep took this text over, so " + _BY_REST,
    # Not "STOP": the word may have been QUIT or END, typed into `phischer chat` to leave it.
    OPT_OUT: "that is an opt-out word (STOP, QUIT, END, CANCEL, …), so it opted {number} out; "
    "its later texts are ignored until it sends START",
    OPTED_OUT: "{number} opted out (STOP), so its texts are ignored until it sends START",
    NOT_ALLOWED: "{number} is not on the server's ALLOWED_NUMBERS",
    DAILY_LIMIT: "{number} is over the server's DAILY_LIMIT for today",
    EMPTY: "the text is empty",
    TWILIO_ANSWERED: "Twilio's Advanced Opt-Out answers this keyword itself",
    RETRY: "a text with this MessageSid was received before; its reply was not inline",
    STOPPING: "the server is stopping; its recovery sweep takes this text up when it runs again",
    SUPERSEDED: "a #reset or persona switch came while the model answered this text, so its "
    "reply was not sent",
}


def explain(reason: str | None, number: str) -> str:
    """What `phischer text`/`chat` print for an answer without a reply, for the header's value."""
    why = EXPLAINED.get(reason or "")
    if why is not None:
        return f"(no reply in the webhook response: {why.format(number=number)})"
    # A word this version does not know (a newer server) is shown as it came, if it looks
    # like one: the URL may be anyone's server, and a terminal should get no escape codes.
    if reason and WORD.fullmatch(reason):
        return f"(no reply in the webhook response: {reason})"
    return "(no reply in the webhook response)"  # another server, or one before the header
