"""WhatsApp "Export chat" (without media): a `.txt`, the zip holding it, or a folder of them."""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from phischer.importers.base import (
    Conversation,
    ImportErrorMessage,
    Message,
    only_links,
    people,
    register,
)
from phischer.importers.files import Export, open_export
from phischer.importers.localdates import (
    DATE,
    MARK,
    TIME,
    CalendarError,
    date_order,
    latin_am_pm,
    to_datetime,
)
from phischer.importers.progress import NO_PROGRESS, FileProgress

# Bidi marks WhatsApp sprinkles into exports: U+200E/U+200F before system and media lines,
# U+202A…U+202E around phone numbers used as names, U+2066…U+2069 isolates.
_BIDI = dict.fromkeys(
    map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
)

# The date and time as the phone's locale writes them (see `localdates`), then Android's " - "
# or iOS's brackets. Between date and time: a comma and a space (an Arabic comma in Arabic and
# Persian, nothing in some locales), or Finnish's "klo" ("31.12.2023 klo 21.15").
_AT = rf"(?:{MARK}[,\u060c]?\s{MARK}|\sklo\s)"
# Android: "12/31/23, 9:15 PM - Name: text"
_ANDROID = re.compile(rf"^(?P<date>{DATE}){_AT}(?P<time>{TIME}){MARK}\s[-\u2013]\s(?P<rest>.*)$")
# iOS: "[31/12/2023, 21:15:02] Name: text"
_IOS = re.compile(rf"^\[(?P<date>{DATE}){_AT}(?P<time>{TIME}){MARK}\]\s(?P<rest>.*)$")
# iOS before brackets (exports from 2015-2018 are still in people's backups): the time
# ends with ":" ("13.06.18 21.25.15: Name: text"), or nothing in some locales ("13. 6.
# 2018. 21:25:15 Name: text"). Tried only in a file whose first message line is written so
# (see `parse_chat`): in any other file such a line is someone's text.
_OLD_IOS = re.compile(rf"^(?P<date>{DATE}),?\s(?P<time>{TIME}):?\s(?P<rest>.*)$")

