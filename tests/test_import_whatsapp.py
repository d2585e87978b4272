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


def _chat(tmp_path: Path, lines: list[str], name: str = "chat.txt") -> Path:
    """A chat file in `tmp_path` holding `lines`."""
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def test_a_text_that_starts_like_a_call_is_a_message(tmp_path: Path) -> None:
    android = _chat(
        tmp_path,
        [
            "12/30/23, 9:15 PM - Sam: are you free tonight?",
            "12/30/23, 9:16 PM - Alex: video call at 8?",
            "12/30/23, 9:17 PM - Sam: sure",
            "12/30/23, 9:18 PM - Alex: Voice call is fine too",
        ],
    )
    conv = one(android)
    assert rows(conv) == [
        ("Sam", "are you free tonight?", D(2023, 12, 30, 21, 15)),
        ("Alex", "video call at 8?", D(2023, 12, 30, 21, 16)),
        ("Sam", "sure", D(2023, 12, 30, 21, 17)),
        ("Alex", "Voice call is fine too", D(2023, 12, 30, 21, 18)),
    ]
    assert conv.dropped == {}
    # The notices as iOS writes them are the whole text.
    ios = _chat(
        tmp_path,
        [
            "[30/12/2023, 21:15:00] Sam: video call later?",
            "\u200e[30/12/2023, 21:16:00] Alex: \u200eMissed video call, \u200eTap to call back",
            "\u200e[30/12/2023, 21:17:00] Sam: \u200eVoice call, \u200e12 min",
            "\u200e[30/12/2023, 21:18:00] Alex: \u200eVideo call, \u200e1 hr 5 min",
            "\u200e[30/12/2023, 21:19:00] Sam: \u200eVoice call, \u200eNo answer",
            "\u200e[30/12/2023, 21:20:00] Alex: \u200eMissed voice call",
            "[30/12/2023, 21:21:00] Alex: Voice call, if you can",
        ],
        "_chat.txt",
    )
    conv = one(ios)
    assert rows(conv) == [
        ("Sam", "video call later?", D(2023, 12, 30, 21, 15)),
        ("Alex", "Voice call, if you can", D(2023, 12, 30, 21, 21)),
    ]
    assert conv.dropped == {"call": 5}


def test_a_caption_under_a_media_placeholder_is_the_message(tmp_path: Path) -> None:
    # Android writes a photo sent with a caption as the placeholder line ("… (file
    # attached)" exported with media, "<Media omitted>" without), then the caption below it.
    android = _chat(
        tmp_path,
        [
            "12/30/23, 9:15\u202fPM - Sam: where are you?",
            "12/30/23, 9:16\u202fPM - Alex: IMG-20231230-WA0007.jpg (file attached)",
            "the view from the top",
            "worth the climb",
            "12/30/23, 9:17\u202fPM - Sam: <Media omitted>",
            "jealous <This message was edited>",
            "12/30/23, 9:18\u202fPM - Alex: <Media omitted>",
        ],
    )
    conv = one(android)
    assert rows(conv) == [
        ("Sam", "where are you?", D(2023, 12, 30, 21, 15)),
        ("Alex", "the view from the top\nworth the climb", D(2023, 12, 30, 21, 16)),
        ("Sam", "jealous", D(2023, 12, 30, 21, 17)),
    ]
    assert conv.dropped == {"media": 1}  # only the photo with nothing under it
    # iOS marks its placeholder line with U+200E: the caption under it is still a message.
    ios = _chat(
        tmp_path,
        [
            "[30/12/2023, 21:15:00] Sam: where are you?",
            "\u200e[30/12/2023, 21:16:00] Alex: \u200e<attached: 00000007-PHOTO.jpg>",
            "the view from the top",
        ],
        "_chat.txt",
    )
    assert rows(one(ios))[-1] == ("Alex", "the view from the top", D(2023, 12, 30, 21, 16))


