"""Discord importer: DiscordChatExporter JSON (parts, DMs) and CSV (three date styles), inputs."""

from __future__ import annotations

import json
import shutil
import zipfile
from datetime import datetime as D
from pathlib import Path

import pytest
from click.testing import CliRunner

from phischer.cli import cli
from phischer.importers import IMPORTERS
from phischer.importers.base import Conversation, ImportErrorMessage
from phischer.importers.discord import import_discord
from tests.conftest import peak_memory, zip_folder

FIX = Path(__file__).parent / "fixtures" / "discord"
GENERAL = FIX / "json" / "Fictional Guild - Text Channels - general [222000000000000001].json"
GENERAL_2 = (
    FIX / "json" / "Fictional Guild - Text Channels - general [222000000000000001] [part 2].json"
)
RANDOM = FIX / "csv" / "Fictional Guild - Text Channels - random [555000000000000001].csv"
NOOR_DM = FIX / "csv" / "Direct Messages - Private - noor [666000000000000001].csv"
RAID = FIX / "csv" / "raid-night.csv"

RIVER, KAI, NOOR = "333000000000000001", "333000000000000002", "333000000000000003"
GENERAL_ROWS = [
    ("river.song", "anyone up for ranked tonight?", D(2024, 3, 1, 19, 0, 0, 123000)),
    # a Reply written at 21:05:30+01:00 is 20:05:30 UTC
    ("kai_m", "after 9, I'm on call till then", D(2024, 3, 1, 20, 5, 30)),
    ("river.song", "ok\nsee you at 9", D(2024, 3, 1, 20, 10)),
    ("noor", "can I join? 👀", D(2024, 3, 1, 20, 11)),  # text with an attachment: kept
    ("kai_m", "gg everyone", D(2024, 3, 2, 0, 30)),  # from "[part 2]"
]
DM_ROWS = [
    ("river.song", "did you get home ok?", D(2024, 3, 2, 0, 45)),
    ("kai_m", "yep. thanks for carrying", D(2024, 3, 2, 0, 47, 10, 500000)),
]


def rows(conv: Conversation) -> list[tuple[str, str, D]]:
    """A conversation's messages as (sender, text, timestamp)."""
    return [(m.sender, m.text, m.timestamp) for m in conv.messages]


def by_id(path: Path) -> dict[str, Conversation]:
    """Conversations imported from `path`, keyed by id."""
    return {c.id: c for c in import_discord(path)}


def test_registered() -> None:
    assert IMPORTERS["discord"] is import_discord


def test_json_channel_with_parts() -> None:
    convs = list(import_discord(FIX / "json"))
    assert [c.id for c in convs] == ["discord:444000000000000001", "discord:222000000000000001"]
    general = convs[1]
    assert rows(general) == GENERAL_ROWS
    # system: GuildMemberJoin, ChannelPinnedMessage, ThreadCreated, Call (in part 2)
    assert general.dropped == {"system": 4, "bot": 1, "attachment": 1, "sticker": 1, "empty": 1}
    assert (general.title, general.is_group) == ("Fictional Guild / general", True)
    assert general.participants == ["river.song", "kai_m", "noor"]
    ids = [(m.sender_id, m.aliases) for m in general.messages]
    assert ids == [(RIVER, ("River",)), (KAI, ("Kai",)), (RIVER, ("River",)), (NOOR, ()),
                   (KAI, ("Kai",))]  # fmt: skip


def test_json_direct_messages_reversed_export_is_sorted() -> None:
    dm = by_id(FIX / "json")["discord:444000000000000001"]
    assert rows(dm) == DM_ROWS
    assert dm.dropped == {"forwarded": 1}
    assert (dm.title, dm.is_group) == ("kai_m", False)
    assert dm.participants == ["river.song", "kai_m"]


def test_a_semicolon_csv_from_discord_chat_exporter_2(tmp_path: Path) -> None:
    # DiscordChatExporter 2.x wrote "Author;Date;Content;Attachments;": ";" between fields
    # and after the last, no author id, names with their discriminator, dates in its default
    # "dd-MMM-yy hh:mm tt". It was refused as "not a DiscordChatExporter CSV export".
    path = tmp_path / "Whovians - general.csv"
    path.write_bytes(
        "\r\n".join([
            "\ufeffAuthor;Date;Content;Attachments;",
            '"amy.pond#0427";"01-Mar-19 08:00 PM";"anyone up for a raid?";"";',
            '"river.song#1987";"01-Mar-19 08:01 PM";"spoilers; but yes";"";',
            '"amy.pond#0427";"01-Mar-19 08:02 PM";"";"https://cdn.example/pic.png";',
            '"amy.pond#0427";"01-Mar-19 08:03 PM";"ok\nsee you at 9";"";',
            '"river.song#1987";"01-Mar-19 08:04 PM";"bring ""potions""";"";',
            "",
        ]).encode()
    )  # fmt: skip
    (conv,) = import_discord(path)
    assert [(m.sender, m.text, m.timestamp, m.sender_id, m.aliases) for m in conv.messages] == [
        ("amy.pond", "anyone up for a raid?", D(2019, 3, 1, 20, 0), None, ("amy.pond#0427",)),
        ("river.song", "spoilers; but yes", D(2019, 3, 1, 20, 1), None, ("river.song#1987",)),
        ("amy.pond", "ok\nsee you at 9", D(2019, 3, 1, 20, 3), None, ("amy.pond#0427",)),
        ("river.song", 'bring "potions"', D(2019, 3, 1, 20, 4), None, ("river.song#1987",)),
    ]
    assert conv.dropped == {"attachment": 1}
    assert (conv.id, conv.title) == ("discord:Whovians - general", "Whovians - general")
    # A row cut short names its line, as in the newer CSV.
    path.write_text('Author;Date;Content;Attachments;\n"amy.pond#0427";"01-Mar-19"\n')
    with pytest.raises(
        ImportErrorMessage, match=r"general\.csv: line 2: expected 4 columns, got 2$"
    ):
        list(import_discord(path))


