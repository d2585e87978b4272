"""The shared shape every importer yields, the importer registry, and the import error type."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from phischer.chat_format import json_kind


class ImportErrorMessage(ValueError):
    """An export cannot be read; str() is one line saying what is wrong and where."""


# What reading one record of an edited or damaged export raises: a missing key, a field of
# the wrong type, an impossible value (a date past year 9999 overflows). Importers turn
# these into an ImportErrorMessage naming the record.
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, OverflowError)


def string_field(record: dict[str, Any], key: str, default: str) -> str:
    """record[key] when it is a string, `default` when absent or null; else a TypeError."""
    # A field that says what a record is ("type", "media_type") decides whether it is kept:
    # read as it is when of another type (an edited file), it silently dropped the message
    # (or kept a bot's chat). The importer names the record around the TypeError's words.
    value = record.get(key)
    if value is None:
        return default
    if type(value) is not str:
        raise TypeError(f'"{key}" is {json_kind(value)}, not a string')
    return value


# A link as chat texts hold one (with or without its scheme).
LINK = re.compile(r"(?:https?://|www\.)\S+")


def only_links(text: str) -> bool:
    """Whether `text` is links and nothing else: shared, not written, so dropped as "link"."""
    # One rule for every importer (a GIF from Discord's picker is a tenor.com link, a video
    # shared to WhatsApp a youtu.be one): a clone trained on them answers with made-up links.
    # Links alone begin with one, so every other text is decided by one startswith.
    text = text.lstrip()
    return text.startswith(("http", "www.")) and not LINK.sub("", text).strip()


# An alias for a sender who may be the export's owner although the export gives no name
# for them (an X archive without data/account.js): no typed --me equals it (it begins with
# a NUL), and senders.one_name_per_sender names that sender after --me when --me names
# nobody else in the export.
UNNAMED_OWNER = "\0unnamed owner"


# slots: a big import holds a whole thread of Messages (and makes a million of them); slots
# make each one smaller and quicker to create.
@dataclass(slots=True)
class Message:
    """One text message from an export, already cleaned (text only, no media/system lines)."""

    sender: str
    text: str
    timestamp: dt.datetime  # naive UTC
    sender_id: str | None = None  # platform id (Discord author id, Telegram from_id, …)
    # Alternate names that identify the same sender for --me (nickname, display name, …).
    aliases: tuple[str, ...] = ()


@dataclass
class Conversation:
    """One thread (chat, DM, channel, or a self-thread of posts), messages in time order."""

    id: str
    title: str
    participants: list[str]
    messages: list[Message] = field(default_factory=list)
    is_group: bool = False
    # Never split on silences (`--gap-hours`): an X self-thread answers one topic prompt
    # however long after its first post the rest were added.
    one_session: bool = False
    # Counts of what the importer dropped and why ("media", "system", "unsent", …).
    dropped: dict[str, int] = field(default_factory=dict)
    # Why the whole thread was left out ("bot chat"), if it was: the summary reports it as
    # skipped instead of counting it among the threads.
    skipped: str | None = None

    def drop(self, reason: str, n: int = 1) -> None:
        """Count a message dropped for `reason`."""
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def name_key(name: str) -> str:
    """A sender's name as `--me` compares it: case, spacing and Unicode form left out."""
    # NFC: "ë" typed or pasted on a Mac often comes as "e" and a combining diaeresis (NFD),
    # which looks the same as the export's one-character "ë" but compares unequal.
    return unicodedata.normalize("NFC", " ".join(name.split()).casefold())


_identity = attrgetter("sender_id", "sender")


def people(messages: Iterable[Message]) -> int:
    """How many people wrote `messages`: one per sender id, else one per name_key."""
    # A chat is a group (other speakers' turns prefixed `Name: `) when more than two people
    # write in it, not more than two names: a Telegram contact renamed, a Discord username
    # changed or a name spelt in two Unicode forms is still the one other person of a
    # one-to-one chat, which the served thread never prefixes.
    senders = set(map(_identity, messages))  # C-level: this sees every message of a chat
    return len({("id", sid) if sid else ("name", name_key(name)) for sid, name in senders})


# An importer takes the export's path (zip, folder or single file) and yields conversations
# one at a time so memory stays bounded by the largest thread.
Importer = Callable[[Path], Iterator[Conversation]]
IMPORTERS: dict[str, Importer] = {}


def register(name: str) -> Callable[[Importer], Importer]:
    """Register an importer function under a format name (`phischer import NAME …`)."""

    def decorator(fn: Importer) -> Importer:
        IMPORTERS[name] = fn
        return fn

    return decorator
