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
