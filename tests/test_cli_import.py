"""`phischer import`: summary, options, one-line errors with exit 1 and no partial output."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from phischer.cli import cli
from tests.conftest import stderr_to

FIXTURES = Path(__file__).parent / "fixtures"
MESSENGER = FIXTURES / "messenger"


def run(*args: str):
    return CliRunner().invoke(cli, ["import", *args])


def examples(path: Path) -> list[list[dict[str, str]]]:
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_import_messenger_prints_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "zoe.jsonl"
    result = run("messenger", str(MESSENGER), "--me", "Zoë Martín", "-o", str(out))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:5] == [
        "Threads: 3  (4 conversations after splitting on silences)",
        "Messages kept: 19  (yours: 8)",
        "Dropped: 12  (media 4, system 3, sticker 1, reaction 1, link 1, unsent 1, call 1)",
        "Not used: 1 of your messages that opened a conversation (no message before them to "
        "reply to)",
        "Examples: 3  (257 tokens, o200k_base)",
    ]
    assert lines[5] == f"Wrote {out} and {out}.conversations"
    assert lines[6].startswith("System prompt: You are Zoë Martín. Reply to text messages")
    assert len(examples(out)) == 3
    assert (tmp_path / "zoe.jsonl.conversations").read_text().splitlines() == [
        "inbox/hikingcrew_2002#2024-04-10T18:01:00",
        "inbox/samrivera_1001#2024-03-01T09:00:00",
        "inbox/samrivera_1001#2024-03-01T20:00:00",
    ]


@pytest.mark.parametrize(("every", "approx"), [(2, "~"), (1, "")])
def test_token_total_is_counted_in_a_helper_past_the_exact_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: int, approx: str
) -> None:
    from phischer import import_tokens
    from phischer.tokens import count_messages_tokens

    # Example 0 is counted exactly; past it the helper process counts every `every`-th
    # example (one per job) and the skipped ones are estimated from those.
    monkeypatch.setattr(import_tokens, "EXACT_TOKEN_LIMIT", 1)
    monkeypatch.setattr(import_tokens, "TOKEN_SAMPLE_EVERY", every)
    monkeypatch.setattr(import_tokens, "_TOKEN_BATCH", 1)
    out = tmp_path / "zoe.jsonl"
    result = run("messenger", str(MESSENGER), "--me", "Zoë Martín", "-o", str(out))
    assert result.exit_code == 0, result.output
    counts = [count_messages_tokens(ex) for ex in examples(out)]
    assert len(counts) == 3
    if every == 2:  # example 1 skipped, example 2 sampled and counted twice
        total = counts[0] + 2 * counts[2]
        tail = ", estimated from a sample)"
    else:
        total = sum(counts)
        tail = ")"
    assert f"Examples: 3  ({approx}{total:,} tokens, o200k_base{tail}" in result.stdout


def test_options_system_max_turns_gap_and_mask(tmp_path: Path) -> None:
    out = tmp_path / "zoe.jsonl"
    result = run(
        "messenger",
        str(MESSENGER),
        "--me",
        "zoë martín",
        "-o",
        str(out),
        "--system",
        "You are {me}, texting.",
        "--max-turns",
        "2",
        "--gap-hours",
        "24",
        "--mask-pii",
    )
    assert result.exit_code == 0, result.output
    got = examples(out)
    system = {"role": "system", "content": "You are Zoë Martín, texting."}
    # One day-long session for Sam's thread now, cut into (user, assistant) pairs.
    assert got[-2:] == [
        [
            system,
            {"role": "user", "content": "you still there?\ndinner thursday?"},
            {"role": "assistant", "content": "yes!! 7pm at Luca's"},
        ],
        [
            system,
            {"role": "user", "content": "perfect, call me at <PHONE> if late"},
            {"role": "assistant", "content": "will do. or email <EMAIL>"},
        ],
    ]
    assert len(got) == 6  # group: 2 pairs, Sam: 4 pairs
    assert all(len(e) == 3 for e in got)


def test_import_from_zip_and_twitter(tmp_path: Path) -> None:
    archive = tmp_path / "facebook.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(MESSENGER.rglob("*.json")):
            zf.write(p, p.relative_to(MESSENGER).as_posix())
    assert run("messenger", str(archive), "--me", "Zoë Martín", "-o", "a.jsonl").exit_code == 0
    assert run("messenger", str(MESSENGER), "--me", "Zoë Martín", "-o", "b.jsonl").exit_code == 0
    assert Path("a.jsonl").read_bytes() == Path("b.jsonl").read_bytes()
    result = run("twitter", str(FIXTURES / "twitter"), "--me", "zoemartin", "-o", "t.jsonl")
    assert result.exit_code == 0, result.output
    assert "Dropped: 2  (media 1, retweet 1)" in result.stdout
    assert len(examples(Path("t.jsonl"))) == 5
    # data/tweets.js alone reads tweets-part1.js beside it: the same dataset.
    tweets = FIXTURES / "twitter" / "data" / "tweets.js"
    result = run("twitter", str(tweets), "--me", "zoemartin", "-o", "one.jsonl")
    assert result.exit_code == 0, result.output
    assert Path("one.jsonl").read_bytes() == Path("t.jsonl").read_bytes()


def test_output_in_new_folders_prints_both_paths(tmp_path: Path) -> None:
    result = run("messenger", str(MESSENGER), "--me", "Zoë Martín", "-o", "newdir/sub/z.jsonl")
    assert result.exit_code == 0, result.output
    assert "Wrote newdir/sub/z.jsonl and newdir/sub/z.jsonl.conversations" in result.stdout
    assert sorted(p.name for p in (tmp_path / "newdir" / "sub").iterdir()) == [
        "z.jsonl",
        "z.jsonl.conversations",
    ]


def test_output_naming_a_folder_is_a_usage_error(tmp_path: Path) -> None:
    # README: an option value click refuses is its usage error naming the option, exit 2.
    result = run("messenger", str(MESSENGER), "--me", "Zoë Martín", "-o", str(tmp_path))
    assert result.exit_code == 2
    assert f"Error: Invalid value for '-o' / '--out': File '{tmp_path}' is a directory." in (
        result.output
    )
    assert list(tmp_path.iterdir()) == []


def test_threads_with_no_text_are_skipped_not_counted(tmp_path: Path) -> None:
    # A thread whose only message is a photo yields no conversation: counted among the
    # threads, it would make "Threads: 4  (4 conversations …)" look like one was lost.
    export = tmp_path / "export"
    shutil.copytree(MESSENGER, export)
    photo = export / "your_facebook_activity/messages/inbox/photos_4004"
    photo.mkdir()
    (photo / "message_1.json").write_text(
        json.dumps(
            {
                "participants": [{"name": "Priya Nair"}, {"name": "Zoë Martín"}],
                "messages": [
                    {
                        "sender_name": "Priya Nair",
                        "timestamp_ms": 1706756400000,
                        "photos": [{"uri": "photos/1.jpg"}],
                        "type": "Generic",
                    }
                ],
                "title": "Priya Nair",
                "thread_path": "inbox/photos_4004",
            }
        ),
        encoding="utf-8",
    )
    result = run("messenger", str(export), "--me", "Zoë Martín", "-o", "z.jsonl")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:4] == [
        "Threads: 3  (4 conversations after splitting on silences)",
        "Threads skipped: 1  (no text 1)",
        "Messages kept: 19  (yours: 8)",
        "Dropped: 13  (media 5, system 3, sticker 1, reaction 1, link 1, unsent 1, call 1)",
    ]


@pytest.mark.parametrize(
    ("me_json", "me", "prompt"),
    [
        # No account.js: the README says --me me; "You are me." says nothing.
        (None, "me", "Reply to text messages the way this person would: same voice, same "
         "length, same habits."),
        # account.js with a display name: the prompt names the person as the export does.
        ("account", "@zoemartin", "You are Zoë Martín. Reply to text messages the way Zoë "
         "Martín would: same voice, same length, same habits."),
        # A --system of your own is used as given, stand-in name or not.
        (None, "me", "Texting as {me}."),
    ],
)  # fmt: skip
def test_system_prompt_without_a_real_name_is_neutral(
    tmp_path: Path, me_json: str | None, me: str, prompt: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("tweets.js", "tweets-part1.js") + (("account.js",) if me_json else ()):
        shutil.copy(FIXTURES / "twitter" / "data" / name, data / name)
    extra = ["--system", prompt] if "{me}" in prompt else []
    result = run("twitter", str(data / "tweets.js"), "--me", me, "-o", "t.jsonl", *extra)
    assert result.exit_code == 0, result.output
    want = prompt.replace("{me}", me)
    assert f"System prompt: {want}" in result.stdout.splitlines()
    assert {ex[0]["content"] for ex in examples(Path("t.jsonl"))} == {want}


def assert_clean_failure(result, message: str, tmp_path: Path) -> None:
    assert result.exit_code == 1
    assert result.output == f"Error: {message}\n"
    assert "Traceback" not in result.output
    assert [p.name for p in tmp_path.iterdir() if "jsonl" in p.name] == []


def test_me_not_found_lists_senders(tmp_path: Path) -> None:
    result = run("messenger", str(MESSENGER), "--me", "Zoe", "-o", str(tmp_path / "x.jsonl"))
    assert_clean_failure(
        result,
        "--me 'Zoe' matches no sender; most frequent senders: Sam Rivera (8), Zoë Martín (8), "
        "Priya Nair (2), Crypto Guru (1)",
        tmp_path,
    )


def test_missing_path(tmp_path: Path) -> None:
    result = run("messenger", "no/such/export.zip", "--me", "Zoë", "-o", str(tmp_path / "x.jsonl"))
    assert_clean_failure(result, "No such file or folder: no/such/export.zip", tmp_path)


def test_unknown_format(tmp_path: Path) -> None:
    result = run("myspace", str(MESSENGER), "--me", "Zoë", "-o", str(tmp_path / "x.jsonl"))
    assert_clean_failure(
        result,
        "Unknown format 'myspace': choose one of discord, messenger, telegram, twitter, whatsapp",
        tmp_path,
    )


def test_wrong_format(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    result = run("messenger", str(FIXTURES / "twitter"), "--me", "Zoë", "-o", str(out))
    assert_clean_failure(
        result,
        f"No Messenger threads in {FIXTURES / 'twitter'}: expected "
        "messages/inbox/<thread>/message_1.json (JSON format of 'Download your information') "
        "or the end-to-end encrypted chats export",
        tmp_path,
    )


@pytest.mark.parametrize("where", ["first", "last"])
def test_truncated_json_leaves_no_output(tmp_path: Path, where: str) -> None:
    export = tmp_path / "export" / "messages" / "inbox"
    for name in ("aaa_1", "zzz_2"):
        src = MESSENGER / "your_facebook_activity/messages/inbox/samrivera_1001/message_1.json"
        (export / name).mkdir(parents=True)
        (export / name / "message_1.json").write_bytes(src.read_bytes())
    broken = export / ("aaa_1" if where == "first" else "zzz_2") / "message_1.json"
    broken.write_bytes(broken.read_bytes()[:-40])
    out = tmp_path / "x.jsonl"
    result = run("messenger", str(tmp_path / "export"), "--me", "Zoë Martín", "-o", str(out))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: Truncated JSON in {broken}: ")
    assert result.output.count("\n") == 1
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


# A file of each JSON format holding something else: text (a note saved under the export's
# name) or binary (an image). Twitter's prefix comes first, as in a real data file.
NOT_JSON = [
    ("discord", "general.json", ""),
    ("telegram", "result.json", ""),
    ("messenger", "messages/inbox/sam_1/message_1.json", ""),
    ("twitter", "data/tweets.js", "window.YTD.tweets.part0 = "),
]


def import_one_file(tmp_path: Path, fmt: str, member: str, data: bytes) -> tuple[Path, Result]:
    """Import an export folder holding only `member` with `data`; (that file, the result)."""
    export = tmp_path / "export"
    target = export / member
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    return target, run(fmt, str(export), "--me", "x", "-o", str(tmp_path / "x.jsonl"))


@pytest.mark.parametrize(("fmt", "member", "prefix"), NOT_JSON)
def test_a_file_that_is_not_json_is_not_called_truncated(
    tmp_path: Path, fmt: str, member: str, prefix: str
) -> None:
    target, result = import_one_file(
        tmp_path, fmt, member, (prefix + "\n  shopping list: eggs, milk\nbread\n").encode()
    )
    assert result.exit_code == 1
    assert (
        result.output == f"Error: {target} is not JSON: line 2 begins 'shopping list: eggs, milk'\n"
    )


@pytest.mark.parametrize(("fmt", "member", "prefix"), NOT_JSON[:3])
def test_a_binary_file_is_not_json_by_its_first_bytes(
    tmp_path: Path, fmt: str, member: str, prefix: str
) -> None:
    target, result = import_one_file(
        tmp_path, fmt, member, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8" * 10
    )
    assert result.exit_code == 1
    assert (
        result.output
        == f"Error: {target} is not JSON: it begins with bytes 89 50 4e 47 0d 0a 1a 0a\n"
    )


@pytest.mark.parametrize(("fmt", "member", "prefix"), NOT_JSON[:2])
@pytest.mark.parametrize(("encoding", "said"), [("utf-16", "UTF-16"), ("utf-32", "UTF-32")])
def test_a_json_file_saved_as_utf16_or_32_says_so(
    tmp_path: Path, fmt: str, member: str, prefix: str, encoding: str, said: str
) -> None:
    # An editor saved it again: "it begins with bytes ff fe 7b 00" said nothing of why. (The
    # Messenger importer reads it: json.loads takes UTF-16 and UTF-32 bytes as they are.)
    target, result = import_one_file(tmp_path, fmt, member, '{"messages": []}'.encode(encoding))
    assert (result.exit_code, result.output) == (
        1,
        f"Error: {target} is {said} text, not UTF-8: save it as UTF-8 (or export it again)\n",
    )


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"messages": [{"a": "cut her', "Truncated JSON"),  # ends inside a string
        ('{"messages": [{"a": tr', "Truncated JSON"),  # ends inside a literal
        ('{"messages": [{"a": 1},', "Truncated JSON"),  # ends between values
        ('{"messages": [{"a": 1} {"b": 2}]}', "Invalid JSON"),  # damaged in the middle
        ("[Section]\nkey=value\n", "Invalid JSON"),  # begins like JSON, then is not
    ],
)
def test_truncated_only_when_the_json_really_ends_early(text: str, said: str) -> None:
    from phischer.importers.base import ImportErrorMessage
    from phischer.importers.files import parse_json

    with pytest.raises(ImportErrorMessage, match=f"^{said} in x: "):
        parse_json(text, "x")


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_only_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, terminal: bool
) -> None:
    from phischer import import_run

    # No waiting for the bar's one-second delay: it shows from the first thread.
    monkeypatch.setattr(import_run, "PROGRESS_DELAY_S", 0)
    err = stderr_to(monkeypatch, terminal)
    result = import_run.run_import("messenger", MESSENGER, "Zoë Martín", tmp_path / "z.jsonl")
    assert result.examples == 3
    if terminal:
        # A per-thread counter labelled with the format and the export's name, wiped at the
        # end (leave=False) so the summary on stdout stands alone.
        bar = err.getvalue()
        assert bar.startswith("\rImporting messenger messenger: 0 threads [")
        assert bar.endswith("\r")
    else:
        assert err.getvalue() == ""


# One big file of each format that reads one, and who writes in it.
ONE_FILE = [
    ("whatsapp", FIXTURES / "whatsapp/android_us/WhatsApp Chat with Sam Rivera.txt", "Sam Rivera"),
    (
        "discord",
        FIXTURES / "discord/json/Direct Messages - Private - kai_m [444000000000000001].json",
        "kai_m",
    ),
    ("telegram", FIXTURES / "telegram/full/result.json", "Leo Hart"),
]


@pytest.mark.parametrize(("fmt", "path", "me"), ONE_FILE)
@pytest.mark.parametrize("terminal", [True, False])
def test_a_big_file_shows_how_far_reading_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, path: Path, me: str, terminal: bool
) -> None:
    from phischer import import_run
    from phischer.importers import json_stream, progress

    # The fixtures count as big, and the bar shows from the start: no one-second delay.
    monkeypatch.setattr(progress, "PROGRESS_DELAY_S", 0)
    monkeypatch.setattr(progress, "BIG_FILE_BYTES", 1)
    monkeypatch.setattr(progress, "STEP", 1)  # moves after every line or message…
    monkeypatch.setattr(json_stream, "READ_CHUNK", 512)  # …or piece of a .json file read
    # Drawn at every move, not ten times a second: the test takes milliseconds.
    monkeypatch.setattr(progress, "tqdm", partial(progress.tqdm, mininterval=0, miniters=1))
    err = stderr_to(monkeypatch, terminal)
    assert import_run.run_import(fmt, path, me, tmp_path / "x.jsonl").examples
    if not terminal:
        assert err.getvalue() == ""
        return
    # A bar of the file's bytes, from part of it to all of it, wiped at the end like the
    # thread bar (leave=False) so the summary stands alone.
    size = path.stat().st_size
    drawn = err.getvalue()
    assert f"Reading {path.name}: 100%|" in drawn
    assert f"/{size:.0f}" in drawn or f"/{size / 1024:.2f}k" in drawn
    # …and in between, as it goes through the file.
    assert re.search(rf"Reading {re.escape(path.name)}: +[1-9]\d?%", drawn)
    # Last drawn: blanks over it (the cursor then back up to the thread bar's line).
    assert drawn.rsplit("\r", 1)[1].replace("\x1b[A", "").strip() == ""


def test_a_small_file_costs_no_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from phischer import import_run
    from phischer.importers import progress

    monkeypatch.setattr(progress, "PROGRESS_DELAY_S", 0)
    err = stderr_to(monkeypatch)
    fmt, path, me = ONE_FILE[0]
    assert import_run.run_import(fmt, path, me, tmp_path / "x.jsonl").examples
    assert "Reading" not in err.getvalue()  # under BIG_FILE_BYTES


def test_an_export_with_ids_shows_building_after_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phischer import import_run

    # Read whole before building (see senders): a second bar, with the total known.
    monkeypatch.setattr(import_run, "PROGRESS_DELAY_S", 0)
    err = stderr_to(monkeypatch)
    export = FIXTURES / "discord" / "json"
    assert import_run.run_import("discord", export, "River", tmp_path / "x.jsonl").examples
    drawn = err.getvalue()
    assert "Importing discord json: 0 threads [" in drawn
    assert "Building examples from discord json:   0%|" in drawn
    assert "| 0/2 [" in drawn  # out of the 2 channels read


def test_half_an_emoji_is_written_as_a_replacement_character(tmp_path: Path) -> None:
    # Apps cut long texts mid-emoji and export the half as a lone "\ud83d" escape, which
    # UTF-8 cannot hold. One such character must not cost the whole import.
    doc = json.loads((FIXTURES / "telegram/single/result.json").read_text(encoding="utf-8"))
    texts = [m for m in doc["messages"] if m.get("from") == "Leo Hart"]
    texts[0]["text"] = "barely \ud83d"  # Leo's first text, in the first example only
    export = tmp_path / "result.json"
    export.write_text(json.dumps(doc), encoding="ascii")  # escapes, as the apps write them
    out = tmp_path / "leo.jsonl"
    result = run("telegram", str(export), "--me", "Leo Hart", "-o", str(out))
    assert result.exit_code == 0, result.output
    data = out.read_text(encoding="utf-8")  # strict UTF-8: the file is valid
    assert "barely \ufffd" in data and "\\ud83d" not in data
    as_text = [json.dumps(ex, ensure_ascii=False) for ex in examples(out)]
    assert sum("barely \ufffd" in ex for ex in as_text) == 1
    assert (
        "Repaired: 1 example had half an emoji (a lone surrogate in the export), written as U+FFFD"
        in result.stdout
    )


def test_tokens_of_half_an_emoji_are_counted() -> None:
    from phischer.tokens import count_tokens

    assert count_tokens("barely \ud83d") == count_tokens("barely \ufffd")


def test_overlapping_exports_of_one_chat_split_cleanly(tmp_path: Path) -> None:
    """WhatsApp keeps only recent messages, so people export again: the copies agree."""

    def export(folder: str, days: range) -> None:
        path = tmp_path / "chats" / folder / "WhatsApp Chat with Sam.txt"
        path.parent.mkdir(parents=True)
        lines = [
            line
            for d in days
            for line in (
                f"12/{d:02d}/23, 9:15 PM - Sam: question {d}",
                f"12/{d:02d}/23, 9:16 PM - Alex: answer {d}",
            )
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    export("old", range(1, 11))
    export("new", range(6, 16))
    out = tmp_path / "alex.jsonl"
    result = run("whatsapp", str(tmp_path / "chats"), "--me", "Alex", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert (
        "Duplicates: 5 examples left out, already written from another copy of the same chat in the export"
        in result.output
    )
    assert sorted(ex[1]["content"] for ex in examples(out)) == sorted(
        f"question {d}" for d in range(1, 16)
    )
    split = CliRunner().invoke(cli, ["dataset", "split", str(out), "--validation", "0.3"])
    assert split.exit_code == 0, split.output
    sides = [
        {ex[1]["content"] for ex in examples(tmp_path / f"alex.{side}.jsonl")}
        for side in ("train", "validation")
    ]
    assert not sides[0] & sides[1]
    assert len(sides[0] | sides[1]) == 15


def big_messenger_export(root: Path, threads: int = 200, per_thread: int = 750) -> Path:
    """A Messenger export big enough for the parsing workers and the token helper."""
    for t in range(threads):
        folder = root / "messages" / "inbox" / f"sam_{t}"
        folder.mkdir(parents=True)
        start = 1_700_000_000_000 + t * 10**9
        messages = [
            {
                "sender_name": ("Zoe", "Sam")[i % 2],
                "timestamp_ms": start + i * 60_000,
                "content": f"message {i} of thread {t}",
            }
            for i in reversed(range(per_thread))  # newest first, as Facebook writes them
        ]
        data = {"participants": [{"name": "Zoe"}, {"name": "Sam"}], "messages": messages}
        (folder / "message_1.json").write_text(json.dumps(data), encoding="utf-8")
    return root


def _group_gone(pgid: int, timeout: float) -> bool:
    # Whether every process of the import's group (it, its workers) has ended.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(
    ("sig", "to_group"),
    [
        (signal.SIGTERM, False),  # `kill PID`, `timeout`: the import process alone
        (signal.SIGHUP, True),  # the terminal closed: every process of the job
        (signal.SIGTERM, True),  # a supervisor stopping the job (systemd)
        (signal.SIGINT, True),  # Ctrl-C: every process of the job
    ],
    ids=["term-alone", "hup-group", "term-group", "ctrl-c"],
)
def test_a_stopped_import_leaves_no_files_and_no_processes(
    tmp_path: Path, sig: signal.Signals, to_group: bool
) -> None:
    """A stop signal ends an import whole: temp files removed, workers ended, no traceback."""
    export = big_messenger_export(tmp_path / "export")
    out_dir = tmp_path / "out"
    command = [sys.executable, "-m", "phischer", "import", "messenger", str(export)]
    proc = subprocess.Popen(
        [*command, "--me", "Zoe", "-o", str(out_dir / "zoe.jsonl")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # The first 1,000 examples written: the workers parse, the token helper counts.
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in out_dir.glob(".zoe.jsonl.*.tmp")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        (os.killpg if to_group else os.kill)(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, (proc.returncode, out, err)  # click's "Aborted!"
        assert err.strip() == "Aborted!"
        assert list(out_dir.iterdir()) == []
        assert _group_gone(proc.pid, timeout=10), "worker processes left running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def test_a_stop_a_finalizer_swallowed_ends_the_import_at_the_next_thread() -> None:
    """A stop whose KeyboardInterrupt Python dropped is not lost: the next thread raises it."""
    from phischer.import_run import _progress
    from phischer.importers.base import Conversation
    from phischer.stopping import sigterm_as_interrupt
    from tests.test_tunnel import lose_a_signal

    threads = (Conversation(id=str(i), title=str(i), participants=[]) for i in range(3))
    with sigterm_as_interrupt():
        progress = _progress(threads, "Importing")
        assert next(progress).id == "0"
        lose_a_signal()  # returns: the KeyboardInterrupt went nowhere
        with pytest.raises(KeyboardInterrupt):
            next(progress)


def test_me_matches_a_name_typed_with_combining_accents(tmp_path: Path) -> None:
    """A Mac's 'Zoë' is often e + U+0308 (NFD): it names the export's 'Zoë' all the same."""
    out = tmp_path / "zoe.jsonl"
    decomposed = "Zoe\u0308 Marti\u0301n"
    result = run("messenger", str(MESSENGER), "--me", decomposed, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "Messages kept: 19  (yours: 8)" in result.stdout
    assert "System prompt: You are Zoë Martín. " in result.stdout  # spelled as the export does


def test_examples_over_openais_token_limit_are_cut_to_fit_or_left_out(tmp_path: Path) -> None:
    """OpenAI would cut them from the end, losing the reply, and bill the limit anyway."""
    over = "word " * 70_000  # 70,000 tokens: over the 65,536 of every current model
    half = "word " * 40_000
    sessions = [
        ("12/01/23", [("Sam", over), ("Alex", "lost")]),
        ("12/03/23", [("Sam", half), ("Alex", "first"), ("Sam", half), ("Alex", "second")]),
        ("12/05/23", [("Sam", "hi"), ("Alex", "hey")]),
    ]
    lines = [
        f"{day}, 9:{15 + i} PM - {who}: {text}"
        for day, texts in sessions
        for i, (who, text) in enumerate(texts)
    ]
    chat = tmp_path / "WhatsApp Chat with Sam.txt"
    chat.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "alex.jsonl"
    result = run("whatsapp", str(chat), "--me", "Alex", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert (
        "Shortened: 1 example over OpenAI's 65,536-token limit, written without their oldest "
        "messages" in result.output
    )
    assert (
        "Too long: 1 example left out, over OpenAI's 65,536-token limit with only the last "
        "message and reply" in result.output
    )
    assert [[(m["role"], m["content"]) for m in ex[1:]] for ex in examples(out)] == [
        [("user", half.strip()), ("assistant", "second")],
        [("user", "hi"), ("assistant", "hey")],
    ]
    check = CliRunner().invoke(cli, ["dataset", "check", str(out)])
    assert "Over the 65,536-token limit: 0 examples" in check.output
