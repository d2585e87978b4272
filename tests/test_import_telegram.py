"""Telegram importer: single-chat and full JSON exports, text entity lists, drops, inputs."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from datetime import datetime as D
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from phischer.cli import cli
from phischer.dataset import build_examples
from phischer.importers import IMPORTERS
from phischer.importers.base import Conversation, ImportErrorMessage
from phischer.importers.telegram import flatten_text, import_telegram, stream_chats
from tests.conftest import peak_memory

FIX = Path(__file__).parent / "fixtures" / "telegram"
SINGLE = FIX / "single" / "result.json"
FULL = FIX / "full" / "result.json"
FORUM = FIX / "forum" / "result.json"
PRIYA, LEO = "user4400112233", "user5500998877"

PRIYA_CHAT = [
    ("Priya Nair", "did the plant survive the weekend?", D(2024, 2, 10, 9, 5)),
    (
        "Leo Hart",
        "barely. see https://example.org/fern — new leaves though",
        D(2024, 2, 10, 9, 6, 30),
    ),
    ("Leo Hart", "before / after", D(2024, 2, 10, 9, 8, 10)),  # a photo's caption
    ("Priya Nair", "@leohart told you\nthey like rain water", D(2024, 2, 10, 9, 12)),
    # no date_unixtime (older exports): `date`, the exporting computer's local time
    ("Priya Nair", "night!", D(2024, 2, 10, 22, 30)),
]


def rows(conv: Conversation) -> list[tuple[str, str, D]]:
    """A conversation's messages as (sender, text, timestamp)."""
    return [(m.sender, m.text, m.timestamp) for m in conv.messages]


def test_registered() -> None:
    assert IMPORTERS["telegram"] is import_telegram


def test_single_chat_export() -> None:
    (conv,) = import_telegram(SINGLE)
    assert rows(conv) == PRIYA_CHAT
    # service: a call and a pin; media: a photo without caption and a voice message
    assert conv.dropped == {"service": 2, "sticker": 1, "media": 2, "forwarded": 1, "poll": 1}
    assert (conv.id, conv.title, conv.is_group) == ("telegram:4400112233", "Priya Nair", False)
    assert conv.participants == ["Priya Nair", "Leo Hart"]
    assert [(m.sender_id, m.aliases) for m in conv.messages[:2]] == [
        (PRIYA, ("4400112233",)),
        (LEO, ("5500998877",)),
    ]


def test_single_chat_from_folder_and_zip(tmp_path: Path) -> None:
    (from_folder,) = import_telegram(SINGLE.parent)
    zpath = tmp_path / "telegram.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(SINGLE, "ChatExport_2024-02-11/result.json")
        zf.writestr("ChatExport_2024-02-11/photos/photo_1@10-02-2024_10-08-10.jpg", b"\xff\xd8")
    (from_zip,) = import_telegram(zpath)
    assert rows(from_folder) == rows(from_zip) == PRIYA_CHAT


def test_full_export_one_conversation_per_chat() -> None:
    convs = list(import_telegram(FULL))
    summary = [(c.id, c.title, c.is_group, c.dropped) for c in convs]
    assert summary == [
        ("telegram:4400112233", "Priya Nair", False, {}),
        ("telegram:1700000001", "Climbing Crew", True, {"service": 1, "media": 1}),
        ("telegram:3300000001", "WeatherBot", False, {"bot chat": 2}),
        ("telegram:5500998877", "Saved Messages", False, {}),
        ("telegram:1600000001", "Old Flat", True, {}),  # from left_chats
    ]
    # Only the bot chat is left out whole; the summary reports it apart from the threads.
    assert [c.skipped for c in convs] == [None, None, "bot chat", None, None]
    assert [rows(c) for c in convs] == [
        PRIYA_CHAT[:2],
        [
            ("Leo Hart", "bouldering thursday?", D(2024, 3, 1, 18, 1)),
            ("Sofia Reyes", "in 🧗", D(2024, 3, 1, 18, 2)),
            # "from": null, a deleted account: named after its from_id
            ("Deleted Account 7700112233", "count me in", D(2024, 3, 1, 18, 3)),
            ("Tomasz Wolny", "#thursday 7pm here", D(2024, 3, 1, 18, 5)),
        ],
        [],
        [("Leo Hart", "buy chalk", D(2024, 3, 3, 12, 0))],
        [
            ("Mina Cho", "who took my oat milk", D(2023, 6, 1, 20, 0)),
            ("Leo Hart", "not me 👀", D(2023, 6, 1, 20, 1)),
        ],
    ]


