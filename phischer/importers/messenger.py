"""Facebook Messenger: the "Download your information" JSON export and the newer E2EE export.

Legacy export: one folder per thread, `messages/<box>/<thread>/message_N.json` (also nested
under `your_facebook_activity/`). Every box is read: `inbox/`, `archived_threads/`,
`e2ee_cutover/` (the history of threads from before they moved to end-to-end encryption),
`filtered_threads/` and `message_requests/` (requests). Threads you never answered cost a
little parsing but yield no examples, since every example ends with one of your replies;
requests you did answer are your voice like any other chat.

E2EE export ("Download end-to-end encrypted chats"): one JSON per thread with camelCase
fields (`participants` as strings, `threadName`, `messages[senderName, text, timestamp,
type, isUnsent, media, reactions]`). Both layouts may sit in the same folder or zip.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import re
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from operator import attrgetter
from pathlib import Path
from typing import Any

from phischer.importers.base import Conversation, ImportErrorMessage, Message, register
from phischer.importers.files import Export, open_export

_LEGACY_FILE = re.compile(r"(?:^|/)message_(\d+)\.json$")
# The folders between the export root and the box ("inbox/…") carry no meaning for ids.
_ID_PREFIX = re.compile(r"^(?:.*/)?messages/")
_MEDIA_KEYS = ("photos", "videos", "audio_files", "gifs", "files")
_LINK_ONLY = re.compile(r"(?:https?://|www\.)\S+")

# Facebook writes its notices as ordinary messages from the person who caused them
# ("Alice sent a photo.", "You named the group Ski trip."), in the export's language;
# these are the English ones. Only text that starts with the sender's own name (or "You")
# is tested, so a friend typing "he left the group lol" is kept.
_NOTICE = re.compile(
    r" (?:"
    r"(?P<media>sent (?:an? )?(?:attachment|photo|video|GIF|gif|sticker|voice message|"
    r"audio clip|file|location|live location)|sent \d+ (?:photos|videos|attachments))"
    r"|(?P<call>(?:started|joined|ended) (?:a |the )?(?:video |audio )?(?:call|chat)|"
    r"missed (?:a|your) (?:video |audio )?call|called (?:you|the group))"
    r"|(?P<unsent>unsent a message)"
    r"|(?P<system>named the group|changed the group photo|removed the group name|"
    r"left the group|created the group|added .{1,300} to the group|"
    r"removed .{1,300} from the group|set (?:the|your|his|her|their|(?:his|her|their) own) "
    r"nickname|cleared (?:the|your|his|her|their) nickname|changed the (?:chat )?theme|"
    r"(?:set|changed) the (?:quick reaction|emoji)|(?:pinned|unpinned) a message|"
    r"turned (?:on|off) disappearing messages|(?:started|updated) (?:a|the) plan|"
    r"(?:is|are) now connected on Messenger)"
    r")\b",
    re.S,
)
_CONSTANT_NOTICES = {
    "The video chat ended.": "call",
    "The call ended.": "call",
    "The audio call ended.": "call",
    "You are now connected on Messenger.": "system",
    "Say hi to your new Facebook friend": "system",
}
# "Alice reacted ❤ to your message" arrives as a message of its own in some exports.
# Newer exports write it without the name, as the reactor's own message: "Reacted 😂 to your
# message".
_REACTION = re.compile(
    r"(?:(?:^|\s)[Rr]eacted .{1,24} to (?:your|a|an|their|his|her) message|liked a message)"
    r"\.?\s*$",
    re.S,
)


def fix_mojibake(s: str) -> str:
    """Undo Facebook's UTF-8-bytes-as-latin-1 encoding, only where that round-trips."""
    # The legacy export writes each UTF-8 byte as its own \\u00XX escape, so "é" arrives
    # as "Ã©". Re-encoding as latin-1 recovers the bytes; a string that does not decode as
    # UTF-8 afterwards (or holds characters beyond latin-1) was never mangled: keep it.
    if s.isascii():
        return s
    try:
        return s.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return s


def _text_reason(text: str, sender: str, shared: bool) -> str | None:
    # Why a non-empty text is not something a person typed, or None when it is.
    kind = _CONSTANT_NOTICES.get(text)
    if kind:
        return kind
    if ("eacted " in text or "liked a message" in text) and _REACTION.search(text):
        return "reaction"
    rest = None
    if sender and text.startswith(sender):
        rest = text[len(sender) :]
    elif text.startswith("You "):
        rest = text[3:]
    if rest is not None and rest.startswith(" ") and len(rest) < 400:
        m = _NOTICE.match(rest)
        if m:
            return m.lastgroup
    if (shared or text[0] in "hw") and _LINK_ONLY.fullmatch(text):
        return "link"
    return None


_EPOCH = dt.datetime(1970, 1, 1)

