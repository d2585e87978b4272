"""DiscordChatExporter exports (JSON or CSV, one file per channel), a zip or folder of them."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

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
from phischer.importers.localdates import (
    DATE,
    CalendarError,
    date_order,
    latin_am_pm,
    plain,
    to_datetime,
)
from phischer.importers.progress import FileProgress

# Only people's own messages; every other DiscordChatExporter message type (GuildMemberJoin,
# ChannelPinnedMessage, RecipientAdd, Call, ThreadCreated, GuildBoost, …) is a system notice.
_KEPT_TYPES = {"Default", "Reply"}
_CSV_COLUMNS = ("AuthorID", "Author", "Date", "Content", "Attachments", "Reactions")
# DiscordChatExporter 2.x (2018-2019) wrote ";"-separated CSV, each field followed by ";",
# without the author's id: "Author;Date;Content;Attachments;".
_OLD_CSV_COLUMNS = ("Author", "Date", "Content", "Attachments")
# `--partition` splits one channel into "NAME.json", "NAME [part 2].json", …
_PART = re.compile(r" \[part (\d+)\]$")
# The default output name (ExportRequest.GetDefaultOutputFileName): "Guild - Channel [id]",
# with " - Category" (the channel's parent) after the guild when it has one, then
# " (after 2024-01-01)", " (before …)" or " (… to …)" when a date range was exported (and
# `--partition`'s " [part N]", cut off first). Every copy of a channel names its id.
_DEFAULT_NAME = re.compile(
    r"^(?P<guild>.+?)(?: - (?P<category>.+))? - (?P<channel>.+) \[(?P<id>\d+)\](?: \([^()]*\))?$"
)
# Discord's markup, left as typed when exported with `--markdown false`: mentions of a user
# (<@id>, <@!id>), a channel (<#id>) or a role (<@&id>), custom emoji (<:name:id>,
# animated <a:name:id>) and timestamps (<t:unix> or <t:unix:style>).
_MARKUP = re.compile(
    r"<(?:@!?(?P<user>\d+)|a?:(?P<emoji>\w+):\d+|#(?P<channel>\d+)|@&(?P<role>\d+)"
    r"|t:(?P<unix>-?\d{1,12})(?::(?P<style>[tTdDfFR]))?)>"
)
_EPOCH = dt.datetime(1970, 1, 1)
# A JSON author's "discriminator" from before 2023 (the 1987 of river.song#1987); "0000"
# is what DiscordChatExporter writes for a user with a new-style username.
_DISCRIMINATOR = re.compile(r"(?!0000)\d{4}")
# How a <t:…> timestamp is written, by its style: date only, time only, else both.
_STAMP_FORMATS = {"d": "%Y-%m-%d", "D": "%Y-%m-%d", "t": "%H:%M UTC", "T": "%H:%M:%S UTC"}
# CSV has no message type column: system notices appear as DiscordChatExporter's fallback
# sentences in Content (PlainTextMessageExtensions.GetFallbackContent).
_CSV_SYSTEM = re.compile(
    r"^(?:Joined the server\.|Pinned a message\.|Started a thread\.|Changed the channel icon\."
    r"|Changed the channel name(?::.*|\.)|Started a call that lasted [\d,]+ minutes\."
    r"|Added .+ to the group\.|Added a recipient\.|Removed .+ from the group\."
    r"|Removed a recipient\.|Left the group\.|.+'s poll (?:.+ )?has closed\.|A poll has closed\.)$",
    re.DOTALL,
)
# Old DiscordChatExporter CSV dates ("dd-MMM-yy hh:mm tt"); newer ones use the locale's
# short date and time ("g": 8/27/2020 6:46 PM, 27/08/2020 18:46, 27.08.2020 18:46, Korean
# "2024. 3. 1. 오후 8:00", Czech "1. 3. 2024 20:00", Arabic "١‏/٣‏/٢٠٢٤ ٨:٠٠ م"), read by
# `localdates` as WhatsApp's are.
_NAMED_MONTH = re.compile(r"^\d{1,2}-[A-Za-z]{3}-\d{2,4} \d{1,2}:\d{2}(?::\d{2})?(?: [AP]M)?$")
_NUMERIC = re.compile(rf"^(?P<date>{DATE})[,\u060cT ]+(?P<time>.+)$")
# Discord's own data package ("Request all of my data"): Messages/ (messages/ in older
# packages) holds a folder c<channel id>/ per channel with a channel.json beside the
# messages.json (a list of {"ID", "Timestamp", "Contents", "Attachments"}) or, in older
# packages, messages.csv with those columns. Only the owner's messages are in it.
_PACKAGE_CHANNEL = re.compile(r"(?:^|/)c\d+/[^/]+$")
_PACKAGE_JSON = re.compile(rb"^(?:\xef\xbb\xbf)?\s*\[\s*\{")
_PACKAGE_KEYS = (b'"ID"', b'"Timestamp"', b'"Contents"')
_PACKAGE_CSV = re.compile(rb"^(?:\xef\xbb\xbf)?ID,Timestamp,Contents\b")
# How DiscordChatExporter's own files begin: JSON with "guild" first, CSV with its header.
_EXPORT_HEAD = re.compile(
    rb'^(?:\xef\xbb\xbf)?\s*\{\s*"guild"\s*:|^(?:\xef\xbb\xbf)?(?:AuthorID,Author,|Author;Date;)'
)


@register("discord")
def import_discord(path: Path) -> Iterator[Conversation]:
    """Yield one conversation per exported channel found at `path` (.json/.csv, zip or folder)."""
    with open_export(path) as export:
        for group in _channel_groups(_members(export)):
            conv: Conversation | None = None
            for member in group:
                where = export.where(member)
                with export.progress(member) as progress:
                    if member.lower().endswith(".csv"):
                        text = export.read_text(member)
                        conv = _parse_csv(text, where, member, conv, progress)
                    else:
                        with export.open(member) as fh:
                            stream = JsonStream(fh, where, progress=progress)
                            conv = _parse_json(stream, member, conv)
            if conv is not None:
                conv.messages.sort(key=lambda m: m.timestamp)  # `--reverse` runs newest-first
                conv.participants = list(dict.fromkeys(m.sender for m in conv.messages))
                conv.is_group = conv.is_group or people(conv.messages) > 2
                yield conv


def _parse_json(stream: JsonStream, member: str, conv: Conversation | None) -> Conversation:
    """Read one channel's .json, its messages one at a time, into `conv` (or a new one)."""
    where = stream.where
    if not stream.enter_object():
        _not_an_export(where)
    top: dict[str, Any] = {}
    for key in stream.members():
        # DiscordChatExporter writes "guild" and "channel" before "messages" (and only
        # "messageCount" after): each message is then decoded and kept on its own, so a
        # 250 MB channel never sits in memory whole. In any other order the keys are held
        # until the end, as json.loads would hold them.
        if key == "messages" and "guild" in top and "channel" in top and stream.peek() == "[":
            top["messages"] = []  # a list: read one message at a time just below
            conv = _conversation(top, where, member, conv)
            stream.advance()
            _add_json_messages(conv, (stream.value() for _ in stream.items()), top, where)
        else:
            top[key] = stream.value()
    stream.end()
    conv = _conversation(top, where, member, conv)
    _add_json_messages(conv, top["messages"], top, where)
    return conv


