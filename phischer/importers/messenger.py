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

Instagram's DMs ("Download your information", JSON) are the legacy layout under
`your_instagram_activity/messages/`, with a few notices of their own ("Liked a message").
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import re
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import attrgetter, le, truediv
from pathlib import Path
from typing import Any, NoReturn

from phischer.chat_format import json_kind
from phischer.importers.base import (
    Conversation,
    ImportErrorMessage,
    Message,
    only_links,
    register,
)
from phischer.importers.files import Export, open_export
from phischer.stopping import fork_pool

_LEGACY_FILE = re.compile(r"(?:^|/)message_(\d+)\.json$")
# The folders between the export root and the box ("inbox/…") carry no meaning for ids.
_ID_PREFIX = re.compile(r"^(?:.*/)?messages/")
_MEDIA_KEYS = ("photos", "videos", "audio_files", "gifs", "files")

# Facebook writes its notices as ordinary messages from the person who caused them
# ("Alice sent a photo.", "You named the group Ski trip."), in the export's language;
# these are the English ones. Only text that starts with the sender's own name (or "You")
# is tested, so a friend typing "he left the group lol" is kept.
_NOTICE = re.compile(
    r" (?:"
    r"(?P<media>sent (?:an? )?(?:attachment|photo|video|GIF|gif|sticker|voice message|"
    r"audio clip|file|location|live location)|sent \d+ (?:photos|videos|attachments))"
    # Instagram's DMs (the same export) say "started an audio call", "missed a video chat"
    r"|(?P<call>(?:started|joined|ended) (?:an? |the )?(?:video |audio )?(?:call|chat)|"
    r"missed (?:an?|your) (?:video |audio )?(?:call|chat)|called (?:you|the group))"
    # Instagram: a story, post or reel shared, the whole line ("Sam shared a story."), also
    # when the share's link is gone from the export
    r"|(?P<link>shared an? (?:story|post|reel)(?=\.?$))"
    r"|(?P<unsent>unsent a message)"
    r"|(?P<system>named the group|changed the group photo|removed the group name|"
    r"left the group|created the group|added .{1,300} to the group|"
    r"removed .{1,300} from the group|set (?:the|your|his|her|their|(?:his|her|their) own) "
    r"nickname|cleared (?:the|your|his|her|their) nickname|changed the (?:chat )?theme|"
    r"(?:set|changed) the (?:quick reaction|emoji)|(?:pinned|unpinned) a message|"
    r"turned (?:on|off) disappearing messages|(?:started|updated) (?:a|the) plan|"
    r"(?:is|are) now connected on Messenger|"
    # a new connection: "You can now message and call each other and see info like Active
    # Status and when you've read messages."; waves, the whole line: "You waved at Sam.",
    # "Sam waved at you!" (not "You waved at the bus driver lol", typed by a friend)
    r"can now message and call each other|waved at (?:you|[^\n.!?]{1,100})(?=[.!]$)|"
    r"(?:added|removed) .{1,300} as (?:a )?group admin|"
    # polls: 'Sam created a poll: Where do we eat?', 'Sam voted for "Pizza" in the poll.'
    r"created a poll(?=: )|(?:voted for|changed (?:their|your|his|her) vote to"
    r"|removed (?:their|your|his|her) vote for) \".{1,300}\" in the poll(?=\.?$))"
    r")\b",
    re.S,
)
_CONSTANT_NOTICES = {
    "The video chat ended.": "call",
    "The call ended.": "call",
    "The audio call ended.": "call",
    "You are now connected on Messenger.": "system",
    "Say hi to your new Facebook friend": "system",
    "This poll is no longer available.": "system",
}
# "Alice reacted ❤ to your message" arrives as a message of its own in some exports.
# Newer exports write it without the name, as the reactor's own message: "Reacted 😂 to your
# message"; Instagram's a double-tap on a message as "Liked a message", the whole text.
_REACTION = re.compile(
    r"(?:(?:^|\s)[Rr]eacted .{1,24} to (?:your|a|an|their|his|her) message|liked a message"
    r"|^Liked a message)\.?\s*$",
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


# A share notice is the sender's name and a few words ("sent a link", "hat einen Link
# gesendet", "envió un enlace"); anything longer next to a link is what someone wrote.
SHARE_NOTICE_WORDS = 6


def _is_share_notice(rest: str) -> bool:
    words = rest.split()
    return (
        0 < len(words) <= SHARE_NOTICE_WORDS
        and rest.endswith(".")
        and "," not in rest
        and "://" not in rest
    )


def _text_reason(text: str, sender: str, shared: bool) -> str | None:
    # Why a non-empty text is not something a person typed, or None when it is.
    kind = _CONSTANT_NOTICES.get(text)
    if kind:
        return kind
    if ("eacted " in text or "iked a message" in text) and _REACTION.search(text):
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
        if shared and _is_share_notice(rest):
            # "Sam hat einen Link gesendet.": a share whose text is Facebook's notice in the
            # export's language (the sender's name, then a few words, no link of its own).
            return "link"
    if only_links(text):
        return "link"
    return None


_EPOCH = dt.datetime(1970, 1, 1)

if sys.version_info < (3, 12):
    # 1 µs, against 3 µs for epoch + timedelta and 5 µs for fromtimestamp(tz=UTC) without
    # its tzinfo: on a million messages that is seconds. Deprecated from Python 3.12 on.
    _utcfromtimestamp = dt.datetime.utcfromtimestamp

    def _naive_utc(ms: float) -> dt.datetime:
        return _utcfromtimestamp(ms / 1000)

    def _naive_utcs(stamps: list[float]) -> list[dt.datetime]:
        # _naive_utc over a whole column, without a Python call per message.
        return list(map(_utcfromtimestamp, map(truediv, stamps, repeat(1000))))

else:  # pragma: no cover - the project runs 3.11

    def _naive_utc(ms: float) -> dt.datetime:
        return _EPOCH + dt.timedelta(milliseconds=ms)

    def _naive_utcs(stamps: list[float]) -> list[dt.datetime]:
        return list(map(_naive_utc, stamps))


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


# A text can only be a notice or a bare link (see _text_reason) when it starts with its
# sender's name or one of these, ends like a reaction ("… reacted ❤ to your message"), or
# comes with a share: one startswith/endswith each lets every other text skip the checks.
_NOTICE_STARTS = ("You ", "The ", "This poll", "Say hi", "http", "www.")
_REACTION_ENDS = ("message", "message.")


def _malformed(
    where: str, raw: list[Any], m: dict[str, Any], key: str, wanted: str
) -> ImportErrorMessage:
    """The error for a field of a type Facebook never writes (the file was edited by a tool)."""
    # Dropping the message as empty would hide that the file is broken. The hot loop has
    # no index: the message is found by identity (an equal message elsewhere must not be
    # named instead).
    n = next(i for i, x in enumerate(raw, 1) if x is m)
    return ImportErrorMessage(
        f'{where}: message {n} is malformed ("{key}" is {json_kind(m[key])}, not {wanted})'
    )


def _legacy_messages(raw: list[Any], part: _Part, where: str) -> None:
    # The hot loop of a big import (one pass per message): cheap checks first, and the
    # rare kinds of message decided in _legacy_reason. Appends to plain lists (cheap to
    # send back from a worker process); Messages are made in _legacy_thread.
    senders, texts, stamps = part.senders, part.texts, part.stamps
    dropped = part.dropped
    special = _LEGACY_SPECIAL
    # raw sender name -> (its repaired name, the prefixes that make a text worth checking)
    names: dict[Any, tuple[str, tuple[str, ...]]] = {}
    for m in reversed(raw):
        if type(m) is not dict:
            continue
        shared = False
        if m.get("type") != "Generic" or not special.isdisjoint(m):
            reason = _legacy_reason(m)
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            shared = "share" in m
        text = m.get("content")
        if type(text) is not str:
            if text is not None:  # null or absent: a photo, …
                raise _malformed(where, raw, m, "content", "a string")
            dropped["empty"] = dropped.get("empty", 0) + 1
            continue
        ts = m.get("timestamp_ms")
        if type(ts) is not int and type(ts) is not float:
            if ts is not None:
                raise _malformed(where, raw, m, "timestamp_ms", "a number")
            part.undated = True
        if not text.isascii():  # fix_mojibake, inlined: it runs for most texts
            try:  # noqa: SIM105 - contextlib.suppress costs a context manager per text
                text = text.encode("latin-1").decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError):
                pass
        text = text.strip()
        if not text:
            dropped["empty"] = dropped.get("empty", 0) + 1
            continue
        raw_sender = m.get("sender_name")
        try:
            known = names.get(raw_sender)
        except TypeError:  # unhashable: an array or object
            raise _malformed(where, raw, m, "sender_name", "a string") from None
        if known is None:
            if raw_sender is not None and type(raw_sender) is not str:
                raise _malformed(where, raw, m, "sender_name", "a string")
            sender = fix_mojibake(raw_sender or "")
            known = names[raw_sender] = (sender, (sender, *_NOTICE_STARTS))
        sender, starts = known
        if shared or text.startswith(starts) or text.endswith(_REACTION_ENDS):
            reason = _text_reason(text, sender, shared)
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
        senders.append(sender)
        texts.append(text)
        stamps.append(ts)