def test_flatten_text_strings_and_entities() -> None:
    assert flatten_text("plain") == "plain"
    assert flatten_text(["a ", {"type": "bold", "text": "b"}, {"type": "text_link", "text": "c",
                         "href": "https://example.org"}]) == "a bc"  # fmt: skip
    assert flatten_text(None) == ""  # null: no text, as when the key is absent
    assert flatten_text([{"type": "custom_emoji", "text": "🧗", "document_id": "1"}]) == "🧗"


def test_truncated_json_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "result.json"
    broken.write_bytes(FULL.read_bytes()[:-200])
    with pytest.raises(ImportErrorMessage) as err:
        list(import_telegram(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg
    # Cut mid-string, as an interrupted download is: the error names the file and the place.
    assert msg.startswith(f"Truncated JSON in {broken}: ") and "line 305" in msg


def test_html_export_says_how_to_fix(tmp_path: Path) -> None:
    (tmp_path / "messages.html").write_text("<html></html>")
    with pytest.raises(ImportErrorMessage, match="Telegram's HTML export: export again with"):
        list(import_telegram(tmp_path))


def test_a_full_export_without_chats_says_to_tick_them(tmp_path: Path) -> None:
    # "Export Telegram data" with chats unticked writes a result.json of account data only;
    # it was called "not a Telegram Desktop export" and the user told to pick another format.
    path = tmp_path / "result.json"
    path.write_text(json.dumps({
        "about": "Here is the data you requested.",
        "personal_information": {"user_id": 5500998877, "first_name": "Leo", "last_name": "Hart"},
        "contacts": {"about": "This is your contact list.", "list": []},
    }))  # fmt: skip
    with pytest.raises(ImportErrorMessage) as info:
        list(import_telegram(tmp_path))
    assert str(info.value) == (
        f"{path} is a Telegram export without chats: export again with 'Personal chats' (and "
        "the groups you want) ticked, format 'Machine-readable JSON'"
    )


def test_zip_without_result_json(tmp_path: Path) -> None:
    zpath = tmp_path / "export.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("photos/photo_1.jpg", b"\xff")
    with pytest.raises(ImportErrorMessage, match=r"^No result\.json in .*export\.zip"):
        list(import_telegram(zpath))


def test_json_that_is_not_telegram(tmp_path: Path) -> None:
    other = tmp_path / "result.json"
    other.write_text('{"guild": {}, "channel": {}}')
    with pytest.raises(ImportErrorMessage, match=r"result\.json is not a Telegram Desktop export"):
        list(import_telegram(other))


@pytest.mark.parametrize(
    "other",
    [
        # DiscordChatExporter's JSON and a Messenger thread also hold a "messages" list.
        "discord/json/Direct Messages - Private - kai_m [444000000000000001].json",
        "messenger/your_facebook_activity/messages/inbox/samrivera_1001/message_1.json",
    ],
)
def test_another_apps_chat_is_not_telegram(tmp_path: Path, other: str) -> None:
    # Read as a chat without text, it said "the export has no text messages at all".
    out = tmp_path / "o.jsonl"
    args = ["import", "telegram", str(FIX.parent / other), "--me", "x", "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "is not a Telegram Desktop export" in result.output
    assert "use the format name that matches the export" in result.output


def import_with_text(tmp_path: Path, index: int, text: object, key: str = "text") -> Any:
    """`phischer import telegram` of the single-chat fixture with message `index`'s text set."""
    chat = json.loads(SINGLE.read_text(encoding="utf-8"))
    chat["messages"][index][key] = text
    (tmp_path / "result.json").write_text(json.dumps(chat), encoding="utf-8")
    args = [
        "import",
        "telegram",
        str(tmp_path / "result.json"),
        "--me",
        "Leo Hart",
        "-o",
        "o.jsonl",
    ]
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize(
    ("index", "text", "said"),
    [
        (2, 42, "a number"),
        (3, {"type": "bold", "text": "hi"}, "an object"),
        (0, True, "a boolean"),  # a service message's text is read before its type
    ],
)
def test_a_text_that_is_neither_a_string_nor_a_list_is_refused_naming_the_message(
    tmp_path: Path, index: int, text: object, said: str
) -> None:
    # An export edited by a tool: dropping the message as empty hid that the file is broken.
    result = import_with_text(tmp_path, index, text)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {tmp_path / 'result.json'}: chat 'Priya Nair', message {index + 1} is "
        f'malformed ("text" is {said}, not a string or a list)\n'
    )


@pytest.mark.parametrize(
    ("index", "key", "value", "said"),
    [
        (1, "type", 1, "a number"),  # was dropped as a service message
        (0, "type", ["service"], "an array"),
        (5, "media_type", True, "a boolean"),  # was kept or dropped by its truth
    ],
)
def test_a_kind_that_is_not_a_string_is_refused_naming_the_message(
    tmp_path: Path, index: int, key: str, value: object, said: str
) -> None:
    result = import_with_text(tmp_path, index, value, key)
    assert (result.exit_code, result.output) == (
        1,
        f"Error: {tmp_path / 'result.json'}: chat 'Priya Nair', message {index + 1} is "
        f'malformed ("{key}" is {said}, not a string)\n',
    )


def test_a_chat_type_that_is_not_a_string_is_refused_naming_the_chat(tmp_path: Path) -> None:
    # A bot's chat whose "type" was a number was imported as a person's.
    export = json.loads(FULL.read_text(encoding="utf-8"))
    export["chats"]["list"][2]["type"] = 3
    (tmp_path / "result.json").write_text(json.dumps(export), encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["import", "telegram", str(tmp_path / "result.json"), "--me", "Leo Hart", "-o", "o"]
    )
    assert (result.exit_code, result.output) == (
        1,
        f"Error: {tmp_path / 'result.json'}: chat 'WeatherBot' is malformed "
        '("type" is a number, not a string)\n',
    )


@pytest.mark.parametrize(
    ("part", "said"),
    [
        (7, "a number"),
        (None, "null"),
        (["hi"], "an array"),
        ({"type": "bold", "text": 5}, 'an object whose "text" is a number'),
        ({"type": "bold"}, 'an object without "text"'),
    ],
)
def test_a_text_part_that_is_neither_a_string_nor_an_entity_is_refused_naming_the_message(
    tmp_path: Path, part: object, said: str
) -> None:
    # Skipping it cut words out of the message without a word.
    result = import_with_text(tmp_path, 2, ["see you ", {"type": "bold", "text": "at 8"}, part])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {tmp_path / 'result.json'}: chat 'Priya Nair', message 3 is malformed (part 3 "
        f'of "text" is {said}, not a string or an object with a "text" string)\n'
    )


def test_folder_with_several_chat_exports(tmp_path: Path) -> None:
    shutil.copytree(SINGLE.parent, tmp_path / "ChatExport_2024-02-11")
    shutil.copytree(FULL.parent, tmp_path / "DataExport_2024-03-05")
    assert [c.title for c in import_telegram(tmp_path)] == [
        "Priya Nair", "Priya Nair", "Climbing Crew", "WeatherBot", "Saved Messages", "Old Flat",
    ]  # fmt: skip


@pytest.mark.parametrize("me", ["Leo Hart", LEO, "5500998877"])
def test_cli_end_to_end_me_by_name_or_from_id(tmp_path: Path, me: str) -> None:
    result = CliRunner().invoke(
        cli, ["import", "telegram", str(FULL), "--me", me, "-o", "out.jsonl"]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    examples = [json.loads(line)["messages"] for line in lines]
    assert [ex[1:] for ex in examples] == [
        [
            {"role": "user", "content": "did the plant survive the weekend?"},
            {
                "role": "assistant",
                "content": "barely. see https://example.org/fern — new leaves though",
            },
        ],
        [
            {"role": "user", "content": "Mina Cho: who took my oat milk"},  # a group: names
            {"role": "assistant", "content": "not me 👀"},
        ],
    ]
    assert all(ex[0]["role"] == "system" for ex in examples)
    assert (tmp_path / "out.jsonl.conversations").read_text().splitlines() == [
        "telegram:4400112233#2024-02-10T09:05:00",
        "telegram:1600000001#2023-06-01T20:00:00",
    ]
    # 4 chats with text, each at least one conversation; the bot chat is not one of them.
    assert result.output.splitlines()[:4] == [
        "Threads: 4  (4 conversations after splitting on silences)",
        "Threads skipped: 1  (bot chat 1)",
        "Messages kept: 9  (yours: 4)",
        "Dropped: 4  (bot chat 2, service 1, media 1)",
    ]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_streaming_reader_matches_json_load_at_any_chunk_size(chunk: int) -> None:
    # Tiny chunks cut keys, numbers, literals and multi-byte characters (—, 🧗, 👀) in two.
    for path in (FULL, SINGLE):
        data = path.read_bytes()
        ref = json.loads(data)
        want = ref["chats"]["list"] + ref["left_chats"]["list"] if "chats" in ref else [ref]
        assert list(stream_chats(io.BytesIO(data), "x", chunk)) == want


def test_streaming_reader_reports_every_cut_as_truncated() -> None:
    data = FULL.read_bytes()
    for cut in range(0, len(data.rstrip()), 7):
        for chunk in (5, 1 << 20):
            with pytest.raises(ImportErrorMessage, match=r"^Truncated JSON in x: "):
                list(stream_chats(io.BytesIO(data[:cut]), "x", chunk))


@pytest.mark.parametrize(
    "doc",
    [
        b'{"chats": {"list": [{"messages": []}]}} x',
        b'{"a" 1}',
        b'{\n  "messages": [\n  tru]}',
        b'{"messages": [],\n "x": 1, "y": }',
    ],
)
def test_streaming_reader_invalid_json_points_where_json_does(doc: bytes) -> None:
    with pytest.raises(json.JSONDecodeError) as ref:
        json.loads(doc)
    where = f"(line {ref.value.lineno}, column {ref.value.colno})"
    for chunk in (3, 100):
        with pytest.raises(ImportErrorMessage) as err:
            list(stream_chats(io.BytesIO(doc), "x", chunk))
        assert str(err.value) == f"Invalid JSON in x: {ref.value.msg} {where}"


def test_streaming_reader_keeps_memory_per_chat() -> None:
    # 40 chats of ~50 KB each: streaming peaks at about one chat, json.loads at all of them.
    chats = [
        {"name": f"c{i}", "type": "personal_chat", "id": i, "messages": [
            {"id": j, "type": "message", "date_unixtime": str(1_700_000_000 + j),
             "from": "A", "from_id": "user1", "text": f"message {j} in chat {i}"}
            for j in range(500)
        ]}
        for i in range(40)
    ]  # fmt: skip
    data = json.dumps({"chats": {"list": chats}}).encode()
    del chats

    whole = peak_memory(lambda: json.loads(data))
    count = 0

    def stream() -> None:
        nonlocal count
        for _chat in stream_chats(io.BytesIO(data), "x", 16384):
            count += 1

    streamed = peak_memory(stream)
    assert count == 40
    assert streamed < whole / 8


def _chat(tmp_path: Path, messages: list[dict], kind: str = "personal_chat") -> Path:
    """A single-chat export holding `messages`, written as tmp_path/result.json."""
    path = tmp_path / "result.json"
    chat = {"name": "Mia Chen", "type": kind, "id": 5500000001, "messages": messages}
    path.write_text(json.dumps(chat), encoding="utf-8")
    return path


def _msg(i: int, sender: str | None, from_id: str, text: str | list, **extra: object) -> dict:
    """A Telegram Desktop message `i` seconds after 2024-03-01 20:00 UTC."""
    return {"id": i, "type": "message", "date_unixtime": str(1709323200 + i), "from": sender,
            "from_id": from_id, **extra, "text": text}  # fmt: skip


def test_forward_from_a_deleted_account_is_dropped(tmp_path: Path) -> None:
    # Telegram Desktop writes "forwarded_from": null when the original sender has no name
    # any more (a deleted account): still a forward, someone else's words.
    path = _chat(tmp_path, [
        _msg(1, "Mia Chen", "user5500000001", "Breaking: the bridge is closed all weekend",
             forwarded_from=None),
        _msg(2, "Mia Chen", "user5500000001", "from the city's channel",
             forwarded_from="City News", forwarded_from_id="channel1400000001"),
        _msg(3, "Mia Chen", "user5500000001", "seen this?"),
        _msg(4, "Leo Hart", LEO, "ugh, again?"),
    ])  # fmt: skip
    (conv,) = import_telegram(path)
    assert rows(conv) == [
        ("Mia Chen", "seen this?", D(2024, 3, 1, 20, 0, 3)),
        ("Leo Hart", "ugh, again?", D(2024, 3, 1, 20, 0, 4)),
    ]
    assert conv.dropped == {"forwarded": 2}


def test_deleted_accounts_are_told_apart_by_their_id(tmp_path: Path) -> None:
    path = _chat(tmp_path, [
        _msg(1, None, "user111", "I can drive"),
        _msg(2, None, "user222", "I can't, my car is broken"),
        _msg(3, "Leo Hart", LEO, "ok, first one takes me"),
        _msg(4, None, "user222", "fine"),
    ], kind="private_supergroup")  # fmt: skip
    convs = list(import_telegram(path))
    assert [(m.sender, m.sender_id, m.aliases) for m in convs[0].messages] == [
        ("Deleted Account 111", "user111", ("111",)),
        ("Deleted Account 222", "user222", ("222",)),
        ("Leo Hart", LEO, ("5500998877",)),
        ("Deleted Account 222", "user222", ("222",)),
    ]
    # Two people in the user turn; and a deleted account is still --me by its from_id.
    (leo,) = build_examples(convs, "Leo Hart")
    assert leo.messages[1:] == [
        {"role": "user", "content": "Deleted Account 111: I can drive\n"
         "Deleted Account 222: I can't, my car is broken"},
        {"role": "assistant", "content": "ok, first one takes me"},
    ]  # fmt: skip
    (deleted,) = build_examples(convs, "user222")
    assert deleted.messages[1:] == [
        {"role": "user", "content": "Deleted Account 111: I can drive"},
        {"role": "assistant", "content": "I can't, my car is broken"},
        {"role": "user", "content": "Leo Hart: ok, first one takes me"},
        {"role": "assistant", "content": "fine"},
    ]


@pytest.mark.parametrize("me", ["user5500998877", "5500998877", "Leo Hart"])
def test_an_older_export_with_numeric_from_ids(tmp_path: Path, me: str) -> None:
    # Older Telegram Desktop wrote "from_id": 5500998877 (a number) and only "date" (local
    # time). The same person is "user5500998877" in a newer export: the old chat and a newer
    # one imported together are one Leo (--me user5500998877 found none of the old messages),
    # and a deleted account in the old chat keeps its id in its name.
    old = {"name": "Mia Chen", "type": "personal_chat", "id": 5500000001, "messages": [
        {"id": 1, "type": "message", "date": "2019-03-01T20:00:00", "from": "Mia Chen",
         "from_id": 5500000001, "text": "are you around tonight?"},
        {"id": 2, "type": "message", "date": "2019-03-01T20:01:00", "from": "Leo Hart",
         "from_id": 5500998877, "text": ["yes, ", {"type": "bold", "text": "after 8"}]},
    ]}  # fmt: skip
    group = {"name": "Climbing", "type": "private_group", "id": 7, "messages": [
        {"id": 1, "type": "message", "date": "2019-03-02T10:00:00", "from": None,
         "from_id": 111, "text": "rope?"},
        _said(2, 1_551_521_000, "Leo Hart", LEO, "got it"),
    ]}  # fmt: skip
    export = tmp_path / "result.json"
    export.write_text(json.dumps({"chats": {"list": [old, group]}}), encoding="utf-8")
    convs = list(import_telegram(export))
    assert [(m.sender, m.sender_id) for c in convs for m in c.messages] == [
        ("Mia Chen", "user5500000001"),
        ("Leo Hart", LEO),
        ("Deleted Account 111", "user111"),
        ("Leo Hart", LEO),
    ]
    result = CliRunner().invoke(
        cli, ["import", "telegram", str(export), "--me", me, "-o", "o.jsonl"]
    )
    assert result.exit_code == 0, result.output
    assert "Messages kept: 4  (yours: 2)" in result.output


def test_inline_bot_results_are_dropped_as_bot(tmp_path: Path) -> None:
    path = _chat(tmp_path, [
        _msg(1, "Mia Chen", "user5500000001", "Cat: The cat (Felis catus) is a domestic "
             "species of small carnivorous mammal.", via_bot="@wiki"),
        _msg(2, "Mia Chen", "user5500000001", "", via_bot="@gif",
             file="(File not included.)", media_type="animation"),
        _msg(3, "Mia Chen", "user5500000001", "look it up"),
        _msg(4, "Leo Hart", LEO, "nerd"),
    ])  # fmt: skip
    (conv,) = import_telegram(path)
    assert rows(conv) == [
        ("Mia Chen", "look it up", D(2024, 3, 1, 20, 0, 3)),
        ("Leo Hart", "nerd", D(2024, 3, 1, 20, 0, 4)),
    ]
    assert conv.dropped == {"bot": 2}


def test_forum_topics_are_conversations_of_their_own() -> None:
    convs = list(import_telegram(FORUM))
    summary = [(c.id, c.title, c.is_group, c.dropped) for c in convs]
    assert summary == [
        # General keeps the chat's id; the pin (a service message, no reply_to) counts here
        ("telegram:1900000001", "Dev Forum / General", True, {"service": 2}),
        ("telegram:1900000001/3", "Dev Forum / Bugs", True, {"service": 1}),
        ("telegram:1900000001/4", "Dev Forum / Lunch", True, {"service": 1}),
    ]
    at = D(2024, 3, 1, 11, 0)
    assert [[(m.sender, m.text, (m.timestamp - at).seconds) for m in c.messages]
            for c in convs] == [
        [
            ("Ann Lee", "welcome to the new forum", 60),
            ("Ann Lee", "reminder: standup at 10", 700),
            ("Leo Hart", "on my way", 710),
            ("Bob Stone", "sorry, wrong thread", 720),  # replies to a deleted message
        ],
        [
            ("Ann Lee", "the login page crashes on submit", 600),
            ("Leo Hart", "looking into it, probably the CSRF token", 620),  # reply in Bugs
        ],
        [("Bob Stone", "who wants tacos today?", 610), ("Leo Hart", "me! 🌮", 630)],
    ]  # fmt: skip


def test_forum_topics_do_not_mix_in_examples(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["import", "telegram", str(FORUM), "--me", "Leo Hart", "-o", "out.jsonl"]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["messages"][1:] for line in lines] == [
        [
            {"role": "user", "content": "Ann Lee: welcome to the new forum\n"
             "reminder: standup at 10"},
            {"role": "assistant", "content": "on my way"},
        ],
        [
            {"role": "user", "content": "Ann Lee: the login page crashes on submit"},
            {"role": "assistant", "content": "looking into it, probably the CSRF token"},
        ],
        [
            {"role": "user", "content": "Bob Stone: who wants tacos today?"},
            {"role": "assistant", "content": "me! 🌮"},
        ],
    ]  # fmt: skip
    assert (tmp_path / "out.jsonl.conversations").read_text().splitlines() == [
        "telegram:1900000001#2024-03-01T11:01:00",
        "telegram:1900000001/3#2024-03-01T11:10:00",
        "telegram:1900000001/4#2024-03-01T11:10:10",
    ]


def test_a_reply_loop_in_a_forum_goes_with_general(tmp_path: Path) -> None:
    # An edited export may hold replies that lead in a circle: they reach no topic.
    path = _chat(tmp_path, [
        {"id": 1, "type": "service", "date_unixtime": "1709323200", "action": "topic_created",
         "title": "Bugs"},
        _msg(2, "Ann Lee", "user1", "loop a", reply_to_message_id=3),
        _msg(3, "Ann Lee", "user1", "loop b", reply_to_message_id=2),
        _msg(4, "Ann Lee", "user1", "in bugs", reply_to_message_id=1),
    ], kind="private_supergroup")  # fmt: skip
    assert [(c.id, [m.text for m in c.messages]) for c in import_telegram(path)] == [
        ("telegram:5500000001/1", ["in bugs"]),
        ("telegram:5500000001", ["loop a", "loop b"]),
    ]


def _said(mid: int, when: int, name: str, uid: str, text: str) -> dict:
    return {"id": mid, "type": "message", "date_unixtime": str(when), "from": name,
            "from_id": uid, "text": text}  # fmt: skip


@pytest.mark.parametrize("me", ["Leo Hart", "Leo H.", "user55", "55"])
def test_a_renamed_person_is_one_person_in_every_chat(tmp_path: Path, me: str) -> None:
    # Leo (user55) was "Leo Hart" in the old group and renamed himself "Leo H." since; Mia
    # (user66) went from "Mia" to "Mia Stone". Telegram writes each message's name as it was.
    group = {"name": "Climbing", "type": "private_group", "id": 1, "messages": [
        _said(1, 1_700_000_000, "Mia", "user66", "who's in for saturday?"),
        _said(2, 1_700_000_060, "Leo Hart", "user55", "me!"),
        _said(3, 1_700_000_120, "Ana", "user77", "me too"),
        _said(4, 1_700_000_180, "Leo Hart", "user55", "bring the rope"),
    ]}  # fmt: skip
    chat = {"name": "Mia Stone", "type": "personal_chat", "id": 2, "messages": [
        _said(5, 1_710_000_000, "Mia Stone", "user66", "coffee?"),
        _said(6, 1_710_000_060, "Leo H.", "user55", "always"),
    ]}  # fmt: skip
    export = tmp_path / "result.json"
    export.write_text(json.dumps({"chats": {"list": [group, chat]}}), encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["import", "telegram", str(export), "--me", me, "-o", "o.jsonl"]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()
    examples = [[(t["role"], t["content"]) for t in json.loads(line)["messages"][1:]]
                for line in lines]  # fmt: skip
    assert examples == [
        [
            ("user", "Mia Stone: who's in for saturday?"),
            ("assistant", "me!"),
            ("user", "Ana: me too"),
            ("assistant", "bring the rope"),
        ],
        [("user", "coffee?"), ("assistant", "always")],
    ]


@pytest.mark.parametrize(
    ("kind", "title"),
    [
        ("replies", "Replies"),
        ("saved_messages", "Saved Messages"),
        ("private_channel", "Telegram chat"),
    ],
)
def test_a_chat_without_a_name_is_titled_as_telegram_desktop_lists_it(
    tmp_path: Path, kind: str, title: str
) -> None:
    # Telegram Desktop writes no "name" for its Replies and Saved Messages service chats.
    path = _chat(tmp_path, [_msg(1, "Leo Hart", LEO, "noted")], kind)
    chat = json.loads(path.read_text(encoding="utf-8"))
    del chat["name"]
    path.write_text(json.dumps(chat), encoding="utf-8")
    (conv,) = import_telegram(path)
    assert conv.title == title


def test_a_message_of_only_a_link_is_dropped_as_a_link(tmp_path: Path) -> None:
    # A link shared alone (its text an entity list, as Telegram Desktop writes links) is not
    # written; with words around it, or as a link's text, it is a message.
    path = _chat(tmp_path, [
        _msg(1, "Mia Chen", "user5500000001", "what's that song?"),
        _msg(2, "Leo Hart", LEO, [{"type": "link", "text": "https://youtu.be/abc123"}]),
        _msg(3, "Leo Hart", LEO, "https://example.com/a https://example.com/b",
             photo="(File not included.)"),
        _msg(4, "Leo Hart", LEO, ["this one: ", {"type": "link",
                                                 "text": "https://youtu.be/abc123"}]),
        _msg(5, "Leo Hart", LEO, [{"type": "text_link", "text": "the live take",
                                   "href": "https://youtu.be/live"}]),
    ])  # fmt: skip
    (leo,) = build_examples(list(import_telegram(path)), "Leo Hart")
    assert leo.messages[1:] == [
        {"role": "user", "content": "what's that song?"},
        {"role": "assistant", "content": "this one: https://youtu.be/abc123\nthe live take"},
    ]
    (conv,) = import_telegram(path)
    assert conv.dropped == {"link": 2}