def _not_an_export(where: str) -> NoReturn:
    # Other exports have a "messages" list too (Messenger, Telegram): only DiscordChatExporter
    # writes a "channel" object beside it. Without that check their messages would all be
    # dropped as system notices and the import would end in a misleading "--me" error.
    raise ImportErrorMessage(
        f'{where}: not a DiscordChatExporter JSON export (no "channel" object and "messages" list)'
    )


def _conversation(
    top: dict[str, Any], where: str, member: str, conv: Conversation | None
) -> Conversation:
    """The channel's conversation (`conv` if a part before made it), once its keys check out."""
    if not isinstance(top.get("messages"), list) or not isinstance(top.get("channel"), dict):
        _not_an_export(where)
    channel = top["channel"]
    guild = top.get("guild") or {}
    if not isinstance(guild, dict) or not isinstance(channel.get("type", ""), str):
        raise ImportErrorMessage(
            f'{where}: not a DiscordChatExporter JSON export ("guild" is not an object or the '
            'channel "type" not a string)'
        )
    if conv is None:
        name = channel.get("name") or _PART.sub("", PurePosixPath(member).stem)
        direct = guild.get("name") == "Direct Messages" or channel.get("type", "").startswith(
            "Direct"
        )
        conv = Conversation(
            id=f"discord:{channel.get('id') or name}",
            title=name if direct or not guild.get("name") else f"{guild['name']} / {name}",
            participants=[],
            # A server channel is a group even when only two people spoke in it.
            is_group=channel.get("type", "DirectTextChat") != "DirectTextChat",
        )
    return conv


