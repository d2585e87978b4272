"""`dataset check`: validate a chat fine-tuning JSONL and estimate its tokens, epochs and cost.

The checks follow OpenAI's cookbook "Data preparation and analysis for chat model
fine-tuning" (error keys in [brackets] are the cookbook's names) and add what it skips:
invalid JSON lines, line numbers, the per-model example limit and a dated price table.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from phischer.base_models import (
    DEFAULT_BASE_MODEL,
    DEFAULT_CONTEXT_LIMIT,
    MAX_UPLOAD_BYTES,
    MIN_EXAMPLES,
    PRICES,
    PRICES_AS_OF,
    context_limit,
    default_epochs,
    estimate_cost,
    price_per_million,
)
from phischer.chat_format import PART_ROLES, content_texts, json_kind
from phischer.printing import plural
from phischer.surrogates import LONE_SURROGATE
from phischer.tokens import (
    count_messages_tokens,
    count_tokens,
    count_tools_tokens,
    encoding_name_for,
)

# Problems kept (with their line) per kind; the rest are only counted. More than --max-shown
# lists by default, and memory stays bounded by the number of kinds, not of lines.
KEPT_PER_KIND = 100

# The cookbook allows role/content/name/function_call/weight; tool_calls and tool_call_id
# (with the "tool" role) are the current function-calling format OpenAI also accepts, and
# an assistant message may say what it refused ("refusal": a string or null).
HALF_EMOJI = "a \\ud800-\\udfff escape without its pair: not valid Unicode text"
KNOWN_KEYS = ("role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id")
ASSISTANT_KEYS = ("refusal",)
ROLES = ("system", "user", "assistant", "function", "tool")
# What a "tool" or "function" message must name: the call it answers (OpenAI requires both).
ANSWER_KEYS = {"tool": "tool_call_id", "function": "name"}
# Keys whose value OpenAI takes in one JSON type only (null: as if absent).
TYPED_KEYS: dict[str, tuple[type, str]] = {
    "name": (str, "a string"),
    "tool_call_id": (str, "a string"),
    "tool_calls": (list, "an array"),
    "function_call": (dict, "an object"),
}
# What a line may hold beside "messages" (OpenAI's per-line format for supervised chat
# fine-tuning) and the JSON type of each (null: as if absent).
EXAMPLE_KEYS: dict[str, tuple[type, str]] = {
    "tools": (list, "an array"),
    "parallel_tool_calls": (bool, "true or false"),
    "functions": (list, "an array"),
}
# `dataset split` names its held-out file so; OpenAI's example minimum is for training only.
VALIDATION_SUFFIX = ".validation.jsonl"
# Content lists: the part types and roles are in chat_format.PART_ROLES.
# How a UTF-16 (or UTF-32) file starts: what Windows PowerShell 5's `>` and Notepad's
# "Unicode" write. None of its lines is UTF-8 text, so the check says so once, and stops.
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
UTF16 = "utf16"
# Old Mac OS line endings: a "\r" alone ends each line, so the file reads as one line of
# several examples; said once, as what it is, not as "invalid JSON: Extra data".
CR_ONLY = "cr_line_endings"
PART_HINT = 'use "text" parts, and "image_url" parts in user messages'

Severity = Literal["error", "warning"]


class DatasetError(ValueError):
    """A dataset file cannot be checked or split; str() is one line saying why."""


@dataclass
class Problem:
    """One finding about one line (line 0: the file as a whole)."""

    line: int
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}: {self.message}"

    @property
    def kind(self) -> str:
        """The [kind] that ends the message: "missing_system"."""
        return self.message.rsplit("[", 1)[-1].rstrip("]")


@dataclass
class Findings:
    """Problems as found: the first KEPT_PER_KIND of each kind, and how many of each in all."""

    kept: list[Problem] = field(default_factory=list)
    counts: dict[tuple[Severity, str], int] = field(default_factory=dict)

    def add(self, problem: Problem) -> None:
        """Count `problem`, and keep it while its kind has fewer than KEPT_PER_KIND kept."""
        # A 200 MB file with the same warning on every line held every Problem (~140 bytes
        # each, hundreds of MB); the report lists only the first few, and counts the rest.
        key = (problem.severity, problem.kind)
        seen = self.counts.get(key, 0)
        self.counts[key] = seen + 1
        if seen < KEPT_PER_KIND:
            self.kept.append(problem)


@dataclass
class CheckReport:
    """What `dataset check` found: problems, token statistics, epochs and cost."""

    path: Path
    base_model: str
    examples: int
    # The first KEPT_PER_KIND problems of each kind, in line order; `problem_counts` has all.
    problems: list[Problem]
    problem_counts: dict[tuple[Severity, str], int]
    token_counts: list[int]
    messages_per_example: list[int]
    over_limit: int
    epochs: int
    billed_tokens: int
    estimated_cost_usd: float | None
    context_limit: int = DEFAULT_CONTEXT_LIMIT
    encoding: str = "o200k_base"
    epochs_from_rule: bool = True
    price_per_million: float | None = None
    notes: list[str] = field(default_factory=list)
    # A validation file: evaluated during the job, not trained on, and not billed.
    validation: bool = False

    @property
    def errors(self) -> list[Problem]:
        """Problems that make OpenAI reject the file (the kept ones: see error_count)."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """Problems worth a look that do not block training (the kept ones)."""
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def error_count(self) -> int:
        """How many errors were found, kept or not."""
        return self._count("error")

    @property
    def warning_count(self) -> int:
        """How many warnings were found, kept or not."""
        return self._count("warning")

    def _count(self, severity: Severity) -> int:
        return sum(n for (sev, _), n in self.problem_counts.items() if sev == severity)

    @property
    def tokens_per_epoch(self) -> int:
        """Billed tokens for one pass: each example counted up to the context limit."""
        return sum(min(n, self.context_limit) for n in self.token_counts)

    def format(self, max_problems: int = 20) -> str:
        """The human report `dataset check` prints."""
        out = [
            f"{self.path}: {plural(self.examples, 'example')}, base model {self.base_model} "
            f"({self.encoding})"
        ]
        for title, severity in (("Errors", "error"), ("Warnings", "warning")):
            out.extend(self._listed(title, severity, max_problems))
        if self.token_counts:
            valid = len(self.token_counts)
            if valid != self.examples:
                out.append(f"Statistics below cover the {plural(valid, 'example')} without errors.")
            m = self.messages_per_example
            out.append(
                f"Messages per example: min {min(m)}, median {whole(statistics.median(m))}, "
                f"max {max(m)}"
            )
            t = self.token_counts
            out.append(
                f"Tokens per example:   min {min(t):,}, median {whole(statistics.median(t)):,}, "
                f"p95 {whole(percentile(t, 0.95)):,}, max {max(t):,}"
            )
            out.append(
                f"Over the {self.context_limit:,}-token limit: {plural(self.over_limit, 'example')}"
                + (" (truncated in training)" if self.over_limit else "")
            )
            out.extend(self._cost_lines(valid))
        out.extend(f"Note: {n}" for n in self.notes)
        if self.error_count:
            out.append(f"FAILED: {plural(self.error_count, 'error')}; fix them before fine-tuning.")
        elif self.warning_count:
            out.append(f"OK: no format errors ({plural(self.warning_count, 'warning')} above).")
        else:
            out.append("OK: no format errors; ready for fine-tuning.")
        return "\n".join(out)

    def _cost_lines(self, valid: int) -> list[str]:
        """The report's epochs, billed tokens and cost; a validation file's, said to be none."""
        if self.validation:
            # OpenAI bills the training file's tokens, once per epoch; a validation file is
            # only evaluated ("we don't charge for tokens used for training validation").
            return [
                f"Tokens: {self.tokens_per_epoch:,} (evaluated during the job, not trained on)",
                "Estimated training cost: none (OpenAI does not bill a validation file's tokens)",
            ]
        how = (
            f"default rule for {plural(valid, 'example')}" if self.epochs_from_rule else "--epochs"
        )
        out = [
            f"Epochs: {self.epochs} ({how})",
            f"Billed tokens: {self.billed_tokens:,} "
            f"({self.tokens_per_epoch:,} per epoch × {self.epochs})",
        ]
        if self.estimated_cost_usd is not None:
            out.append(
                f"Estimated training cost: {_usd(self.estimated_cost_usd)} "
                f"(${self.price_per_million:.2f} per 1M tokens, prices as of {PRICES_AS_OF})"
            )
        else:
            out.append("Estimated training cost: unknown")
        return out

    def _listed(self, title: str, severity: Severity, max_problems: int) -> list[str]:
        """The report's lines for one severity: a count, the first problems, then the rest."""
        total = self._count(severity)
        if not total:
            return []
        shown = [p for p in self.problems if p.severity == severity][:max_problems]
        out = [f"{title} ({total:,}):", *(f"  {p}" for p in shown)]
        if total > len(shown):
            counts = {k: n for (sev, k), n in self.problem_counts.items() if sev == severity}
            out.append(f"  … and {total - len(shown):,} more ({_tally(counts)})")
        return out