# What WhatsApp writes in place of what "Export chat → Without media" left out. It writes in
# the phone's language: iOS marks its own lines with U+200E (dropped whatever the language,
# see `_add_message`), Android does not, so its placeholders are listed in the languages
# most exports come in (English, Spanish, German, French, Portuguese, Italian, Dutch).
_MEDIA = re.compile(
    r"^<(?:[^<>]*omitted|Multimedia omitido|Medien ausgeschlossen|Médias omis"
    r"|Arquivo de mídia oculto|Mídia oculta|Media omessi|Media weggelaten)>$"  # Android
    r"|^(?:image|video|audio|sticker|GIF|Contact card|video note) omitted$"  # iOS
    r"|^.+ document omitted$"  # iOS: "Report.pdf • 3 pages document omitted"
    r"|^(?:location|Standort|ubicación): https?://\S+$"  # a map link, not words
    r"|^live location shared$"  # Android
    # Android writes "null" for what it cannot export: a view-once photo, video or voice
    # message (only that word, in lower case, in any language).
    r"|^(?-i:null)$",
    re.IGNORECASE,
)
# What an export "with media" writes for a file, always at the end of the text (so tested only
# on a text ending in ")" or ">", which skips this scan for nearly every message).
_FILE = re.compile(
    # iOS: "<attached: 00000001-PHOTO-2019-01-01-12-00-00.jpg>", after a document's name and
    # pages ("Report • 2 pages <attached: 00000002-Report.pdf>"); before 2018
    # "2015-08-04-PHOTO-00004762.jpg <attached>"
    r"^(?:.+ )?<attached: [^<>]*>$|^\S.*\.\w{2,5} <attached>$"
    # Android: "IMG-….jpg (file attached)"; uploaded audio has no extension
    # ("AUD-20190101-WA0000. (file attached)")
    r"|^\S.*\.(?:\w{2,5})? \((?:file attached|Datei angehängt|fichier joint|archivo adjunto"
    r"|arquivo anexado)\)$",
    re.IGNORECASE,
)
# A shared place: iOS writes "Helsinki (Helsinki): <map link>", Android the place's name and
# address on lines of their own, then "location: <map link>" in the phone's language. Tested
# on the last line of a text holding a map link, whose coordinates no one types.
_PLACE = re.compile(
    r"(?:^|\n)(?:[^\n]* \([^\n()]*\)|[^\s:]+): https?://maps\.google\.com/\?q=[-\d.]+,[-\d.]+$"
)
_DELETED = re.compile(
    r"^(?:This message was deleted(?: by .+)?|You deleted this message"
    r"|Se eliminó este mensaje|Eliminaste este mensaje|Este mensaje fue eliminado"
    r"|Diese Nachricht wurde gelöscht|Du hast diese Nachricht gelöscht"
    r"|Ce message a été supprimé|Vous avez supprimé ce message"
    r"|Esta mensagem foi apagada|Você apagou esta mensagem|Mensagem apagada"
    r"|Questo messaggio è stato eliminato|Hai eliminato questo messaggio)\.?$"
)
# A call is a notice only when it is the whole text, as WhatsApp writes it ("Missed voice call,
# Tap to call back", "Video call, 1 hr 5 min", "Voice call, No answer"): "video call at 8?"
# is someone asking.
_CALL = re.compile(
    r"(?:(?:Missed|Silenced) (?:group )?(?:voice |video )?call|(?:Group )?(?:Voice|Video) call)"
    r"(?:, (?:Tap to call back|Click to call back|No answer|Answered on other device"
    r"|\d+ (?:hrs?|hours?|mins?|secs?)(?: \d+ (?:mins?|secs?))*))?\.?"
)
# Android appends the edit notice in the phone's language (iOS: see _IOS_NOTE).
_EDITED = re.compile(
    r"\s*<(?:This message was edited|Diese Nachricht wurde bearbeitet|Se editó este mensaje\.?"
    r"|Ce message a été modifié|Mensagem editada|Esta mensagem foi editada"
    r"|Questo messaggio è stato modificato|Dit bericht is bewerkt)>$"
)
# iOS puts a U+200E mark before a notice it appends to a message ("qué tal \u200e<Se editó
# este mensaje.>"), in any language: cut while the mark still shows where it starts. Only
# after the text itself: a line that is nothing but "\u200e<attached: …>" stays media, and so
# does a document's "Report • 2 pages \u200e<attached: …>" (in English: see _FILE).
_IOS_NOTE = re.compile(r"(?<=[^\s\u200e])\s*\u200e<(?!attached: )[^<>\n]*>\s*$")
# Android polls: the question under "POLL:", then "OPTION: … (2 votes)" lines, in the phone's
# language (SONDAGEM is Portugal's word, ENQUETE Brazil's).
_POLL = re.compile(
    r"(?:POLL|UMFRAGE|ENCUESTA|SONDAGE|SONDAGGIO|ENQUETE|SONDAGEM|PEILING):\n"
    r".*^(?:OPTION|OPCIÓN|OPZIONE|OPÇÃO|OPTIE): ",
    re.MULTILINE | re.DOTALL,
)
# The encryption notice and its relatives; on iOS they come as a message "from" the chat's name.
_NOTICE = re.compile(
    r"^(?:Messages and calls are end-to-end encrypted"
    # before 2020: "Messages to this chat and calls are now secured …", and in 2016
    # "Messages you send to this group are now secured …"
    r"|Messages (?:you send )?to this (?:group|chat)(?: and calls)? are now secured with "
    r"end-to-end encryption"
    r"|Your security code with .+ changed|.+'s security code changed"
    r"|Disappearing messages were turned (?:on|off)"
    r"|Waiting for this message\. (?:This may take a while|Check your phone)\.)"
)
# Android system lines that still look like "Name: text" because the event text contains
# ": " (a group name or subject in quotes, a name) — their would-be sender, the part before
# the first ": ", carries one of these phrases, which no contact's name does. Written in the
# phone's language: the "you" forms ("Cambiaste …", "Hai …") start the line, the others
# follow the name of whoever did it.
_SYSTEM_PHRASE = re.compile(
    # English: 'Mara changed the subject from "Lake" to "Lakehouse: NYE"'
    r" (?:changed the (?:subject|group description|group name)|changed this group's"
    r"|created group|added|removed|left|joined using|changed their phone number"
    r"|pinned a message|deleted this group's)"
    # Spanish: 'Mara creó el grupo "…"', 'Cambiaste el asunto de "…" a "…"', 'Mara añadió a …'
    r"|(?:^| )(?:creó|[Cc]reaste) el grupo"
    r"|(?:^| )(?:cambió|[Cc]ambiaste) (?:el (?:asunto|nombre del grupo|ícono|icono)"
    r"|la (?:descripción|foto) del grupo)"
    r"|(?:^| )(?:añadió|agregó|[Aa]ñadiste|[Aa]gregaste|eliminó|[Ee]liminaste) a "
    r"| salió del grupo"
    # German: 'Mara hat die Gruppe „…“ erstellt', 'Du hast den Betreff von „…“ zu „…“ geändert'
    r"| ha(?:t|st) (?:die Gruppe (?:[„\"“]|verlassen)|den (?:Betreff|Gruppennamen) "
    r"|das Gruppenbild|die Gruppenbeschreibung)"
    # French: 'Mara a créé le groupe « … »', 'Vous avez modifié le sujet de « … » en « … »'
    r"|(?: a|[Vv]ous avez) (?:créé le groupe|(?:modifié|changé|remplacé) (?:le sujet"
    r"|le nom du groupe|l['’]icône|la photo du groupe|la description du groupe)|ajouté |retiré )"
    r"| est parti"
    # Portuguese: 'Mara criou o grupo "…"', 'Você mudou o assunto de "…" para "…"'
    r"| criou o grupo| (?:mudou|alterou) (?:o (?:assunto|nome do grupo)"
    r"|a (?:imagem|descrição) (?:deste|do) grupo)| (?:adicionou|removeu) | saiu"
    # Italian: 'Mara ha creato il gruppo "…"', 'Hai cambiato l'oggetto da "…" a "…"'
    r"|(?:^| )(?:ha|[Hh]ai) (?:creato il gruppo|(?:cambiato|modificato) (?:l['’]oggetto"
    r"|il nome del gruppo|l['’]immagine|la descrizione del gruppo)|aggiunto |rimosso "
    r"|abbandonato)"
    r"| è uscit[oa]"
    # Dutch: 'Mara heeft groep "…" gemaakt', 'Je hebt de groepsnaam gewijzigd van "…" naar "…"'
    r"|(?: heeft|[Jj]e hebt) (?:groep [\"“]|het onderwerp |de groeps(?:naam|afbeelding|foto"
    r"|beschrijving) |de groep verlaten)",
)
# German and Dutch put the verb last ("Mara hat Ines hinzugefügt", "Mara heeft Ines
# toegevoegd"): when the name added or removed holds ": ", the would-be sender has the
# auxiliary verb and the would-be text ends with the participle.
_AUXILIARY = re.compile(r"(?:^| )(?:hat|hast|heeft|hebt) ")
_ADDED_REMOVED = re.compile(r" (?:hinzugefügt|entfernt|toegevoegd|verwijderd)\.?$")
# How WhatsApp names an export in the phone's language, before the chat's name: Android's
# "WhatsApp Chat with Sam.txt" ("WhatsApp Chat mit", "Chat de WhatsApp con", "Discussion
# WhatsApp avec", "Conversa do WhatsApp com", "Chat WhatsApp con", "WhatsApp-chat met"),
# iOS's "WhatsApp Chat - Sam.zip".
_CHAT_NAME = re.compile(
    r"^(?:WhatsApp[- ]Chat(?: with| mit| met| con| avec| -)?|Chat (?:de |di )?WhatsApp con"
    r"|Discussion WhatsApp avec|Conversa (?:do|no) WhatsApp com)\s+",
    re.IGNORECASE,
)


