"""`dataset check`: the cookbook's format checks with line numbers, stats, epochs, cost, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from phischer.base_models import PRICES, PRICES_AS_OF, default_epochs, estimate_cost
from phischer.cli import cli
from phischer.dataset_check import (
    KEPT_PER_KIND,
    Problem,
    check_example,
    check_file,
    percentile,
    whole,
)
from phischer.finetune.common import format_errors_message
from phischer.tokens import count_tokens
from tests.conftest import peak_memory

DATA = Path(__file__).parent / "fixtures" / "datasets"
NOTHING_TO_TRAIN = "every assistant message has weight 0: nothing to train on [nothing_to_train]"

ERRORS = [
    (2, "invalid JSON: Expecting ',' delimiter at column 89 [invalid_json]"),
    (3, "not a JSON object but an array [data_type]"),
    (4, 'no "messages" list [missing_messages_list]'),
    (5, '"messages" is empty [missing_messages_list]'),
    (6, 'message 2: missing "content" [message_missing_key]'),
    (7, 'message 1: unrecognized key "timestamp" [message_unrecognized_key]'),
    (8, 'message 2: unrecognized role "bot" [unrecognized_role]'),
    (9, "message 2: empty content [missing_content]"),
    (10, "no assistant message [example_missing_assistant_message]"),
    (11, "message 1: content is a number, not a string [missing_content]"),
    (12, "message 2: weight is 2, must be the integer 0 or 1 [invalid_weight]"),
    (13, "message 2: not a JSON object but a string [data_type]"),
    (13, "no assistant message [example_missing_assistant_message]"),
    (17, "not a JSON object but a string [data_type]"),
]
WARNINGS = [
    (6, "no system message [missing_system]"),
    (7, "no system message [missing_system]"),
    (8, "no system message [missing_system]"),
    (9, "no system message [missing_system]"),
    (11, "no system message [missing_system]"),
    (12, "no system message [missing_system]"),
    (13, "no system message [missing_system]"),
    (14, "blank line, ignored (better removed) [blank_line]"),
    (15, "no system message [missing_system]"),
    (16, "no user message [missing_user]"),
]


def write(path: Path, examples: list[object]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return path


def chat(*turns: str, system: str | None = "You are Sam.") -> dict[str, object]:
    messages = [{"role": "system", "content": system}] if system else []
    roles = ("user", "assistant")
    messages += [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
    return {"messages": messages}


def test_every_error_kind_with_its_line_number() -> None:
    report = check_file(DATA / "errors.jsonl")
    assert [(p.line, p.message) for p in report.errors] == ERRORS
    assert [(p.line, p.message) for p in report.warnings] == WARNINGS
    # 17 lines, one blank: 16 examples; lines 1, 15 (tool calls) and 16 are valid.
    assert report.examples == 16
    assert len(report.token_counts) == 3
    assert report.messages_per_example == [3, 4, 2]


def test_valid_tool_call_example_has_no_errors(tmp_path: Path) -> None:
    line = (DATA / "errors.jsonl").read_text(encoding="utf-8").splitlines()[14]
    path = tmp_path / "tools.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    report = check_file(path)
    assert report.errors == []
    assert [p.message for p in report.warnings] == [
        "no system message [missing_system]",
        "only 1 example: OpenAI requires at least 10 [too_few_examples]",
    ]


def test_odd_values_are_reported_not_crashed_on() -> None:
    odd = {
        "messages": [{"role": ["user"], "content": "hi"}, {"role": "assistant", "content": None}]
    }
    assert check_example(odd) == [
        ('message 1: unrecognized role ["user"] [unrecognized_role]', "error"),
        ("message 2: content is null, not a string [missing_content]", "error"),
        ("no system message [missing_system]", "warning"),
        ("no user message [missing_user]", "warning"),
    ]
    assert check_example({"messages": "hi"}) == [
        ('"messages" is a string, not a list [missing_messages_list]', "error")
    ]
    assert check_example(None) == [("not a JSON object but null [data_type]", "error")]


def test_problem_str() -> None:
    assert str(Problem(3, "x [data_type]")) == "line 3: x [data_type]"
    assert str(Problem(0, "no examples in the file [no_examples]")) == (
        "file: no examples in the file [no_examples]"
    )


def test_stats_on_hand_computed_fixture() -> None:
    # Each message is "hello world" (2 tokens) with a 1-token role: 3 + 1 + 2 = 6 tokens,
    # plus 3 priming per example. Examples hold a system message and 1, 2, 3, 4 and 10
    # user/assistant pairs: 3, 5, 7, 9, 21 messages -> 21, 33, 45, 57, 129 tokens.
    report = check_file(DATA / "stats.jsonl")
    assert report.errors == []
    assert [str(p) for p in report.warnings] == [
        "file: only 5 examples: OpenAI requires at least 10 [too_few_examples]"
    ]
    assert report.examples == 5
    assert report.messages_per_example == [3, 5, 7, 9, 21]
    assert report.token_counts == [21, 33, 45, 57, 129]
    assert report.over_limit == 0
    assert report.context_limit == 65_536
    # 5 examples * 3 < 100 -> min(25, 100 // 5) = 20 epochs.
    assert report.epochs == 20
    assert report.tokens_per_epoch == 285
    assert report.billed_tokens == 285 * 20
    assert report.estimated_cost_usd == pytest.approx(5_700 * 5.00 / 1_000_000)
    text = report.format()
    assert "Messages per example: min 3, median 7, max 21" in text
    # p95 interpolates like numpy: 57 + 0.8 * (129 - 57) = 114.6, shown whole like min/max
    assert "Tokens per example:   min 21, median 45, p95 115, max 129" in text
    assert "Epochs: 20 (default rule for 5 examples)" in text
    assert "Billed tokens: 5,700 (285 per epoch × 20)" in text
    assert (
        f"Estimated training cost: $0.03 ($5.00 per 1M tokens, prices as of {PRICES_AS_OF})" in text
    )
    assert text.endswith("OK: no format errors (1 warning above).")


def test_epochs_override_and_other_base_model() -> None:
    report = check_file(DATA / "stats.jsonl", base_model="gpt-4o-mini", epochs=2)
    assert report.epochs == 2
    assert report.billed_tokens == 570
    assert report.estimated_cost_usd == pytest.approx(570 * 3.00 / 1_000_000)
    assert "Epochs: 2 (--epochs)" in report.format()
    # A fine-tuned id continues training at its base model's price.
    ft = check_file(DATA / "stats.jsonl", base_model="ft:gpt-4.1-2025-04-14:acme:sam:abc123")
    assert ft.price_per_million == 25.00
    assert ft.estimated_cost_usd == pytest.approx(5_700 * 25.00 / 1_000_000)


def test_unknown_model_has_no_cost_but_a_note() -> None:
    report = check_file(DATA / "stats.jsonl", base_model="Qwen/Qwen2.5-0.5B-Instruct")
    assert report.estimated_cost_usd is None
    assert report.context_limit == 65_536
    text = report.format()
    assert "Estimated training cost: unknown" in text
    assert "Note: no training price for Qwen/Qwen2.5-0.5B-Instruct" in text
    assert "Note: no example limit known for Qwen/Qwen2.5-0.5B-Instruct" in text


def test_over_limit_examples_are_billed_up_to_the_limit(tmp_path: Path) -> None:
    long_text = "hello " * 5_000
    long_tokens = 3 + 3 + 1 + count_tokens(long_text, "gpt-3.5-turbo") + 3 + 1 + 1
    assert long_tokens > 4_096
    path = write(
        tmp_path / "long.jsonl",
        [chat(long_text, "k", system=None)] * 2 + [chat("hi", "k", system=None)],
    )
    report = check_file(path, base_model="gpt-3.5-turbo-0613", epochs=1)
    assert report.context_limit == 4_096
    assert report.encoding == "cl100k_base"
    assert report.over_limit == 2
    assert report.token_counts[:2] == [long_tokens, long_tokens]
    assert report.billed_tokens == 4_096 * 2 + report.token_counts[2]
    assert report.estimated_cost_usd is None  # gpt-3.5 is not in the price table
    over = [p for p in report.warnings if "over_token_limit" in p.message]
    assert [str(p) for p in over] == [
        f"line {n}: {long_tokens:,} tokens, over the 4,096-token limit: truncated in "
        "training [over_token_limit]"
        for n in (1, 2)
    ]
    assert report.errors == []


@pytest.mark.parametrize(
    ("n", "epochs"),
    [
        (1, 25),  # 100 // 1 = 100, capped at 25
        (3, 25),  # 33 -> 25
        (4, 25),
        (5, 20),
        (20, 5),
        (33, 3),  # 99 < 100 -> 100 // 33 = 3
        (34, 3),  # 102 >= 100 -> target 3
        (50, 3),
        (8_333, 3),  # 24,999 <= 25,000
        (8_334, 2),  # 25,002 > 25,000 -> 25,000 // 8,334 = 2
        (12_500, 2),
        (12_501, 1),
        (30_000, 1),  # 25,000 // 30,000 = 0 -> at least 1
    ],
)
def test_default_epochs_rule(n: int, epochs: int) -> None:
    assert default_epochs(n) == epochs


def test_cost_arithmetic() -> None:
    assert estimate_cost(1_000_000, "gpt-4.1-2025-04-14") == pytest.approx(25.00)
    assert estimate_cost(1_000_000, "gpt-4.1") == pytest.approx(25.00)
    assert estimate_cost(2_000_000, "gpt-4.1-mini") == pytest.approx(10.00)
    assert estimate_cost(1_000_000, "gpt-4.1-nano-2025-04-14") == pytest.approx(1.50)
    assert estimate_cost(3_000_000, "gpt-4o-2024-08-06") == pytest.approx(75.00)
    assert estimate_cost(500_000, "gpt-4o-mini") == pytest.approx(1.50)
    assert estimate_cost(1_000_000, "gpt-3.5-turbo") is None
    assert set(PRICES) == {
        "gpt-4.1-2025-04-14",
        "gpt-4.1-mini-2025-04-14",
        "gpt-4.1-nano-2025-04-14",
        "gpt-4o-2024-08-06",
        "gpt-4o-mini-2024-07-18",
    }


def test_percentile_matches_numpy_linear() -> None:
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([10], 0.95) == 10
    assert (
        percentile(
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 100], 0.95
        )
        == 20
    )


def test_whole_rounds_halves_up_and_absorbs_float_noise() -> None:
    assert [whole(x) for x in (51.6, 51.5, 52.5, 51.4, 7, 7.0)] == [52, 52, 53, 51, 7, 7]
    # Float noise from interpolation: still 311, and still a half that rounds up.
    assert whole(310.99999999999955) == 311
    assert whole(51.49999999999999) == 52


def test_median_and_p95_print_as_whole_numbers(tmp_path: Path) -> None:
    # "hello world" messages of 6 tokens (see above): examples of 3 and 4 messages have
    # 21 and 27 tokens. Messages median 3.5 -> 4 (halves up); tokens p95
    # 21 + 0.95 * (27 - 21) = 26.7 -> 27, whole like min and max.
    msg = {"role": "user", "content": "hello world"}
    reply = {"role": "assistant", "content": "hello world"}
    lines = [[msg, msg, reply], [msg, msg, reply, reply]]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in lines), "utf-8")
    report = check_file(path)
    assert report.token_counts == [21, 27]
    text = report.format()
    assert "Messages per example: min 3, median 4, max 4" in text
    assert "Tokens per example:   min 21, median 24, p95 27, max 27" in text


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    report = check_file(path)
    assert [str(p) for p in report.errors] == ["file: no examples in the file [no_examples]"]
    assert report.token_counts == []
    assert report.format().endswith("FAILED: 1 error; fix them before fine-tuning.")


def test_bad_bytes_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "bytes.jsonl"
    good = json.dumps(chat("hey", "hi")).encode()
    path.write_bytes(
        b"\xef\xbb\xbf" + good + b"\n" + good[:20] + b"\xff" + good[20:] + b"\r\n" + good + b"\r\n"
    )
    report = check_file(path)
    assert [str(p) for p in report.errors] == [
        "line 1: starts with a byte-order mark: save as UTF-8 without BOM [bom]",
        "line 2: not valid UTF-8 (byte 21) [invalid_utf8]",
    ]
    assert report.token_counts == [count_tokens_chat()]


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be"])
def test_a_utf16_file_is_one_error_saying_to_save_it_as_utf8(tmp_path: Path, codec: str) -> None:
    """What Windows PowerShell 5's `>` writes: one line says so, not one error per line."""
    # It said "not valid UTF-8 (byte 1)" on line 1, then "invalid JSON: Expecting value at
    # column 1" on every other line, which reads as JSON in an editor.
    path = tmp_path / "ps.jsonl"
    bom = "\ufeff" if codec == "utf-16-be" else ""  # the "utf-16" codec writes its own
    text = "".join(json.dumps(chat("hey", "hi")) + "\n" for _ in range(12))
    path.write_bytes((bom + text).encode(codec))
    assert_one_error_on_line_1(
        path, "the file is UTF-16, not UTF-8: save it as UTF-8 without BOM [utf16]"
    )