def _add_json_messages(
    conv: Conversation, messages: Iterable[Any], top: dict[str, Any], where: str
) -> None:
    channel = top["channel"]
    here = (str(channel.get("id") or ""), str(channel.get("name") or ""))
    # A message is decoded by `messages` itself, outside the try: a broken file is its own
    # error (ImportErrorMessage is a ValueError, which MALFORMED would catch).
    for i, m in enumerate(messages):
        try:
            _add_json_message(conv, m, here)
        except MALFORMED as exc:
            raise ImportErrorMessage(f"{where}: message {i + 1} is malformed ({exc})") from None


def _add_json_message(conv: Conversation, m: dict[str, Any], here: tuple[str, str]) -> None:
    author = m.get("author") or {}
    content = (m.get("content") or "").strip()
    if string_field(m, "type", "Default") not in _KEPT_TYPES:
        conv.drop("system")
    elif author.get("isBot"):
        conv.drop("bot")
    elif only_links(content):
        conv.drop("link")  # a GIF from the picker (tenor.com) or a shared link: not written
    elif content:
        stamp = dt.datetime.fromisoformat(m["timestamp"])
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
        name = author.get("name") or author.get("nickname") or "Unknown"
        nickname = author.get("nickname")
        discriminator = author.get("discriminator")
        if not isinstance(name, str) or not isinstance(nickname, str | None):
            raise TypeError("the author's name is not a string")
        if "<" in content:
            # The names of the users it mentions are in its "mentions": their nickname on
            # the server first, as DiscordChatExporter shows them when it renders markdown.
            mentions = m.get("mentions")
            users = {
                str(u.get("id")): u.get("nickname") or u.get("name")
                for u in (mentions if isinstance(mentions, list) else [])
                if isinstance(u, dict)
            }
            content = _render_markup(content, users, here)
        conv.messages.append(
            Message(
                sender=name,
                text=content,
                timestamp=stamp,
                sender_id=str(author["id"]) if author.get("id") else None,
                aliases=_json_aliases(name, nickname, discriminator),
            ),
        )
    elif m.get("attachments"):
        conv.drop("attachment")
    elif m.get("stickers"):
        conv.drop("sticker")
    elif m.get("forwardedMessage"):
        conv.drop("forwarded")
    else:
        conv.drop("empty")  # embeds only (link previews) or nothing at all


def _json_aliases(name: str, nickname: str | None, discriminator: Any) -> tuple[str, ...]:
    """The other names --me may give for a JSON author: nickname, and the old `name#1234`."""
    aliases = (nickname,) if nickname and nickname != name else ()
    # Before 2023 a user was "name#1234", and JSON writes the number apart; a CSV export
    # writes it whole (see _without_discriminator), so either export takes that --me.
    if isinstance(discriminator, str) and _DISCRIMINATOR.fullmatch(discriminator):
        aliases += (f"{name}#{discriminator}",)
    return aliases


def _parse_csv(
    text: str, where: str, member: str, conv: Conversation | None, progress: FileProgress
) -> Conversation:
    rows = _csv_rows(text, where)
    # Dates are written in the exporting machine's locale: decide day/month order per file.
    numeric = [m["date"] for _, row in rows if (m := _NUMERIC.match(_clean_date(row[2])))]
    twelve = any(latin_am_pm(_clean_date(row[2])) for _, row in rows[:50])
    order = date_order(numeric, twelve_hour=twelve, where=where)
    stem = _PART.sub("", PurePosixPath(member).stem)
    default = _DEFAULT_NAME.match(stem)
    if conv is None:
        conv = Conversation(
            id=f"discord:{default['id'] if default else stem}",
            title=(
                default["channel"]
                if default and default["guild"] == "Direct Messages"
                else f"{default['guild']} / {default['channel']}"
                if default
                else stem
            ),
            participants=[],
            is_group=bool(default and default["guild"] != "Direct Messages"),
        )
    here = (default["id"], default["channel"]) if default else ("", "")
    users: dict[str, str] | None = None
    for n, (author_id, author, date, content, attachments, *_rest) in progress.through(rows):
        content = content.strip()
        if _CSV_SYSTEM.match(content):
            conv.drop("system")
        elif only_links(content):
            conv.drop("link")
        elif content:
            try:
                stamp = _csv_datetime(date, order)
            except CalendarError as exc:
                raise ImportErrorMessage(f"{where}: line {n}: {exc}") from None
            except (ValueError, OverflowError):
                raise ImportErrorMessage(f"{where}: line {n}: unrecognised date {date!r}") from None
            name = _without_discriminator(author)
            if "<" in content:
                # CSV has no "mentions": a user mentioned is named as in their own rows.
                if users is None:
                    users = {row[0]: _without_discriminator(row[1]) for _, row in rows}
                content = _render_markup(content, users, here)
            conv.messages.append(
                Message(
                    sender=name,
                    text=content,
                    timestamp=stamp,
                    sender_id=author_id or None,
                    aliases=(author,) if author != name else (),
                ),
            )
        elif attachments.strip():
            conv.drop("attachment")
        else:
            conv.drop("empty")  # stickers and embeds leave Content empty in CSV
    return conv


