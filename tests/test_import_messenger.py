"""Messenger importer: legacy folder and zip, E2EE export, mojibake, drops, errors."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from phischer.importers import ImportErrorMessage, load
from phischer.importers.messenger import fix_mojibake
from tests.conftest import zip_folder

FIXTURES = Path(__file__).parent / "fixtures"
LEGACY = FIXTURES / "messenger"
E2EE = FIXTURES / "messenger_e2ee"
ZOE = "Zoë Martín"


def _threads(path: Path) -> dict[str, object]:
    return {c.id: c for c in load("messenger", path)}


def test_legacy_thread_merges_files_in_time_order_and_fixes_mojibake() -> None:
    threads = _threads(LEGACY)
    assert sorted(threads) == [
        "filtered_threads/cryptoguru_3003",
        "inbox/hikingcrew_2002",
        "inbox/samrivera_1001",
    ]
    sam = threads["inbox/samrivera_1001"]
    assert sam.title == "Sam Rivera"
    assert sam.participants == ["Sam Rivera", ZOE]
    assert not sam.is_group
    assert [(m.sender, m.text) for m in sam.messages] == [
        (ZOE, "morning! you up?"),
        ("Sam Rivera", "barely ☕"),
        ("Sam Rivera", "look at this view"),
        (ZOE, "wow, jealous 😍"),
        (ZOE, "where is that?"),
        ("Sam Rivera", "Lake Tahoe, the café by the pier"),
        (ZOE, "I'm going next summer, no excuses"),
        ("Sam Rivera", "you still there?"),
        ("Sam Rivera", "dinner thursday?"),
        (ZOE, "yes!! 7pm at Luca's"),
        ("Sam Rivera", "perfect, call me at +1 555 010 0199 if late"),
        (ZOE, "will do. or email zoe@example.com"),
    ]
    assert sam.messages[0].timestamp == dt.datetime(2024, 3, 1, 9, 0)
    assert sam.messages[-1].timestamp == dt.datetime(2024, 3, 1, 20, 3)
    assert sam.dropped == {
        "media": 3,  # a photo, "You sent an attachment.", a voice message
        "sticker": 1,
        "reaction": 1,
        "link": 1,
        "unsent": 1,
        "call": 1,
    }


def test_group_thread_drops_system_notices_and_keeps_senders() -> None:
    group = _threads(LEGACY)["inbox/hikingcrew_2002"]
    assert group.is_group
    assert group.title == "Hiking Crew 🥾"
    assert group.participants == [ZOE, "Sam Rivera", "Priya Nair"]
    assert [(m.sender, m.text) for m in group.messages] == [
        ("Priya Nair", "who's in for saturday?"),
        ("Sam Rivera", "me!"),
        ("Sam Rivera", "if it doesn't rain"),
        (ZOE, "count me in 🙌"),
        ("Priya Nair", "meet at 8 at the trailhead"),
        (ZOE, "deal"),
    ]
    # "named the group", "left the group" (Unsubscribe), "set the nickname"; a GIF.
    assert group.dropped == {"system": 3, "media": 1}


def test_zip_reads_the_same_as_the_folder(tmp_path: Path) -> None:
    archive = zip_folder(LEGACY, tmp_path / "facebook-zoe.zip")
    from_zip = _threads(archive)
    from_folder = _threads(LEGACY)
    assert from_zip.keys() == from_folder.keys()
    for key, conv in from_zip.items():
        assert conv.messages == from_folder[key].messages
        assert conv.dropped == from_folder[key].dropped


def test_single_message_file(tmp_path: Path) -> None:
    src = LEGACY / "your_facebook_activity/messages/inbox/hikingcrew_2002/message_1.json"
    (conv,) = load("messenger", src)
    assert conv.id == "hikingcrew_2002"
    assert len(conv.messages) == 6


def test_e2ee_export() -> None:
    (conv,) = load("messenger", E2EE)
    assert conv.id == "e2ee/Sam Rivera_40"
    assert conv.title == "Sam Rivera"
    assert conv.participants == [ZOE, "Sam Rivera"]
    assert [(m.sender, m.text) for m in conv.messages] == [
        ("Sam Rivera", "happy new year!! 🎉"),
        (ZOE, "happy new year Sam! café soon?"),
        (ZOE, "naïve question: is it open?"),
    ]
    assert conv.messages[0].timestamp == dt.datetime(2025, 1, 5, 10, 0)
    assert conv.dropped == {"media": 1, "unsent": 2, "link": 1}


def test_legacy_and_e2ee_in_one_folder(tmp_path: Path) -> None:
    shutil.copytree(LEGACY, tmp_path / "export")
    shutil.copy(E2EE / "Sam Rivera_40.json", tmp_path / "export" / "Sam Rivera_40.json")
    assert len(_threads(tmp_path / "export")) == 4


@pytest.mark.parametrize(
    ("raw", "fixed"),
    [
        ("Zo\u00c3\u00ab Mart\u00c3\u00adn", "Zoë Martín"),
        ("\u00f0\u009f\u0098\u008d", "😍"),
        ("plain ascii", "plain ascii"),
        ("café", "café"),  # real UTF-8 latin-1 text does not decode as UTF-8 bytes: kept
        ("naïve ☕", "naïve ☕"),  # beyond latin-1: cannot be mojibake, kept
    ],
)
def test_fix_mojibake_only_where_it_round_trips(raw: str, fixed: str) -> None:
    assert fix_mojibake(raw) == fixed


def test_missing_path() -> None:
    with pytest.raises(ImportErrorMessage, match=r"^No such file or folder: nowhere/export$"):
        load("messenger", "nowhere/export")


def test_folder_without_threads(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImportErrorMessage, match="No Messenger threads in"):
        list(load("messenger", tmp_path))


def _refusal(path: Path) -> str:
    """The one line `import messenger` stops with on `path`."""
    with pytest.raises(ImportErrorMessage) as info:
        list(load("messenger", path))
    return str(info.value)


def test_an_html_export_says_to_request_json(tmp_path: Path) -> None:
    # Facebook's "Download your information" is HTML unless JSON is picked: the threads
    # are message_1.html, which the generic "No Messenger threads" left the user to guess.
    thread = tmp_path / "your_facebook_activity" / "messages" / "inbox" / "samrivera_1001"
    thread.mkdir(parents=True)
    (thread / "message_1.html").write_text("<html><body>Sam Rivera</body></html>")
    for path in (tmp_path, thread / "message_1.html"):
        assert _refusal(path) == (
            f"{path} holds Facebook's HTML export (message_1.html): request it again with "
            "'Format: JSON' (Download your information) and import that"
        )


def test_a_folder_of_the_export_zips_says_to_unzip_them(tmp_path: Path) -> None:
    # A big export is downloaded as several zips; the folder holding them has no thread.
    for n in (1, 2):
        with zipfile.ZipFile(tmp_path / f"facebook-zoe-2025-01-10-part{n}.zip", "w") as zf:
            zf.writestr(f"your_facebook_activity/messages/inbox/sam_{n}/message_1.json", "{}")
    assert _refusal(tmp_path) == (
        f"No Messenger threads in {tmp_path}, only zip files (2): unzip them all into one "
        "folder and pass that folder"
    )


def test_truncated_json_names_the_file(tmp_path: Path) -> None:
    thread = tmp_path / "messages" / "inbox" / "bob_1"
    thread.mkdir(parents=True)
    good = LEGACY / "your_facebook_activity/messages/inbox/hikingcrew_2002/message_1.json"
    (thread / "message_1.json").write_text(good.read_text()[:300])
    with pytest.raises(ImportErrorMessage) as info:
        list(load("messenger", tmp_path))
    message = str(info.value)
    assert message.startswith(f"Truncated JSON in {thread / 'message_1.json'}: ")
    assert "\n" not in message


def test_not_a_zip(tmp_path: Path) -> None:
    fake = tmp_path / "export.zip"
    fake.write_text("this is not a zip")
    with pytest.raises(ImportErrorMessage, match=r"export.zip is not a zip file or is damaged"):
        list(load("messenger", fake))


def test_truncated_json_inside_zip(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "fb.zip", "w") as zf:
        zf.writestr("messages/inbox/bob_1/message_1.json", '{"participants": [{"name": "B')
    with pytest.raises(
        ImportErrorMessage,
        match=r"^Truncated JSON in messages/inbox/bob_1/message_1.json \(in .*fb.zip\): ",
    ):
        list(load("messenger", tmp_path / "fb.zip"))


def test_thread_json_of_the_wrong_shape(tmp_path: Path) -> None:
    thread = tmp_path / "messages" / "inbox" / "bob_1"
    thread.mkdir(parents=True)
    (thread / "message_1.json").write_text(json.dumps([1, 2, 3]))
    with pytest.raises(
        ImportErrorMessage, match='is not a Messenger thread \\(no "messages" list\\)'
    ):
        list(load("messenger", tmp_path))


HIKING = "your_facebook_activity/messages/inbox/hikingcrew_2002/message_1.json"


def _import_cli(path: Path) -> tuple[int, str]:
    from click.testing import CliRunner

    from phischer.cli import cli

    result = CliRunner().invoke(
        cli, ["import", "messenger", str(path), "--me", ZOE, "-o", "o.jsonl"]
    )
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("content", "said"),
    [(42, "a number"), (["hi"], "an array"), ({"text": "hi"}, "an object"), (True, "a boolean")],
)
def test_a_content_that_is_not_a_string_is_refused_naming_the_message(
    tmp_path: Path, content: object, said: str
) -> None:
    # An export edited by a tool: dropping the message as empty hid that the file is broken.
    shutil.copytree(LEGACY, tmp_path / "export")
    thread = tmp_path / "export" / HIKING
    data = json.loads(thread.read_text(encoding="utf-8"))
    data["messages"][6]["content"] = content
    thread.write_text(json.dumps(data), encoding="utf-8")
    assert _import_cli(tmp_path / "export") == (
        1,
        f'Error: {thread}: message 7 is malformed ("content" is {said}, not a string)\n',
    )


def test_a_null_content_is_dropped_as_empty_as_a_missing_one(tmp_path: Path) -> None:
    shutil.copytree(LEGACY, tmp_path / "export")
    thread = tmp_path / "export" / HIKING
    data = json.loads(thread.read_text(encoding="utf-8"))
    before = _threads(tmp_path / "export")["inbox/hikingcrew_2002"].dropped.get("empty", 0)
    data["messages"][6]["content"] = None
    thread.write_text(json.dumps(data), encoding="utf-8")
    conv = _threads(tmp_path / "export")["inbox/hikingcrew_2002"]
    assert conv.dropped["empty"] == before + 1
    assert "if it doesn't rain" not in [m.text for m in conv.messages]


def test_an_e2ee_text_that_is_not_a_string_is_refused_naming_the_message(tmp_path: Path) -> None:
    shutil.copytree(E2EE, tmp_path / "export")
    thread = tmp_path / "export" / "Sam Rivera_40.json"
    data = json.loads(thread.read_text(encoding="utf-8"))
    data["messages"][0]["text"] = 7
    thread.write_text(json.dumps(data), encoding="utf-8")
    assert _import_cli(tmp_path / "export") == (
        1,
        f'Error: {thread}: message 1 is malformed ("text" is a number, not a string)\n',
    )


def _edit_hiking(tmp_path: Path, edit) -> Path:
    # A copy of the legacy fixture whose hiking thread `edit` changed; returns that file.
    shutil.copytree(LEGACY, tmp_path / "export")
    thread = tmp_path / "export" / HIKING
    data = json.loads(thread.read_text(encoding="utf-8"))
    edit(data["messages"])
    thread.write_text(json.dumps(data), encoding="utf-8")
    return thread


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("timestamp_ms", "1712772000000", "a string, not a number"),
        ("timestamp_ms", [1712772000000], "an array, not a number"),
        ("timestamp_ms", True, "a boolean, not a number"),
        ("sender_name", 7, "a number, not a string"),
        ("sender_name", ["Sam Rivera"], "an array, not a string"),
        ("sender_name", {"name": "Sam Rivera"}, "an object, not a string"),
    ],
)
def test_a_field_of_the_wrong_type_is_refused_naming_the_message(
    tmp_path: Path, key: str, value: object, said: str
) -> None:
    # A wrongly typed time dropped the message as if it were empty; a wrongly typed sender
    # gave Python's own words and no message number.
    thread = _edit_hiking(tmp_path, lambda msgs: msgs[6].__setitem__(key, value))
    assert _import_cli(tmp_path / "export") == (
        1,
        f'Error: {thread}: message 7 is malformed ("{key}" is {said})\n',
    )


@pytest.mark.parametrize("missing", ["absent", "null"])
def test_a_message_without_a_time_keeps_its_place_in_the_file(tmp_path: Path, missing: str) -> None:
    def edit(msgs: list[dict[str, object]]) -> None:
        # message 7 is "if it doesn't rain" (Sam), between "me!" and "count me in 🙌"
        if missing == "absent":
            del msgs[6]["timestamp_ms"]
        else:
            msgs[6]["timestamp_ms"] = None

    before = _threads(LEGACY)["inbox/hikingcrew_2002"].messages
    _edit_hiking(tmp_path, edit)
    after = _threads(tmp_path / "export")["inbox/hikingcrew_2002"].messages
    assert [(m.sender, m.text) for m in after] == [(m.sender, m.text) for m in before]
    kept = next(i for i, m in enumerate(after) if m.text == "if it doesn't rain")
    assert after[kept].timestamp == after[kept - 1].timestamp  # the message before it


def test_a_thread_whose_first_message_has_no_time_takes_the_next_ones(tmp_path: Path) -> None:
    def edit(msgs: list[dict[str, object]]) -> None:
        del msgs[-2]["timestamp_ms"]  # the oldest text ("who's in for saturday?")

    _edit_hiking(tmp_path, edit)
    messages = _threads(tmp_path / "export")["inbox/hikingcrew_2002"].messages
    assert messages[0].text == "who's in for saturday?"
    assert messages[0].timestamp == messages[1].timestamp


def test_a_thread_without_any_time_is_refused(tmp_path: Path) -> None:
    def edit(msgs: list[dict[str, object]]) -> None:
        for m in msgs:
            m.pop("timestamp_ms", None)

    thread = _edit_hiking(tmp_path, edit)
    assert _import_cli(tmp_path / "export") == (
        1,
        f'Error: {thread.parent}: no message has a "timestamp_ms": the times are missing\n',
    )


@pytest.mark.parametrize(
    ("value", "shown"), [(10**30, "10000000000000000000…"), (-(10**17), "-100000000000000000")]
)
def test_an_impossible_time_is_quoted(tmp_path: Path, value: int, shown: str) -> None:
    thread = _edit_hiking(tmp_path, lambda msgs: msgs[6].__setitem__("timestamp_ms", value))
    assert _import_cli(tmp_path / "export") == (
        1,
        f'Error: {thread.parent}: a "timestamp_ms" of {shown} is not a possible time\n',
    )


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("timestamp", "1712772000000", "a string, not a number"),
        ("senderName", 7, "a number, not a string"),
        # Read by its truth, "false" dropped the message as unsent without a word.
        ("isUnsent", "false", "a string, not true or false"),
        ("isUnsent", 0, "a number, not true or false"),
        ("media", {"uri": "x.jpg"}, "an object, not an array"),
        ("media", True, "a boolean, not an array"),
    ],
)
def test_an_e2ee_field_of_the_wrong_type_is_refused_naming_the_message(
    tmp_path: Path, key: str, value: object, said: str
) -> None:
    shutil.copytree(E2EE, tmp_path / "export")
    thread = tmp_path / "export" / "Sam Rivera_40.json"
    data = json.loads(thread.read_text(encoding="utf-8"))
    data["messages"][0][key] = value
    thread.write_text(json.dumps(data), encoding="utf-8")
    assert _import_cli(tmp_path / "export") == (
        1,
        f'Error: {thread}: message 1 is malformed ("{key}" is {said})\n',
    )


def test_an_e2ee_message_without_a_time_is_kept(tmp_path: Path) -> None:
    shutil.copytree(E2EE, tmp_path / "export")
    thread = tmp_path / "export" / "Sam Rivera_40.json"
    data = json.loads(thread.read_text(encoding="utf-8"))
    before = [m.text for m in _threads(E2EE)["e2ee/Sam Rivera_40"].messages]
    del data["messages"][0]["timestamp"]
    thread.write_text(json.dumps(data), encoding="utf-8")
    assert [m.text for m in _threads(tmp_path / "export")["e2ee/Sam Rivera_40"].messages] == before


def test_threads_are_loaded_one_at_a_time() -> None:
    # The importer is lazy: the first thread comes out before the next file is read.
    conversations = load("messenger", LEGACY)
    first = next(iter(conversations))
    assert first.messages


# (batch, ahead): one batch for the whole export; one file per batch, with the workers
# kept just one batch ahead (a thread's files then arrive over several batches).
@pytest.mark.parametrize(("batch_bytes", "ahead_bytes"), [(1 << 20, 32 << 20), (1, 1)])
def test_parallel_parsing_gives_the_same_conversations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_bytes: int, ahead_bytes: int
) -> None:
    from phischer.importers import messenger

    serial = _threads(LEGACY)
    monkeypatch.setattr(messenger, "PARALLEL_MIN_THREADS", 1)
    monkeypatch.setattr(messenger, "_workers", lambda: 1)
    monkeypatch.setattr(messenger, "_BATCH_BYTES", batch_bytes)
    monkeypatch.setattr(messenger, "_AHEAD_BYTES", ahead_bytes)
    archive = zip_folder(LEGACY, tmp_path / "fb.zip")
    for path in (LEGACY, archive):
        parallel = _threads(path)
        assert list(parallel) == list(serial)
        for key, conv in parallel.items():
            assert conv == serial[key]


def test_parallel_parsing_reports_a_broken_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phischer.importers import messenger

    monkeypatch.setattr(messenger, "PARALLEL_MIN_THREADS", 1)
    monkeypatch.setattr(messenger, "_workers", lambda: 1)
    shutil.copytree(LEGACY, tmp_path / "export")
    broken = next((tmp_path / "export").rglob("hikingcrew_2002/message_1.json"))
    broken.write_text(broken.read_text()[:-30])
    with pytest.raises(ImportErrorMessage, match=r"^Truncated JSON in .*hikingcrew_2002"):
        list(load("messenger", tmp_path / "export"))


@pytest.mark.parametrize(
    ("text", "sender", "reason"),
    [
        ("Reacted 😂 to your message ", "Sam Rivera", "reaction"),
        ("Sam Rivera reacted ❤ to your message", "Sam Rivera", "reaction"),
        ("Priya Nair liked a message", "Priya Nair", "reaction"),
        ("Sam Rivera called you.", "Sam Rivera", "call"),
        ("You missed a call from Sam Rivera.", "Zoë Martín", "call"),
        ("Sam Rivera sent a photo.", "Sam Rivera", "media"),
        ("You sent 3 photos.", "Zoë Martín", "media"),
        ("Sam Rivera unsent a message", "Sam Rivera", "unsent"),
        ("You named the group Ski trip.", "Zoë Martín", "system"),
        ("Priya Nair added Sam Rivera to the group.", "Priya Nair", "system"),
        ("https://example.com/x", "Sam Rivera", "link"),
        ("https://example.com/x www.example.org", "Sam Rivera", "link"),  # as X's rule
        # a new connection's first line, waves, admins
        (
            "You can now message and call each other and see info like Active Status and "
            "when you've read messages.",
            "Sam Rivera",
            "system",
        ),
        ("Sam Rivera waved at you!", "Sam Rivera", "system"),
        ("You waved at Sam.", "Zoë Martín", "system"),
        ("Priya Nair added Sam Rivera as a group admin.", "Priya Nair", "system"),
        ("You removed Sam Rivera as a group admin.", "Zoë Martín", "system"),
        # typed by people: kept
        ("we can now message and call each other, finally", "Sam Rivera", None),
        ("Priya waved at you from the bus lol", "Sam Rivera", None),
        ("You waved at the bus driver lol", "Sam Rivera", None),
        ("Sam Rivera waved at you! see you soon", "Sam Rivera", None),
        ("lol he left the group", "Sam Rivera", None),
        ("Sam Rivera sent a photo.", "Priya Nair", None),  # not her own notice
        ("check https://example.com/x it's great", "Sam Rivera", None),
        ("You are the best", "Sam Rivera", None),
        # Instagram's DMs (the same export format)
        ("Liked a message", "Sam Rivera", "reaction"),
        ("Sam Rivera started an audio call", "Sam Rivera", "call"),
        ("You missed a video chat", "Zoë Martín", "call"),
        ("Sam Rivera shared a story.", "Sam Rivera", "link"),
        ("You shared a reel", "Zoë Martín", "link"),
        ("Sam Rivera shared a story about you lol", "Sam Rivera", None),
        ("I Liked a message of yours", "Sam Rivera", None),
    ],
)
def test_notice_and_link_detection(text: str, sender: str, reason: str | None) -> None:
    from phischer.importers.messenger import _text_reason

    assert _text_reason(text.strip(), sender, shared=False) == reason


def test_messages_folder_at_the_root_as_older_exports_have_it(tmp_path: Path) -> None:
    # Older exports put messages/ at the top; newer ones under your_facebook_activity/.
    shutil.copytree(LEGACY / "your_facebook_activity" / "messages", tmp_path / "messages")
    nested = _threads(LEGACY)
    flat = _threads(tmp_path)
    assert list(flat) == list(nested)
    for key, conv in flat.items():
        assert conv == nested[key]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Sam Rivera hat einen Link gesendet.", "link"),  # German
        ("Sam Rivera envió un enlace.", "link"),  # Spanish
        ("Sam Rivera sent a link.", "link"),
        # what people write next to a link they share: kept
        ("Sam Rivera here, read this before Friday, it explains the whole thing.", None),
        ("look at this https://example.com/x", None),
        ("Sam Rivera: https://example.com/x.", None),
        ("this one.", None),
        ("Sam Rivera thinks you should read this one today.", None),  # 8 words: written
    ],
)
def test_a_share_whose_text_is_facebooks_notice_in_any_language(text: str, reason) -> None:
    from phischer.importers.messenger import _text_reason

    assert _text_reason(text, "Sam Rivera", shared=True) == reason
    # without a share, none of these is a notice
    assert _text_reason(text, "Sam Rivera", shared=False) is None


def test_poll_notices_are_dropped_as_system() -> None:
    (conv,) = load("messenger", FIXTURES / "messenger_polls")
    assert conv.id == "inbox/dinnerplans_5005" and conv.is_group
    assert [(m.sender, m.text, m.timestamp) for m in conv.messages] == [
        ("Priya Nair", "dinner friday?", dt.datetime(2024, 6, 1, 17, 0)),
        ("Sam Rivera", "I voted for pizza in the poll, obviously", dt.datetime(2024, 6, 1, 17, 6)),
        (ZOE, "sushi it is 🍣", dt.datetime(2024, 6, 1, 17, 7)),
        (
            "Priya Nair",
            "Priya Nair voted for the place by the pier, see you there",
            dt.datetime(2024, 6, 1, 17, 9),
        ),
    ]
    # a poll created (its question after ": "), three votes and a vote removed, each by the
    # notice's sender, and "This poll is no longer available."
    assert conv.dropped == {"system": 6}


@pytest.mark.parametrize(
    ("sender", "notice", "typed"),
    [
        (ZOE, "Zoë Martín created a poll: Where do we eat?", "Zoë Martín created a poll, vote!"),
        (
            "Sam Rivera",
            'Sam Rivera voted for "Pizza" in the poll.',
            'Sam Rivera voted for "Pizza" in the poll. Again.',
        ),
        (
            "Sam Rivera",
            'Sam Rivera changed their vote to "Sushi" in the poll.',
            'I changed my vote to "Sushi" in the poll.',
        ),
        (
            "Sam Rivera",
            'Sam Rivera removed their vote for "Pizza" in the poll.',
            'Sam Rivera removed their vote for "Pizza", sorry',
        ),
        (ZOE, 'You voted for "Pizza" and "Sushi" in the poll.', "You voted for pizza? why"),
        ("Sam Rivera", "This poll is no longer available.", "This poll is rigged"),
    ],
)
def test_poll_notice_detection(sender: str, notice: str, typed: str) -> None:
    from phischer.importers.messenger import _text_reason

    assert _text_reason(notice, sender, shared=False) == "system"
    assert _text_reason(typed, sender, shared=False) is None
    if notice.startswith(sender):  # the same words from someone else are not their notice
        assert _text_reason(notice, "Priya Nair", shared=False) is None


def _mojibake(value: object) -> object:
    # Meta writes each UTF-8 byte as its own \u00XX escape, Instagram as Facebook.
    return value.encode("utf-8").decode("latin-1") if isinstance(value, str) else value


def _instagram_zip(target: Path) -> Path:
    """An Instagram "Download your information" JSON zip with one DM thread."""
    sam, inbox = "Sam Rivera", "your_instagram_activity/messages/inbox/samrivera_17841"

    def msg(sender: str, minute: int, content: str | None = None, **extra: object) -> dict:
        m = {"sender_name": sender, "timestamp_ms": 1709283600000 + minute * 60000}
        m |= {"content": content} if content is not None else {}
        m |= extra | {"is_geoblocked_for_viewer": False}  # on every Instagram message
        return {k: _mojibake(v) for k, v in m.items()}

    story = {"link": "https://www.instagram.com/stories/zoe.m/3311/", "original_content_owner": "zoe.m"}  # fmt: skip
    messages = [
        msg(sam, 0, "hey! saw your story from lisbon 😍"),
        msg(ZOE, 1, "Liked a message"),
        msg(ZOE, 2, "it was amazing, café every morning"),
        msg(sam, 3, "Reacted ❤️ to your message "),
        msg(sam, 4, f"{sam} sent an attachment.",
            share={"link": "https://www.instagram.com/reel/C1abc/", "original_content_owner": "x"}),
        msg(ZOE, 5, f"{ZOE} shared a story.", share=story),
        msg(sam, 6, f"{sam} shared a story."),  # its link gone (the story expired)
        msg(sam, 7, f"{sam} started an audio call"),
        msg(ZOE, 8, f"{ZOE} missed a video chat"),
        msg(ZOE, 9, "You sent an attachment.", share={"link": "https://www.instagram.com/p/x/"}),
        msg(ZOE, 10, photos=[{"uri": f"{inbox}/photos/1.jpg", "creation_timestamp": 1709284200}]),
        msg(sam, 11, "next time take me with you"),
        msg(ZOE, 12, "deal 🤝"),
    ]  # fmt: skip
    thread = {
        "participants": [{"name": _mojibake(sam)}, {"name": _mojibake(ZOE)}],
        "messages": messages[::-1],  # newest first, as Meta writes them
        "title": _mojibake(sam),
        "is_still_participant": True,
        "thread_path": "inbox/samrivera_17841",
        "magic_words": [],
    }
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr(f"{inbox}/message_1.json", json.dumps(thread, indent=2))
        zf.writestr("personal_information/personal_information/personal_information.json", "{}")
    return target


def test_instagram_dms_import_as_messenger_without_instagrams_notices(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from phischer.cli import cli

    export = _instagram_zip(tmp_path / "instagram-zoe.m-2024-03-05.zip")
    result = CliRunner().invoke(
        cli, ["import", "messenger", str(export), "--me", ZOE, "-o", "zoe.jsonl"]
    )
    assert result.exit_code == 0, result.output
    assert "Dropped: 9  (media 3, reaction 2, link 2, call 2)" in result.output
    lines = (tmp_path / "zoe.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["messages"][1:] for line in lines] == [
        [
            {"role": "user", "content": "hey! saw your story from lisbon 😍"},
            {"role": "assistant", "content": "it was amazing, café every morning"},
            {"role": "user", "content": "next time take me with you"},
            {"role": "assistant", "content": "deal 🤝"},
        ]
    ]
    assert (tmp_path / "zoe.jsonl.conversations").read_text() == (
        "inbox/samrivera_17841#2024-03-01T09:00:00\n"
    )