def _tally(counts: dict[str, int]) -> str:
    """'in all: missing_system 120, data_type 3': counts by kind, most first."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "in all: " + ", ".join(f"{kind} {n:,}" for kind, n in ranked)


def whole(x: float) -> int:
    """A median or percentile as a whole count like min and max, halves up (51.5 -> 52)."""
    # Round to 6 places first: interpolation gives 310.99999999999955 for 311 and
    # 51.49999999999999 for a half, which must round up like 51.5.
    return math.floor(round(float(x), 6) + 0.5)


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


def percentile(values: Sequence[int], q: float) -> float:
    """The q-quantile with linear interpolation (numpy's default, as the cookbook uses)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _quoted(value: Any) -> str:
    # A key or role as JSON: one line whatever it holds, and printable (a lone surrogate from
    # a "\\ud83d" escape stays an escape; stdout cannot encode it).
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace").decode()


def _content_problems(i: int, role: Any, content: Any, calls: Any) -> list[str]:
    """Errors in one message's content: a string, or a list of parts (not for "function")."""
    if isinstance(content, str):
        if not content.strip() and not calls:
            return [f"message {i}: empty content [missing_content]"]
        if LONE_SURROGATE.search(content):
            # Valid JSON ("\ud83d" without its pair: half an emoji), but not text:
            # UTF-8 cannot hold it. `phischer import` writes U+FFFD instead.
            return [f"message {i}: {HALF_EMOJI} [invalid_utf8]"]
        return []
    if content is None and calls:
        return []
    if isinstance(content, list) and role != "function":
        return _parts_problems(i, role, content, calls)
    return [f"message {i}: content is {json_kind(content)}, not a string [missing_content]"]


def _parts_problems(i: int, role: Any, parts: list[Any], calls: Any) -> list[str]:
    """Errors in a content list: each part a known type, in a role that may hold it."""
    found: list[str] = []
    has_content = False
    for j, part in enumerate(parts, 1):
        where = f"message {i}: content part {j}"
        if not isinstance(part, dict):
            found.append(f"{where}: not a JSON object but {json_kind(part)} [invalid_content_part]")
            continue
        kind = part.get("type")
        if not isinstance(kind, str) or kind not in PART_ROLES:
            what = f"unknown type {_quoted(kind)}" if "type" in part else 'no "type"'
            found.append(f"{where}: {what}: {PART_HINT} [invalid_content_part]")
        elif role in ROLES and role not in PART_ROLES[kind]:  # an unknown role is reported
            allowed = " or ".join(PART_ROLES[kind])
            found.append(
                f'{where}: "{kind}" parts go only in {allowed} messages [invalid_content_part]'
            )
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if isinstance(url, str) and url.strip():
                has_content = True
            else:
                found.append(
                    f'{where}: an image needs "image_url": {{"url": …}} [invalid_content_part]'
                )
        else:  # a text or refusal part holds its string under its own type's name
            value = part.get(kind)
            if kind not in part:
                found.append(f'{where}: no "{kind}" string in the part [invalid_content_part]')
            elif not isinstance(value, str):
                found.append(
                    f'{where}: "{kind}" is {json_kind(value)}, not a string [invalid_content_part]'
                )
            elif LONE_SURROGATE.search(value):
                found.append(f"{where}: {HALF_EMOJI} [invalid_utf8]")
            elif value.strip():
                has_content = True
    if not found and not has_content and not calls:
        found.append(f"message {i}: empty content [missing_content]")
    return found


def check_example(obj: Any) -> list[tuple[str, Severity]]:
    """The cookbook's format checks (plus a few) on one parsed line: (message, severity)."""
    if not isinstance(obj, dict):
        return [(f"not a JSON object but {json_kind(obj)} [data_type]", "error")]
    messages = obj.get("messages")
    if messages is None:
        return [('no "messages" list [missing_messages_list]', "error")]
    if not isinstance(messages, list):
        return [
            (f'"messages" is {json_kind(messages)}, not a list [missing_messages_list]', "error")
        ]
    if not messages:
        return [('"messages" is empty [missing_messages_list]', "error")]
    found = _example_key_problems(obj)
    roles = set()
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            found.append(
                (f"message {i}: not a JSON object but {json_kind(message)} [data_type]", "error")
            )
            continue
        role = message.get("role")
        if isinstance(role, str):
            roles.add(role)
        # An assistant turn that calls a function/tool may have no text content.
        calls = message.get("function_call") or message.get("tool_calls")
        missing = [k for k in ("role", "content") if k not in message]
        if calls and "content" in missing:
            missing.remove("content")
        answers = ANSWER_KEYS.get(role) if isinstance(role, str) else None
        if answers is not None and message.get(answers) is None:  # null says no more than absent
            missing.append(answers)
        if missing:
            keys = " and ".join(f'"{k}"' for k in missing)
            found.append((f"message {i}: missing {keys} [message_missing_key]", "error"))
        for key, (kind, wanted) in TYPED_KEYS.items():
            value = message.get(key)
            if value is not None and not isinstance(value, kind):
                found.append(
                    (
                        f'message {i}: "{key}" is {json_kind(value)}, not {wanted} [data_type]',
                        "error",
                    )
                )
        unknown = [
            k
            for k in message
            if k not in KNOWN_KEYS and not (k in ASSISTANT_KEYS and role == "assistant")
        ]
        if unknown:
            keys = ", ".join(_quoted(k) for k in unknown)
            plural = "s" if len(unknown) > 1 else ""
            found.append(
                (
                    f"message {i}: unrecognized key{plural} {keys} [message_unrecognized_key]",
                    "error",
                )
            )
        if "role" in message and role not in ROLES:
            shown = _quoted(role)
            found.append((f"message {i}: unrecognized role {shown} [unrecognized_role]", "error"))
        refusal = message.get("refusal") if role == "assistant" else None
        if refusal is not None and not isinstance(refusal, str):
            shown = json_kind(refusal)
            found.append((f"message {i}: refusal is {shown}, not a string [data_type]", "error"))
        if "content" in message:
            problems = _content_problems(i, role, message["content"], calls)
            found.extend((problem, "error") for problem in problems)
        if "weight" in message:
            # Only what the assistant says is trained on or not; OpenAI's format has no
            # weight on other messages.
            if role != "assistant":
                found.append(
                    (
                        f"message {i}: weight is only for assistant messages [invalid_weight]",
                        "error",
                    )
                )
            elif type(message["weight"]) is not int or message["weight"] not in (0, 1):
                # OpenAI's format says an integer: true is refused, though Python compares
                # it equal to 1. 1.0 (a float, as pandas writes it) may pass OpenAI's own
                # check or not (it documents none): a warning, so an upload is not blocked.
                weight = message["weight"]
                near = type(weight) is float and weight in (0, 1)
                found.append(
                    (
                        f"message {i}: weight is {_quoted(weight)}, must be the integer 0 or 1 "
                        "[invalid_weight]",
                        "warning" if near else "error",
                    )
                )
    if "assistant" not in roles:
        found.append(("no assistant message [example_missing_assistant_message]", "error"))
    elif all(
        _untrained(m) for m in messages if isinstance(m, dict) and m.get("role") == "assistant"
    ):
        # Billed, but no reply of it is learnt from; OpenAI documents no error for it.
        found.append(
            (
                "every assistant message has weight 0: nothing to train on [nothing_to_train]",
                "warning",
            )
        )
    if "system" not in roles:
        found.append(("no system message [missing_system]", "warning"))
    if "user" not in roles:
        found.append(("no user message [missing_user]", "warning"))
    return found


def _untrained(message: dict[str, Any]) -> bool:
    """Whether an assistant message is left out of training: weight 0 (or the 0.0 warned of)."""
    weight = message.get("weight")
    return type(weight) in (int, float) and weight == 0


def _example_key_problems(obj: dict[str, Any]) -> list[tuple[str, Severity]]:
    """Errors in a line's keys beside "messages": unknown ones, known ones of the wrong type."""
    found: list[tuple[str, Severity]] = []
    unknown = [k for k in obj if k != "messages" and k not in EXAMPLE_KEYS]
    if unknown:
        keys = ", ".join(_quoted(k) for k in unknown)
        plural = "s" if len(unknown) > 1 else ""
        allowed = ", ".join(f'"{k}"' for k in ("messages", *EXAMPLE_KEYS))
        found.append(
            (
                f"unrecognized key{plural} {keys} (a line holds {allowed}) [unrecognized_key]",
                # OpenAI documents no other keys, nor what it does with them: a warning.
                "warning",
            )
        )
    for key, (kind, wanted) in EXAMPLE_KEYS.items():
        value = obj.get(key)
        if value is not None and not isinstance(value, kind):
            found.append((f'"{key}" is {json_kind(value)}, not {wanted} [data_type]', "error"))
    return found


def is_validation_file(path: Path) -> bool:
    """Whether `path` is named as `dataset split` names a validation file."""
    return path.name.endswith(VALIDATION_SUFFIX)


def definitions(obj: dict[str, Any]) -> list[Any]:
    """A valid example's function definitions: its `tools`, then its `functions` (if any)."""
    return [d for key in ("tools", "functions") for d in obj.get(key) or ()]


def example_tokens(messages: list[dict[str, Any]], model: str) -> tuple[int, int]:
    """(tokens, images) of a valid example: content lists count their text, not images."""
    # Counted as plain messages, a list would be JSON text: its keys, and an image's URL
    # (a base64 data URL is thousands of tokens) that the model never reads as text.
    plain: list[dict[str, Any]] = []
    part_tokens = 0
    images = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": None}
            # The same reading of the parts as the retrieval backend's (images hold no text).
            part_tokens += sum(count_tokens(text, model) for text in content_texts(content) or ())
            images += sum(part["type"] == "image_url" for part in content)
        plain.append(message)
    return count_messages_tokens(plain, model) + part_tokens, images


def read_lines(path: Path, progress: bool = False) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line without its newline), streamed with a progress bar."""
    from tqdm import tqdm

    size = path.stat().st_size
    # Only worth a bar on big files; tqdm disables itself when stderr is not a terminal.
    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=path.name,
        file=sys.stderr,
        disable=None if progress and size > 20_000_000 else True,
    )
    with path.open("rb") as f, bar:
        for number, raw in enumerate(f, 1):
            bar.update(len(raw))
            yield number, raw.rstrip(b"\r\n")


def is_blank(raw: bytes) -> bool:
    """Whether a line holds only JSON whitespace: what `check` skips is what `split` skips."""
    # Not str.strip(): a line of U+00A0 or U+2028 is no JSON at all, and one rule for both
    # commands keeps a file that passes `check` from being refused by `split`.
    return not raw.strip(b" \t\r")


def open_checked(path: Path) -> None:
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder, not a JSONL file")


class _NotJsonNumber(ValueError):
    """NaN, Infinity or -Infinity in a line: Python's json reads them, RFC 8259 and OpenAI do not."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _refuse_constant(name: str) -> Any:
    raise _NotJsonNumber(name)


