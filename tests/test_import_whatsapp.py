"""WhatsApp importer: both header styles, date orders, 12/24-hour clocks, placeholders, inputs."""

from __future__ import annotations

import json
import shutil
import zipfile
from datetime import datetime as D
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from phischer.cli import cli
from phischer.importers import IMPORTERS
from phischer.importers.base import Conversation, ImportErrorMessage
from phischer.importers.whatsapp import import_whatsapp

FIX = Path(__file__).parent / "fixtures" / "whatsapp"
ANDROID_US = FIX / "android_us" / "WhatsApp Chat with Sam Rivera.txt"
ANDROID_EU = FIX / "android_eu" / "WhatsApp Chat with Lakehouse Crew.txt"
IOS_GROUP = FIX / "ios_group" / "_chat.txt"

SAM_RIVERA = [
    ("Sam Rivera", "hey, are we still on for the lake tomorrow?", D(2023, 12, 30, 21, 2)),
    ("Jo Park", "yes!! bringing the thermos", D(2023, 12, 30, 21, 3)),
    ("Sam Rivera", "perfect. list so far:\n- blankets\n- snacks", D(2023, 12, 30, 21, 4)),
    ("Jo Park", "morning ☀️ leaving in 10", D(2023, 12, 31, 7, 15)),
    ("Sam Rivera", "here", D(2023, 12, 31, 12, 1)),
    ("Jo Park", "happy new year!", D(2024, 1, 1, 0, 30)),
]
BOOK_CLUB = [
    ("Ana Lima", 'first pick: "The Left Hand of Darkness"?', D(2024, 1, 3, 19, 1, 10)),
    ("Ben Okafor", "yes. chapter 1-5 by friday?", D(2024, 1, 3, 19, 2)),
    ("+44 7700 900123", "can I join? it's Cleo", D(2024, 1, 3, 19, 3)),
    ("Ana Lima", "ok so\nthe ending??\nI have thoughts", D(2024, 1, 13, 20, 15, 2)),
    ("Ben Okafor", "same. friday at 7?", D(2024, 1, 13, 20, 17, 45)),
    ("+44 7700 900123", "I'll bring snacks 🍪", D(2024, 1, 13, 20, 19)),
]


def rows(conv: Conversation) -> list[tuple[str, str, D]]:
    """A conversation's messages as (sender, text, timestamp)."""
    return [(m.sender, m.text, m.timestamp) for m in conv.messages]


def one(path: Path) -> Conversation:
    """The single conversation imported from `path`."""
    convs = list(import_whatsapp(path))
    assert len(convs) == 1
    return convs[0]


def test_registered() -> None:
    assert IMPORTERS["whatsapp"] is import_whatsapp


def test_android_us_12_hour_month_first() -> None:
    # "12/31/23, 9:15 PM" with U+202F before PM on some lines, a plain space on others;
    # 12:01 PM is noon and 12:30 AM is half past midnight.
    conv = one(ANDROID_US)
    assert rows(conv) == SAM_RIVERA
    assert conv.dropped == {"system": 2, "media": 1, "deleted": 2}
    assert (conv.id, conv.title, conv.is_group) == ("whatsapp:Sam Rivera", "Sam Rivera", False)
    assert conv.participants == ["Sam Rivera", "Jo Park"]
    assert all(m.sender_id is None and m.aliases == () for m in conv.messages)


def test_android_day_first_24_hour_group() -> None:
    conv = one(ANDROID_EU)
    assert rows(conv) == [
        ("Mara", "who's driving on the 31st?", D(2023, 12, 24, 10, 5)),
        ("Ines", "me, 3 seats left", D(2023, 12, 24, 10, 7)),
        ("Tom", "pick me up here 🙏\nthere's parking by the bakery", D(2023, 12, 24, 10, 9)),
        ("Mara", "miss you already", D(2024, 1, 5, 9, 31)),
    ]
    # encryption notice, created group, added, subject change (its text holds ": "), left;
    # a message still "waiting" to be decrypted; "(file attached)", a shared location and
    # <Media omitted>; a poll.
    assert conv.dropped == {"system": 6, "media": 3, "poll": 1}
    assert conv.is_group and conv.title == "Lakehouse Crew"
    assert conv.participants == ["Mara", "Ines", "Tom"]


def test_ios_group_placeholders_and_marks() -> None:
    conv = one(IOS_GROUP)
    assert rows(conv) == BOOK_CLUB
    # system: encryption notice "from" the group, "added"; media: image, video, sticker,
    # <attached: …>, document; deleted: both forms; call: missed voice call.
    assert conv.dropped == {"system": 2, "media": 5, "deleted": 2, "call": 1}
    assert conv.is_group
    assert conv.participants == ["Ana Lima", "Ben Okafor", "+44 7700 900123"]