def assert_one_error_on_line_1(path: Path, error: str) -> None:
    """`dataset check` reports only `error`, on line 1, reads no example, and exits 1."""
    result = CliRunner().invoke(cli, ["dataset", "check", str(path)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"{path}: 0 examples, base model gpt-4.1-mini-2025-04-14 (o200k_base)",
        "Errors (1):",
        f"  line 1: {error}",
        "FAILED: 1 error; fix them before fine-tuning.",
    ]


def test_a_file_over_openais_upload_limit_is_warned_of_first(tmp_path: Path) -> None:
    """OpenAI's files API takes up to 512 MB: the check said such a file was ready."""
    path = tmp_path / "big.jsonl"
    with path.open("wb") as fh:
        fh.write(("".join(json.dumps(chat("hey", "hi")) + "\n" for _ in range(10))).encode())
        # Sparse: 513 MB on paper and next to nothing on disk, in lines of 4 MB of NULs
        # (each invalid JSON) so no line is held whole in memory.
        for mb in range(4, 513, 4):
            fh.seek(mb * 2**20)
            fh.write(b"\n")
        fh.truncate(513 * 2**20)
    report = check_file(path)
    assert str(report.warnings[0]) == (
        "file: 513 MB, and OpenAI takes files of up to 512 MB: train on fewer examples, or "
        "with --provider local [file_too_large]"
    )
    assert report.warning_count == 1
    assert report.token_counts == [count_tokens_chat()] * 10


def test_half_an_emoji_is_an_error_at_its_message(tmp_path: Path) -> None:
    # "\ud83d" without its pair is valid JSON but not text: the check says so, by message.
    path = tmp_path / "half.jsonl"
    good = json.dumps(chat("hey", "hi"))
    path.write_text(good + "\n" + json.dumps(chat("hey", "hi \ud83d")) + "\n", encoding="ascii")
    report = check_file(path)
    assert [str(p) for p in report.errors] == [
        "line 2: message 3: a \\ud800-\\udfff escape without its pair: not valid Unicode text "
        "[invalid_utf8]"
    ]
    assert report.token_counts == [count_tokens_chat()]


def count_tokens_chat() -> int:
    # system "You are Sam." + user "hey" + assistant "hi"
    return 3 + 3 * 4 + count_tokens("You are Sam.") + count_tokens("hey") + count_tokens("hi")


def test_cli_check_ok_exit_0(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.jsonl", [chat(f"hey {i}", "hi") for i in range(12)])
    result = CliRunner().invoke(cli, ["dataset", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{path}: 12 examples, base model gpt-4.1-mini-2025-04-14")
    assert "Errors" not in result.output
    assert "Epochs: 8 (default rule for 12 examples)" in result.output
    assert result.output.rstrip().endswith("OK: no format errors; ready for fine-tuning.")


def test_cli_check_one_example_reads_in_the_singular(tmp_path: Path) -> None:
    path = write(tmp_path / "one.jsonl", [chat("hey", "hi")])
    result = CliRunner().invoke(cli, ["dataset", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{path}: 1 example, base model ")
    assert "only 1 example: OpenAI requires at least 10" in result.output
    assert "Over the 65,536-token limit: 0 examples" in result.output
    assert "Epochs: 25 (default rule for 1 example)" in result.output


def test_cli_check_warnings_still_exit_0(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.jsonl", [chat(f"hey {i}", "hi", system=None) for i in range(3)])
    result = CliRunner().invoke(cli, ["dataset", "check", str(path), "--epochs", "4"])
    assert result.exit_code == 0, result.output
    assert "line 3: no system message [missing_system]" in result.output
    assert "Epochs: 4 (--epochs)" in result.output
    assert result.output.endswith("OK: no format errors (4 warnings above).\n")


def test_cli_check_errors_exit_1_naming_lines() -> None:
    result = CliRunner().invoke(cli, ["dataset", "check", str(DATA / "errors.jsonl")])
    assert result.exit_code == 1
    for line, message in ERRORS:
        assert f"  line {line}: {message}\n" in result.output
    assert "Errors (14):" in result.output
    assert result.output.rstrip().endswith("FAILED: 14 errors; fix them before fine-tuning.")


def test_nan_and_infinity_are_not_json(tmp_path: Path) -> None:
    # Python's json reads them (and writes them, unless told not to); OpenAI's parser refuses.
    good = json.dumps(chat("hi", "hello"))
    weighted = '{"messages": [{"role": "user", "content": "NaN \\" Infinity"}, '
    path = tmp_path / "odd.jsonl"
    lines = [
        good,
        weighted + '{"role": "assistant", "content": "ok", "weight": NaN}]}',
        weighted + '{"role": "assistant", "content": "ok", "weight": Infinity}]}',
        '{"messages": [], "score": -Infinity}',
        good,
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["dataset", "check", str(path)])
    assert result.exit_code == 1
    fix = "(JSON has no NaN or Infinity: write a number or null) [invalid_json]"
    for line, constant, column in [(2, "NaN", 112), (3, "Infinity", 112), (4, "-Infinity", 27)]:
        assert f"  line {line}: invalid JSON: {constant} at column {column} {fix}\n" in (
            result.output
        )
    assert result.output.rstrip().endswith("FAILED: 3 errors; fix them before fine-tuning.")


def test_cli_caps_listed_problems(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(f"oops {i}\n" for i in range(25)), encoding="utf-8")
    result = CliRunner().invoke(cli, ["dataset", "check", str(path)])
    assert result.exit_code == 1
    assert "  line 20: invalid JSON: Expecting value at column 1 [invalid_json]\n" in result.output
    assert "line 21:" not in result.output
    assert "  … and 5 more (in all: invalid_json 25)\n" in result.output
    shorter = CliRunner().invoke(cli, ["dataset", "check", str(path), "--max-shown", "2"])
    assert "  … and 23 more (in all: invalid_json 25)\n" in shorter.output


def test_cli_missing_file_is_one_line_exit_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["dataset", "check", "nope.jsonl"])
    assert result.exit_code == 1
    assert result.output == "Error: nope.jsonl: no such file\n"
    folder = CliRunner().invoke(cli, ["dataset", "check", str(tmp_path)])
    assert folder.exit_code == 1
    assert folder.output == f"Error: {tmp_path}: is a folder, not a JSONL file\n"


def test_cli_rejects_zero_epochs() -> None:
    result = CliRunner().invoke(
        cli, ["dataset", "check", str(DATA / "stats.jsonl"), "--epochs", "0"]
    )
    assert result.exit_code == 2
    assert "--epochs" in result.output


def test_statistics_note_counts_the_examples_without_errors(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n" + '{"messages": []}\n', encoding="utf-8")
    shown = check_file(path).format().splitlines()
    assert "Statistics below cover the 1 example without errors." in shown
    path.write_text((json.dumps(good) + "\n") * 2 + '{"messages": []}\n', encoding="utf-8")
    assert "Statistics below cover the 2 examples without errors." in check_file(path).format()


def test_base_model_aliases_and_case() -> None:
    # Undated gpt-3.5-turbo is its current snapshot: cl100k_base and 16,385 tokens, no note.
    report = check_file(DATA / "stats.jsonl", base_model="gpt-3.5-turbo")
    assert (report.context_limit, report.encoding) == (16_385, "cl100k_base")
    assert "Over the 16,385-token limit: 0 examples" in report.format()
    assert "no example limit known" not in report.format()
    # OpenAI's ids are lower case: "GPT-4o-mini" is gpt-4o-mini, priced like it.
    for model in ("GPT-4o-mini", " gpt-4O-MINI-2024-07-18 ", "FT:GPT-4o-mini-2024-07-18:acme::x"):
        upper = check_file(DATA / "stats.jsonl", base_model=model)
        assert upper.price_per_million == 3.00, model
        assert upper.encoding == "o200k_base"
        assert "unknown" not in upper.format() and "Note:" not in upper.format()


def parts(*texts: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": t} for t in texts]


def errors(example: object) -> list[str]:
    return [message for message, severity in check_example(example) if severity == "error"]


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}


def test_content_as_a_list_of_text_parts_is_counted_like_its_text(tmp_path: Path) -> None:
    listed = {
        "messages": [
            {"role": "system", "content": parts("You are Sam.")},
            {"role": "user", "content": parts("hey", " there")},
            {"role": "assistant", "content": parts("hi")},
        ]
    }
    path = write(tmp_path / "parts.jsonl", [listed, chat("hey", "hi")])
    report = check_file(path)
    assert report.errors == []
    # Each part's text, never the JSON around it.
    assert report.token_counts == [
        count_tokens_chat() + count_tokens(" there"),
        count_tokens_chat(),
    ]
    assert "Note:" not in report.format()


def test_images_in_user_messages_are_accepted_and_left_out_of_the_count(tmp_path: Path) -> None:
    with_image: Any = chat("hey", "a cat")
    with_image["messages"][1]["content"] = [{"type": "text", "text": "hey"}, IMAGE]
    only_image: Any = chat("hey", "a cat")
    only_image["messages"][1]["content"] = [IMAGE, IMAGE]
    path = write(tmp_path / "vision.jsonl", [with_image, only_image])
    report = check_file(path, base_model="gpt-4o-2024-08-06")
    assert report.errors == []
    plain = count_tokens_chat() - count_tokens("hi") + count_tokens("a cat")
    assert report.token_counts == [plain, plain - count_tokens("hey")]
    assert (
        "Note: 3 images not counted: an image's tokens depend on its size and detail; token "
        "counts, billed tokens and cost cover the text only"
    ) in report.format()


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
            'message 2: content part 1: unknown type "input_audio": use "text" parts, and '
            '"image_url" parts in user messages [invalid_content_part]',
        ),
        (
            {"role": "user", "content": [{"text": "hey"}]},
            'message 2: content part 1: no "type": use "text" parts, and "image_url" parts in '
            "user messages [invalid_content_part]",
        ),
        (
            {"role": "user", "content": ["hey"]},
            "message 2: content part 1: not a JSON object but a string [invalid_content_part]",
        ),
        (
            {"role": "system", "content": [IMAGE]},
            'message 2: content part 1: "image_url" parts go only in user messages '
            "[invalid_content_part]",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": 42}]},
            'message 2: content part 1: "text" is a number, not a string [invalid_content_part]',
        ),
        (
            {"role": "user", "content": [{"type": "text"}]},
            'message 2: content part 1: no "text" string in the part [invalid_content_part]',
        ),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": "https://x/a.png"}]},
            'message 2: content part 1: an image needs "image_url": {"url": …} '
            "[invalid_content_part]",
        ),
        ({"role": "user", "content": []}, "message 2: empty content [missing_content]"),
        ({"role": "user", "content": parts(" ", "")}, "message 2: empty content [missing_content]"),
        (
            {"role": "user", "content": parts("hi \ud83d")},
            "message 2: content part 1: a \\ud800-\\udfff escape without its pair: not valid "
            "Unicode text [invalid_utf8]",
        ),
    ],
)
def test_content_parts_openai_does_not_take_are_errors(
    message: dict[str, object], error: str
) -> None:
    example = {
        "messages": [
            {"role": "system", "content": "s"},
            message,
            {"role": "assistant", "content": "k"},
        ]
    }
    assert errors(example) == [error]


def test_no_image_from_the_assistant_and_no_parts_in_a_function_answer() -> None:
    example: Any = chat("hey", "hi")
    example["messages"][2]["content"] = [IMAGE]
    example["messages"].append({"role": "function", "name": "f", "content": parts("42")})
    assert check_example(example) == [
        (
            'message 3: content part 1: "image_url" parts go only in user messages '
            "[invalid_content_part]",
            "error",
        ),
        ("message 4: content is an array, not a string [missing_content]", "error"),
    ]


def test_assistant_refusal_is_accepted_and_counted(tmp_path: Path) -> None:
    refused: Any = chat("hey", "hi")
    refused["messages"][2]["refusal"] = None
    said: Any = chat("hey", "hi")
    said["messages"][2]["refusal"] = "no"
    as_part: Any = chat("hey", "hi")
    as_part["messages"][2]["content"] = [{"type": "refusal", "refusal": "hi"}]
    report = check_file(write(tmp_path / "refusal.jsonl", [refused, said, as_part]))
    assert report.errors == []
    assert report.token_counts == [
        count_tokens_chat(),
        count_tokens_chat() + count_tokens("no"),
        count_tokens_chat(),
    ]
    # Only the assistant refuses, with a string.
    wrong = {
        "messages": [
            {"role": "user", "content": "hey", "refusal": "no"},
            {"role": "assistant", "content": "hi", "refusal": 1},
        ]
    }
    assert errors(wrong) == [
        'message 1: unrecognized key "refusal" [message_unrecognized_key]',
        "message 2: refusal is a number, not a string [data_type]",
    ]


def test_weight_only_on_assistant_messages() -> None:
    example: Any = chat("hey", "hi")
    example["messages"][0]["weight"] = 0
    example["messages"][1]["weight"] = 1
    example["messages"][2]["weight"] = 0
    assert check_example(example) == [
        ("message 1: weight is only for assistant messages [invalid_weight]", "error"),
        ("message 2: weight is only for assistant messages [invalid_weight]", "error"),
        (NOTHING_TO_TRAIN, "warning"),
    ]


@pytest.mark.parametrize(
    ("weight", "severity"), [(1.0, "warning"), (0.0, "warning"), (True, "error"), ("1", "error")]
)
def test_weight_is_the_integer_0_or_1_as_openai_documents_it(weight: object, severity: str) -> None:
    # Python compares 1.0 and true equal to 1; OpenAI's format says an integer. A float
    # of the right value is only warned of: OpenAI documents no check that refuses it.
    example: Any = chat("hey", "hi")
    example["messages"][2]["weight"] = weight
    shown = json.dumps(weight)
    # The one reply left out of training (0.0 as 0): nothing to train on, said too.
    untrained = [(NOTHING_TO_TRAIN, "warning")] if weight == 0 else []
    assert check_example(example) == [
        (f"message 3: weight is {shown}, must be the integer 0 or 1 [invalid_weight]", severity),
        *untrained,
    ]
    example["messages"][2]["weight"] = int(weight)  # type: ignore[call-overload]
    assert check_example(example) == untrained


def test_a_line_holds_only_the_keys_of_openais_format() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    valid = {**chat("hey", "hi"), "tools": tools, "parallel_tool_calls": False, "functions": None}
    assert check_example(valid) == []
    # A warning: OpenAI documents no other keys, nor that it refuses them.
    assert check_example({**chat("hey", "hi"), "prompt": "hey", "id": 7}) == [
        (
            'unrecognized keys "prompt", "id" (a line holds "messages", "tools", '
            '"parallel_tool_calls", "functions") [unrecognized_key]',
            "warning",
        )
    ]
    assert errors({**chat("hey", "hi"), "tools": {}, "parallel_tool_calls": "yes"}) == [
        '"tools" is an object, not an array [data_type]',
        '"parallel_tool_calls" is a string, not true or false [data_type]',
    ]


@pytest.mark.parametrize(
    ("name", "warned"), [("sam.validation.jsonl", False), ("sam.train.jsonl", True)]
)
def test_too_few_examples_is_for_training_files_only(
    tmp_path: Path, name: str, warned: bool
) -> None:
    """OpenAI's 10-example minimum is for the training file; a validation file may be small."""
    path = write(tmp_path / name, [chat("hey", "hi")] * 3)
    result = CliRunner().invoke(cli, ["dataset", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert ("only 3 examples: OpenAI requires at least 10" in result.output) is warned
    said = "checked as a validation file (its name ends .validation.jsonl)"
    assert (said in result.output) is not warned
    # Said whatever the name: finetune start checks a --validation file by this flag.
    assert check_file(path, validation=True).warning_count == 0
    assert check_file(path, validation=False).warning_count == 1


def test_a_validation_file_is_not_priced_as_training(tmp_path: Path) -> None:
    """OpenAI bills the training file's tokens per epoch; a validation file's are not billed."""
    # It printed epochs, billed tokens and a training cost for a file nothing trains on.
    path = write(tmp_path / "sam.validation.jsonl", [chat("hey", "hi")] * 12)
    result = CliRunner().invoke(cli, ["dataset", "check", str(path), "--epochs", "4"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    tokens = check_file(path, validation=False).tokens_per_epoch
    assert lines[4:7] == [
        f"Tokens: {tokens:,} (evaluated during the job, not trained on)",
        "Estimated training cost: none (OpenAI does not bill a validation file's tokens)",
        "Note: checked as a validation file (its name ends .validation.jsonl)",
    ]
    assert not any(line.startswith(("Epochs:", "Billed tokens:")) for line in lines)
    report = check_file(path, validation=True)
    assert (report.billed_tokens, report.estimated_cost_usd) == (0, 0.0)
    # The same examples as a training file are priced as before.
    training = check_file(path, epochs=4, validation=False)
    assert training.billed_tokens == 4 * tokens and training.estimated_cost_usd > 0


CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            {"role": "tool", "content": "42"},
            'message 3: missing "tool_call_id" [message_missing_key]',
        ),
        (
            {"role": "tool", "content": "42", "tool_call_id": None},
            'message 3: missing "tool_call_id" [message_missing_key]',
        ),
        (
            {"role": "tool", "content": "42", "tool_call_id": 1},
            'message 3: "tool_call_id" is a number, not a string [data_type]',
        ),
        ({"role": "function", "content": "42"}, 'message 3: missing "name" [message_missing_key]'),
        ({"role": "tool"}, 'message 3: missing "content" and "tool_call_id" [message_missing_key]'),
    ],
)
def test_tool_and_function_answers_name_their_call(answer: dict[str, object], error: str) -> None:
    def example(answer: dict[str, object]) -> dict[str, object]:
        calling = {"role": "assistant", "content": None, "tool_calls": [CALL]}
        last = {"role": "assistant", "content": "42"}
        return {"messages": [{"role": "user", "content": "2 * 21?"}, calling, answer, last]}

    assert errors(example(answer)) == [error]
    # Named, the same answer passes.
    key = "tool_call_id" if answer["role"] == "tool" else "name"
    assert errors(example({"content": "42", **answer, key: "call_1"})) == []


def test_names_and_calls_of_the_wrong_json_type() -> None:
    # OpenAI takes a name only as a string, tool_calls only as a list, function_call only as
    # an object; null stands for absent.
    example = {
        "messages": [
            {"role": "user", "content": "hey", "name": 5},
            {"role": "user", "content": "hey", "name": None},
            {"role": "assistant", "content": "hi", "tool_calls": "call_1"},
            {"role": "assistant", "content": "hi", "function_call": ["f"]},
            {"role": "assistant", "content": "hi", "tool_calls": None, "name": "Sam"},
        ]
    }
    assert errors(example) == [
        'message 1: "name" is a number, not a string [data_type]',
        'message 3: "tool_calls" is a string, not an array [data_type]',
        'message 4: "function_call" is an array, not an object [data_type]',
    ]


def test_the_same_problem_on_every_line_is_counted_not_kept(tmp_path: Path) -> None:
    # A big file with one warning per line held every Problem (~140 bytes each): hundreds
    # of MB for 200 MB of JSONL. The first KEPT_PER_KIND of a kind are kept, the rest counted.
    line = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    path = tmp_path / "no_system.jsonl"
    path.write_text((line + "\n") * 50_000 + "oops\n" * 150, encoding="utf-8")
    report = check_file(path)
    assert report.problem_counts == {
        ("warning", "missing_system"): 50_000,
        ("error", "invalid_json"): 150,
    }
    assert (report.warning_count, report.error_count) == (50_000, 150)
    assert len(report.warnings) == len(report.errors) == KEPT_PER_KIND
    assert [p.line for p in report.warnings] == list(range(1, KEPT_PER_KIND + 1))
    assert report.errors[0].line == 50_001
    shown = report.format(max_problems=KEPT_PER_KIND + 50).splitlines()
    assert "Warnings (50,000):" in shown
    assert f"  line {KEPT_PER_KIND}: no system message [missing_system]" in shown
    assert f"  … and {50_000 - KEPT_PER_KIND:,} more (in all: missing_system 50,000)" in shown
    assert "Errors (150):" in shown
    assert f"  … and {150 - KEPT_PER_KIND} more (in all: invalid_json 150)" in shown
    assert shown[-1] == "FAILED: 150 errors; fix them before fine-tuning."
    assert format_errors_message(path, report, "nothing was uploaded") == (
        f"{path}: 150 format errors (first on line 50001): fix them before fine-tuning; "
        "nothing was uploaded"
    )
    # Kept whole, 50,000 problems took 7.5 MB here; what is left is the per-example
    # token and message counts the statistics need (16 bytes an example).
    assert peak_memory(lambda: check_file(path)) < 2_000_000


def test_function_definitions_are_counted_in_the_example(tmp_path: Path) -> None:
    """OpenAI bills a line's `tools` / `functions` as input: the estimate counted only messages."""
    from phischer.tokens import count_messages_tokens, count_tools_tokens

    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up. " + "Very thorough. " * 1_500,
            "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
        },
    }
    example: Any = chat("define hi", "hello")
    with_tools = {**example, "tools": [tool]}
    legacy = {**example, "functions": [tool["function"]]}
    path = write(tmp_path / "tools.jsonl", [with_tools, legacy, example])
    model = "gpt-3.5-turbo-0613"  # a 4,096-token limit the definitions alone pass
    report = check_file(path, model)
    messages = count_messages_tokens(example["messages"], model)
    tools = count_tools_tokens([tool], model)
    assert tools > 4_096 > messages
    assert report.token_counts == [messages + tools, messages + tools, messages]
    assert report.over_limit == 2
    assert [p.line for p in report.warnings if p.kind == "over_token_limit"] == [1, 2]
    assert report.tokens_per_epoch == 4_096 * 2 + messages


def test_a_file_with_cr_only_line_endings_is_one_error_saying_so(tmp_path: Path) -> None:
    """Old Mac line endings: the file read as one line of "invalid JSON: Extra data"."""
    path = tmp_path / "mac.jsonl"
    path.write_bytes(b"".join(json.dumps(chat("hey", "hi")).encode() + b"\r" for _ in range(12)))
    assert_one_error_on_line_1(
        path, "lines end in CR only: save with LF line endings [cr_line_endings]"
    )
    # A CR inside a line is JSON whitespace, and CRLF endings are read as they always were.
    crlf = tmp_path / "crlf.jsonl"
    inner = json.dumps(chat("hey", "hi")).replace(", ", ",\r", 1).encode()
    crlf.write_bytes(inner + b"\r\n" + b"".join(inner + b"\r\n" for _ in range(11)))
    assert check_file(crlf).problems == []
    # Broken JSON with a CR in it is still invalid JSON, not a line-ending problem.
    bad = tmp_path / "bad2.jsonl"
    bad.write_bytes(b'{"messages": [\r{"role": "user"}\r')
    assert [p.kind for p in check_file(bad).errors] == ["invalid_json"]


def test_an_example_with_every_reply_weighted_0_is_warned_of(tmp_path: Path) -> None:
    """Nothing in it is trained on, yet it is billed: a warning naming its line."""
    untrained: Any = chat("hey", "hi", "sup", "nm")
    for message in untrained["messages"][2::2]:
        message["weight"] = 0
    partly: Any = chat("hey", "hi", "sup", "nm")
    partly["messages"][2]["weight"] = 0  # one reply still trained on: fine
    path = write(tmp_path / "w.jsonl", [partly, untrained, *[untrained] * 4, *[partly] * 6])
    result = CliRunner().invoke(cli, ["dataset", "check", str(path), "--max-shown", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1:5] == [
        "Warnings (5):",
        f"  line 2: {NOTHING_TO_TRAIN}",
        f"  line 3: {NOTHING_TO_TRAIN}",
        "  … and 3 more (in all: nothing_to_train 5)",
    ]
    assert lines[-1] == "OK: no format errors (5 warnings above)."
    report = check_file(path)
    assert len(report.token_counts) == 12  # still billed, so still counted
