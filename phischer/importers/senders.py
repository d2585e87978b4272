"""One person, one name: every message of a sender id under the same name and aliases.

Exports that give each message its author's id (Discord's author id, Telegram's from_id, X's
account id) still give it the name the author had *there*: a Discord server nickname, an old
`name#1234` username in an export made before 2023, a Telegram name changed since. `--me`
is matched per message against its name, aliases and id (dataset.match_me), so without this
one person would be split in two: the messages under the name `--me` gives would be theirs,
the rest `user` turns or another speaker's.

So, across the whole export, each id gets:
- one name: the one on its most recent message (what the person is called now), used for
  the `Name: ` prefix in group chats and, for `--me`, in the system prompt;
- every other name and alias it had as aliases, so `--me` given any of them matches all of
  its messages.

The names are known only once the whole export has been read, and memory must stay bounded
by the largest thread, not the export: conversations with ids are spooled to a temporary
file while they are read and replayed from it renamed. Exports without ids (Messenger,
WhatsApp: names only) pass straight through at no cost.
"""

from __future__ import annotations

import datetime as dt
import marshal
import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from typing import IO

from phischer.dataset import match_me
from phischer.importers.base import UNNAMED_OWNER, Conversation, ImportErrorMessage, Message

# What the replay's conversations pass through (a progress bar), told how many there are.
Replay = Callable[[Iterator[Conversation], int], Iterator[Conversation]]
# Sender id -> (its one name, its other names and aliases).
Identities = dict[str, tuple[str, tuple[str, ...]]]

# Conversations are held in memory until they hold this many messages beyond the largest
# one (which is in memory anyway while it is built), then spooled to a temporary file:
# most exports are replayed from memory at no cost, a big one keeps memory bounded.
HELD_MESSAGES = 200_000

_by_sender_id = attrgetter("sender_id")
_by_sender = attrgetter("sender")
_identity = attrgetter("sender_id", "sender", "aliases")
_by_time = attrgetter("timestamp")
_by_text = attrgetter("text")


class _Names:
    # Per sender id: the time and name of its most recent message, and each (name, aliases)
    # it came with, in the order first seen.
    def __init__(self) -> None:
        self.latest: dict[str, tuple[dt.datetime, str]] = {}
        self.forms: dict[str, dict[tuple[str, tuple[str, ...]], None]] = {}

    def see(self, messages: list[Message]) -> None:
        # C-level passes over columns, not a Python loop per message. Messages are in time
        # order (Conversation's contract): an id's last one in the list is its latest.
        ids = list(map(_by_sender_id, messages))
        if not any(ids):
            return
        latest = self.latest
        last = dict(zip(ids, range(len(ids)), strict=True))  # each id's last message
        for sid, i in last.items():
            if sid and (sid not in latest or messages[i].timestamp >= latest[sid][0]):
                latest[sid] = (messages[i].timestamp, messages[i].sender)
        forms = self.forms
        for sid, name, aliases in dict.fromkeys(map(_identity, messages)):
            if sid:
                forms.setdefault(sid, {})[name, aliases] = None

    def identities(self) -> tuple[Identities, Identities]:
        """(Every id's name and aliases, those of the ids whose messages disagreed on them)."""
        every: Identities = {}
        changed: Identities = {}
        for sid, forms in self.forms.items():
            if len(forms) == 1:  # one name and alias set throughout: as it was
                every[sid] = next(iter(forms))
                continue
            name = self.latest[sid][1]
            names = dict.fromkeys(n for sender, aliases in forms for n in (sender, *aliases))
            every[sid] = changed[sid] = (name, tuple(n for n in names if n and n != name))
        return every, changed


def one_name_per_sender(
    conversations: Iterable[Conversation], replay: Replay | None = None, me: str | None = None
) -> Iterator[Conversation]:
    """The conversations, each sender id's messages under its latest name with all the others.

    Given `me` (--me), an owner the export leaves unnamed (`UNNAMED_OWNER`) is named `me`
    when `me` names nobody else.
    """
    stream = iter(conversations)
    for conv in stream:
        if any(map(_by_sender_id, conv.messages)):
            yield from _held(chain([conv], stream), replay, me)
            return
        yield conv  # no ids yet: nothing to rename, and nothing to wait for