def _e2ee_messages(raw: list[Any], part: _Part, where: str) -> None:
    dropped = part.dropped
    for i, m in enumerate(raw, 1):
        if type(m) is not dict:
            continue
        kind = m.get("type")
        unsent, media = m.get("isUnsent"), m.get("media")
        # Read as true or false whatever their type, they silently dropped the message.
        if type(unsent) is not bool and unsent is not None:
            raise _malformed(where, raw, m, "isUnsent", "true or false")
        if type(media) is not list and media is not None:
            raise _malformed(where, raw, m, "media", "an array")
        # "placeholder" is what is left of a message that was unsent or failed to decrypt.
        if unsent or kind == "placeholder":
            reason = "unsent"
        elif media or kind == "media":
            reason = "media"
        else:
            reason = _e2ee_text(raw, m, i, part, where)
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1


def _e2ee_text(raw: list[Any], m: dict[str, Any], i: int, part: _Part, where: str) -> str | None:
    # Appends message i (a text) to part, or says why it is dropped.
    text = m.get("text")
    if type(text) is not str:
        if text is not None:
            raise _malformed(where, raw, m, "text", "a string")
        return "empty"
    ts = m.get("timestamp")
    if type(ts) is not int and type(ts) is not float:
        if ts is not None:
            raise _malformed(where, raw, m, "timestamp", "a number")
        part.undated = True
    sender = m.get("senderName") or ""
    if not isinstance(sender, str):
        raise _malformed(where, raw, m, "senderName", "a string")
    sender = fix_mojibake(sender)
    text = fix_mojibake(text).strip()
    if not text:
        return "empty"
    reason = _text_reason(text, sender, m.get("type") == "link")
    if reason:
        return reason
    part.senders.append(sender)
    part.texts.append(text)
    part.stamps.append(ts)
    return None