@dataclass
class _Header:
    date: str
    time: str
    rest: str
    lineno: int
    marked: bool  # the line or its body began with U+200E: WhatsApp's own (system/media) line


# What a browser or file manager appends to a file saved beside one of the same name.
_COPY_NUMBER = re.compile(r" \(\d{1,3}\)$")


_NOT_A_CONTACT = re.compile(r"^~\s+")

# How a line that should be a message line begins: "[…]" (iOS) or what comes before " - ".
_LEADING_STAMP = re.compile(r"\[[^\]]*\]|.*?(?= - )")


class _NoMessageLines(ImportErrorMessage):
    """A .txt without a single message line: not a chat, e.g. a note shared beside one."""


@register("whatsapp")
def import_whatsapp(path: Path) -> Iterator[Conversation]:
    """Yield one conversation per WhatsApp chat export found at `path` (.txt, zip or folder)."""
    with open_export(path) as export:
        if export.kind == "file":
            name = export.names()[0]
            title = _title(name, path.parent.name)
            yield _read_chat(export, name, title)
        elif export.kind == "zip":
            yield from _zip_conversations(export, path)
        else:
            yield from _folder_conversations(export, path)


def parse_chat(
    text: str, *, where: str, title: str, progress: FileProgress = NO_PROGRESS
) -> Conversation:
    """Parse the text of one exported chat; `where` names the file in error messages."""
    conv = Conversation(id=f"whatsapp:{title}", title=title, participants=[])
    entries: list[tuple[_Header, list[str]]] = []
    lines = text.lstrip("\ufeff").split("\n")
    # Finding the message lines is about a quarter of the work, making the messages the rest.
    old_ios = False  # the file's first message line is in the pre-2018 iOS form
    for lineno, raw in enumerate(progress.through(lines, 0.0, 0.25), start=1):
        line = raw.rstrip("\r")
        header = _match_header(line, lineno, old_ios)
        if header is None and not entries:
            header = _match_header(line, lineno, True)
            old_ios = header is not None
        if header is not None:
            entries.append((header, [header.rest]))
        elif entries:
            entries[-1][1].append(line)  # a multi-line message goes on
        elif line.strip():
            conv.drop("unrecognised")
    if not entries:
        raise _no_message_lines(text, where)
    order = date_order(
        (h.date for h, _ in entries), twelve_hour=latin_am_pm(entries[0][0].time), where=where
    )
    for header, lines in progress.through(entries, 0.25, 1.0):
        try:
            stamp = to_datetime(header.date, header.time, order)
        except CalendarError as exc:
            raise ImportErrorMessage(f"{where}: line {header.lineno}: {exc}") from None
        except ValueError:
            raise ImportErrorMessage(
                f"{where}: line {header.lineno}: impossible date {header.date} {header.time}"
            ) from None
        _add_message(conv, header, "\n".join(lines), stamp)
    conv.is_group = people(conv.messages) > 2
    return conv