if sys.version_info < (3, 12):
    # 1 µs, against 3 µs for epoch + timedelta and 5 µs for fromtimestamp(tz=UTC) without
    # its tzinfo: on a million messages that is seconds. Deprecated from Python 3.12 on.
    _utcfromtimestamp = dt.datetime.utcfromtimestamp

    def _naive_utc(ms: float) -> dt.datetime:
        return _utcfromtimestamp(ms / 1000)

else:  # pragma: no cover - the project runs 3.11

    def _naive_utc(ms: float) -> dt.datetime:
        return _EPOCH + dt.timedelta(milliseconds=ms)


# Keys that only non-text messages carry; plain text messages skip every per-kind check.
_LEGACY_SPECIAL = frozenset({"is_unsent", "call_duration", "sticker", "share", *_MEDIA_KEYS})


def _legacy_reason(m: dict[str, Any]) -> str | None:
    kind = m.get("type")
    if m.get("is_unsent"):
        return "unsent"
    if kind == "Call" or "call_duration" in m:
        return "call"
    if "sticker" in m:
        return "sticker"
    for key in _MEDIA_KEYS:
        if key in m:
            return "media"
    if kind in ("Subscribe", "Unsubscribe"):
        return "system"
    return None


def _legacy_messages(raw: list[Any], cols: _Columns, names: dict[str, str]) -> None:
    # The hot loop of a big import (one pass per message): cheap checks first, and the
    # rare kinds of message decided in _legacy_reason. Appends to plain lists (cheap to
    # send back from a worker process); Messages are made in _to_conversation.
    senders, texts, stamps = cols.senders, cols.texts, cols.stamps
    dropped = cols.dropped
    special = _LEGACY_SPECIAL
    for m in reversed(raw):
        if type(m) is not dict:
            continue
        if m.get("type") != "Generic" or not special.isdisjoint(m):
            reason = _legacy_reason(m)
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
        text = m.get("content")
        ts = m.get("timestamp_ms")
        if type(text) is not str or (type(ts) is not int and type(ts) is not float):
            dropped["empty"] = dropped.get("empty", 0) + 1
            continue
        if not text.isascii():
            text = fix_mojibake(text)
        text = text.strip()
        if not text:
            dropped["empty"] = dropped.get("empty", 0) + 1
            continue
        raw_sender = m.get("sender_name")
        sender = names.get(raw_sender)
        if sender is None:
            sender = names[raw_sender] = fix_mojibake(raw_sender or "")
        # Inline gate: only text that could be a notice or a bare link pays for the checks.
        if (
            text.startswith(sender)
            or text[0] in "hwTYS"
            or "eacted " in text
            or "liked a message" in text
            or "share" in m
        ):
            reason = _text_reason(text, sender, "share" in m)
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
        senders.append(sender)
        texts.append(text)
        stamps.append(ts)


def _e2ee_messages(raw: list[Any], conv: Conversation) -> list[Message]:
    out: list[Message] = []
    for m in raw:
        if type(m) is not dict:
            continue
        kind = m.get("type")
        # "placeholder" is what is left of a message that was unsent or failed to decrypt.
        if m.get("isUnsent") or kind == "placeholder":
            conv.drop("unsent")
            continue
        if m.get("media") or kind == "media":
            conv.drop("media")
            continue
        text = m.get("text")
        ts = m.get("timestamp")
        if type(text) is not str or not text.strip() or not isinstance(ts, int | float):
            conv.drop("empty")
            continue
        sender = fix_mojibake(m.get("senderName") or "")
        text = fix_mojibake(text).strip()
        reason = _text_reason(text, sender, kind == "link")
        if reason:
            conv.drop(reason)
            continue
        out.append(Message(sender, text, _naive_utc(ts)))
    return out


def _messages(data: Any, where: str) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ImportErrorMessage(f'{where} is not a Messenger thread (no "messages" list)')
    return data["messages"]


@dataclass
class _Columns:
    # One thread, parsed and cleaned, as plain lists: what a worker process sends back.
    id: str
    title: str = ""
    participants: list[str] = field(default_factory=list)
    is_group: bool = False
    dropped: dict[str, int] = field(default_factory=dict)
    senders: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)  # ms since the epoch, UTC


def _legacy_columns(export: Export, folder: str, files: list[tuple[int, str]]) -> _Columns:
    cols = _Columns(id=_ID_PREFIX.sub("", folder))
    thread_type = ""
    names: dict[str, str] = {}
    # message_1.json holds the newest messages and each file lists newest first: walking
    # files from the highest N down and each file backwards gives time order, and the
    # stable sort in _to_conversation then only fixes what the export got wrong.
    for _, name in sorted(files, reverse=True):
        data = export.load_json(name)
        raw = _messages(data, export.where(name))
        if not cols.participants:
            cols.participants = [
                fix_mojibake(str(p.get("name") or "") if isinstance(p, dict) else str(p))
                for p in data.get("participants") or []
                if p
            ]
            cols.title = fix_mojibake(data.get("title") or "")
            thread_type = data.get("thread_type") or ""
        _legacy_messages(raw, cols, names)
        del data, raw
    cols.is_group = thread_type == "RegularGroup" or len(cols.participants) > 2
    cols.title = cols.title or ", ".join(cols.participants)
    return cols