def _messages(data: Any, where: str) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ImportErrorMessage(f'{where} is not a Messenger thread (no "messages" list)')
    return data["messages"]


@dataclass
class _Part:
    # One message_N.json, parsed and cleaned, as plain lists: what a worker process sends
    # back. The thread's details stay raw JSON: only the first file that names participants
    # counts (see _legacy_thread).
    participants: Any = None
    title: Any = None
    thread_type: Any = None
    dropped: dict[str, int] = field(default_factory=dict)
    senders: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    # ms since the epoch, UTC; None for a message without one (see _times)
    stamps: list[float | None] = field(default_factory=list)
    undated: bool = False  # whether any stamp is None


def _legacy_part(export: Export, name: str) -> _Part:
    where = export.where(name)
    data = export.load_json(name)
    raw = _messages(data, where)
    part = _Part(data.get("participants"), data.get("title"), data.get("thread_type"))
    _legacy_messages(raw, part, where)
    return part


def _oldest_first(files: list[tuple[int, str]]) -> list[str]:
    # message_1.json holds the newest messages and each file lists newest first: walking
    # files from the highest N down and each file backwards gives time order, and the
    # stable sort in _legacy_thread then only fixes what the export got wrong.
    return [name for _, name in sorted(files, reverse=True)]


def _legacy_thread(folder: str, parts: list[_Part], where: str) -> Conversation:
    participants: list[str] = []
    title = ""
    thread_type = ""
    dropped: dict[str, int] = {}
    senders: list[str] = []
    texts: list[str] = []
    stamps: list[float | None] = []
    undated = False
    for part in parts:
        if not participants:
            if not isinstance(part.participants, list | None) or not isinstance(
                part.title, str | None
            ):
                raise ImportErrorMessage(
                    f'{where}: "participants" is not a list or "title" not a string'
                )
            participants = [
                fix_mojibake(str(p.get("name") or "") if isinstance(p, dict) else str(p))
                for p in part.participants or []
                if p
            ]
            title = fix_mojibake(part.title or "")
            thread_type = part.thread_type or ""
        for reason, n in part.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
        senders += part.senders
        texts += part.texts
        stamps += part.stamps
        undated = undated or part.undated
    if undated:
        _date_undated(stamps, where, "timestamp_ms")
    return Conversation(
        id=_ID_PREFIX.sub("", folder),
        title=title or ", ".join(participants),
        participants=participants,
        messages=_in_time_order(senders, texts, stamps, where, "timestamp_ms"),
        is_group=thread_type == "RegularGroup" or len(participants) > 2,
        dropped=dropped,
    )