def _read_chat(export: Export, name: str, title: str) -> Conversation:
    """One chat file of the export, parsed (with a progress bar when it is big)."""
    with export.progress(name) as progress:
        return parse_chat(
            export.read_text(name), where=export.where(name), title=title, progress=progress
        )


def _no_message_lines(text: str, where: str) -> _NoMessageLines:
    """The error for a text without a message line, quoting how its first line begins."""
    lineno, first = next(
        (
            (n, line.strip())
            for n, line in enumerate(text.lstrip("\ufeff").split("\n"), start=1)
            if line.strip()
        ),
        (1, ""),
    )
    # Its date and time are what could not be read: quote them (repr shows the invisible
    # marks), not the sender's name or number after them.
    stamp = _LEADING_STAMP.match(first)
    head = stamp[0] if stamp and len(stamp[0]) <= 40 else first[:30]
    head += "…" if len(head) < len(first) else ""
    return _NoMessageLines(
        f"{where}: no WhatsApp message lines found: line {lineno} begins {head!r} (expected lines "
        "like '31/12/2023, 21:15 - Name: text' or '[31/12/2023, 21:15:02] Name: text')"
    )


def _match_header(line: str, lineno: int, old_ios: bool) -> _Header | None:
    marked = line.startswith("\u200e")
    stripped = line.lstrip("\u200e\u200f")
    m = _IOS.match(stripped) or _ANDROID.match(stripped)
    if m is None and old_ios:
        m = _OLD_IOS.match(stripped)
    if m is None:
        return None
    return _Header(m["date"], m["time"], m["rest"], lineno, marked)


