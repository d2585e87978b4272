"""`dataset split`: by conversation, deterministic, no leakage, sensible proportions."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from phischer.cli import cli
from phischer.dataset_check import DatasetError, check_file
from phischer.dataset_split import choose_validation, infer_conversations, sidecar_path, split_file

DATA = Path(__file__).parent / "fixtures" / "datasets"


def make_dataset(path: Path, sizes: dict[str, int], interleave: bool = True) -> list[str]:
    """Write one example per (conversation, k) with a sidecar; return the ids in line order."""
    ids = [cid for cid, n in sizes.items() for _ in range(n)]
    if interleave:
        ids = ids[::2] + ids[1::2]  # conversations need not be contiguous
    with path.open("w", encoding="utf-8") as f:
        for k, cid in enumerate(ids):
            messages = [
                {"role": "user", "content": f"{cid} question {k}"},
                {"role": "assistant", "content": f"{cid} answer {k}"},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    sidecar_path(path).write_text("".join(f"{cid}\n" for cid in ids), encoding="utf-8")
    return ids


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(conversation id from the content, conversation id from the sidecar) per line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    ids = sidecar_path(path).read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(ids)
    firsts = [
        next(m for m in json.loads(line)["messages"] if m["role"] != "system") for line in lines
    ]
    content_ids = [m["content"].split()[0] for m in firsts]
    return list(zip(content_ids, ids, strict=True))


def test_split_with_sidecar_has_no_leakage(tmp_path: Path) -> None:
    path = tmp_path / "sam.jsonl"
    sizes = {f"c{i:02d}": i for i in range(1, 11)}  # 55 examples in 10 conversations
    ids = make_dataset(path, sizes)
    result = split_file(path, validation=0.2, seed=0)
    assert result.train_path == tmp_path / "sam.train.jsonl"
    assert result.validation_path == tmp_path / "sam.validation.jsonl"
    assert result.from_sidecar
    train = read_pairs(result.train_path)
    val = read_pairs(result.validation_path)
    # Every line keeps its own conversation id in the output sidecars.
    assert all(a == b for a, b in train + val)
    train_convs = {c for c, _ in train}
    val_convs = {c for c, _ in val}
    assert train_convs.isdisjoint(val_convs)
    assert train_convs | val_convs == set(sizes)
    assert result.train_examples == len(train)
    assert result.validation_examples == len(val)
    assert len(train) + len(val) == 55
    assert result.train_conversations == len(train_convs)
    assert result.validation_conversations == len(val_convs)
    # First fit never exceeds the asked share (11 of 55) and gets close to it.
    assert 8 <= result.validation_examples <= 11
    # Lines keep their original order on each side.
    original = path.read_text(encoding="utf-8").splitlines()
    train_lines = result.train_path.read_text(encoding="utf-8").splitlines()
    assert train_lines == [line for line, c in zip(original, ids, strict=True) if c in train_convs]


def test_split_is_deterministic_per_seed(tmp_path: Path) -> None:
    path = tmp_path / "sam.jsonl"
    make_dataset(path, {f"c{i:02d}": 1 + i % 3 for i in range(30)})

    def run(seed: int) -> tuple[bytes, bytes]:
        r = split_file(path, validation=0.3, seed=seed)
        return r.train_path.read_bytes(), r.validation_path.read_bytes()

    first = run(0)
    assert run(0) == first
    assert run(7) == run(7)
    assert any(run(seed) != first for seed in (1, 2, 3))


def test_same_seed_same_split_whatever_the_line_order(tmp_path: Path) -> None:
    # Conversation ids are sorted before shuffling, so file order does not matter.
    sizes = {f"c{i:02d}": 2 for i in range(20)}
    a = tmp_path / "a" / "x.jsonl"
    b = tmp_path / "b" / "x.jsonl"
    a.parent.mkdir()
    b.parent.mkdir()
    make_dataset(a, sizes, interleave=False)
    make_dataset(b, dict(reversed(sizes.items())), interleave=True)
    va = {c for c, _ in read_pairs(split_file(a, seed=3).validation_path)}
    vb = {c for c, _ in read_pairs(split_file(b, seed=3).validation_path)}
    assert va == vb


@pytest.mark.parametrize(("validation", "expected"), [(0.2, 20), (0.1, 10), (0.5, 50), (0.25, 25)])
def test_proportions_with_one_example_per_conversation(
    tmp_path: Path, validation: float, expected: int
) -> None:
    path = tmp_path / "x.jsonl"
    make_dataset(path, {f"c{i:03d}": 1 for i in range(100)})
    result = split_file(path, validation=validation, seed=0)
    assert result.validation_examples == expected
    assert result.validation_conversations == expected
    assert result.train_examples == 100 - expected
    assert result.train_conversations == 100 - expected


def test_validation_gets_at_least_one_conversation() -> None:
    # Both conversations are bigger than 10% of the examples: take the smaller one.
    assert choose_validation({"big": 10, "small": 9}, 0.1, seed=0) == {"small"}
    assert choose_validation({"a": 5, "b": 5}, 0.01, seed=0) in ({"a"}, {"b"})


def test_two_conversations_split_one_each(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    make_dataset(path, {"a": 3, "b": 4})
    result = split_file(path, validation=0.2)
    assert (result.train_conversations, result.validation_conversations) == (1, 1)
    assert result.validation_examples == 3
    assert result.train_examples == 4


def test_fixture_sidecar_split(tmp_path: Path) -> None:
    # convs.jsonl: 10 lines, conversations t1 x4, t2 x3, t3 x2, t4 x1 (interleaved).
    result = split_file(DATA / "convs.jsonl", validation=0.2, seed=0, out_dir=tmp_path)
    val = read_pairs(result.validation_path)
    train = read_pairs(result.train_path)
    assert all(a == b for a, b in train + val)
    assert {c for c, _ in val}.isdisjoint({c for c, _ in train})
    assert {c for c, _ in val} | {c for c, _ in train} == {"t1", "t2", "t3", "t4"}
    assert result.validation_examples <= 2
    assert result.validation_examples + result.train_examples == 10


def test_fallback_rule_groups_overlapping_windows() -> None:
    ids = infer_conversations(DATA / "windows.jsonl")
    # Lines: A sliding (2), B growing (2), C (1), D sliding (3), H (1), I (1: shares only
    # an "ok" with H, not an overlap).
    assert ids == [
        "run-000001",
        "run-000001",
        "run-000002",
        "run-000002",
        "run-000003",
        "run-000004",
        "run-000004",
        "run-000004",
        "run-000005",
        "run-000006",
    ]


def test_split_without_sidecar_uses_fallback(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    shutil.copy(DATA / "windows.jsonl", path)
    result = split_file(path, validation=0.3, seed=0, out_dir=tmp_path / "out")
    assert not result.from_sidecar
    assert result.train_path == tmp_path / "out" / "windows.train.jsonl"
    assert result.train_conversations + result.validation_conversations == 6
    assert result.train_examples + result.validation_examples == 10
    train_ids = set(sidecar_path(result.train_path).read_text().splitlines())
    val_ids = set(sidecar_path(result.validation_path).read_text().splitlines())
    assert train_ids.isdisjoint(val_ids)
    # No message text of a validation example appears in a training example.
    text = {
        m["content"]
        for line in result.train_path.read_text().splitlines()
        for m in json.loads(line)["messages"]
        if m["role"] != "system" and m["content"] != "ok"
    }
    for line in result.validation_path.read_text().splitlines():
        for m in json.loads(line)["messages"]:
            if m["role"] != "system" and m["content"] != "ok":
                assert m["content"] not in text


@pytest.mark.parametrize(
    ("examples", "which"),
    [(5, "all 5 examples come"), (1, "the one example comes")],
)
def test_one_conversation_is_an_error(tmp_path: Path, examples: int, which: str) -> None:
    path = tmp_path / "x.jsonl"
    make_dataset(path, {"only": examples})
    with pytest.raises(DatasetError) as err:
        split_file(path)
    assert str(err.value) == (
        f"{path}: {which} from one conversation; a split by conversation needs at least 2"
    )
    assert not (tmp_path / "x.train.jsonl").exists()


@pytest.mark.parametrize("validation", [0.0, 1.0, -0.1, 1.5])
def test_validation_share_must_be_in_open_interval(tmp_path: Path, validation: float) -> None:
    path = tmp_path / "x.jsonl"
    make_dataset(path, {"a": 1, "b": 1})
    with pytest.raises(DatasetError, match=r"--validation must be between 0 and 1"):
        split_file(path, validation=validation)


def test_sidecar_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    make_dataset(path, {"a": 2, "b": 2})
    sidecar_path(path).write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        split_file(path)
    assert str(err.value) == (
        f"{sidecar_path(path)}: 2 conversation ids for 4 examples in x.jsonl; "
        "re-run `phischer import` or delete the .conversations file"
    )


def test_fallback_needs_valid_json(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"messages": []}\nnot json\n', encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        split_file(path)
    assert str(err.value) == (
        f"{path}: line 2: invalid JSON: Expecting value at column 1 [invalid_json]; "
        "run `phischer dataset check` first"
    )


def test_fallback_refuses_nan_like_other_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"messages": []}\n{"messages": [], "w": NaN}\n', encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        split_file(path)
    assert str(err.value) == (
        f"{path}: line 2: invalid JSON: NaN at column 23 (JSON has no NaN or Infinity: write a "
        "number or null) [invalid_json]; run `phischer dataset check` first"
    )


def test_cli_split_reports_counts(tmp_path: Path) -> None:
    path = tmp_path / "sam.jsonl"
    make_dataset(path, {f"c{i}": 1 for i in range(10)})
    result = CliRunner().invoke(cli, ["dataset", "split", str(path), "--validation", "0.3"])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "Split by conversation ids from the .conversations file:\n"
        f"  train:      7 examples from 7 conversations -> {tmp_path / 'sam.train.jsonl'}\n"
        f"  validation: 3 examples from 3 conversations -> {tmp_path / 'sam.validation.jsonl'}\n"
    )
    again = CliRunner().invoke(
        cli, ["dataset", "split", str(path), "--seed", "5", "-o", str(tmp_path / "o")]
    )
    assert again.exit_code == 0, again.output
    assert (tmp_path / "o" / "sam.validation.jsonl").exists()


def test_cli_split_errors_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    make_dataset(path, {"only": 2})
    runner = CliRunner()
    one = runner.invoke(cli, ["dataset", "split", str(path)])
    assert one.exit_code == 1
    assert one.output == (
        f"Error: {path}: all 2 examples come from one conversation; "
        "a split by conversation needs at least 2\n"
    )
    bad = runner.invoke(cli, ["dataset", "split", str(path), "--validation", "1"])
    assert bad.exit_code == 1
    assert bad.output == "Error: --validation must be between 0 and 1 (exclusive), got 1.0\n"
    missing = runner.invoke(cli, ["dataset", "split", "nope.jsonl"])
    assert missing.exit_code == 1
    assert missing.output == "Error: nope.jsonl: no such file\n"


def test_a_share_near_1_still_leaves_training_a_conversation(tmp_path: Path) -> None:
    # 0.9999999999 * 10 (+ the rounding slack) reached 10: every conversation was held out.
    path = tmp_path / "x.jsonl"
    make_dataset(path, {f"c{i}": 1 for i in range(10)})
    result = split_file(path, validation=0.9999999999, seed=0)
    assert (result.train_conversations, result.validation_conversations) == (1, 9)
    assert result.train_examples == 1
    assert choose_validation({"a": 3, "b": 1, "c": 2}, 0.9999999999, seed=0) == {"a", "c"}


def test_cli_split_summary_in_the_singular(tmp_path: Path) -> None:
    path = tmp_path / "sam.jsonl"
    make_dataset(path, {"a": 1, "b": 1, "c": 2})
    result = CliRunner().invoke(
        cli, ["dataset", "split", str(path), "--validation", "0.9999999999"]
    )
    assert result.exit_code == 0, result.output
    assert result.output == (
        "Split by conversation ids from the .conversations file:\n"
        f"  train:      1 example from 1 conversation -> {tmp_path / 'sam.train.jsonl'}\n"
        f"  validation: 3 examples from 2 conversations -> {tmp_path / 'sam.validation.jsonl'}\n"
    )


def test_fallback_joins_an_example_written_twice_anywhere(tmp_path: Path) -> None:
    # A hand-written file: 10 one-off questions, then line 1 and line 4 again further down.
    path = tmp_path / "faq.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(10)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, rows[0], rows[3]]))
    ids = infer_conversations(path)
    assert ids == [f"run-{i:06d}" for i in range(1, 11)] + ["run-000001", "run-000004"]
    for seed in range(6):  # without the join, seeds 1, 2, 4 and 5 put a copy on each side
        result = split_file(path, validation=0.2, seed=seed, out_dir=tmp_path / str(seed))
        train = set(result.train_path.read_text().splitlines())
        assert train.isdisjoint(result.validation_path.read_text().splitlines())
        assert (result.train_examples, result.validation_examples) == (10, 2)


def test_a_line_of_unicode_blanks_is_not_skipped_as_blank(tmp_path: Path) -> None:
    # `check` once took a line of U+00A0 for a blank line (a warning), while `split` refused
    # the same line as invalid JSON: the file passed the check and then failed to split.
    path = tmp_path / "x.jsonl"
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
    ]
    line = json.dumps({"messages": messages})
    path.write_text(f"{line}\n\u00a0\r\n\r\n{line}\n \t\n", encoding="utf-8")
    report = check_file(path)
    assert [str(p) for p in report.problems] == [
        "line 2: invalid JSON: Expecting value at column 1 [invalid_json]",
        "line 3: blank line, ignored (better removed) [blank_line]",
        "line 5: blank line, ignored (better removed) [blank_line]",
        "file: only 3 examples: OpenAI requires at least 10 [too_few_examples]",
    ]
    with pytest.raises(DatasetError) as err:
        split_file(path)
    assert str(err.value) == (
        f"{path}: line 2: invalid JSON: Expecting value at column 1 [invalid_json]; "
        "run `phischer dataset check` first"
    )


def _feed_fifo(fifo: Path, data: bytes, proc: subprocess.Popen[str]) -> None:
    """Write `data` to `fifo` once the split opens it for reading, then close it."""
    deadline = time.monotonic() + 60
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # no reader yet: ENXIO
            break
        except OSError as exc:
            assert exc.errno == errno.ENXIO, exc
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
    try:
        os.set_blocking(fd, True)
        os.write(fd, data)  # a few hundred bytes: within a pipe's buffer
    finally:
        os.close(fd)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_a_split_stopped_by_kill_or_a_closed_terminal_leaves_no_files(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """`kill` or a hang-up while the output is written ends the split like Ctrl-C: no temp files."""
    path = tmp_path / "ex.jsonl"
    make_dataset(path, {"a": 2, "b": 2, "c": 2})
    data = path.read_bytes()
    path.unlink()
    # The input is a pipe: the split reads it once to count its lines, then, with its temp
    # output files open, opens it again and waits there for as long as the test wants.
    os.mkfifo(path)
    out_dir = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "phischer", "dataset", "split", str(path), "-o", str(out_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _feed_fifo(path, data, proc)
        deadline = time.monotonic() + 60
        while len(list(out_dir.glob(".*.tmp"))) < 4:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, (proc.returncode, out, err)  # click's "Aborted!"
        assert err.strip() == "Aborted!"
        assert list(out_dir.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_an_example_the_sidecar_gives_two_ids_stays_on_one_side(tmp_path: Path) -> None:
    """Two exports of one chat (or files joined): the same example under two ids leaked."""
    path = tmp_path / "twice.jsonl"
    ids = make_dataset(path, {f"c{i}": 2 for i in range(10)}, interleave=False)
    lines = path.read_text(encoding="utf-8").splitlines()
    # Conversation c9 is c0 again, written with other spacing and the system prompt changed.
    again = [json.loads(line) for line in lines[:2]]
    for example in again:
        example["messages"].insert(0, {"role": "system", "content": "another prompt"})
    lines[18:] = [json.dumps(e, indent=None, separators=(",", ":")) for e in again]
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    for seed in range(10):  # without the join, seeds 2 and 9 put a copy on each side
        result = split_file(path, validation=0.2, seed=seed, out_dir=tmp_path / str(seed))
        train = {_turns_of(line) for line in result.train_path.read_text().splitlines()}
        validation = {_turns_of(line) for line in result.validation_path.read_text().splitlines()}
        assert train.isdisjoint(validation), seed
        # c0 and c9 count as one conversation; each line keeps the id the sidecar gave it.
        assert result.train_conversations + result.validation_conversations == 9
        written = [
            *sidecar_path(result.train_path).read_text().splitlines(),
            *sidecar_path(result.validation_path).read_text().splitlines(),
        ]
        assert sorted(written) == sorted(ids)


def _turns_of(line: str) -> str:
    return json.dumps([m for m in json.loads(line)["messages"] if m["role"] != "system"])


@pytest.mark.parametrize("with_sidecar", [True, False])
def test_a_file_with_cr_only_line_endings_says_so(tmp_path: Path, with_sidecar: bool) -> None:
    # Read as one line: "4 conversation ids for 1 example", or "invalid JSON: Extra data".
    path = tmp_path / "mac.jsonl"
    make_dataset(path, {"a": 2, "b": 2})
    if not with_sidecar:
        sidecar_path(path).unlink()
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r"))
    result = CliRunner().invoke(cli, ["dataset", "split", str(path)])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].endswith(
        "line 1: lines end in CR only: save with LF line endings [cr_line_endings]"
        + ("" if with_sidecar else "; run `phischer dataset check` first")
    )