def test_single_json_file() -> None:
    (conv,) = import_discord(GENERAL)
    assert rows(conv) == GENERAL_ROWS[:4]
    assert conv.dropped == {"system": 3, "bot": 1, "attachment": 1, "sticker": 1, "empty": 1}


def test_csv_old_format_with_discriminators() -> None:
    (conv,) = import_discord(RANDOM)
    assert rows(conv) == [
        ("river.song", 'who said "one more game"\nat 2am?', D(2024, 3, 1, 19, 0)),
        ("kai_m", "guilty", D(2024, 3, 1, 19, 3)),
    ]
    # "Joined the server." and "Pinned a message." are DiscordChatExporter's system text
    assert conv.dropped == {"system": 2, "attachment": 1, "empty": 1}
    assert [(m.sender_id, m.aliases) for m in conv.messages] == [
        (RIVER, ("river.song#1987",)),
        (KAI, ("kai_m#5150",)),
    ]
    assert (conv.id, conv.title, conv.is_group) == (
        "discord:555000000000000001", "Fictional Guild / random", True,
    )  # fmt: skip


def test_csv_us_locale_month_first_with_narrow_space() -> None:
    (conv,) = import_discord(NOOR_DM)
    assert rows(conv) == [
        ("noor", "you around?", D(2024, 3, 13, 18, 46)),
        ("river.song", "yes! what's up", D(2024, 3, 13, 18, 50)),
        ("noor", "tell you tomorrow", D(2024, 3, 14, 0, 5)),
    ]
    assert (conv.title, conv.is_group, conv.dropped) == ("noor", False, {})
    assert all(m.aliases == () for m in conv.messages)


def test_csv_day_first_renamed_file() -> None:
    (conv,) = import_discord(RAID)
    assert rows(conv) == [
        ("kai_m", "raid at 9:30", D(2024, 4, 2, 21, 0)),
        ("river.song", "bringing snacks", D(2024, 4, 13, 21, 2)),
    ]
    assert conv.dropped == {"system": 1}  # "Added noor to the group."
    assert (conv.id, conv.title) == ("discord:raid-night", "raid-night")


def test_zip_matches_folder_and_skips_media_folders(tmp_path: Path) -> None:
    zpath = tmp_path / "discord.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(FIX.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(FIX).as_posix())
        # --media downloads land in "<export>_Files/": never a channel, even if it is JSON
        zf.writestr("json/general_Files/embed.json", "{}")
        zf.writestr("json/general_Files/photo.png", b"\x89PNG")
    from_zip = {cid: (rows(c), c.dropped) for cid, c in by_id(zpath).items()}
    from_folder = {cid: (rows(c), c.dropped) for cid, c in by_id(FIX).items()}
    assert from_zip == from_folder
    assert sorted(from_zip) == [
        "discord:222000000000000001", "discord:444000000000000001",
        "discord:555000000000000001", "discord:666000000000000001", "discord:raid-night",
    ]  # fmt: skip


def test_same_channel_as_json_and_csv_counts_once(tmp_path: Path) -> None:
    shutil.copy(GENERAL, tmp_path / "general.json")
    shutil.copy(RANDOM, tmp_path / "general.csv")
    (conv,) = import_discord(tmp_path)
    assert rows(conv) == GENERAL_ROWS[:4]