def test_bidi_marks_are_stripped_everywhere() -> None:
    for path in (ANDROID_US, ANDROID_EU, IOS_GROUP):
        for m in one(path).messages:
            for mark in ("\u200e", "\u202a", "\u202c", "\r"):
                assert mark not in m.text and mark not in m.sender


@pytest.mark.parametrize(
    ("name", "first"),
    [
        ("ios_12h.txt", D(2024, 1, 2, 21, 5, 10)),  # 1/2/24 + AM/PM -> month-first
        ("android_24h.txt", D(2024, 4, 5, 18, 30)),  # 05/04/2024 + 24-hour -> day-first
        ("dots.txt", D(2024, 4, 5, 18, 30)),  # 05.04.24 -> day-first
        ("canada.txt", D(2024, 2, 1, 18, 30)),  # 2/1/24, 6:30 p.m. -> month-first
        ("year_first.txt", D(2024, 1, 5, 18, 30)),  # 2024-01-05 18:30
    ],
)
def test_ambiguous_dates_follow_the_documented_default(name: str, first: D) -> None:
    conv = one(FIX / "ambiguous" / name)
    assert [m.sender for m in conv.messages] == ["Lee Chen", "Dana"]
    assert conv.messages[0].timestamp == first
    assert first < conv.messages[1].timestamp <= first + timedelta(minutes=1)


def test_one_unambiguous_date_decides_the_whole_file(tmp_path: Path) -> None:
    chat = tmp_path / "chat.txt"
    chat.write_text(
        "01/02/2024, 10:00 - A: hi\n01/02/2024, 10:01 - B: yo\n13/02/2024, 09:00 - A: ok\n"
    )
    assert [m.timestamp for m in one(chat).messages] == [
        D(2024, 2, 1, 10, 0),
        D(2024, 2, 1, 10, 1),
        D(2024, 2, 13, 9, 0),
    ]


def test_folder_of_chats_is_one_conversation_each() -> None:
    convs = list(import_whatsapp(FIX / "ambiguous"))
    assert [c.title for c in convs] == ["android_24h", "canada", "dots", "ios_12h", "year_first"]


def test_folder_and_file_give_the_same_chat() -> None:
    assert rows(one(FIX / "android_us")) == SAM_RIVERA


def test_ios_zip_with_chat_txt_and_media(tmp_path: Path) -> None:
    zpath = tmp_path / "WhatsApp Chat - Book Club.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(IOS_GROUP, "_chat.txt")
        zf.writestr("00000007-PHOTO-2024-01-03-19-05-00.jpg", b"\xff\xd8\xff")
    conv = one(zpath)
    assert conv.title == "Book Club" and conv.id == "whatsapp:Book Club"
    assert rows(conv) == BOOK_CLUB


def test_android_zip_with_named_txt(tmp_path: Path) -> None:
    zpath = tmp_path / "export.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(ANDROID_US, ANDROID_US.name)
        zf.writestr("IMG-20231230-WA0001.jpg", b"\xff\xd8\xff")
        zf.writestr("notes.txt", "not a chat")
    conv = one(zpath)
    assert conv.title == "Sam Rivera"
    assert rows(conv) == SAM_RIVERA


def test_folder_holding_a_zip(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "WhatsApp Chat - Book Club.zip", "w") as zf:
        zf.write(IOS_GROUP, "_chat.txt")
    shutil.copy(ANDROID_US, tmp_path / ANDROID_US.name)
    convs = list(import_whatsapp(tmp_path))
    assert [c.title for c in convs] == ["Sam Rivera", "Book Club"]


def test_txt_without_chat_lines_is_one_line_error() -> None:
    with pytest.raises(ImportErrorMessage) as err:
        list(import_whatsapp(FIX / "broken" / "notes.txt"))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(str(FIX / "broken" / "notes.txt")) and "no WhatsApp message lines" in msg


def test_zip_without_a_chat_is_one_line_error(tmp_path: Path) -> None:
    zpath = tmp_path / "photos.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("a.txt", "x")
        zf.writestr("b.txt", "y")
        zf.writestr("IMG-1.jpg", b"\xff")
    with pytest.raises(
        ImportErrorMessage, match=r"^No WhatsApp chat in .*photos\.zip \(expected _chat\.txt"
    ):
        list(import_whatsapp(zpath))


def test_mixed_date_orders_are_refused(tmp_path: Path) -> None:
    chat = tmp_path / "edited.txt"
    chat.write_text("13/01/2024, 10:00 - A: hi\n01/13/2024, 10:01 - B: yo\n")
    with pytest.raises(ImportErrorMessage, match="edited.txt: dates mix day-first and month-first"):
        list(import_whatsapp(chat))