def _date_undated(stamps: list[float | None], where: str, key: str) -> None:
    """Give each message without a time (None) the time of the one before it, in place."""
    # Facebook writes a time on every message; a tool that edited the file may leave one
    # out. Its place in the file still says when it was sent: next to the message before
    # it (the one after it, at the start of a thread).
    last = next((s for s in stamps if s is not None), None)
    if last is None:
        raise ImportErrorMessage(f'{where}: no message has a "{key}": the times are missing')
    for i, stamp in enumerate(stamps):
        if stamp is None:
            stamps[i] = last
        else:
            last = stamp


def _newest_first(stamps: list[float | None]) -> bool:
    """Whether a file lists its messages newest first (as Facebook writes them)."""
    first = next((s for s in stamps if s is not None), None)
    last = next((s for s in reversed(stamps) if s is not None), None)
    return first is not None and last is not None and first > last


def _in_time_order(
    senders: list[str], texts: list[str], stamps: list[Any], where: str, key: str
) -> list[Message]:
    """Messages from parallel columns (stamps in ms since the epoch, UTC), oldest first."""
    # One C-level pass per column instead of a Python call per message (a million
    # messages make that show).
    try:
        times = _naive_utcs(stamps)
    except (ValueError, OverflowError, OSError):
        bad = repr(next(s for s in stamps if not _possible(s)))
        if len(bad) > 24:  # a number of hundreds of digits
            bad = bad[:20] + "…"
        raise ImportErrorMessage(f'{where}: a "{key}" of {bad} is not a possible time') from None
    messages = list(map(Message, senders, texts, times))
    if not _is_sorted(times):  # checking is cheaper than sorting, and exports are in order
        messages.sort(key=_by_time)
    return messages


def _possible(stamp: float) -> bool:
    try:
        _naive_utc(stamp)
    except (ValueError, OverflowError, OSError):
        return False
    return True


def _is_sorted(values: list[Any]) -> bool:
    return all(map(le, values, islice(values, 1, None)))


_by_time = attrgetter("timestamp")


def _e2ee_thread(export: Export, name: str, data: dict[str, Any]) -> Conversation:
    stem = name.rsplit("/", 1)[-1].removesuffix(".json")
    where = export.where(name)
    participants = data.get("participants") or []
    thread_name = data.get("threadName") or stem
    if not isinstance(participants, list) or not isinstance(thread_name, str):
        raise ImportErrorMessage(
            f'{where}: "participants" is not a list or "threadName" not a string'
        )
    participants = [fix_mojibake(str(p)) for p in participants if p]
    # threadName is "<Name>_<n>"; the suffix only keeps file names unique.
    title = re.sub(r"_\d+$", "", fix_mojibake(thread_name))
    part = _Part()
    _e2ee_messages(_messages(data, where), part, where)
    if part.undated:
        if _newest_first(part.stamps):  # a time is taken from the message before it
            for column in (part.senders, part.texts, part.stamps):
                column.reverse()
        _date_undated(part.stamps, where, "timestamp")
    return Conversation(
        id=f"e2ee/{stem}",
        title=title,
        participants=participants,
        messages=_in_time_order(part.senders, part.texts, part.stamps, where, "timestamp"),
        is_group=len(participants) > 2,
        dropped=part.dropped,
    )


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
            _no_threads(export)
        workers = _workers()
        if workers and len(threads) >= PARALLEL_MIN_THREADS and export.kind != "file":
            yield from _parallel_threads(export, list(threads.items()), workers)
        else:
            for folder, files in threads.items():
                yield _legacy_thread(
                    folder,
                    [_legacy_part(export, n) for n in _oldest_first(files)],
                    export.where(folder),
                )
        for name in e2ee:
            data = export.load_json(name)
            if not isinstance(data, dict):
                raise ImportErrorMessage(f"{export.where(name)} is not a Messenger thread")
            yield _e2ee_thread(export, name, data)