def _name_owner(me: str, every: Identities, changed: Identities) -> None:
    # Here and not in the importer: only once the whole export is read is it known that
    # --me names nobody in it, and only then can it be the owner's own name.
    if any(
        match_me(Message(name, "", dt.datetime.min, sid, aliases), me)
        for sid, (name, aliases) in every.items()
    ):
        return
    owners = sorted(sid for sid, (_name, aliases) in every.items() if UNNAMED_OWNER in aliases)
    if len(owners) > 1:
        # Only an X archive leaves its owner unnamed, and two candidates are the two
        # people of its only DM conversation: guessing would train on the other's words.
        raise ImportErrorMessage(
            f"--me {me!r} matches no sender, and this X archive has no data/account.js to "
            f"say which of {' and '.join(owners)} is you (its only DM conversation is "
            "between them): include data/account.js from the archive, or pass your account "
            "id as --me"
        )
    if owners:
        name, aliases = every[owners[0]]
        kept = tuple(a for a in dict.fromkeys((name, *aliases)) if a != UNNAMED_OWNER)
        every[owners[0]] = changed[owners[0]] = (me, kept)


def _held(
    conversations: Iterator[Conversation], replay: Replay | None, me: str | None = None
) -> Iterator[Conversation]:
    # Read them all (names are known only at the end), held in memory or spooled, then
    # replay them renamed.
    names = _Names()
    held: list[Conversation] = []
    held_messages = largest = count = 0
    with tempfile.TemporaryFile(prefix="phischer-import-") as spool:
        spooled = False
        for conv in conversations:
            names.see(conv.messages)
            count += 1
            if spooled:
                _dump(conv, spool)
                continue
            held.append(conv)
            held_messages += len(conv.messages)
            largest = max(largest, len(conv.messages))
            if held_messages - largest > HELD_MESSAGES:
                for c in held:
                    _dump(c, spool)
                held.clear()
                spooled = True
        every, changed = names.identities()
        if me is not None:
            _name_owner(me, every, changed)
        if spooled:
            spool.seek(0)
            out = (_load(spool, every) for _ in range(count))
        else:
            out = (_renamed(c, changed) for c in held)
        yield from replay(out, count) if replay else out


def _renamed(conv: Conversation, identities: Identities) -> Conversation:
    if identities and not identities.keys().isdisjoint(map(_by_sender_id, conv.messages)):
        for m in conv.messages:
            new = identities.get(m.sender_id)  # type: ignore[arg-type]
            if new:
                m.sender, m.aliases = new
    return conv


def _dump(conv: Conversation, spool: IO[bytes]) -> None:
    # Columns of plain values, not Message objects: pickling a slots dataclass runs Python
    # code per message, marshal writes a list of strings in one C loop. A message with an
    # id is written without its name and aliases: its id's are known by the replay.
    messages, conv.messages = conv.messages, []
    ids = list(map(_by_sender_id, messages))
    nameless = [(i, m.sender, m.aliases) for i, m in enumerate(messages) if not ids[i]]
    times = list(map(dt.datetime.isoformat, map(_by_time, messages)))
    pickle.dump((conv, nameless), spool, pickle.HIGHEST_PROTOCOL)
    # Length first: marshal.load from a file reads it in small pieces, loads one read is quick.
    data = marshal.dumps((ids, list(map(_by_text, messages)), times))
    spool.write(len(data).to_bytes(8, "little"))
    spool.write(data)


def _load(spool: IO[bytes], identities: Identities) -> Conversation:
    conv, nameless = pickle.load(spool)
    size = int.from_bytes(spool.read(8), "little")
    ids, texts, times = marshal.loads(spool.read(size))
    named = list(map(identities.get, ids, repeat(_NAMELESS)))
    for i, sender, aliases in nameless:
        named[i] = (sender, aliases)
    conv.messages = list(
        map(
            Message,
            map(_name, named),
            texts,
            map(dt.datetime.fromisoformat, times),
            ids,
            map(_aliases, named),
        )
    )
    return conv


_NAMELESS = ("", ())
_name = itemgetter(0)
_aliases = itemgetter(1)