def _csv_rows(text: str, where: str) -> list[tuple[int, list[str]]]:
    """(line number, [author id, author, date, content, attachments, …]) for each row."""
    old = text.startswith(";".join(_OLD_CSV_COLUMNS) + ";")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=";" if old else ",")
    header = next(reader, None)
    if not old and (header is None or tuple(header[: len(_CSV_COLUMNS)]) != _CSV_COLUMNS):
        raise ImportErrorMessage(
            f"{where}: not a DiscordChatExporter CSV export (expected the header "
            f"{','.join(_CSV_COLUMNS)})"
        )
    wanted = len(_OLD_CSV_COLUMNS if old else _CSV_COLUMNS)
    rows: list[tuple[int, list[str]]] = []
    line = reader.line_num + 1
    for row in reader:  # quoted Content may span lines: number rows by their first line
        if row:
            if len(row) < wanted:
                raise ImportErrorMessage(
                    f"{where}: line {line}: expected {wanted} columns, got {len(row)}"
                )
            # An old row has no author id: the author is known by name alone.
            rows.append((line, ["", *row[:wanted], ""] if old else row))
        line = reader.line_num + 1
    return rows


def _without_discriminator(author: str) -> str:
    # Before 2023 usernames carried a discriminator ("name#1234"); --me may use either.
    name, _, discriminator = author.rpartition("#")
    return name if name and discriminator.isdigit() and len(discriminator) == 4 else author


def _render_markup(content: str, users: dict[str, Any], here: tuple[str, str]) -> str:
    """Discord's raw markup as people read it: `<@id>` -> `@name`, `<:pepe:id>` -> `:pepe:`, …"""
    # The way DiscordChatExporter writes it when it renders markdown (its default), so an
    # export made with `--markdown false` reads the same. Only the export's own channel
    # (`here`: id, name) and the mentioned users are known; other channels and roles are
    # only "#channel" and "@role". A timestamp is written in UTC, whatever its style.

    def token(m: re.Match[str]) -> str:
        if m["user"]:
            name = users.get(m["user"])
            return f"@{name if isinstance(name, str) and name else 'Unknown'}"
        if m["emoji"]:
            return f":{m['emoji']}:"
        if m["channel"]:
            return f"#{here[1] if here[0] == m['channel'] and here[1] else 'channel'}"
        if m["role"]:
            return "@role"
        try:
            when = _EPOCH + dt.timedelta(seconds=int(m["unix"]))
        except OverflowError:  # past year 9999: not a date, left as typed
            return m[0]
        # f, F and R (relative: "in 2 hours") as the date and time they stand for
        return f"{when:{_STAMP_FORMATS.get(m['style'], '%Y-%m-%d %H:%M UTC')}}"

    return _MARKUP.sub(token, content)


def _clean_date(value: str) -> str:
    # .NET on ICU 72+ writes a narrow no-break space before AM/PM; Arabic locales write their
    # own digits with bidi marks between them.
    value = plain(value.replace("\u202f", " ").replace("\u00a0", " ").strip())
    # Finnish may put "klo" ("at") between date and time, as WhatsApp's exports do.
    return value.replace(" klo ", " ")