def _no_threads(export: Export) -> NoReturn:
    """Stop with what the export holds instead of threads, when that says what to do."""
    path = export.path
    # "Download your information" is HTML unless JSON is picked, and the threads are then
    # message_1.html: the most common way to end up here.
    if export.members("message_*.html"):
        raise ImportErrorMessage(
            f"{path} holds Facebook's HTML export (message_1.html): request it again with "
            "'Format: JSON' (Download your information) and import that"
        )
    # A big export comes as several zips; the folder they were downloaded to holds them.
    zips = export.members("*.zip") if export.kind == "folder" else []
    if zips:
        raise ImportErrorMessage(
            f"No Messenger threads in {path}, only zip files ({len(zips)}): unzip them all "
            "into one folder and pass that folder"
        )
    raise ImportErrorMessage(
        f"No Messenger threads in {path}: expected messages/inbox/<thread>/message_1.json "
        "(JSON format of 'Download your information') or the end-to-end encrypted "
        "chats export"
    )


# Parsing and cleaning is about half the work of an import, building and writing examples
# the other half: on a big export worker processes do the first half, file by file, while
# this process does the second. Small exports stay in one process (forking costs more than
# it saves there).
PARALLEL_MIN_THREADS = 100
# Files go to the workers in batches of about this much JSON (most threads are small, and
# each task costs a round trip), and the workers stay at most _AHEAD_BYTES ahead of this
# process: enough to keep them busy while it builds a big thread, and memory stays bounded.
_BATCH_BYTES = 1 << 20
_AHEAD_BYTES = 32 << 20
_WORKER_EXPORTS: dict[str, Export] = {}


def _workers() -> int:
    # fork: the worker starts at once with everything imported (spawn would re-import).
    if (os.cpu_count() or 1) < 2 or "fork" not in mp.get_all_start_methods():
        return 0
    # Parsing and cleaning is the bigger half: on 2 cores a 1M-message import took ~8.3 s
    # with one worker, ~5.5 s with two, ~6 s with three; so two, even on two cores.
    return min(2, os.cpu_count() or 2)


def _worker_parts(path: str, names: list[str]) -> list[_Part]:
    # Each worker opens the export itself: a zip file object shared over fork would share
    # one file offset between processes.
    export = _WORKER_EXPORTS.get(path)
    if export is None:
        export = _WORKER_EXPORTS[path] = open_export(path)
    return [_legacy_part(export, name) for name in names]


def _batches(export: Export, names: list[str]) -> list[tuple[list[str], int]]:
    # Consecutive files, about _BATCH_BYTES of JSON each: (member names, their bytes).
    batches: list[tuple[list[str], int]] = []
    batch: list[str] = []
    size = 0
    for name in names:
        batch.append(name)
        size += export.size(name)
        if size >= _BATCH_BYTES:
            batches.append((batch, size))
            batch, size = [], 0
    if batch:
        batches.append((batch, size))
    return batches


def _parallel_threads(
    export: Export, jobs: list[tuple[str, list[tuple[int, str]]]], workers: int
) -> Iterator[Conversation]:
    # Results come back in order; a thread is yielded as soon as all its files are in.
    ordered = [(folder, _oldest_first(files)) for folder, files in jobs]
    batches = iter(_batches(export, [name for _, names in ordered for name in names]))
    path = str(export.path)
    pool = fork_pool(workers)
    try:
        pending: deque[tuple[Future[list[_Part]], int]] = deque()
        ahead = 0
        parts: deque[_Part] = deque()
        for folder, names in ordered:
            while len(parts) < len(names):
                # Keep the workers busy: at least one batch per worker in flight, more while
                # the parsed-ahead JSON stays under _AHEAD_BYTES.
                while len(pending) < workers or ahead < _AHEAD_BYTES:
                    batch = next(batches, None)
                    if batch is None:
                        break
                    pending.append((pool.submit(_worker_parts, path, batch[0]), batch[1]))
                    ahead += batch[1]
                future, size = pending.popleft()
                parts.extend(future.result())  # re-raises a worker's ImportErrorMessage
                ahead -= size
            yield _legacy_thread(folder, [parts.popleft() for _ in names], export.where(folder))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