def test_truncated_json_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "general.json"
    broken.write_bytes(GENERAL.read_bytes()[:700])
    with pytest.raises(ImportErrorMessage) as err:
        list(import_discord(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("Truncated JSON in ") and str(broken) in msg


def test_json_that_is_not_an_export(tmp_path: Path) -> None:
    other = tmp_path / "package.json"
    other.write_text('{"name": "x"}')
    with pytest.raises(ImportErrorMessage, match=r"package\.json: not a DiscordChatExporter JSON"):
        list(import_discord(other))


def test_csv_with_wrong_header(tmp_path: Path) -> None:
    other = tmp_path / "export.csv"
    other.write_text("Date,Name,Text\n2024-01-01,a,b\n")
    with pytest.raises(ImportErrorMessage, match=r"export\.csv: not a DiscordChatExporter CSV"):
        list(import_discord(other))


def test_csv_with_bad_date_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text(
        "AuthorID,Author,Date,Content,Attachments,Reactions\n"
        '"1","a","2024-01-01 10:00","two\nlines","",""\n'
        '"1","a","yesterday","hi","",""\n'
    )
    with pytest.raises(ImportErrorMessage, match=r"x\.csv: line 4: unrecognised date 'yesterday'"):
        list(import_discord(bad))


def test_zip_without_exports(tmp_path: Path) -> None:
    zpath = tmp_path / "export.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ImportErrorMessage, match="No DiscordChatExporter .json or .csv file in"):
        list(import_discord(zpath))


def test_wrong_file_type(tmp_path: Path) -> None:
    txt = tmp_path / "chat.html"
    txt.write_text("<html></html>")
    with pytest.raises(ImportErrorMessage, match="expected a DiscordChatExporter .json or .csv"):
        list(import_discord(txt))


def test_html_exports_say_to_export_again_as_json(tmp_path: Path) -> None:
    # HTML is DiscordChatExporter's default format: a folder of those got only "No
    # DiscordChatExporter .json or .csv file", which did not say what to do.
    page = tmp_path / "Direct Messages - amy.pond [9].html"
    page.write_text("<html></html>")
    hint = " (HTML and TXT exports are not read: export the channels again as JSON)"
    for path, said in [
        (tmp_path, f"No DiscordChatExporter .json or .csv file in {tmp_path}{hint}"),
        (page, f"{page}: expected a DiscordChatExporter .json or .csv export, a zip or a "
               f"folder of them{hint}"),
    ]:  # fmt: skip
        with pytest.raises(ImportErrorMessage) as info:
            list(import_discord(path))
        assert str(info.value) == said


@pytest.mark.parametrize(("value", "said"), [(0, "a number"), (["Default"], "an array")])
def test_a_message_type_that_is_not_a_string_is_refused_naming_the_message(
    tmp_path: Path, value: object, said: str
) -> None:
    # It was dropped as a system message: an edited file lost a message without a word.
    channel = json.loads(GENERAL.read_text(encoding="utf-8"))
    channel["messages"][1]["type"] = value
    (tmp_path / "general.json").write_text(json.dumps(channel), encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["import", "discord", str(tmp_path / "general.json"), "--me", "River", "-o", "o"]
    )
    assert (result.exit_code, result.output) == (
        1,
        f'Error: {tmp_path / "general.json"}: message 2 is malformed ("type" is {said}, '
        "not a string)\n",
    )


@pytest.mark.parametrize("me", ["River", "river.song", RIVER])
def test_cli_end_to_end_me_by_nickname_name_or_id(tmp_path: Path, me: str) -> None:
    result = CliRunner().invoke(
        cli, ["import", "discord", str(FIX / "json"), "--me", me, "-o", "out.jsonl"]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    examples = [json.loads(line)["messages"] for line in lines]
    # River opens both conversations (nothing to reply to), answers Kai once in #general.
    assert [ex[1:] for ex in examples] == [
        [
            {"role": "user", "content": "kai_m: after 9, I'm on call till then"},
            {"role": "assistant", "content": "ok\nsee you at 9"},
        ]
    ]
    assert examples[0][0]["role"] == "system"
    assert (
        tmp_path / "out.jsonl.conversations"
    ).read_text() == "discord:222000000000000001#2024-03-01T19:00:00\n"
    assert "Dropped: 9  (system 4, forwarded 1, bot 1, attachment 1, sticker 1, empty 1)" in (
        result.output
    )


def test_cli_unknown_me_lists_senders(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["import", "discord", str(RANDOM), "--me", "nobody", "-o", "out.jsonl"]
    )
    assert result.exit_code == 1
    assert "river.song (1), kai_m (1)" in result.output
    assert not (tmp_path / "out.jsonl").exists()


def _csv(path: Path, *rows: tuple[str, str, str, str]) -> Path:
    """A DiscordChatExporter CSV at `path` with rows of (author id, author, date, content)."""
    lines = ["AuthorID,Author,Date,Content,Attachments,Reactions"]
    lines += [",".join(f'"{v}"' for v in (*row, "", "")) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


AMY_RIVER = (("222", "amy.pond", "3/1/2024 8:00 PM", "hi river"),
             ("111", "river.song", "3/1/2024 8:01 PM", "hello amy"))  # fmt: skip


@pytest.mark.parametrize(
    ("name", "conv_id", "title", "is_group"),
    [
        # a channel with no category: "Guild - Channel [id]"
        ("Whovians - general [5].csv", "discord:5", "Whovians / general", True),
        # a date range exported
        ("Whovians - Text - general [5] (after 2024-01-01).csv", "discord:5",
         "Whovians / general", True),
        ("Whovians - Text - general [5] (2024-01-01 to 2024-06-30) [part 2].csv", "discord:5",
         "Whovians / general", True),
        ("Direct Messages - amy.pond [9] (before 2024-06-30).csv", "discord:9", "amy.pond", False),
    ],
)  # fmt: skip
def test_csv_named_as_discord_chat_exporter_names_it(
    tmp_path: Path, name: str, conv_id: str, title: str, is_group: bool
) -> None:
    (conv,) = import_discord(_csv(tmp_path / name, *AMY_RIVER))
    assert (conv.id, conv.title, conv.is_group) == (conv_id, title, is_group)


def test_two_copies_of_a_channel_are_one_conversation(tmp_path: Path) -> None:
    # The same channel exported twice, the second time from a date on: one conversation id,
    # so the second copy's examples are found to be duplicates; a server channel is a group
    # (names before the turns) even without a category in its file name.
    _csv(tmp_path / "Whovians - general [5].csv", *AMY_RIVER)
    _csv(tmp_path / "Whovians - general [5] (after 2024-03-01).csv", *AMY_RIVER)
    result = CliRunner().invoke(
        cli, ["import", "discord", str(tmp_path), "--me", "river.song", "-o", "out.jsonl"]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["messages"][1:] for line in lines] == [
        [
            {"role": "user", "content": "amy.pond: hi river"},
            {"role": "assistant", "content": "hello amy"},
        ]
    ]
    assert (tmp_path / "out.jsonl.conversations").read_text() == "discord:5#2024-03-01T20:00:00\n"
    assert "Duplicates: 1 example left out" in result.output


def test_a_csv_written_on_windows_breaks_lines_in_a_message_with_newlines(
    tmp_path: Path,
) -> None:
    # DiscordChatExporter on Windows ends every line with CRLF, those inside a quoted
    # multi-line message too: the csv module keeps them, the dataset has "\n" only.
    rows = [
        '"222","amy.pond","3/1/2024 8:00 PM","dinner?\r\nor lunch","",""',
        '"111","river.song","3/1/2024 8:01 PM","lunch\r\nat 1\rsharp","",""',
    ]
    path = tmp_path / "Direct Messages - amy.pond [9].csv"
    path.write_bytes(
        "\r\n".join(["AuthorID,Author,Date,Content,Attachments,Reactions", *rows, ""]).encode()
    )
    result = CliRunner().invoke(
        cli, ["import", "discord", str(path), "--me", "river.song", "-o", "out.jsonl"]
    )
    assert result.exit_code == 0, result.output
    (line,) = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["messages"][1:] == [
        {"role": "user", "content": "dinner?\nor lunch"},
        {"role": "assistant", "content": "lunch\nat 1\nsharp"},
    ]


def test_csv_dates_in_each_locale_dotnet_writes(tmp_path: Path) -> None:
    # DiscordChatExporter writes the exporting machine's short date and time ("g"): here
    # 1 March 2024 20:00 and 14 March 2024 20:02 as each locale writes them.
    locales = {
        # year first, spaces and a last dot; AM/PM before the time
        "ko-KR": ("2024. 3. 1. 오후 8:00", "2024. 3. 14. 오후 8:02"),
        "hu-HU": ("2024. 03. 01. 20:00", "2024. 03. 14. 20:02"),
        "zh-TW": ("2024/3/1 下午 08:00", "2024/3/14 下午 08:02"),
        "ja-JP-ampm": ("2024/03/01 午後 8:00", "2024/03/14 午後 8:02"),
        "ko-KR-morning": ("2024. 3. 1. 오전 8:00", "2024. 3. 14. 오전 8:02"),
        "cs-CZ": ("1. 3. 2024 20:00", "14. 3. 2024 20:02"),
        # the locale's own digits, with RLM marks in Arabic
        "ar-EG": ("١\u200f/٣\u200f/٢٠٢٤ ٨:٠٠ م", "١٤\u200f/٣\u200f/٢٠٢٤ ٨:٠٢ م"),
        "bn-BD": ("১/৩/২০২৪ ৮:০০ PM", "১৪/৩/২০২৪ ৮:০২ PM"),
        "fi-FI-klo": ("1.3.2024 klo 20.00", "14.3.2024 klo 20.02"),
        "el-GR": ("1/3/2024 8:00 μ.μ.", "14/3/2024 8:02 μ.μ."),  # μ.μ.: PM
        # forms read before
        "en-US": ("3/1/2024 8:00 PM", "3/14/2024 8:02 PM"),
        "en-US-icu": ("3/1/2024 8:00\u202fPM", "3/14/2024 8:02\u202fPM"),
        "en-GB": ("01/03/2024 20:00", "14/03/2024 20:02"),
        "de-DE": ("01.03.2024 20:00", "14.03.2024 20:02"),
        "da-DK": ("01.03.2024 20.00", "14.03.2024 20.02"),
        "fi-FI": ("1.3.2024 20.00", "14.3.2024 20.02"),
        "ja-JP": ("2024/03/01 20:00", "2024/03/14 20:02"),
        "en-CA": ("2024-03-01 8:00 p.m.", "2024-03-14 8:02 p.m."),
        "invariant": ("03/01/2024 20:00", "03/14/2024 20:02"),
        "old": ("01-Mar-24 08:00 PM", "14-Mar-24 08:02 PM"),
    }
    read = {}
    for locale, (first, second) in locales.items():
        path = _csv(tmp_path / f"{locale}.csv", ("222", "amy.pond", first, "hi"),
                    ("111", "river.song", second, "hey"))  # fmt: skip
        (conv,) = import_discord(path)
        read[locale] = [m.timestamp for m in conv.messages]
    morning = [D(2024, 3, 1, 8, 0), D(2024, 3, 14, 8, 2)]
    evening = [D(2024, 3, 1, 20, 0), D(2024, 3, 14, 20, 2)]
    assert read == {k: morning if k == "ko-KR-morning" else evening for k in locales}


def test_csv_dates_of_another_calendar_are_refused(tmp_path: Path) -> None:
    # .NET's fa-IR writes Persian (solar) years: refused, not imported 621 years early.
    path = _csv(tmp_path / "fa-IR.csv", ("222", "amy.pond", "۱۴۰۲/۱۲/۱۱ ۲۰:۰۰", "سلام"))
    with pytest.raises(
        ImportErrorMessage, match=r"fa-IR\.csv: line 2: year 1402 in .* is not a Gregorian year"
    ):
        list(import_discord(path))


def _json(path: Path, channel: dict, *messages: dict) -> Path:
    """A DiscordChatExporter JSON export of `channel` at `path`."""
    guild = {"id": "6", "name": "Whovians"}
    path.write_text(json.dumps({"guild": guild, "channel": channel, "messages": messages}))
    return path


def _author(uid: str, name: str, nickname: str) -> dict:
    """A message author (or a user in "mentions") as DiscordChatExporter writes one."""
    return {"id": uid, "name": name, "discriminator": "0000", "nickname": nickname,
            "isBot": False}  # fmt: skip


def test_markup_of_an_export_without_markdown_is_rendered(tmp_path: Path) -> None:
    # `--markdown false` leaves Discord's raw tokens in "content".
    river, amy = _author("111", "river.song", "River"), _author("222", "amy.pond", "Amy")
    general = {"id": "5", "type": "GuildTextChat", "name": "general"}
    path = _json(
        tmp_path / "Whovians - Text - general [5].json",
        general,
        {"id": "1", "type": "Default", "timestamp": "2024-03-01T20:00:00+00:00", "author": amy,
         "content": "<@111> did you see <#777>? <:pepe_laugh:123456789012345678> "
                    "<t:1709323200:R>", "mentions": [river]},
        {"id": "2", "type": "Default", "timestamp": "2024-03-01T20:01:00+00:00",
         "author": river, "content": "lol yes <a:dance:998877665544332211> <@&555> "
         "<@!222> <@333> back in <#5> at <t:1709326800:t>, <t:1709326800:D>"},
    )  # fmt: skip
    (conv,) = import_discord(path)
    assert [m.text for m in conv.messages] == [
        # a user by their nickname; another channel and a role by what they are; a time in UTC
        "@River did you see #channel? :pepe_laugh: 2024-03-01 20:00 UTC",
        # not in "mentions": named as DiscordChatExporter names an unknown user
        "lol yes :dance: @role @Unknown @Unknown back in #general at 21:00 UTC, 2024-03-01",
    ]


def test_markup_in_csv_names_people_after_their_rows(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "Whovians - Text - general [5].csv",
        ("222", "amy.pond#0427", "3/1/2024 8:00 PM", "<@111> see <#5> <:pepe:123>"),
        ("111", "river.song", "3/1/2024 8:01 PM", "<@!222> <@999> <#6> <t:1709323200:f>"),
    )
    (conv,) = import_discord(path)
    assert [m.text for m in conv.messages] == [
        "@river.song see #general :pepe:",
        "@amy.pond @Unknown #channel 2024-03-01 20:00 UTC",
    ]


MESSENGER_THREAD = (
    FIX.parent / "messenger/your_facebook_activity/messages/inbox/samrivera_1001/message_1.json"
)


@pytest.mark.parametrize(
    "other", [MESSENGER_THREAD, FIX.parent / "telegram" / "single" / "result.json"]
)
def test_another_apps_json_is_refused_not_imported_empty(tmp_path: Path, other: Path) -> None:
    # Messenger and Telegram JSON have a "messages" list too; without the "channel" check
    # every message was dropped as a system notice and the import blamed --me.
    result = CliRunner().invoke(
        cli, ["import", "discord", str(other), "--me", "Zoë Martín", "-o", "out.jsonl"]
    )
    assert result.exit_code == 1
    assert result.output == (
        f'Error: {other}: not a DiscordChatExporter JSON export (no "channel" object and '
        '"messages" list)\n'
    )
    assert not (tmp_path / "out.jsonl").exists()


def _one_person_export(folder: Path) -> Path:
    """River (id 111) and Amy (222) under other names in each channel of one export."""
    folder.mkdir()
    server = {"id": "5", "type": "GuildTextChat", "name": "general"}
    # An older export of a server channel: River's nickname there is "Professor Song".
    _json(
        folder / "Whovians - Text - general [5].json",
        server,
        _message("222", "amy.pond", "Amy", "2024-03-01T20:00:00+00:00", "anyone seen the doctor?"),
        _message("111", "river.song", "Professor Song", "2024-03-01T20:01:00+00:00", "spoilers"),
        _message("333", "rory", "Rory", "2024-03-01T20:02:00+00:00", "not again"),
        _message("111", "river.song", "Professor Song", "2024-03-01T20:03:00+00:00", "sweetie"),
    )
    # A DM exported since: both changed usernames (no nickname in DMs but the display name).
    dm = {"id": "9", "type": "DirectTextChat", "name": "amelia"}
    _json(
        folder / "Direct Messages - amelia [9].json",
        dm,
        _message("222", "amelia", "Amelia", "2024-06-01T18:00:00+00:00", "dinner friday?"),
        _message("111", "riversong_", "River", "2024-06-01T18:05:00+00:00", "yes!"),
    )
    # An old CSV export, from before usernames lost their discriminator.
    _csv(
        folder / "Whovians - Text - old [7].csv",
        ("222", "amy.pond#0001", "3/1/2023 8:00 PM", "old times"),
        ("111", "river.song#1987", "3/1/2023 8:01 PM", "hello sweetie"),
    )
    return folder


def _message(uid: str, name: str, nickname: str, when: str, content: str) -> dict:
    return {"id": when, "type": "Default", "timestamp": when, "content": content,
            "author": _author(uid, name, nickname)}  # fmt: skip


@pytest.mark.parametrize("held", [None, 0])
@pytest.mark.parametrize("me", ["Professor Song", "river.song#1987", "riversong_", "111"])
def test_me_is_every_message_of_the_same_author_id_in_every_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, me: str, held: int | None
) -> None:
    from phischer.importers import senders

    if held is not None:  # spooled to a file instead of held in memory: the same dataset
        monkeypatch.setattr(senders, "HELD_MESSAGES", held)
    export = _one_person_export(tmp_path / "export")
    result = CliRunner().invoke(
        cli, ["import", "discord", str(export), "--me", me, "-o", "o.jsonl"]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()
    examples = [json.loads(line)["messages"] for line in lines]
    # Each of River's names matches all of River's messages, and the others keep one name
    # in the group chats: the one on their latest message ("amelia", not "amy.pond").
    assert [[(t["role"], t["content"]) for t in ex[1:]] for ex in examples] == [
        [("user", "dinner friday?"), ("assistant", "yes!")],
        [
            ("user", "amelia: anyone seen the doctor?"),
            ("assistant", "spoilers"),
            ("user", "rory: not again"),
            ("assistant", "sweetie"),
        ],
        [("user", "amelia: old times"), ("assistant", "hello sweetie")],
    ]
    assert "Messages kept: 8  (yours: 4)" in result.output
    # The prompt names River as now called, whichever name --me gave.
    assert examples[0][0]["content"].startswith("You are riversong_. ")


def test_an_old_json_export_takes_me_as_name_and_discriminator(tmp_path: Path) -> None:
    # JSON exports from before Discord dropped discriminators (2023) write the "1987" of
    # river.song#1987 apart, with no nickname; --me "river.song#1987" matched nobody there
    # although it names River in a CSV of the same time. A "0000" is no one's tag.
    old = {"id": "111", "name": "river.song", "discriminator": "1987", "isBot": False}
    amy = {"id": "222", "name": "amy.pond", "discriminator": "0000", "isBot": False}
    _json(
        tmp_path / "Direct Messages - amy.pond [9].json",
        {"id": "9", "type": "DirectTextChat", "name": "amy.pond"},
        {"id": "1", "type": "Default", "timestamp": "2020-09-28T17:48:32.1234567+00:00",
         "author": amy, "content": "raid tonight?"},
        {"id": "2", "type": "Default", "timestamp": "2020-09-28T17:49:00+00:00",
         "author": old, "content": "yeah 9pm"},
    )  # fmt: skip
    args = ["import", "discord", str(tmp_path), "-o", "o.jsonl", "--me"]
    refused = CliRunner().invoke(cli, [*args, "amy.pond#0000"])
    assert refused.exit_code == 1
    assert refused.output.startswith("Error: --me 'amy.pond#0000' matches no sender")
    result = CliRunner().invoke(cli, [*args, "river.song#1987"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["messages"][1:] for line in lines] == [
        [{"role": "user", "content": "raid tonight?"}, {"role": "assistant", "content": "yeah 9pm"}]
    ]


def _reordered(path: Path, order: list[str]) -> Path:
    """GENERAL's channel written at `path` with its top-level keys in `order` (the rest after)."""
    data = json.loads(GENERAL.read_bytes())
    keys = order + [k for k in data if k not in order]
    path.write_text(json.dumps({k: data[k] for k in keys}, indent=2), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "order",
    [
        [],  # as DiscordChatExporter writes it: guild, channel, …, messages, messageCount
        ["messages"],  # messages first: held until the channel is known
        ["guild", "messages"],  # channel after messages
        ["exportedAt", "messageCount", "dateRange", "guild", "channel"],  # messages last
    ],
)
@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_json_keys_in_any_order_read_in_any_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: list[str], chunk: int
) -> None:
    from phischer.importers import json_stream

    # Tiny chunks cut keys, timestamps and multi-byte characters (👀) in two.
    monkeypatch.setattr(json_stream, "READ_CHUNK", chunk)
    (conv,) = import_discord(_reordered(tmp_path / "general.json", order))
    assert rows(conv) == GENERAL_ROWS[:4]
    assert conv.dropped == {"system": 3, "bot": 1, "attachment": 1, "sticker": 1, "empty": 1}
    assert (conv.id, conv.title) == ("discord:222000000000000001", "Fictional Guild / general")


def test_every_cut_of_a_channel_is_truncated_json_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phischer.importers import json_stream

    data = GENERAL.read_bytes()
    broken = tmp_path / "general.json"
    for chunk in (5, 1 << 20):
        monkeypatch.setattr(json_stream, "READ_CHUNK", chunk)
        for cut in range(0, len(data.rstrip()), 37):
            broken.write_bytes(data[:cut])
            with pytest.raises(ImportErrorMessage) as err:
                list(import_discord(broken))
            msg = str(err.value)
            assert msg.startswith(f"Truncated JSON in {broken}: "), (cut, msg)
            assert "\n" not in msg and msg.endswith(")")


def test_broken_message_points_where_json_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phischer.importers import json_stream

    # A message half-way through the channel lost a comma: line and column from the file's
    # start, however much of it was read and dropped before.
    text = GENERAL.read_text(encoding="utf-8")
    at = text.index('"content": "can I join?')
    doc = text[:at] + text[at:].replace('",', '"', 1)
    with pytest.raises(json.JSONDecodeError) as ref:
        json.loads(doc)
    broken = tmp_path / "general.json"
    broken.write_text(doc, encoding="utf-8")
    for chunk in (3, 100, 1 << 20):
        monkeypatch.setattr(json_stream, "READ_CHUNK", chunk)
        with pytest.raises(ImportErrorMessage) as err:
            list(import_discord(broken))
        assert str(err.value) == (
            f"Invalid JSON in {broken}: {ref.value.msg} "
            f"(line {ref.value.lineno}, column {ref.value.colno})"
        )


def test_a_big_channel_is_read_a_message_at_a_time(tmp_path: Path) -> None:
    # 4,000 messages of ~1.7 KB, each with reactions and an embed as a real channel's have.
    # Decoded whole they take several times the file; streamed, only the Messages kept stay.
    data = json.loads(GENERAL.read_bytes())
    template = data["messages"][1]  # river.song's "anyone up for ranked tonight?"
    people = [_author(str(i), f"user{i}", f"User {i}") for i in range(20)]
    template["reactions"] = [{"emoji": {"id": "", "name": "👍", "code": "thumbsup"},
                              "count": 2, "users": people[:5]}]  # fmt: skip
    template["embeds"] = [{"title": "a link", "url": "https://example.com/page",
                           "description": "a preview of the page " * 10}]  # fmt: skip
    data["messages"] = [{**template, "id": str(i)} for i in range(4000)]
    path = tmp_path / "general.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    del data, template

    whole = peak_memory(lambda: json.loads(path.read_bytes()))
    convs: list[Conversation] = []
    streamed = peak_memory(lambda: convs.extend(import_discord(path)))
    assert len(convs[0].messages) == 4000
    assert streamed < whole / 4, (streamed, whole)


def test_a_message_of_only_a_link_is_dropped_as_a_link(tmp_path: Path) -> None:
    # A GIF from Discord's picker is its tenor.com link as the content: a clone trained on
    # it would answer with made-up links. A link with words around it is what she wrote.
    dm = {"id": "9", "type": "DirectTextChat", "name": "amy.pond"}
    path = _json(
        tmp_path / "Direct Messages - amy.pond [9].json",
        dm,
        _message("222", "amy.pond", "Amy", "2024-03-01T20:00:00+00:00", "we won the raid!!"),
        _message("111", "river.song", "River", "2024-03-01T20:01:00+00:00",
                 "https://tenor.com/view/dancing-cat-gif-1234567"),
        _message("111", "river.song", "River", "2024-03-01T20:01:30+00:00",
                 " https://youtu.be/abc123\nhttps://example.com/clip "),
        _message("111", "river.song", "River", "2024-03-01T20:02:00+00:00",
                 "finally, the replay: https://youtu.be/abc123"),
    )  # fmt: skip
    (conv,) = import_discord(path)
    assert [(m.sender, m.text) for m in conv.messages] == [
        ("amy.pond", "we won the raid!!"),
        ("river.song", "finally, the replay: https://youtu.be/abc123"),
    ]
    assert conv.dropped == {"link": 2}
    # CSV alike
    (conv,) = import_discord(
        _csv(
            tmp_path / "Whovians - Text - general [5].csv",
            *AMY_RIVER,
            ("111", "river.song", "3/1/2024 8:02 PM", "https://tenor.com/view/wave-gif-99"),
        )
    )
    assert [m.text for m in conv.messages] == ["hi river", "hello amy"]
    assert conv.dropped == {"link": 1}


def _data_package(root: Path, messages: str = "Messages") -> Path:
    """A small Discord data package ("Request all of my data") unpacked in `root`."""
    channels = root / messages
    (channels / "c111").mkdir(parents=True)
    (channels / "c222").mkdir()
    (root / "Account").mkdir()
    (root / "Servers" / "333").mkdir(parents=True)
    (channels / "index.json").write_text('{"111": "Direct Message with amy.pond", "222": null}')
    (channels / "c111" / "channel.json").write_text(
        '{"id": "111", "type": 1, "recipients": ["1", "2"]}'
    )
    (channels / "c111" / "messages.json").write_text(
        '[\n  {"ID": 5, "Timestamp": "2024-03-01 20:00:00", "Contents": "hello sweetie",'
        ' "Attachments": ""}\n]'
    )
    (channels / "c222" / "channel.json").write_text(
        '{"id": "222", "type": 0, "name": "general", "guild": {"id": "333", "name": "Whovians"}}'
    )
    # older packages: messages.csv instead of messages.json
    (channels / "c222" / "messages.csv").write_text(
        "ID,Timestamp,Contents,Attachments\n6,2020-08-25 22:54:05.726000+00:00,spoilers,\n"
    )
    (root / "Account" / "user.json").write_text('{"id": "1", "username": "river.song"}')
    (root / "Servers" / "index.json").write_text('{"333": "Whovians"}')
    (root / "Servers" / "333" / "guild.json").write_text('{"id": "333", "name": "Whovians"}')
    return root


PACKAGE_WHY = (
    'Discord\'s own data package ("Request all of my data") holds only your side of each '
    "chat, so it cannot train replies: "
)


def _import_error(path: Path) -> str:
    """What `phischer import discord PATH` prints, asserting it fails with exit 1."""
    result = CliRunner().invoke(
        cli, ["import", "discord", str(path), "--me", "river.song", "-o", "out.jsonl"]
    )
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not Path("out.jsonl").exists()
    return result.output


@pytest.mark.parametrize(
    ("given", "evidence"),
    [
        ("package", "package/Messages/c111/messages.json"),  # the unzipped folder
        ("package/Messages", "package/Messages/c111/messages.json"),
        ("package/Messages/c111", "package/Messages/c111/messages.json"),  # one channel
        ("package/Messages/c111/messages.json", "package/Messages/c111/messages.json"),
        ("package/Messages/c222/messages.csv", "package/Messages/c222/messages.csv"),
    ],
)
def test_discords_own_data_package_is_refused_saying_why(
    tmp_path: Path, given: str, evidence: str
) -> None:
    _data_package(tmp_path / "package")
    assert _import_error(tmp_path / given) == (
        f"Error: {tmp_path / evidence}: {PACKAGE_WHY}"
        "export the DMs and channels with DiscordChatExporter instead\n"
    )


@pytest.mark.parametrize("messages", ["Messages", "messages"])  # newer and older packages
def test_discords_own_data_package_zip_is_refused_saying_why(tmp_path: Path, messages: str) -> None:
    package = zip_folder(_data_package(tmp_path / "package", messages), tmp_path / "package.zip")
    assert _import_error(package) == (
        f"Error: {messages}/c111/messages.json (in {package}): {PACKAGE_WHY}"
        "export the DMs and channels with DiscordChatExporter instead\n"
    )


@pytest.mark.parametrize("old_csv", [False, True])
def test_a_data_package_beside_discord_chat_exporter_exports_is_refused(
    tmp_path: Path, old_csv: bool
) -> None:
    # Decided: the whole import stops, naming the package to move out, rather than skipping
    # it (its Account/, Servers/, … JSON cannot be told from stray files). A 2.x CSV
    # ("Author;Date;…") is one of the exports too.
    folder = tmp_path / "discord"
    _data_package(folder / "package")
    if old_csv:
        (folder / "Whovians - general.csv").write_text(
            'Author;Date;Content;Attachments;\n"amy#0427";"01-Mar-19 08:00 PM";"hi";"";\n'
        )
    else:
        shutil.copy(GENERAL, folder / GENERAL.name)
    assert _import_error(folder) == (
        f"Error: {folder / 'package/Messages/c111/messages.json'}: {PACKAGE_WHY}"
        f"move it out of {folder} and import the DiscordChatExporter exports there\n"
    )


def test_an_export_named_like_a_package_file_is_still_an_export(tmp_path: Path) -> None:
    # Known by its shape, not its name: a DiscordChatExporter export saved as messages.json
    # (even beside a channel.json) is imported.
    folder = tmp_path / "c999"
    folder.mkdir()
    (folder / "channel.json").write_text('{"id": "999", "type": 0}')
    shutil.copy(GENERAL, folder / "messages.json")
    shutil.copy(GENERAL_2, folder / "messages [part 2].json")
    (conv,) = import_discord(folder / "messages.json")
    assert rows(conv) == GENERAL_ROWS[:4]
    (folder / "channel.json").unlink()  # not an export: it would be refused as one
    (conv,) = import_discord(folder)
    assert rows(conv) == GENERAL_ROWS