def _csv_datetime(value: str, order: str) -> dt.datetime:
    value = _clean_date(value)
    if _NAMED_MONTH.match(value):
        for fmt in ("%d-%b-%y %I:%M %p", "%d-%b-%y %H:%M", "%d-%b-%Y %I:%M %p", "%d-%b-%Y %H:%M"):
            try:
                return dt.datetime.strptime(value, fmt)
            except ValueError:
                continue
    try:
        stamp = dt.datetime.fromisoformat(value)
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
        return stamp
    except ValueError:
        pass
    m = _NUMERIC.match(value)
    if m is None:
        raise ValueError(value)
    return to_datetime(m["date"], m["time"], order)


def _channel_groups(members: list[str]) -> Iterator[list[str]]:
    """Group partitioned files of one channel ("X.json", "X [part 2].json") in part order."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in members:
        member = PurePosixPath(name)
        m = _PART.search(member.stem)
        key = str(member.parent / _PART.sub("", member.stem))
        groups.setdefault(f"{key}\0{member.suffix.lower()}", []).append(
            (int(m[1]) if m else 1, name)
        )
    for key in sorted(groups):
        stem, ext = key.split("\0")
        # The same channel exported as both JSON and CSV: JSON carries more, so it wins.
        if ext == ".csv" and f"{stem}\0.json" in groups:
            continue
        yield [name for _, name in sorted(groups[key])]


def _members(export: Export) -> list[str]:
    """Every .json/.csv export in a folder or zip (or the single file given)."""
    if export.kind == "file":
        if export.path.suffix.lower() not in (".json", ".csv"):
            raise ImportErrorMessage(
                f"{export.path}: expected a DiscordChatExporter .json or .csv export, "
                f"a zip or a folder of them{_format_hint([export.path.name])}"
            )
        _refuse_data_package(export)
        return export.names()
    _refuse_data_package(export)
    names = [
        n
        for n in export.names()
        if n.lower().endswith((".json", ".csv"))
        # Downloaded media sit in "<export>_Files" folders next to each export.
        and not any(part.endswith("_Files") for part in n.split("/")[:-1])
    ]
    if not names:
        raise ImportErrorMessage(
            f"No DiscordChatExporter .json or .csv file in {export.path}"
            f"{_format_hint(export.names())}"
        )
    return names


def _format_hint(names: list[str]) -> str:
    """What to do, for an error about `names` holding no export phischer reads; or ""."""
    # DiscordChatExporter's default format is HTML (also PlainText, .txt): neither is read,
    # and the user only needs to export again, so the error says so when it finds one.
    if any(n.lower().endswith((".html", ".htm", ".txt")) for n in names):
        return " (HTML and TXT exports are not read: export the channels again as JSON)"
    return ""


def _refuse_data_package(export: Export) -> None:
    """Stop with one clear line when `export` is, or holds, Discord's own data package."""
    # Without this the package fails on its first file, "not a DiscordChatExporter export",
    # and nothing says why. Beside DiscordChatExporter exports it is refused too, rather
    # than skipped: its other folders (Account/, Servers/, Activity/, …) are JSON that no
    # rule tells from a stray file, and the user learns why it is of no use.
    names = export.names()
    found = next((n for n in names if _is_package_messages(export, n)), None)
    if found is None:
        return
    why = (
        f'{export.where(found)}: Discord\'s own data package ("Request all of my data") holds '
        "only your side of each chat, so it cannot train replies: "
    )
    # Files in the package's channel folders (channel.json) need not be looked at.
    others = (n for n in names if not _PACKAGE_CHANNEL.search(n))
    if any(_is_chat_exporter_file(export, n) for n in others):
        raise ImportErrorMessage(
            f"{why}move it out of {export.path} and import the DiscordChatExporter exports there"
        )
    raise ImportErrorMessage(f"{why}export the DMs and channels with DiscordChatExporter instead")


def _is_package_messages(export: Export, name: str) -> bool:
    """Whether `name` is a channel's messages of Discord's own data package, by its content."""
    # A DiscordChatExporter export saved as messages.json is still an export: the name only
    # spares reading the head of every other file.
    base = name.rpartition("/")[2].lower()
    if export.kind != "file" and base not in ("messages.json", "messages.csv"):
        return False
    head = export.read_head(name)
    if _PACKAGE_JSON.match(head):
        return all(key in head for key in _PACKAGE_KEYS)
    return _PACKAGE_CSV.match(head) is not None


def _is_chat_exporter_file(export: Export, name: str) -> bool:
    """Whether `name` begins as a DiscordChatExporter JSON or CSV export does."""
    if not name.lower().endswith((".json", ".csv")):
        return False
    return _EXPORT_HEAD.match(export.read_head(name, 512)) is not None