def _add_message(conv: Conversation, header: _Header, body: str, stamp: dt.datetime) -> None:
    name, sep, text = body.partition(": ")
    if not sep:
        # Android system lines ("You created group …", the encryption notice) have no "Name:".
        conv.drop("system")
        return
    sender = name.strip() if name.isascii() else name.translate(_BIDI).strip()
    # Since 2023 a group member who is not in the phone's contacts is written "~ Name"
    # (often "~\u202fName"): the same person as "Name" once saved, so the mark goes.
    if sender.startswith("~"):
        sender = _NOT_A_CONTACT.sub("", sender, count=1) or sender
    marked = header.marked or text.startswith("\u200e")
    if not text.isascii():
        if "\u200e<" in text:
            text = _IOS_NOTE.sub("", text)
        text = text.translate(_BIDI)
    text = text.strip()  # first: the chat's last line ends in the file's newline
    if text.endswith(">"):
        text = _EDITED.sub("", text)
    if "\n" in text:
        caption = _caption(text)
        if caption is not None:
            # The caption is the sender's own words, whoever's mark was on the placeholder.
            text, marked = caption, False
    if _is_system(sender, text):
        conv.drop("system")
    elif ":\n" in text and _POLL.match(text):
        conv.drop("poll")
    elif _is_media(text):
        conv.drop("media")
    elif _DELETED.match(text):
        conv.drop("deleted")
    elif _CALL.fullmatch(text):
        conv.drop("call")
    elif only_links(text):
        conv.drop("link")
    elif not text:
        conv.drop("empty")
    elif marked and "\n" not in text:
        # iOS marks its own lines (member added, group renamed, …) with U+200E; a person's text
        # never starts with one.
        conv.drop("system")
    else:
        if sender not in conv.participants:
            conv.participants.append(sender)
        conv.messages.append(Message(sender=sender, text=text, timestamp=stamp))


def _caption(text: str) -> str | None:
    """The caption under a media placeholder ("IMG-….jpg (file attached)" then the caption)."""
    # A photo or video sent with a caption is exported as its placeholder line, then the
    # caption on the lines below it (Android; "<Media omitted>" when exported without
    # media). Only the placeholder is media: the caption is what the sender wrote.
    first, _, rest = text.partition("\n")
    first, rest = first.strip(), rest.strip()
    if not rest or not _is_media(first):
        return None
    # Android writes a document's name again under "Report.pdf (file attached)", as if it
    # were a caption: the placeholder alone then, which is media.
    return first if first.startswith(rest + ".") else rest


def _is_media(text: str) -> bool:
    """Whether a text is what WhatsApp writes for media: a placeholder, a file, a place."""
    if _MEDIA.match(text):
        return True
    if text.endswith((")", ">")) and _FILE.match(text):
        return True
    # A place is at most three lines (Android's name, address and link): a longer text ending
    # in a map link is someone writing about the place.
    return "maps.google.com/" in text and text.count("\n") < 3 and _PLACE.search(text) is not None


def _is_system(sender: str, text: str) -> bool:
    """Whether a "Name: text" line is a notice (encryption, or a group event holding ": ")."""
    kind = _sender_kind(sender)
    if kind == "notice" or _NOTICE.match(text):
        return True
    return kind == "verb last" and _ADDED_REMOVED.search(text) is not None