# A JSON string, escapes included: blanked out before looking for a constant outside them.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_CONSTANT = re.compile(r"-?Infinity|NaN")


def _column_of_constant(text: str) -> int:
    """The 1-based column of a line's first NaN or Infinity (the json module gives none)."""
    # The parser stops at the first one, so the first outside a string is the one it refused.
    match = _CONSTANT.search(_JSON_STRING.sub(lambda m: " " * len(m.group()), text))
    return match.start() + 1 if match else 1


def _ends_in_cr(text: str) -> bool:
    """Whether a line that is not JSON is examples joined by lone CRs (old Mac endings)."""
    # A "\r" inside a JSON line is whitespace: only a line that fails to parse, whose text
    # up to its first CR is JSON and which has more after it, is taken for CR endings.
    first, cr, rest = text.partition("\r")
    if not cr or not rest.strip(" \t\r"):
        return False
    try:
        json.loads(first)
    except (ValueError, RecursionError):
        return False
    return True


def parse_line(number: int, raw: bytes) -> tuple[Any, Problem | None]:
    """A line's JSON value, or the problem that stops it being one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if number == 1 and raw.startswith(UTF16_BOMS):
            return None, Problem(
                number, f"the file is UTF-16, not UTF-8: save it as UTF-8 without BOM [{UTF16}]"
            )
        return None, Problem(number, f"not valid UTF-8 (byte {exc.start + 1}) [invalid_utf8]")
    if number == 1 and text.startswith("\ufeff"):
        return None, Problem(
            number, "starts with a byte-order mark: save as UTF-8 without BOM [bom]"
        )
    if is_blank(raw):
        # Skipped by most JSONL readers, but strict ones reject it: worth removing.
        return None, Problem(number, "blank line, ignored (better removed) [blank_line]", "warning")
    try:
        return json.loads(text, parse_constant=_refuse_constant), None
    except _NotJsonNumber as exc:
        return None, Problem(
            number,
            f"invalid JSON: {exc.name} at column {_column_of_constant(text)} (JSON has no "
            "NaN or Infinity: write a number or null) [invalid_json]",
        )
    except json.JSONDecodeError as exc:
        if _ends_in_cr(text):
            return None, Problem(
                number, f"lines end in CR only: save with LF line endings [{CR_ONLY}]"
            )
        return None, Problem(
            number, f"invalid JSON: {exc.msg} at column {exc.colno} [invalid_json]"
        )
    except ValueError:  # valid JSON Python refuses: an integer over 4,300 digits
        return None, Problem(number, "invalid JSON: a number with too many digits [invalid_json]")
    except RecursionError:
        return None, Problem(number, "invalid JSON: nested too deeply [invalid_json]")


def check_file(
    path: Path,
    base_model: str = DEFAULT_BASE_MODEL,
    epochs: int | None = None,
    *,
    progress: bool = False,
    validation: bool | None = None,
) -> CheckReport:
    """Check every line of a chat JSONL and compute token, epoch and cost estimates.

    `validation`: the file is a validation file (None: when named like one, see
    is_validation_file), which OpenAI takes with fewer than MIN_EXAMPLES examples.
    """
    path = Path(path)
    by_name = validation is None
    if validation is None:
        validation = is_validation_file(path)
    open_checked(path)
    known_limit = context_limit(base_model)
    limit = known_limit or DEFAULT_CONTEXT_LIMIT
    findings = Findings()
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        # A warning, listed first: a local LoRA trains on it, but `finetune start --provider
        # openai` refuses it before uploading (OpenAI's files API would, after minutes).
        findings.add(
            Problem(
                0,
                f"{size / 2**20:,.0f} MB, and OpenAI takes files of up to "
                f"{MAX_UPLOAD_BYTES // 2**20} MB: train on fewer examples, or with --provider "
                "local [file_too_large]",
                "warning",
            )
        )
    token_counts: list[int] = []
    messages_per_example: list[int] = []
    examples = 0
    over = 0
    images = 0
    for number, raw in read_lines(path, progress):
        obj, problem = parse_line(number, raw)
        if problem is not None:
            findings.add(problem)
            if problem.kind == UTF16:
                # Every line after would be "invalid JSON" (UTF-16 text read as UTF-8): the
                # one line already says what to do, and the file holds no example to count.
                break
            if problem.kind == CR_ONLY:
                continue  # several examples in one "line": not one to count
            examples += problem.severity == "error"  # a blank line is no example
            continue
        examples += 1
        found = check_example(obj)
        for message, severity in found:
            findings.add(Problem(number, message, severity))
        if any(severity == "error" for _, severity in found):
            continue
        tokens, example_images = example_tokens(obj["messages"], base_model)
        # OpenAI bills an example's function definitions as part of its input.
        tokens += count_tools_tokens(definitions(obj), base_model)
        images += example_images
        token_counts.append(tokens)
        messages_per_example.append(len(obj["messages"]))
        if tokens > limit:
            over += 1
            findings.add(
                Problem(
                    number,
                    f"{tokens:,} tokens, over the {limit:,}-token limit: "
                    "truncated in training [over_token_limit]",
                    "warning",
                )
            )
    if findings.counts.get(("error", UTF16)) or findings.counts.get(("error", CR_ONLY)):
        pass  # no line was read, or not as lines: nothing to count
    elif examples == 0:
        findings.add(Problem(0, "no examples in the file [no_examples]"))
    elif examples < MIN_EXAMPLES and not validation:
        findings.add(
            Problem(
                0,
                f"only {plural(examples, 'example')}: OpenAI requires at least {MIN_EXAMPLES} "
                "[too_few_examples]",
                "warning",
            )
        )
    notes: list[str] = []
    if validation:
        # Said, so that a training file named like a validation file is not waved through
        # (nor shown as costing nothing).
        why = f" (its name ends {VALIDATION_SUFFIX})" if by_name else ""
        few = ""
        if 0 < examples < MIN_EXAMPLES:
            few = f": OpenAI's minimum of {MIN_EXAMPLES} examples is for the training file"
        notes.append(f"checked as a validation file{why}{few}")
    if known_limit is None:
        notes.append(
            f"no example limit known for {base_model}; assumed {DEFAULT_CONTEXT_LIMIT:,} tokens"
        )
    if images:
        # An image's tokens depend on its pixel size and detail, which only the image
        # itself says; fetching or decoding every image is not worth an estimate.
        notes.append(
            f"{plural(images, 'image')} not counted: an image's tokens depend on its size "
            "and detail; token counts, billed tokens and cost cover the text only"
        )
    n_epochs = epochs if epochs is not None else default_epochs(len(token_counts))
    billed = 0 if validation else sum(min(n, limit) for n in token_counts) * n_epochs
    price = price_per_million(base_model)
    if price is None and not validation:
        known = ", ".join(PRICES)
        notes.append(f"no training price for {base_model} (known: {known}); cost not estimated")
    return CheckReport(
        path=path,
        base_model=base_model,
        examples=examples,
        problems=findings.kept,
        problem_counts=findings.counts,
        token_counts=token_counts,
        messages_per_example=messages_per_example,
        over_limit=over,
        epochs=n_epochs,
        billed_tokens=billed,
        estimated_cost_usd=estimate_cost(billed, base_model),
        context_limit=limit,
        encoding=encoding_name_for(base_model),
        epochs_from_rule=epochs is None,
        price_per_million=price,
        notes=notes,
        validation=validation,
    )


def plot_tokens(report: CheckReport, path: Path) -> str:
    """Write the tokens-per-example histogram of a checked file; returns the line to print."""
    from phischer import plots

    if not report.token_counts:
        return (
            f"No token histogram: no example without errors to count (nothing written to {path})."
        )
    plots.token_histogram(
        report.token_counts,
        report.context_limit,
        path,
        f"{report.path.name}: tokens per example ({report.base_model}, {report.encoding})",
    )
    return f"Token histogram: {path}"
