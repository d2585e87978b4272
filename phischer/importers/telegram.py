"""Telegram Desktop "Export chat history" / "Export Telegram data" in JSON (`result.json`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from phischer.chat_format import json_kind
from phischer.importers.base import (
    MALFORMED,
    Conversation,
    ImportErrorMessage,
    Message,
    only_links,
    people,
    register,
    string_field,
)
from phischer.importers.files import Export, open_export
from phischer.importers.json_stream import JsonStream
from phischer.importers.progress import NO_PROGRESS, FileProgress

_EPOCH = dt.datetime(1970, 1, 1)  # naive UTC, like every Message.timestamp
# Chat types whose messages come from many people (channels: posts, usually by admins).
_GROUP_TYPES = {
    "private_group",
    "private_supergroup",
    "public_supergroup",
    "private_channel",
    "public_channel",
}
# Keys that mean the message carries media; with no caption there are no words to learn from.
_MEDIA_KEYS = (
    "photo",
    "file",
    "media_type",
    "contact_information",
    "location_information",
    "live_location_period_seconds",
    "place_name",
)


@register("telegram")
def import_telegram(path: Path) -> Iterator[Conversation]:
    """Yield one conversation per chat (per topic in a forum) of a Telegram Desktop JSON export."""
    with open_export(path) as export:
        for name in _result_files(export):
            where = export.where(name)
            with export.open(name) as fh, export.progress(name) as progress:
                for chat in stream_chats(fh, where, progress=progress):
                    yield from parse_chat(chat, where)


def _result_files(export: Export) -> list[str]:
    if export.kind == "file":
        return export.names()
    names = export.members("result.json")
    if names:
        return names
    if export.members("messages*.html"):
        raise ImportErrorMessage(
            f"{export.path} holds Telegram's HTML export: export again with "
            "'Format: Machine-readable JSON' and import the result.json"
        )
    raise ImportErrorMessage(f"No result.json in {export.path} (a Telegram Desktop JSON export)")


def stream_chats(
    fh: BinaryIO, where: str, chunk: int | None = None, *, progress: FileProgress = NO_PROGRESS
) -> Iterator[dict[str, Any]]:
    """The chat objects of a result.json, one at a time.

    A full "Export Telegram data" is a single JSON file for the whole account, often hundreds
    of MB; parsed at once it takes ~6x its size in memory. This walks the top-level object
    and decodes each chat of `chats.list` / `left_chats.list` on its own, so memory stays
    bounded by the largest chat. A single-chat export is one chat: it is decoded whole.
    """
    stream = JsonStream(fh, where, chunk, progress)
    if not stream.enter_object():
        _not_telegram(where)
    top: dict[str, Any] = {}
    full = False
    for key in stream.members():
        if key in ("chats", "left_chats") and stream.peek() == "{":
            full = True
            stream.advance()
            for sub in stream.members():
                if sub == "list" and stream.peek() == "[":
                    stream.advance()
                    for _ in stream.items():
                        chat = stream.value()
                        if isinstance(chat, dict):
                            yield chat
                else:
                    stream.value()
        else:
            top[key] = stream.value()  # "about", "personal_information", … or one chat's keys
    stream.end()
    if not full:
        if "personal_information" in top and "messages" not in top:
            # "Export Telegram data" with only account information, contacts or sessions
            # ticked: a Telegram export, but not of any chat.
            raise ImportErrorMessage(
                f"{where} is a Telegram export without chats: export again with 'Personal "
                "chats' (and the groups you want) ticked, format 'Machine-readable JSON'"
            )
        # A DiscordChatExporter file or a Messenger thread holds a "messages" list too; only
        # Telegram's chat says its "type" (personal_chat, private_group, saved_messages, …).
        if not isinstance(top.get("messages"), list) or "type" not in top:
            _not_telegram(where)
        yield top


def _not_telegram(where: str) -> NoReturn:
    # Valid or not, this is not a Telegram export.
    raise ImportErrorMessage(
        f'{where} is not a Telegram Desktop export (no "chats" list, nor one chat\'s '
        '"type" and "messages"): use the format name that matches the export'
    )


# Chats Telegram Desktop writes without a "name": titled as its chat list shows them.
_UNNAMED = {"saved_messages": "Saved Messages", "replies": "Replies"}


def parse_chat(chat: dict[str, Any], where: str) -> list[Conversation]:
    """A chat (`name`, `type`, `id`, `messages`) as its Conversation, or one per forum topic."""
    try:
        kind = string_field(chat, "type", "")
    except TypeError as exc:
        name = chat.get("name")
        raise ImportErrorMessage(
            f"{where}: chat {name if isinstance(name, str) else '?'!r} is malformed ({exc})"
        ) from None
    title = chat.get("name") or _UNNAMED.get(kind) or "Telegram chat"
    chat_id = chat.get("id", title)
    is_group = kind in _GROUP_TYPES
    messages = chat.get("messages") or []
    if not isinstance(messages, list):
        raise ImportErrorMessage(f'{where}: chat {title!r} has no "messages" list')
    if kind == "bot_chat":
        # A bot's side is not a person's voice, and the user's side is commands to it.
        conv = Conversation(id=f"telegram:{chat_id}", title=title, participants=[])
        conv.drop("bot chat", len(messages))
        conv.skipped = "bot chat"
        return [conv]
    try:
        topics = _forum_topics(messages)
    except MALFORMED as exc:
        raise ImportErrorMessage(
            f"{where}: chat {title!r} has a malformed message id ({exc})"
        ) from None
    # By topic; a chat without topics is one conversation, under None.
    convs: dict[tuple[str, str] | None, Conversation] = {}
    for i, m in enumerate(messages):
        try:
            topic = topics.get(m.get("id"), _GENERAL) if topics else None
            conv = convs.get(topic)
            if conv is None:
                conv = convs[topic] = Conversation(
                    id=f"telegram:{chat_id}{topic[0] if topic else ''}",
                    title=f"{title} / {topic[1]}" if topic else title,
                    participants=[],
                    is_group=is_group,
                )
            _add_message(conv, m)
        except MALFORMED as exc:
            raise ImportErrorMessage(
                f"{where}: chat {title!r}, message {i + 1} is malformed ({exc})"
            ) from None
    if not convs:  # no messages: still one thread, which the summary reports as without text
        convs[None] = Conversation(
            id=f"telegram:{chat_id}", title=title, participants=[], is_group=is_group
        )
    for conv in convs.values():
        conv.messages.sort(key=lambda msg: msg.timestamp)
        conv.is_group = conv.is_group or people(conv.messages) > 2
    return list(convs.values())


# A forum's topic as (conversation id suffix, title). "General" holds the messages that
# reply to no topic; it keeps the chat's own id, so the chat's messages from before it
# had topics are named as in an export made back then.
_GENERAL = ("", "General")


def _forum_topics(messages: list[Any]) -> dict[Any, tuple[str, str]]:
    """The topic of each message id in a forum (a supergroup with topics); else empty."""
    # Telegram Desktop writes no topic field. A message posted in a topic replies to the
    # topic's "topic_created" service message, a reply in a topic replies to a message in
    # it, and General's messages reply to nothing: a message is in the topic its chain of
    # reply_to_message_id leads to. A chain ending at a message missing from the export
    # (deleted) cannot be placed and goes with General. Service messages carry no
    # reply_to_message_id, so pins and the like in a topic are counted under General.
    found: dict[Any, tuple[str, str]] = {
        m["id"]: (f"/{m['id']}", str(m.get("title") or f"Topic {m['id']}"))
        for m in messages
        if isinstance(m, dict) and m.get("action") == "topic_created" and "id" in m
    }
    if not found:
        return {}
    parent = {
        m["id"]: m.get("reply_to_message_id") for m in messages if isinstance(m, dict) and "id" in m
    }
    for start in parent:
        chain: dict[Any, None] = {}  # in order, and a loop (an edited file) ends the walk
        mid = start
        while mid not in found and mid in parent and mid not in chain:
            chain[mid] = None
            mid = parent[mid]
        topic = found.get(mid, _GENERAL)
        for link in chain:  # the whole chain is in that topic: later walks stop early
            found[link] = topic
    return found


def _add_message(conv: Conversation, m: dict[str, Any]) -> None:
    text = flatten_text(m.get("text", "")).strip()
    if string_field(m, "type", "message") != "message":
        conv.drop("service")  # joins, pins, calls, title/photo changes, …
    elif string_field(m, "media_type", "") == "sticker":
        conv.drop("sticker")
    elif "forwarded_from" in m or "forwarded_from_id" in m:
        # Someone else's words. The key is there even when its value is null: Telegram
        # Desktop writes null for a forward from an account since deleted (it has no name).
        conv.drop("forwarded")
    elif "via_bot" in m:
        conv.drop("bot")  # an inline bot's result (@gif, @wiki, …): the sender typed none of it
    elif only_links(text):
        conv.drop("link")
    elif text:
        from_id = m.get("from_id")
        if type(from_id) is int:
            # Older exports write a user's id as a bare number; newer ones as
            # "user<id>". One person in both (two exports of one chat, imported together)
            # is one person, and --me takes "user<id>" from either.
            from_id = f"user{from_id}"
        sender = m.get("from") or _deleted_account(from_id)
        if not isinstance(sender, str):
            raise TypeError(f'"from" is {json_kind(sender)}, not a string')
        # from_id is "user123456789" (or "channel…" for channel posts); --me may give the number.
        aliases = (from_id[4:],) if isinstance(from_id, str) and from_id.startswith("user") else ()
        if sender not in conv.participants:
            conv.participants.append(sender)
        conv.messages.append(
            Message(
                sender=sender,
                text=text,
                timestamp=_timestamp(m),
                sender_id=str(from_id) if from_id is not None else None,
                aliases=aliases,
            )
        )
    elif "poll" in m:
        conv.drop("poll")
    elif any(key in m for key in _MEDIA_KEYS):
        conv.drop("media")  # photo, voice note, video, file, location or contact, no caption
    else:
        conv.drop("empty")


def _deleted_account(from_id: Any) -> str:
    # A deleted account has no name ("from": null) but keeps its id, and two of them in a
    # group are two people: each is named after its id ("user111" -> "Deleted Account 111").
    if isinstance(from_id, str) and from_id:
        return f"Deleted Account {from_id.removeprefix('user')}"
    return "Deleted Account"


def flatten_text(text: Any) -> str:
    """Telegram's `text`: a string, or a list of strings and entity objects {type, text}."""
    if isinstance(text, str):
        return text
    if isinstance(text, list):
        return "".join(_part_text(part, j) for j, part in enumerate(text, 1))
    if text is None:  # as if the key were absent: no words
        return ""
    # A number or an object (an export edited by a tool) is no text Telegram writes: dropping
    # the message as empty would hide that the file is broken. The caller names the message.
    raise TypeError(f'"text" is {json_kind(text)}, not a string or a list')


def _part_text(part: Any, j: int) -> str:
    # A run of plain text, or an entity (bold, link, mention, …), which always holds its text.
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return part["text"]
    # Anything else was written by a tool, not Telegram: skipping it would cut words out of
    # the message without a word. The caller names the message.
    if not isinstance(part, dict):
        what = json_kind(part)
    elif "text" in part:
        what = f'an object whose "text" is {json_kind(part["text"])}'
    else:
        what = 'an object without "text"'
    raise TypeError(f'part {j} of "text" is {what}, not a string or an object with a "text" string')


def _timestamp(m: dict[str, Any]) -> dt.datetime:
    # `date_unixtime` (exports since 2022) is exact UTC; `date` is the exporting computer's
    # local time without an offset, so it is only the fallback.
    unix = m.get("date_unixtime")
    if unix not in (None, ""):
        return _EPOCH + dt.timedelta(seconds=int(unix))
    stamp = dt.datetime.fromisoformat(m["date"])
    if stamp.tzinfo is not None:  # not written by Telegram, but naive UTC like the rest
        stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
    return stamp