# A chat repeats a few senders on every line, and the phrases are many: test each sender once.
@functools.lru_cache(maxsize=4096)
def _sender_kind(sender: str) -> str:
    """What a would-be sender holds: a notice's phrase, a verb-last auxiliary, or neither."""
    if _SYSTEM_PHRASE.search(sender):
        return "notice"
    return "verb last" if _AUXILIARY.search(sender) else ""  # "": a person's name


def _zip_conversations(export: Export, path: Path) -> Iterator[Conversation]:
    texts = export.members("*.txt")
    named = _named_chats(texts)
    # No file named as WhatsApp names a chat: any .txt may be the chat (renamed), and when
    # there are several, those without a message line are notes shared in the chat.
    skip_notes = not named and len(texts) > 1
    found = False
    for name in named or texts:
        title = _title(PurePosixPath(name).name, path.stem)
        try:
            conv = _read_chat(export, name, title)
        except _NoMessageLines:
            if not skip_notes:
                raise
            continue
        found = True
        yield conv
    if not found:
        raise ImportErrorMessage(
            f"No WhatsApp chat in {path} (expected _chat.txt or "
            "'WhatsApp Chat with NAME.txt' inside)"
        )


def _folder_conversations(export: Export, path: Path) -> Iterator[Conversation]:
    texts, zips = export.members("*.txt"), export.members("*.zip")
    if not texts and not zips:
        raise ImportErrorMessage(f"No WhatsApp chat (.txt or .zip) in {path}")
    # A .txt without a message line is a note shared in a chat and saved beside it; it is
    # only an error when no file in the folder is a chat.
    note: _NoMessageLines | None = None
    found = False
    chats: set[tuple[PurePosixPath, str]] = set()  # (folder, title) of each chat read
    for name in texts:
        member = PurePosixPath(name)
        title = _title(member.name, _container(path, member, zips))
        try:
            conv = _read_chat(export, name, title)
        except _NoMessageLines as exc:
            note = note or exc
            continue
        chats.add((member.parent, title))
        found = True
        yield conv
    for name in zips:
        member = PurePosixPath(name)
        if (member.parent, _title(member.name, member.stem)) in chats:
            continue  # the zip the chat beside it was unzipped from: the same chat again
        for conv in import_whatsapp(path / member):
            found = True
            yield conv
    if not found and note is not None:
        raise note


def _container(path: Path, member: PurePosixPath, zips: list[str]) -> str:
    """What names a folder's chat file: its folder, or the one iOS zip it was unzipped from."""
    # iOS calls every chat "_chat.txt" and the zip "WhatsApp Chat - Sam.zip": unzipped in
    # place, the chat is named after the zip beside it, so both are one chat (read once).
    if member.name == "_chat.txt":
        beside = [
            z
            for z in map(PurePosixPath, zips)
            if z.parent == member.parent and _CHAT_NAME.match(z.name)
        ]
        if len(beside) == 1:
            return beside[0].stem
    return (path / member).parent.name


def _named_chats(names: list[str]) -> list[str]:
    # iOS names the chat "_chat.txt", Android "WhatsApp Chat with X.txt" in the phone's
    # language; the rest of the zip is media and files shared in the chat.
    return [n for n in names if PurePosixPath(n).name == "_chat.txt"] or [
        n for n in names if _CHAT_NAME.match(PurePosixPath(n).name)
    ]


def _title(file_name: str, container: str) -> str:
    """The chat's name from "WhatsApp Chat with X.txt" / "WhatsApp Chat - X.zip" (any language)."""
    stem = file_name.rsplit(".", 1)[0]
    if stem == "_chat":
        stem = container
    # A second download of an export saved beside the first: "… Sam (1).txt" is still Sam.
    stem = _COPY_NUMBER.sub("", stem)
    return _CHAT_NAME.sub("", stem, count=1).strip() or stem