def test_null_is_what_android_writes_for_view_once_media(tmp_path: Path) -> None:
    chat = _chat(
        tmp_path,
        [
            "12/30/23, 9:15 PM - Sam: look quick",
            "12/30/23, 9:15 PM - Sam: null",
            "12/30/23, 9:16 PM - Alex: Null and void, that deal",
            "12/30/23, 9:17 PM - Alex: NULL",
        ],
    )
    conv = one(chat)
    assert [m.text for m in conv.messages] == ["look quick", "Null and void, that deal", "NULL"]
    assert conv.dropped == {"media": 1}


def test_cli_german_subject_holding_a_colon_is_a_notice(tmp_path: Path) -> None:
    chat = _chat(
        tmp_path,
        [
            "24.12.23, 10:00 - Mara hat die Gruppe „Seehaus“ erstellt.",
            "24.12.23, 10:02 - Mara hat den Betreff von „Seehaus“ zu „Seehaus: Silvester“ geändert.",
            "24.12.23, 10:05 - Mara: wer fährt am 31.?",
            "24.12.23, 10:06 - Ines: ich, 3 Plätze frei <Diese Nachricht wurde bearbeitet>",
            "24.12.23, 10:07 - Tom: Super",
        ],
    )
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        cli, ["import", "whatsapp", str(chat), "--me", "Ines", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "Dropped: 2  (system 2)" in result.output
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [
        {
            "messages": [
                {
                    "role": "system",
                    "content": "You are Ines. Reply to text messages the way Ines would: "
                    "same voice, same length, same habits.",
                },
                {"role": "user", "content": "Mara: wer fährt am 31.?"},
                {"role": "assistant", "content": "ich, 3 Plätze frei"},
            ]
        }
    ]


@pytest.mark.parametrize(
    "notices",
    [
        [  # German; the name added holds ": " (a contact saved as "Tom: Fahrer")
            "Mara hat die Gruppe „Seehaus: Silvester“ erstellt.",
            "Du hast den Betreff von „Seehaus“ zu „Seehaus: 31.“ geändert.",
            "Mara hat Tom: Fahrer hinzugefügt.",
            "Mara hat Tom: Fahrer entfernt.",
        ],
        [  # Spanish
            'Mara creó el grupo "Casa: Nochevieja"',
            'Mara cambió el asunto de "Casa" a "Casa: Nochevieja"',
            'Cambiaste el nombre del grupo de "Casa" a "Casa: 31"',
            "Mara añadió a Tom: Conductor",
            "Mara eliminó a Tom: Conductor",
        ],
        [  # French
            "Mara a créé le groupe « Maison: Réveillon »",
            "Vous avez modifié le sujet de « Maison » en « Maison: 31 »",
            "Mara a changé le nom du groupe de « Maison » en « Maison: 31 »",
            "Mara a ajouté Tom: Chauffeur",
            "Mara a retiré Tom: Chauffeur",
        ],
        [  # Portuguese
            'Mara criou o grupo "Casa: Réveillon"',
            'Você mudou o assunto de "Casa" para "Casa: 31"',
            "Mara adicionou Tom: Motorista",
            "Mara removeu Tom: Motorista",
        ],
        [  # Italian
            'Mara ha creato il gruppo "Casa: Capodanno"',
            'Hai cambiato l\'oggetto da "Casa" a "Casa: 31"',
            "Mara ha aggiunto Tom: Autista",
            "Mara ha rimosso Tom: Autista",
        ],
        [  # Dutch
            'Mara heeft groep "Huis: Oudjaar" gemaakt',
            'Je hebt de groepsnaam gewijzigd van "Huis" naar "Huis: 31"',
            "Mara heeft Tom: Chauffeur toegevoegd",
            "Mara heeft Tom: Chauffeur verwijderd",
        ],
    ],
)
def test_android_group_notices_holding_a_colon_in_other_languages(
    tmp_path: Path, notices: list[str]
) -> None:
    # The same words inside someone's message are the message.
    said = f"Ines: {notices[1]}, lol"
    lines = [*notices, "Mara: wer fährt am 31.?", said, "Tom: ich"]
    chat = _chat(tmp_path, [f"24.12.23, 10:{i:02d} - {line}" for i, line in enumerate(lines)])
    conv = one(chat)
    assert [(m.sender, m.text) for m in conv.messages] == [
        ("Mara", "wer fährt am 31.?"),
        ("Ines", f"{notices[1]}, lol"),
        ("Tom", "ich"),
    ]
    assert conv.dropped == {"system": len(notices)}
    assert conv.participants == ["Mara", "Ines", "Tom"]


def test_ios_edit_notice_is_cut_in_any_language(tmp_path: Path) -> None:
    chat = _chat(
        tmp_path,
        [
            "[31/12/2023, 21:15:02] Sam: ¿vienes?",
            "[31/12/2023, 21:16:02] Alex: qué tal \u200e<Se editó este mensaje.>",
            "[31/12/2023, 21:17:02] Sam: genial \u200e<Ce message a été modifié>",
            "\u200e[31/12/2023, 21:18:00] Alex: \u200e<adjunto: 00000009-PHOTO-2023-12-31.jpg>",
            "[31/12/2023, 21:19:02] Alex: dos líneas",
            "y la segunda \u200e<Se editó este mensaje.>",
        ],
        "_chat.txt",
    )
    conv = one(chat)
    assert rows(conv) == [
        ("Sam", "¿vienes?", D(2023, 12, 31, 21, 15, 2)),
        ("Alex", "qué tal", D(2023, 12, 31, 21, 16, 2)),
        ("Sam", "genial", D(2023, 12, 31, 21, 17, 2)),
        ("Alex", "dos líneas\ny la segunda", D(2023, 12, 31, 21, 19, 2)),
    ]
    assert conv.dropped == {"system": 1}  # the attachment line: marked, in Spanish


@pytest.mark.parametrize(
    "notice",
    [
        "<Se editó este mensaje.>",
        "<Se editó este mensaje>",
        "<Ce message a été modifié>",
        "<Mensagem editada>",
        "<Esta mensagem foi editada>",
        "<Questo messaggio è stato modificato>",
        "<Dit bericht is bewerkt>",
    ],
)
def test_android_edit_notices_in_other_languages(tmp_path: Path, notice: str) -> None:
    chat = _chat(
        tmp_path,
        ["05.01.24, 20:00 - Lena: ¿vienes?", f"05.01.24, 20:01 - Jo: sí, a las ocho {notice}"],
    )
    assert [m.text for m in one(chat).messages] == ["¿vienes?", "sí, a las ocho"]


@pytest.mark.parametrize(
    ("poll", "option"),
    [
        ("UMFRAGE", "OPTION"),  # German
        ("ENCUESTA", "OPCIÓN"),  # Spanish
        ("SONDAGE", "OPTION"),  # French
        ("SONDAGGIO", "OPZIONE"),  # Italian
        ("ENQUETE", "OPÇÃO"),  # Portuguese (Brazil)
        ("SONDAGEM", "OPÇÃO"),  # Portuguese (Portugal)
        ("PEILING", "OPTIE"),  # Dutch
    ],
)
def test_android_polls_in_other_languages(tmp_path: Path, poll: str, option: str) -> None:
    chat = _chat(
        tmp_path,
        [
            "05.01.24, 20:00 - Lena: wann?",
            f"05.01.24, 20:01 - Jo: {poll}:",
            "wann fahren wir?",
            f"{option}: 8 Uhr (2)",
            f"{option}: 10 Uhr (1)",
            f"05.01.24, 20:02 - Jo: {poll}:",  # a word and a colon, no options: typed
            "wer fährt?",
        ],
    )
    conv = one(chat)
    assert [(m.sender, m.text) for m in conv.messages] == [
        ("Lena", "wann?"),
        ("Jo", f"{poll}:\nwer fährt?"),
    ]
    assert conv.dropped == {"poll": 1}


def test_a_note_beside_the_chat_is_not_a_chat(tmp_path: Path) -> None:
    folder = tmp_path / "wf"
    folder.mkdir()
    shutil.copy(FIX / "broken" / "notes.txt", folder / "shopping-list.txt")
    # Alone, the note is what the folder holds: the error names it.
    with pytest.raises(ImportErrorMessage, match=r"shopping-list\.txt: no WhatsApp message lines"):
        list(import_whatsapp(folder))
    shutil.copy(ANDROID_US, folder / "WhatsApp Chat with Sam Rivera.txt")
    (conv,) = import_whatsapp(folder)
    assert conv.title == "Sam Rivera" and rows(conv) == SAM_RIVERA
    # In a zip, a .txt not named as WhatsApp names chats is read when it is the chat.
    zpath = tmp_path / "export.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(ANDROID_US, "chat.txt")
        zf.write(FIX / "broken" / "notes.txt", "lista.txt")
    (conv,) = import_whatsapp(zpath)
    assert conv.title == "chat" and rows(conv) == SAM_RIVERA


def test_a_localised_chat_name_in_a_zip_with_a_note(tmp_path: Path) -> None:
    zpath = tmp_path / "zs.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(ANDROID_US, "Chat de WhatsApp con Sam Rivera.txt")
        zf.writestr("lista.txt", "- huevos\n- leche\n")
        zf.writestr("IMG-20231230-WA0001.jpg", b"\xff\xd8\xff")
    (conv,) = import_whatsapp(zpath)
    assert (conv.id, conv.title) == ("whatsapp:Sam Rivera", "Sam Rivera")
    assert rows(conv) == SAM_RIVERA


@pytest.mark.parametrize(
    "name",
    [
        "WhatsApp-Chat mit Sam Rivera.txt",  # German
        "Chat de WhatsApp con Sam Rivera.txt",  # Spanish
        "Discussion WhatsApp avec Sam Rivera.txt",  # French
        "Conversa do WhatsApp com Sam Rivera.txt",  # Portuguese (Brazil)
        "Conversa no WhatsApp com Sam Rivera.txt",  # Portuguese (Portugal)
        "Chat WhatsApp con Sam Rivera.txt",  # Italian
        "WhatsApp-chat met Sam Rivera.txt",  # Dutch
    ],
)
def test_localised_chat_file_names_give_the_chat_name(tmp_path: Path, name: str) -> None:
    shutil.copy(ANDROID_US, tmp_path / name)
    assert one(tmp_path / name).title == "Sam Rivera"
    zpath = tmp_path / "export.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(ANDROID_US, name)
        zf.writestr("notes.txt", "not a chat")
    assert one(zpath).title == "Sam Rivera"


def test_a_zip_beside_the_chat_unzipped_from_it_is_not_read_again(tmp_path: Path) -> None:
    shutil.copy(ANDROID_US, tmp_path / ANDROID_US.name)
    with zipfile.ZipFile(tmp_path / "WhatsApp Chat with Sam Rivera.zip", "w") as zf:
        zf.write(ANDROID_US, ANDROID_US.name)
        zf.writestr("IMG-20231230-WA0001.jpg", b"\xff\xd8\xff")
    with zipfile.ZipFile(tmp_path / "WhatsApp Chat - Book Club.zip", "w") as zf:
        zf.write(IOS_GROUP, "_chat.txt")
    convs = list(import_whatsapp(tmp_path))
    assert [(c.title, rows(c)) for c in convs] == [
        ("Sam Rivera", SAM_RIVERA),
        ("Book Club", BOOK_CLUB),
    ]


@pytest.mark.parametrize(
    "lines",
    [
        [  # iOS
            "[12.3.2022 klo 14.08.18] Matti: moi",
            "[12.3.2022 klo 14.09.02] Liisa: moi moi",
            "[13.3.2022 klo 9.05.00] Matti: huomenta",
        ],
        [  # Android
            "12.3.2022 klo 14.08 - Matti: moi",
            "12.3.2022 klo 14.09 - Liisa: moi moi",
            "13.3.2022 klo 9.05 - Matti: huomenta",
        ],
    ],
)
def test_finnish_dates_with_klo(tmp_path: Path, lines: list[str]) -> None:
    seconds = 18 if lines[0].startswith("[") else 0
    assert rows(one(_chat(tmp_path, lines))) == [
        ("Matti", "moi", D(2022, 3, 12, 14, 8, seconds)),
        ("Liisa", "moi moi", D(2022, 3, 12, 14, 9, 2 if seconds else 0)),
        ("Matti", "huomenta", D(2022, 3, 13, 9, 5)),
    ]


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_text_with_a_byte_order_mark(tmp_path: Path, codec: str) -> None:
    # What Windows Notepad writes when a chat is saved as "Unicode" (or "Unicode big endian").
    chat = tmp_path / "WhatsApp Chat with Sam Rivera.txt"
    chat.write_bytes("\ufeff".encode(codec) + ANDROID_US.read_text(encoding="utf-8").encode(codec))
    assert chat.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
    assert rows(one(chat)) == SAM_RIVERA
    # Other text that is not UTF-8 keeps its clear error.
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("05.01.24, 20:00 - Lena: café\n".encode("latin-1"))
    with pytest.raises(ImportErrorMessage, match=r"latin1\.txt is not UTF-8 text \(byte 27\)$"):
        list(import_whatsapp(latin1))


def test_an_iphone_chat_unzipped_in_place_is_read_once(tmp_path: Path) -> None:
    """unzip "WhatsApp Chat - Book Club.zip" in its folder: _chat.txt beside the zip."""
    shutil.copy(IOS_GROUP, tmp_path / "_chat.txt")
    with zipfile.ZipFile(tmp_path / "WhatsApp Chat - Book Club.zip", "w") as zf:
        zf.write(IOS_GROUP, "_chat.txt")
    convs = list(import_whatsapp(tmp_path))
    assert [(c.id, rows(c)) for c in convs] == [("whatsapp:Book Club", BOOK_CLUB)]


def test_a_second_download_saved_as_copy_1_is_the_same_chat(tmp_path: Path) -> None:
    shutil.copy(ANDROID_US, tmp_path / "WhatsApp Chat with Sam Rivera.txt")
    shutil.copy(ANDROID_US, tmp_path / "WhatsApp Chat with Sam Rivera (1).txt")
    with zipfile.ZipFile(tmp_path / "WhatsApp Chat - Book Club (2).zip", "w") as zf:
        zf.write(IOS_GROUP, "_chat.txt")
    convs = list(import_whatsapp(tmp_path))
    assert [c.id for c in convs] == [
        "whatsapp:Sam Rivera",
        "whatsapp:Sam Rivera",
        "whatsapp:Book Club",
    ]
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        cli, ["import", "whatsapp", str(tmp_path), "--me", "Sam Rivera", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "Duplicates: " in result.output
    single = tmp_path / "single.jsonl"
    CliRunner().invoke(
        cli, ["import", "whatsapp", str(ANDROID_US), "--me", "Sam Rivera", "-o", str(single)]
    )
    # the copy adds nothing: Sam's examples are those of the one chat
    sam = [line for line in out.read_text().splitlines() if "Book Club" not in line]
    assert sam == single.read_text().splitlines()


# Exports from phones set to other languages, as public parsers' fixtures and bug reports show
# them (digits in the locale's script, RLM marks, AM/PM words before or after the time).
LOCALES = {
    "arabic android": (  # mtln/chat-export tests/test_arabic_locale.py
        [
            "٢٤\u200f/٤\u200f/٢٠٢٢، ١١:٥٨ م - عمار: نلتقي الساعة ٩؟",
            "٢٥\u200f/٤\u200f/٢٠٢٢، ١٢:٠٧ ص - Sam: 9 ok",
        ],
        [
            ("عمار", "نلتقي الساعة ٩؟", D(2022, 4, 24, 23, 58)),  # the text keeps its digits
            ("Sam", "9 ok", D(2022, 4, 25, 0, 7)),
        ],
    ),
    "arabic ios": (  # whats_json test/data/chats_unique "Arabic_NoMedia"
        [
            "\u200f[١٨/٣/٢٠٢٢، ٢:٥٦:٠٠\u00a0م] Dmitry S: Hello World",
            "[٣/٤/٢٠٢٢، ٩:٠١:٣٥\u00a0ص] عمار: صباح الخير",
        ],
        [
            ("Dmitry S", "Hello World", D(2022, 3, 18, 14, 56)),
            ("عمار", "صباح الخير", D(2022, 4, 3, 9, 1, 35)),
        ],
    ),
    "arabic, every date ambiguous": (  # day-first: only a Latin AM/PM means the US order
        ["٥\u200f/٤\u200f/٢٠٢٤، ٩:٠٠ م - Sam: hi", "٥\u200f/٤\u200f/٢٠٢٤، ٩:٠١ م - عمار: أهلا"],
        [("Sam", "hi", D(2024, 4, 5, 21, 0)), ("عمار", "أهلا", D(2024, 4, 5, 21, 1))],
    ),
    "persian": (  # rwhatsapp issue #28; 12-hour with ب.ظ / ق.ظ
        [
            "۲۰۲۱/۵/۳۰، ۱۸:۴۴ - Sattar-b: سلام،خسته نباشید",
            "۲۰۲۱/۵/۳۱، ۹:۰۵ ق.ظ - شطرنج: سلام",
            "۲۰۲۱/۶/۱، ۷:۱۵ ب.ظ - Sattar-b: ۱۰ نفر",
        ],
        [
            ("Sattar-b", "سلام،خسته نباشید", D(2021, 5, 30, 18, 44)),
            ("شطرنج", "سلام", D(2021, 5, 31, 9, 5)),
            ("Sattar-b", "۱۰ نفر", D(2021, 6, 1, 19, 15)),
        ],
    ),
    "chinese": (  # ChatLab whatsapp-native-txt.ts: 上午/下午 before the time, year first
        [
            "2023/12/31 下午11:15 - 小明: 新年快乐",
            "[2024/1/1 上午12:05:09] 小红: 你也是",
        ],
        [
            ("小明", "新年快乐", D(2023, 12, 31, 23, 15)),
            ("小红", "你也是", D(2024, 1, 1, 0, 5, 9)),
        ],
    ),
    "japanese": (
        ["[2024/01/05 午後9:15:02] 太郎: 今どこ？", "[2024/01/06 午前8:00:00] 花子: 駅"],
        [
            ("太郎", "今どこ？", D(2024, 1, 5, 21, 15, 2)),
            ("花子", "駅", D(2024, 1, 6, 8, 0)),
        ],
    ),
    "korean": (  # two-digit year first ("24. 1. 5."), 오전/오후 before the time
        [
            "24. 1. 5. 오후 9:15 - 민수: 어디야?",
            "[2024. 1. 13. 오전 12:05:30] 지영: 집",
        ],
        [
            ("민수", "어디야?", D(2024, 1, 5, 21, 15)),
            ("지영", "집", D(2024, 1, 13, 0, 5, 30)),
        ],
    ),
    "thai buddhist era": (  # whats_json test/data/calendars/Buddhist iOS.txt
        ["[3/12/2566 21:15:02] สมชาย: สวัสดี", "[3/18/2565 BE, 14:56:01] Elon Musk: Hello"],
        [
            ("สมชาย", "สวัสดี", D(2023, 3, 12, 21, 15, 2)),
            ("Elon Musk", "Hello", D(2022, 3, 18, 14, 56, 1)),
        ],
    ),
    "spanish": (  # whatsapp-chat-parser issue #224: "p. m." with a no-break space
        ["20/6/2017 8:28 p.\u00a0m. - Michelle: test", "[21/6/17 12:05:00 a. m.] Ana: hola"],
        [
            ("Michelle", "test", D(2017, 6, 20, 20, 28)),
            ("Ana", "hola", D(2017, 6, 21, 0, 5)),
        ],
    ),
    "greek": (  # μ.μ. (PM) and π.μ. (AM) after the time; 12:05 π.μ. is past midnight
        ["27/8/20, 6:46 μ.μ. - Νίκος: γεια", "[28/8/20, 12:05:00 π.μ.] Ελένη: καληνύχτα"],
        [
            ("Νίκος", "γεια", D(2020, 8, 27, 18, 46)),
            ("Ελένη", "καληνύχτα", D(2020, 8, 28, 0, 5)),
        ],
    ),
    "hungarian and bengali digits": (
        ["2024. 01. 05. 21:15 - Anna: szia", "২০২৪. ০১. ০৬. ৯:১৫ - রহিম: ১০টায়"],
        [
            ("Anna", "szia", D(2024, 1, 5, 21, 15)),
            ("রহিম", "১০টায়", D(2024, 1, 6, 9, 15)),
        ],
    ),
}


def test_a_member_not_in_contacts_keeps_their_name_without_the_tilde(tmp_path: Path) -> None:
    # iOS and Android since 2023: "~ Name" (a narrow no-break space or a space) for a group
    # member the phone has no contact for; "~Name" without a space is someone's own name.
    chat = _chat(
        tmp_path,
        [
            "[05/01/2024, 21:15:02] ~\u202fCleo Diaz: who's in?",
            "[05/01/2024, 21:16:00] Ana Lima: me",
            "[05/01/2024, 21:17:00] ~ Cleo Diaz: great",
            "[05/01/2024, 21:18:00] ~Tilde: hi",
        ],
    )
    senders = [m.sender for m in one(chat).messages]
    assert senders == ["Cleo Diaz", "Ana Lima", "Cleo Diaz", "~Tilde"]


@pytest.mark.parametrize("locale", LOCALES)
def test_exports_in_other_languages(tmp_path: Path, locale: str) -> None:
    lines, expected = LOCALES[locale]
    assert rows(one(_chat(tmp_path, lines))) == expected


@pytest.mark.parametrize(
    ("line", "says"),
    [
        # iOS with the Japanese calendar (whats_json "Japanese iOS.txt"): not read
        (
            "[3/27/R4, 21:41:35] Dmitry S: Hello World",
            "chat.txt: no WhatsApp message lines found: line 2 begins '[3/27/R4, 21:41:35]…'",
        ),
        # Persian solar year: refused rather than read as year 1402
        (
            "۱۴۰۲/۱۰/۱۰، ۲۱:۱۵ - Sattar-b: سلام",
            "chat.txt: line 2: year 1402 in ۱۴۰۲/۱۰/۱۰ is not a Gregorian year",
        ),
    ],
)
def test_an_export_that_cannot_be_read_says_where(tmp_path: Path, line: str, says: str) -> None:
    chat = _chat(tmp_path, ["", line])
    result = CliRunner().invoke(cli, ["import", "whatsapp", str(chat), "--me", "x", "-o", "o"])
    assert result.exit_code == 1 and result.exception is not None
    assert isinstance(result.exception, SystemExit)  # no traceback
    (message,) = result.output.splitlines()
    assert message.startswith("Error: ") and message.removeprefix("Error: ").startswith(
        str(chat.parent / says)
    )


def test_a_message_of_only_a_link_is_dropped_as_a_link(tmp_path: Path) -> None:
    # A video or post shared to the chat is its link alone: not written, and a clone trained
    # on it answers with made-up links. With words around it, it is a message.
    chat = _chat(
        tmp_path,
        [
            "12/30/23, 9:15 PM - Sam: what are you watching?",
            "12/30/23, 9:16 PM - Alex: https://youtu.be/dQw4w9WgXcQ",
            "12/30/23, 9:16 PM - Alex: www.example.com/recipe",
            "https://example.com/recipe?page=2",
            "12/30/23, 9:17 PM - Alex: this one https://youtu.be/dQw4w9WgXcQ",
            "12/30/23, 9:18 PM - Sam: <Media omitted>",
            "https://example.com/trail",
        ],
    )
    conv = one(chat)
    assert rows(conv) == [
        ("Sam", "what are you watching?", D(2023, 12, 30, 21, 15)),
        ("Alex", "this one https://youtu.be/dQw4w9WgXcQ", D(2023, 12, 30, 21, 17)),
    ]
    assert conv.dropped == {"link": 3}


def test_android_export_with_media_drops_files_places_and_the_old_notice() -> None:
    # "Include media": a document's name under its "(file attached)" line is not a caption,
    # uploaded audio has no extension, a place is three lines, a live location one; the
    # encryption notice as worded before 2020. A photo's caption is still the message.
    conv = one(FIX / "with_media_android")
    assert rows(conv) == [
        ("Noor Haddad", "morning! sending the plan", D(2019, 2, 3, 9, 1)),
        ("Noor Haddad", "the view from the ferry", D(2019, 2, 3, 9, 6)),
        ("Kit Moreau", "looks great, see you at the café", D(2019, 2, 3, 9, 10)),
    ]
    assert conv.dropped == {"system": 1, "media": 4}


def test_ios_export_with_media_drops_documents_places_and_the_old_notice() -> None:
    # Before WhatsApp marked its own lines with U+200E the notice came "from" the contact;
    # a document is its name and pages, then the file, with or without marks.
    conv = one(FIX / "with_media_ios")
    assert rows(conv) == [
        ("Noor Haddad", "morning! sending the plan", D(2019, 2, 3, 9, 1)),
        ("Kit Moreau", "looks great, see you at the café", D(2019, 2, 3, 9, 10)),
    ]
    assert conv.dropped == {"system": 1, "media": 4}


def test_iphone_export_from_before_2018_without_brackets(tmp_path: Path) -> None:
    conv = one(FIX / "old_ios")
    # A line of a message that only looks like a date is text: the time ends with ": ".
    assert rows(conv) == [
        ("Noor Haddad", "are you coming saturday?", D(2017, 6, 13, 21, 25, 15)),
        ("Kit Moreau", "yes!\nbringing the cake", D(2017, 6, 13, 21, 30, 41)),
        ("Kit Moreau", "14.06.17 08:00:00 was too early for this", D(2017, 6, 14, 8, 2)),
    ]
    assert conv.dropped == {"system": 1, "media": 1}
    # Without a colon, in the US locale's 12-hour clock, and with no separator at all
    # (Croatian: "13. 6. 2018. 21:25:15 Name: text").
    for line, when in [
        ("6/13/17, 9:25:15 PM: Noor: hi", D(2017, 6, 13, 21, 25, 15)),
        ("13. 6. 2018. 21:25:15 Noor: hi", D(2018, 6, 13, 21, 25, 15)),
    ]:
        chat = tmp_path / "chat.txt"
        chat.write_text(line + "\n", encoding="utf-8")
        assert rows(one(chat)) == [("Noor", "hi", when)]
    # Only a file that begins in the old form is read in it: in today's exports a line
    # written that way is part of someone's message.
    chat.write_text(
        "[13/06/2017, 21:25:15] Noor: pasting the old log\n13.06.17 21:25:15: Kit: hi\n",
        encoding="utf-8",
    )
    assert rows(one(chat)) == [
        ("Noor", "pasting the old log\n13.06.17 21:25:15: Kit: hi", D(2017, 6, 13, 21, 25, 15))
    ]