def _to_conversation(cols: _Columns) -> Conversation:
    utc = _naive_utc
    messages = [
        Message(s, t, utc(ms))
        for s, t, ms in zip(cols.senders, cols.texts, cols.stamps, strict=True)
    ]
    messages.sort(key=_by_time)
    return Conversation(
        id=cols.id,
        title=cols.title,
        participants=cols.participants,
        messages=messages,
        is_group=cols.is_group,
        dropped=cols.dropped,
    )


_by_time = attrgetter("timestamp")


def _e2ee_thread(export: Export, name: str, data: dict[str, Any]) -> Conversation:
    stem = name.rsplit("/", 1)[-1].removesuffix(".json")
    participants = [fix_mojibake(str(p)) for p in data.get("participants") or [] if p]
    # threadName is "<Name>_<n>"; the suffix only keeps file names unique.
    title = re.sub(r"_\d+$", "", fix_mojibake(data.get("threadName") or stem))
    conv = Conversation(id=f"e2ee/{stem}", title=title, participants=participants)
    collected = _e2ee_messages(_messages(data, export.where(name)), conv)
    collected.sort(key=_by_time)
    conv.messages = collected
    conv.is_group = len(participants) > 2
    return conv


def _e2ee_candidates(export: Export, legacy_folders: set[str]) -> list[str]:
    found = []
    for name in export.members("*.json"):
        if _LEGACY_FILE.search(name) or name.rsplit("/", 1)[0] in legacy_folders:
            continue
        head = export.read_head(name)
        if b'"threadName"' in head or (b'"senderName"' in head and b'"messages"' in head):
            found.append(name)
    return found


@register("messenger")
def import_messenger(path: Path) -> Iterator[Conversation]:
    """Yield one Conversation per Messenger thread (legacy and E2EE layouts)."""
    with open_export(path) as export:
        threads: dict[str, list[tuple[int, str]]] = {}
        for name in export.names():
            m = _LEGACY_FILE.search(name)
            if m:
                # A single message_N.json passed on its own: its folder names the thread.
                folder = name[: m.start()] if m.start() else export.path.parent.name
                threads.setdefault(folder, []).append((int(m.group(1)), name))
        e2ee = _e2ee_candidates(export, set(threads))
        if not threads and not e2ee:
            raise ImportErrorMessage(
                f"No Messenger threads in {path}: expected messages/inbox/<thread>/message_1.json "
                "(JSON format of 'Download your information') or the end-to-end encrypted "
                "chats export"
            )
        workers = _workers()
        if workers and len(threads) >= PARALLEL_MIN_THREADS and export.kind != "file":
            for cols in _parallel_columns(export.path, list(threads.items()), workers):
                yield _to_conversation(cols)
        else:
            for folder, files in threads.items():
                yield _to_conversation(_legacy_columns(export, folder, files))
        for name in e2ee:
            data = export.load_json(name)
            if not isinstance(data, dict):
                raise ImportErrorMessage(f"{export.where(name)} is not a Messenger thread")
            yield _e2ee_thread(export, name, data)


# Parsing and cleaning is about half the work of an import, building and writing examples
# the other half: on a big export worker processes do the first half, thread by thread,
# while this process does the second. Small exports stay in one process (forking costs more
# than it saves there).
PARALLEL_MIN_THREADS = 100
_WORKER_EXPORTS: dict[str, Export] = {}


def _workers() -> int:
    # fork: the worker starts at once with everything imported (spawn would re-import).
    if (os.cpu_count() or 1) < 2 or "fork" not in mp.get_all_start_methods():
        return 0
    # Parsing and cleaning is the bigger half: with one worker this process spent ~45% of a
    # 1M-message import waiting for it, so two, even on two cores.
    return min(2, os.cpu_count() or 2)


def _worker_columns(path: str, folder: str, files: list[tuple[int, str]]) -> _Columns:
    # Each worker opens the export itself: a zip file object shared over fork would share
    # one file offset between processes.
    export = _WORKER_EXPORTS.get(path)
    if export is None:
        export = _WORKER_EXPORTS[path] = open_export(path)
    return _legacy_columns(export, folder, files)


def _parallel_columns(
    path: Path, jobs: list[tuple[str, list[tuple[int, str]]]], workers: int
) -> Iterator[_Columns]:
    # In order, with at most 2 threads per worker in flight: memory stays bounded by a few
    # threads, not the export.
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
    try:
        pending: deque[Future[_Columns]] = deque()
        todo = iter(jobs)
        for folder, files in islice(todo, 2 * workers):
            pending.append(pool.submit(_worker_columns, str(path), folder, files))
        while pending:
            cols = pending.popleft().result()  # re-raises a worker's ImportErrorMessage
            for folder, files in islice(todo, 1):
                pending.append(pool.submit(_worker_columns, str(path), folder, files))
            yield cols
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
