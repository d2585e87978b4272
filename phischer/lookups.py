"""Which message Twilio has is which stored reply: one sweep's listings, matched to unsent rows.

A recovery sweep asks Twilio whether it already has a reply before sending it again (see
recovery). Twilio's messages carry no reply id, only their words, number and time, and two
replies can have the same words (a repeated short answer, two FALLBACK_REPLY): a message is
the reply's whose send it is closest to in time, and each message is one reply's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phischer.replies import RestSender, Taken

# How much earlier than a reply's stored time Twilio may date its message: Twilio dates to
# the second, and this host's clock may be a little off Twilio's.
CLOCK_MARGIN = dt.timedelta(minutes=2)


@dataclass
class Lookups:
    """One sweep's look-ups: each (number, sender) pair's messages listed once, then reused.

    After a long outage a sweep finds many stale replies, often to one number; listed per
    reply, the same pages were read again for each (up to LOOKUP_MAX messages, ten requests,
    a reply). `oldest` gives, per pair, the earliest time any of the sweep's replies needs,
    so the first listing serves them all. Reused within the sweep only: a reply it matches
    is claimed by it, so no process sends that reply meanwhile, and a message the sweep
    sends later is recorded on its own reply.
    """

    sender: RestSender
    oldest: dict[tuple[str, str | None], dt.datetime] = field(default_factory=dict)
    _listed: dict[tuple[str, str | None], tuple[dt.datetime, list[Taken]]] = field(
        default_factory=dict
    )

    def need(self, to: str, from_: str | None, stored_at: dt.datetime) -> None:
        """Note that a reply stored at `stored_at` to `to` from `from_` may be looked up."""
        key, since = (to, from_), window_start(stored_at)
        self.oldest[key] = min(since, self.oldest.get(key, since))

    def sent(self, to: str, from_: str | None, stored_at: dt.datetime) -> list[Taken]:
        """REST messages to `to` from `from_` that a reply stored at `stored_at` or a rival may be.

        Oldest first; raises SendError when Twilio cannot tell.
        """
        key, since = (to, from_), window_start(stored_at)
        listed = self._listed.get(key)
        if listed is None or listed[0] > since:
            start = min(since, self.oldest.get(key, since))
            listed = self._listed[key] = (start, self.sender.sent_since(to, start, from_))
        return [t for t in listed[1] if t.created >= since]


def window_start(stored_at: dt.datetime) -> dt.datetime:
    """The earliest a message of a reply stored at `stored_at`, or of a rival, can be dated."""
    # A rival counts if stored at most CLOCK_MARGIN before the reply (Store.unsent_alike), and
    # its message can be dated up to CLOCK_MARGIN before it was stored.
    return stored_at - 2 * CLOCK_MARGIN


def match(
    reply_id: int,
    listed: Sequence[Taken],
    rivals: Sequence[tuple[int, dt.datetime]],
    recorded: set[str],
) -> Taken | None:
    """The message among `listed` (oldest first, with its words) that is reply `reply_id`'s, if any.

    `rivals` are (id, stored at) of the unsent replies with its words to its number, itself
    included; `recorded` the sids some row has already. Oldest first, each message is the
    rival's without one yet that was stored closest to it, not after it (past CLOCK_MARGIN):
    a reply is sent as soon as it is stored, and a message is never sent before its reply.
    """
    free = dict(rivals)
    for taken in listed:
        if taken.sid in recorded:
            continue
        fits = [(abs(taken.created - at), rid) for rid, at in free.items()
                if at - CLOCK_MARGIN <= taken.created]  # fmt: skip
        if not fits:
            continue
        owner = min(fits)[1]
        if owner == reply_id:
            return taken
        del free[owner]
    return None