def test_impossible_date_names_the_line(tmp_path: Path) -> None:
    chat = tmp_path / "chat.txt"
    chat.write_text("13/01/2024, 10:00 - A: hi\n31/02/2024, 10:01 - B: yo\n")
    with pytest.raises(ImportErrorMessage, match=r"chat.txt: line 2: impossible date 31/02/2024"):
        list(import_whatsapp(chat))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ImportErrorMessage, match="No such file or folder"):
        list(import_whatsapp(tmp_path / "nope.zip"))


def test_cli_end_to_end(tmp_path: Path) -> None:
    zpath = tmp_path / "WhatsApp Chat - Book Club.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(IOS_GROUP, "_chat.txt")
    result = CliRunner().invoke(
        cli, ["import", "whatsapp", str(zpath), "--me", "ben okafor", "-o", "out.jsonl"]
    )
    assert result.exit_code == 0, result.output
    system = {
        "role": "system",
        "content": "You are Ben Okafor. Reply to text messages the way Ben Okafor would: "
        "same voice, same length, same habits.",
    }
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "messages": [
                system,
                {"role": "user", "content": 'Ana Lima: first pick: "The Left Hand of Darkness"?'},
                {"role": "assistant", "content": "yes. chapter 1-5 by friday?"},
            ]
        },
        {
            "messages": [
                system,
                {"role": "user", "content": "Ana Lima: ok so\nthe ending??\nI have thoughts"},
                {"role": "assistant", "content": "same. friday at 7?"},
            ]
        },
    ]
    assert (tmp_path / "out.jsonl.conversations").read_text().splitlines() == [
        "whatsapp:Book Club#2024-01-03T19:01:10",
        "whatsapp:Book Club#2024-01-13T20:15:02",
    ]
    assert "Dropped: 10  (media 5, system 2, deleted 2, call 1)" in result.output


@pytest.mark.parametrize(
    ("lines", "kept"),
    [
        (  # German
            [
                "Lena: bist du heute da?",
                "Jo: <Medien ausgeschlossen>",
                "Jo: IMG-20240105-WA0001.jpg (Datei angehängt)",
                "Lena: Diese Nachricht wurde gelöscht",
                "Jo: Du hast diese Nachricht gelöscht",
                "Jo: Standort: https://maps.google.com/?q=52.5,13.4",
                "Jo: ja, ab acht <Diese Nachricht wurde bearbeitet>",
            ],
            [("Lena", "bist du heute da?"), ("Jo", "ja, ab acht")],
        ),
        (  # Spanish
            [
                "Lena: ¿vienes hoy?",
                "Jo: <Multimedia omitido>",
                "Jo: Se eliminó este mensaje.",
                "Lena: Eliminaste este mensaje.",
                "Jo: ubicación: https://maps.google.com/?q=40.4,-3.7",
                "Jo: sí, a las ocho",
            ],
            [("Lena", "¿vienes hoy?"), ("Jo", "sí, a las ocho")],
        ),
        (  # French, Portuguese, Italian, Dutch
            [
                "Lena: on y va ?",
                "Jo: <Médias omis>",
                "Jo: Ce message a été supprimé",
                "Jo: <Arquivo de mídia oculto>",
                "Jo: <Mídia oculta>",
                "Jo: Esta mensagem foi apagada",
                "Jo: <Media omessi>",
                "Jo: Questo messaggio è stato eliminato",
                "Jo: <Media weggelaten>",
                "Jo: oui !",
            ],
            [("Lena", "on y va ?"), ("Jo", "oui !")],
        ),
    ],
)
def test_android_placeholders_in_other_languages_are_dropped(
    tmp_path: Path, lines: list[str], kept: list[tuple[str, str]]
) -> None:
    chat = tmp_path / "chat.txt"
    chat.write_text(
        "".join(f"05.01.24, 20:{i:02d} - {line}\n" for i, line in enumerate(lines)),
        encoding="utf-8",
    )
    (conv,) = import_whatsapp(chat)
    assert [(m.sender, m.text) for m in conv.messages] == kept
    assert sum(conv.dropped.values()) == len(lines) - len(kept)
    assert set(conv.dropped) <= {"media", "deleted"}


def test_the_edited_mark_goes_on_the_last_line_too(tmp_path: Path) -> None:
    chat = tmp_path / "chat.txt"
    chat.write_text(
        "1/5/24, 8:00 PM - Sam: coming?\n1/5/24, 8:01 PM - Jo: yes <This message was edited>\n"
    )
    (conv,) = import_whatsapp(chat)
    assert [m.text for m in conv.messages] == ["coming?", "yes"]
