"""Mutation fuzzing of `phischer import` and `phischer dataset check|split` on broken input.

The contract (README "Import troubleshooting", "Checking and splitting a dataset"): whatever
is wrong with an export or a dataset, the command exits 0 with a usable result, or exits 1
with exactly one line `Error: …` that says what is wrong and where; never another exit code,
never a traceback. Each example copies a valid fixture, breaks it the way hypothesis chooses
(a key deleted, a value of another type, huge numbers, NaN, deep nesting, bad UTF-8, a cut,
duplicate keys, a BOM, CR/CRLF, dates out of range, odd names, …), packs it as a folder, a
zip, a zip with an extra folder level, a cut zip or the single file, and runs the real CLI.

An import that succeeds must write a dataset `dataset check` passes and `dataset split` can
read. Set PHISCHER_FUZZ_HUNT=N to hunt with N random examples per test instead of the
quick deterministic run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from phischer.cli import cli
from phischer.importers.base import ImportErrorMessage
from phischer.importers.telegram import stream_chats

FIXTURES = Path(__file__).parent / "fixtures"
HUNT = int(os.environ.get("PHISCHER_FUZZ_HUNT", "0"))
FUZZ = settings(
    max_examples=HUNT or 60,
    derandomize=not HUNT,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # each example makes its own temp folder
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@dataclass(frozen=True)
class Source:
    """A valid fixture export: its format, folder, the right --me, and the files to break."""

    fmt: str
    root: Path
    me: str
    zip_name: str = "export.zip"

    @property
    def members(self) -> tuple[str, ...]:
        """The export's files, as paths relative to its root."""
        files = (p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return tuple(sorted(files))


WHATSAPP = FIXTURES / "whatsapp"
SOURCES = {
    "messenger": Source("messenger", FIXTURES / "messenger", "Zoë Martín"),
    "messenger_e2ee": Source("messenger", FIXTURES / "messenger_e2ee", "Zoë Martín"),
    "twitter": Source("twitter", FIXTURES / "twitter", "zoemartin"),
    "twitter_dms": Source("twitter", FIXTURES / "twitter_dms", "zoemartin"),
    "discord_json": Source("discord", FIXTURES / "discord" / "json", "River"),
    "discord_csv": Source("discord", FIXTURES / "discord" / "csv", "river.song"),
    "whatsapp_ios": Source("whatsapp", WHATSAPP / "ios_group", "ben okafor", "Book Club.zip"),
    "whatsapp_android": Source(
        "whatsapp", WHATSAPP / "android_us", "Jo Park", "WhatsApp Chat - Sam Rivera.zip"
    ),
    "telegram_single": Source("telegram", FIXTURES / "telegram" / "single", "Leo Hart"),
    "telegram_full": Source("telegram", FIXTURES / "telegram" / "full", "Leo Hart"),
}
# How the export is passed; "zip_cut" loses its end (the central directory), "zip_damaged"
# has bytes overwritten (a member's data or headers: bad CRC, bad deflate stream, …).
FORMS = ("folder", "folder", "zip", "zip", "zip_nested", "zip_cut", "zip_damaged", "file", "file")

# -- values -------------------------------------------------------------------------------------

# String values that stand for JSON Python cannot write: "\x00nest:5000" for arrays nested
# that deep, "\x00digits:5000" for an integer literal of that many digits.
NEST = "\x00nest:"
DIGITS = "\x00digits:"
Y10K_S = 253_402_300_800  # 10000-01-01 in seconds since the epoch
NUMBERS = [
    0,
    -1,
    1,
    2**31,
    2**53 + 1,
    2**63,
    2**64,
    10**20,
    10**400,
    -(10**30),
    Y10K_S,
    Y10K_S * 1000,
    -62_135_596_801,  # before 0001-01-01 (s)
    -62_135_596_801_000,  # (ms)
    1_707_555_600,  # seconds where ms are expected, and the reverse
    1_707_555_600_000,
    1.5,
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
]
STRINGS = [
    "",
    " ",
    "\n",
    "\r",
    "a\nb",
    "a\r\nb",
    "\u2028",
    "\x85",
    "\x00",
    "\ufeff",
    "\ud800",  # a lone surrogate: valid as a JSON escape, not encodable as UTF-8
    "\u202eevil\u202c",
    "Zoë Martín",
    "ZOË MARTÍN",
    "Ben Okafor",
    "Leo Hart",
    "river.song",
    "zoemartin",
    "🙂" * 50,
    "ש" * 30,
    "x" * 20_000,
    "0",
    "-1",
    "1e400",
    "9" * 5000,
    "NaN",
    "null",
    "user",
    "user123",
    "user" + "9" * 40,
    "channel1",
    "1707555600",
    "-62135596801",
    "253402300800",
    "9999-12-31T23:59:59",
    "10000-01-01T00:00:00",
    "0001-01-01T00:00:00",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2024-02-30T00:00:00",
    "2024-03-01T19:00:00.123+25:00",
    "2024-03-01",
    "Fri Mar 01 19:00:00 +0000 2024",
    "Mon Jan 01 00:00:00 -2359 0001",
    "Fri Dec 31 23:59:59 +2359 9999",
    "Direct Messages",
    "DirectTextChat",
    "GuildTextChat",
    "Default",
    "Reply",
    "message",
    "service",
    "Generic",
    "RegularGroup",
    "bot_chat",
    "saved_messages",
    "sticker",
    "placeholder",
    "media",
    "link",
    "text",
    "RT @someone hi",
    "@a @b",
    "#",
    "https://t.co/abc",
    "POLL:\nOPTION: a",
    "window.YTD.tweets.part0 = ",
]
KEYS = [
    "messages",
    "participants",
    "text",
    "content",
    "timestamp",
    "timestamp_ms",
    "sender_name",
    "senderName",
    "type",
    "author",
    "name",
    "id",
    "channel",
    "guild",
    "tweet",
    "full_text",
    "created_at",
    "entities",
    "date",
    "date_unixtime",
    "from",
    "from_id",
    "chats",
    "list",
    "role",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(NUMBERS),
    st.integers(),
    st.floats(),
    st.sampled_from(STRINGS),
    st.text(max_size=12),
    st.sampled_from([5, 100, 2_000, 100_000]).map(lambda d: f"{NEST}{d}"),
    st.sampled_from([20, 400, 4_300, 4_301, 10_000]).map(lambda n: f"{DIGITS}{n}"),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
# Text dropped into a line or over a field: the characters that carry structure.
snippets = st.one_of(
    st.sampled_from(STRINGS),
    st.sampled_from([str(n) for n in NUMBERS]),
    st.text(alphabet='0123456789/.-:,[]" \n\r\t\u200e\u202fAPMapm\\{}#é🙂', max_size=12),
    st.text(max_size=8),
)
# Parts of a line a text mutation may replace (the k-th match of one of these).
PATTERNS = {
    "number": r"\d+",
    "date": r"\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}",
    "time": r"\d{1,2}[:.]\d{2}(?:[:.]\d{2})?(?:\s?[AP]M)?",
    "quoted": r'"(?:[^"\\]|\\.)*"',
    "word": r"[^\W\d_]+",
    "punct": r'[,:\-\[\]{}"]',
}

# -- mutations ----------------------------------------------------------------------------------

Path_ = tuple[Any, ...]  # keys and indices from the document's root


@dataclass(frozen=True)
class Mutant:
    """A fixture broken by `edits` (on its parsed JSON) then `damage` (on its bytes)."""

    source: str
    member: str
    edits: tuple[tuple[Any, ...], ...] = ()
    damage: tuple[tuple[Any, ...], ...] = ()
    form: str = "folder"
    cut: int = 0  # zip_cut: keep this many bytes of the zip; zip_damaged: overwrite from here


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as (key, value) pairs: may hold a key twice."""


def _encode(value: Any, ascii_only: bool) -> str:
    if isinstance(value, _Pairs):
        inner = ", ".join(f"{_encode(k, ascii_only)}: {_encode(v, ascii_only)}" for k, v in value)
        return "{" + inner + "}"
    if isinstance(value, dict):
        return _encode(_Pairs(value.items()), ascii_only)
    if isinstance(value, list):
        return "[" + ", ".join(_encode(v, ascii_only) for v in value) + "]"
    if isinstance(value, str) and value.startswith(NEST):
        depth = int(value[len(NEST) :])
        return "[" * depth + "]" * depth
    if isinstance(value, str) and value.startswith(DIGITS):
        return "9" * int(value[len(DIGITS) :])
    return json.dumps(value, ensure_ascii=ascii_only)


def _paths(doc: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every path in a JSON document, root first."""
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += _paths(value, (*prefix, i))
    return found


def _parent(doc: Any, path: Path_) -> tuple[Any, Any] | None:
    """(container, key) of `path` in `doc`, or None when an earlier edit removed it."""
    node = doc
    for step in path[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    if not path or not isinstance(node, dict | list):
        return None
    key = path[-1]
    if isinstance(node, list) and not (isinstance(key, int) and key < len(node)):
        return None
    if isinstance(node, dict) and key not in node:
        return None
    return node, key


def _edit(doc: Any, op: tuple[Any, ...]) -> Any:
    kind, path = op[0], op[1]
    if not path:
        return op[2] if kind == "set" else doc
    found = _parent(doc, path)
    if found is None:
        return doc
    node, key = found
    if kind == "set":
        node[key] = op[2]
    elif kind == "del":
        del node[key]
    elif kind == "dup" and isinstance(node, dict):
        # The same key twice in one object: first the new value, then the old (or reverse).
        items = list(node.items())
        i = [k for k, _ in items].index(key)
        extra = (key, op[2])
        items[i : i + 1] = [extra, items[i]] if op[3] else [items[i], extra]
        pairs = _Pairs(items)
        holder = _parent(doc, path[:-1])
        if holder is None:
            return pairs
        holder[0][holder[1]] = pairs
    return doc


def _damage(data: bytes, op: tuple[Any, ...]) -> bytes:
    kind = op[0]
    if kind == "truncate":
        return data[: min(op[1], len(data))]
    if kind == "insert":
        pos = min(op[1], len(data))
        return data[:pos] + op[2] + data[pos:]
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    if kind == "crlf":
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if kind == "cr":
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r")
    if kind == "empty":
        return b""
    text = data.decode("utf-8", "surrogateescape")
    if kind == "sub":
        _, pattern, k, snippet = op
        matches = list(re.finditer(PATTERNS[pattern], text))
        if matches:
            m = matches[k % len(matches)]
            text = text[: m.start()] + snippet + text[m.end() :]
    else:
        lines = text.split("\n")
        i = op[1] % len(lines)
        if kind == "del_line":
            del lines[i]
        elif kind == "dup_line":
            lines.insert(i, lines[i])
        elif kind == "set_line":
            lines[i] = op[2]
        elif kind == "swap_lines":
            j = op[2] % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        text = "\n".join(lines)
    return _to_bytes(text)


# Lone surrogates: \udc80-\udcff stand for the undecodable bytes they came from
# (surrogateescape); any other is written as the 3 bytes UTF-8 forbids (surrogatepass).
_SURROGATE = re.compile("([\ud800-\udfff])")


def _to_bytes(text: str) -> bytes:
    parts = _SURROGATE.split(text)
    return b"".join(
        part.encode("utf-8", "surrogateescape" if "\udc80" <= part <= "\udcff" else "surrogatepass")
        if i % 2
        else part.encode("utf-8")
        for i, part in enumerate(parts)
    )


_JS_PREFIX = re.compile(rb"^\s*window\.[\w.]+\s*=\s*")


def mutate(data: bytes, member: str, edits: tuple[tuple[Any, ...], ...], ascii_only: bool) -> bytes:
    """The member's bytes after `edits` (parsed JSON; a .js keeps its `window.…=` prefix)."""
    if edits:
        prefix = b""
        body = data
        if member.endswith(".js"):
            m = _JS_PREFIX.match(data)
            prefix, body = (data[: m.end()], data[m.end() :]) if m else (b"", data)
        doc = json.loads(body)
        for op in edits:
            doc = _edit(doc, op)
        data = prefix + _encode(doc, ascii_only).encode("utf-8", "surrogatepass")
    return data


def _is_json(member: str) -> bool:
    return member.endswith((".json", ".js", ".jsonl"))


@st.composite
def damage_ops(draw: st.DrawFn, size: int) -> tuple[Any, ...]:
    """One byte or text level mutation of a file about `size` bytes long."""
    pos = st.integers(0, max(size, 1))
    kind = draw(
        st.sampled_from(
            ["truncate", "insert", "bom", "crlf", "cr", "empty", "sub", "sub", "sub"]
            + ["del_line", "dup_line", "set_line", "swap_lines"]
        )
    )
    if kind == "truncate":
        return (kind, draw(pos))
    if kind == "insert":
        junk = st.sampled_from(
            [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x82", b"\x00", b"NaN", b"-Infinity"]
            + [b",", b"]", b"}", b"{", b'"', b"\\", b"\n", b"\r", b"\xef\xbb\xbf"]
        )
        return (kind, draw(pos), draw(junk | st.binary(min_size=1, max_size=4)))
    if kind in ("bom", "crlf", "cr", "empty"):
        return (kind,)
    if kind == "sub":
        return (
            kind,
            draw(st.sampled_from(sorted(PATTERNS))),
            draw(st.integers(0, 200)),
            draw(snippets),
        )
    line = st.integers(0, 200)
    if kind == "set_line":
        return (kind, draw(line), draw(snippets))
    if kind == "swap_lines":
        return (kind, draw(line), draw(line))
    return (kind, draw(line))


@st.composite
def edit_ops(draw: st.DrawFn, doc: Any) -> tuple[Any, ...]:
    """One structural mutation of a parsed JSON document."""
    paths = _paths(doc)
    # Any node, the root included: most are the fields of messages, where exports go wrong.
    path = paths[draw(st.integers(0, len(paths) - 1))] if len(paths) > 1 else ()
    kind = draw(st.sampled_from(["set", "set", "set", "del", "dup"]))
    if kind == "del" or (kind == "dup" and not path):
        return ("del", path)
    if kind == "dup":
        return ("dup", path, draw(values), draw(st.booleans()))
    return ("set", path, draw(values))


@st.composite
def mutants(draw: st.DrawFn, sources: tuple[str, ...]) -> Mutant:
    """A fixture export with one member broken, in one of the forms it can be passed as."""
    name = draw(st.sampled_from(sources))
    source = SOURCES[name]
    member = draw(st.sampled_from(source.members))
    data = (source.root / member).read_bytes()
    edits: tuple[tuple[Any, ...], ...] = ()
    if _is_json(member) and draw(st.booleans()):
        body = _JS_PREFIX.sub(b"", data) if member.endswith(".js") else data
        doc = json.loads(body)
        edits = tuple(draw(st.lists(edit_ops(doc), min_size=1, max_size=3)))
    min_damage = 0 if edits else 1
    damage = tuple(draw(st.lists(damage_ops(len(data)), min_size=min_damage, max_size=2)))
    form = draw(st.sampled_from(FORMS))
    cut = draw(st.integers(0, 4000)) if form in ("zip_cut", "zip_damaged") else 0
    return Mutant(name, member, edits, damage, form, cut)


def build(mutant: Mutant, work: Path, ascii_only: bool = True) -> Path:
    """Write the mutated export under `work`; returns the PATH to pass to `phischer import`."""
    source = SOURCES[mutant.source]
    folder = work / "export"
    shutil.copytree(source.root, folder)
    target = folder / mutant.member
    data = mutate(target.read_bytes(), mutant.member, mutant.edits, ascii_only)
    for op in mutant.damage:
        data = _damage(data, op)
    target.write_bytes(data)
    if mutant.form == "folder":
        return folder
    if mutant.form == "file":
        return target
    archive = work / source.zip_name
    prefix = "extra/" if mutant.form == "zip_nested" else ""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in source.members:
            zf.write(folder / name, prefix + name)
    data = archive.read_bytes()
    if mutant.form == "zip_cut":
        archive.write_bytes(data[: mutant.cut])
    elif mutant.form == "zip_damaged":
        at = mutant.cut % len(data)
        archive.write_bytes(data[:at] + b"\x00\xff" * 4 + data[at + 8 :])
    return archive


# -- the contract -------------------------------------------------------------------------------

# Errors about the whole run rather than one place in the export.
WHOLE_RUN = re.compile(
    r"Error: (?:--me .* matches no sender; most frequent senders: .*"
    r"|--me .*: the export has no text messages at all"
    r"|No examples: .* never replied to anyone within --gap-hours .*)"
)


def output_lines(result: Result) -> list[str]:
    """The printed lines, split at "\\n"; a "\\r", "\\v" or "\\f" in one would also break it."""
    assert result.output.endswith("\n"), result.output
    lines = result.output[:-1].split("\n")
    assert not any(set(line) & set("\r\v\f") for line in lines), result.output
    return lines


def assert_one_line_error(result: Result, where: str, whole_run: re.Pattern[str] | None) -> None:
    """Exit 1 with exactly one `Error: …` line that names `where` (or is a whole-run error)."""
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = output_lines(result)
    assert len(lines) == 1, result.output
    line = lines[0]
    assert line.startswith("Error: "), line
    assert where in line or (whole_run is not None and whole_run.fullmatch(line)), line


def assert_contract(result: Result, where: str) -> bool:
    """The import exited 0 (True) or with one located `Error:` line (False); nothing else."""
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 1), (result.exit_code, result.output, result.exception)
    if result.exit_code == 0:
        assert result.exception is None, repr(result.exception)
        return True
    assert_one_line_error(result, where, WHOLE_RUN)
    return False


def assert_usable_dataset(out: Path, runner: CliRunner) -> None:
    """What a successful import wrote passes `dataset check`, and `dataset split` reads it."""
    checked = runner.invoke(cli, ["dataset", "check", str(out)])
    assert checked.exit_code == 0, checked.output
    assert checked.exception is None, repr(checked.exception)
    split = runner.invoke(cli, ["dataset", "split", str(out), "-o", str(out.parent / "split")])
    if split.exit_code != 0:
        # A small import may well hold a single conversation: that is the one refusal allowed.
        assert_one_line_error(split, str(out), None)
        assert "from one conversation; a split by conversation needs" in split.output, split.output


def check_import(mutant: Mutant, ascii_only: bool = True) -> None:
    """Run `phischer import` on the mutated export and hold it to the contract."""
    source = SOURCES[mutant.source]
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = build(mutant, work, ascii_only)
        out = work / "out" / "me.jsonl"
        args = ["import", source.fmt, str(path), "--me", source.me, "-o", str(out)]
        result = runner.invoke(cli, args, catch_exceptions=True)
        # An error names the export (the zip, or a file in the folder), never the output.
        where = str(path if mutant.form.startswith("zip") else work / "export")
        if assert_contract(result, where):
            assert_usable_dataset(out, runner)
        else:
            assert not out.exists(), "a failed import left its output behind"


# -- the import properties ----------------------------------------------------------------------

LEGACY = "your_facebook_activity/messages/inbox/samrivera_1001/message_1.json"  # [1]: a text
HIKING = "your_facebook_activity/messages/inbox/hikingcrew_2002/message_1.json"
E2EE = "Sam Rivera_40.json"
GENERAL = "Fictional Guild - Text Channels - general [222000000000000001].json"  # [1]: a text
DEEP = f"{NEST}100000"
MANY_DIGITS = f"{DIGITS}5000"


def _fuzz_import(*sources: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    # Broken exports of these sources, their JSON written with or without \u escapes.
    return given(mutant=mutants(sources), ascii_only=st.booleans())


# Failures the fuzzer found, kept as fixed examples (each was a traceback, or an error line
# that did not say where, or an import whose output `dataset split` then refused).
# JSON nested 100,000 deep (RecursionError); an integer of 5,000 digits ("Error: Exceeds the
# limit (4300 digits)…"); a sender name, participants or title of the wrong type (TypeError,
# AttributeError); a timestamp past year 9999 or NaN ("Error: year 10000 is out of range";
# ms past time_t blamed the output file: "Value too large for defined data type: OUT.jsonl").
@FUZZ
@_fuzz_import("messenger", "messenger_e2ee")
@example(Mutant("messenger", LEGACY, (("set", ("messages",), DEEP),)), True)
@example(
    Mutant("messenger", LEGACY, (("set", ("messages", 1, "timestamp_ms"), MANY_DIGITS),)), True
)
@example(Mutant("messenger", LEGACY, (("set", ("messages", 1, "sender_name"), []),)), True)
@example(Mutant("messenger", HIKING, (("set", ("participants",), True),), form="zip"), True)
@example(
    Mutant("messenger", LEGACY, (("set", ("messages", 1, "timestamp_ms"), Y10K_S * 1000),)), True
)
@example(Mutant("messenger", LEGACY, (("set", ("messages", 1, "timestamp_ms"), 10**20),)), True)
@example(Mutant("messenger_e2ee", E2EE, (("set", ("messages", 0, "senderName"), 7),)), True)
@example(Mutant("messenger_e2ee", E2EE, (("set", ("participants",), 7),)), True)
@example(
    Mutant("messenger_e2ee", E2EE, (("set", ("messages", 0, "timestamp"), float("nan")),)), True
)
def test_messenger_import_contract(mutant: Mutant, ascii_only: bool) -> None:
    """A broken Messenger export: exit 0 with a usable dataset, or one located error line."""
    check_import(mutant, ascii_only)


# Found: account.js without an account object, or with a non-string accountId (a crash in the
# builder); a post whose text or reply id is not a string; a created_at whose offset moves
# year 1 before the calendar (OverflowError); a post id with "\x1e" (the .conversations
# file then had more lines than the dataset for `dataset split`).
@FUZZ
@_fuzz_import("twitter", "twitter_dms")
@example(Mutant("twitter", "data/account.js", (("set", (0, "account"), None),)), True)
@example(Mutant("twitter", "data/account.js", (("set", (0, "account", "accountId"), {}),)), True)
@example(Mutant("twitter", "data/tweets.js", (("set", (0, "tweet", "full_text"), 5),)), True)
@example(
    Mutant(
        "twitter",
        "data/tweets-part1.js",
        (("set", (1, "tweet", "in_reply_to_status_id_str"), ["103"]),),
    ),
    True,
)
@example(
    Mutant(
        "twitter",
        "data/tweets.js",
        (("set", (0, "tweet", "created_at"), "Mon Jan 01 00:00:00 +2359 0001"),),
    ),
    True,
)
@example(Mutant("twitter", "data/tweets.js", (("set", (0, "tweet", "id_str"), "a\x1eb"),)), True)
def test_twitter_import_contract(mutant: Mutant, ascii_only: bool) -> None:
    """A broken X/Twitter archive: exit 0 with a usable dataset, or one located error line."""
    check_import(mutant, ascii_only)


# Found: an author name that is a list (a crash in the builder); a channel type of null;
# timestamps whose offset moves year 1 before the calendar, in JSON and in CSV.
@FUZZ
@_fuzz_import("discord_json", "discord_csv")
@example(
    Mutant("discord_json", GENERAL, (("set", ("messages", 1, "author", "name"), ["r"]),)), True
)
@example(Mutant("discord_json", GENERAL, (("set", ("channel", "type"), None),)), True)
@example(
    Mutant(
        "discord_json",
        GENERAL,
        (("set", ("messages", 1, "timestamp"), "0001-01-01T00:00:00+01:00"),),
    ),
    True,
)
@example(
    Mutant(
        "discord_csv", "raid-night.csv", (), (("sub", "quoted", 2, '"0001-01-01T00:00:00+01:00"'),)
    ),
    True,
)
def test_discord_import_contract(mutant: Mutant, ascii_only: bool) -> None:
    """A broken Discord export: exit 0 with a usable dataset, or one located error line."""
    check_import(mutant, ascii_only)


# Found: a chat with old-Mac "\r" line ends is one long line, and the "--me matches no
# sender" error listed that line as a sender name, line breaks and all.
@FUZZ
@_fuzz_import("whatsapp_ios", "whatsapp_android")
@example(Mutant("whatsapp_android", "WhatsApp Chat with Sam Rivera.txt", (), (("cr",),)), True)
def test_whatsapp_import_contract(mutant: Mutant, ascii_only: bool) -> None:
    """A broken WhatsApp chat: exit 0 with a usable dataset, or one located error line."""
    check_import(mutant, ascii_only)


# Found: deep nesting and 5,000-digit numbers (as for Messenger); "from" a list, a chat type
# a list, date_unixtime past any date, a full export's chat whose "messages" is a number, a
# `date` with an offset (aware and naive datetimes then failed to sort); a zip whose deflate
# data is damaged (zlib.error, for every format); a "\ud800" escape without its pair ("Error:
# 'utf-8' codec can't encode…"); a chat id with "\r" (`dataset split` refused the output).
@FUZZ
@_fuzz_import("telegram_single", "telegram_full")
@example(Mutant("telegram_single", "result.json", (("set", ("messages",), DEEP),)), True)
@example(Mutant("telegram_single", "result.json", (("set", ("id",), MANY_DIGITS),)), True)
@example(Mutant("telegram_single", "result.json", (("set", ("messages", 1, "from"), ["P"]),)), True)
@example(Mutant("telegram_single", "result.json", (("set", ("type",), []),)), True)
@example(
    Mutant("telegram_single", "result.json", (("set", ("messages", 1, "date_unixtime"), 10**20),)),
    True,
)
@example(
    Mutant("telegram_full", "result.json", (("set", ("chats", "list", 0, "messages"), 5),)), True
)
@example(
    Mutant(
        "telegram_single",
        "result.json",
        (
            ("del", ("messages", 1, "date_unixtime")),
            ("set", ("messages", 1, "date"), "2024-02-10T10:05:00+05:00"),
        ),
    ),
    True,
)
@example(Mutant("telegram_single", "result.json", form="zip_damaged", cut=300), True)
@example(
    Mutant("telegram_single", "result.json", (("set", ("messages", 1, "text"), "a\ud800"),)), True
)
@example(Mutant("telegram_single", "result.json", (("set", ("id",), "a\rb"),)), True)
def test_telegram_import_contract(mutant: Mutant, ascii_only: bool) -> None:
    """A broken Telegram export: exit 0 with a usable dataset, or one located error line."""
    check_import(mutant, ascii_only)


def _stream(data: bytes, chunk: int) -> tuple[str, Any]:
    """("ok", chats) or ("error", message) from reading `data` in chunks of `chunk` bytes."""
    try:
        return "ok", list(stream_chats(io.BytesIO(data), "result.json", chunk))
    except ImportErrorMessage as exc:
        return "error", str(exc)


@FUZZ
@given(mutant=mutants(("telegram_single", "telegram_full")), chunk=st.integers(1, 64))
# Found: a top-level number cut by a chunk boundary right after its "." ("0." + "5") was read
# as 0, and the valid file was refused as invalid JSON.
@example(Mutant("telegram_full", "result.json", (("set", ("about",), 0.5),)), 1)
def test_telegram_stream_reads_the_same_in_any_chunks(mutant: Mutant, chunk: int) -> None:
    """Reading result.json in tiny chunks gives the chats, or refuses it, as reading it whole."""
    source = SOURCES[mutant.source]
    data = mutate((source.root / mutant.member).read_bytes(), mutant.member, mutant.edits, True)
    for op in mutant.damage:
        data = _damage(data, op)
    whole, chunked = _stream(data, 1 << 20), _stream(data, chunk)
    # Which error is met first may differ (a bad byte is seen when its chunk is decoded).
    assert chunked[0] == whole[0], (whole, chunked)
    if whole[0] == "ok":
        assert chunked == whole


# -- datasets -----------------------------------------------------------------------------------

DATASETS = FIXTURES / "datasets"
DATASET_FILES = ("convs.jsonl", "windows.jsonl", "stats.jsonl", "errors.jsonl")


@dataclass(frozen=True)
class BrokenDataset:
    """A fixture dataset with one line edited, its bytes damaged, and its sidecar damaged."""

    name: str
    line: int = 0
    edits: tuple[tuple[Any, ...], ...] = ()
    damage: tuple[tuple[Any, ...], ...] = ()
    sidecar: tuple[tuple[Any, ...], ...] = ()


@st.composite
def broken_datasets(draw: st.DrawFn) -> BrokenDataset:
    """A dataset fixture broken in its lines, its bytes and/or its .conversations file."""
    name = draw(st.sampled_from(DATASET_FILES))
    lines = (DATASETS / name).read_bytes().split(b"\n")
    line = draw(st.integers(0, len(lines) - 2))
    edits: tuple[tuple[Any, ...], ...] = ()
    try:
        doc = json.loads(lines[line])
    except ValueError:  # errors.jsonl has lines that are not JSON: only its bytes are broken
        doc = None
    if doc is not None and draw(st.booleans()):
        edits = tuple(draw(st.lists(edit_ops(doc), min_size=1, max_size=3)))
    size = len((DATASETS / name).read_bytes())
    damage = tuple(draw(st.lists(damage_ops(size), max_size=2)))
    sidecar: tuple[tuple[Any, ...], ...] = ()
    if (DATASETS / f"{name}.conversations").exists():
        sidecar = tuple(draw(st.lists(damage_ops(30), max_size=2)))
    return BrokenDataset(name, line, edits, damage, sidecar)


def build_dataset(broken: BrokenDataset, work: Path) -> Path:
    """Write the broken dataset (and its sidecar, if the fixture has one) under `work`."""
    lines = (DATASETS / broken.name).read_bytes().split(b"\n")
    if broken.edits:
        doc = json.loads(lines[broken.line])
        for op in broken.edits:
            doc = _edit(doc, op)
        lines[broken.line] = _encode(doc, True).encode("utf-8")
    data = b"\n".join(lines)
    for op in broken.damage:
        data = _damage(data, op)
    path = work / broken.name
    path.write_bytes(data)
    side = DATASETS / f"{broken.name}.conversations"
    if side.exists():
        ids = side.read_bytes()
        for op in broken.sidecar:
            ids = _damage(ids, op)
        (work / side.name).write_bytes(ids)
    return path


CHECK_LINE = re.compile(
    r".+: [\d,]+ examples?, base model .+|(?:Errors|Warnings) \([\d,]+\):"
    r"|  (?:line [\d,]+|file): .+ \[\w+\]|  … and [\d,]+ more \(in all: .+\)"
    r"|Statistics below .+|Messages per example: .+|Tokens per example: .+|Over the .+"
    r"|Epochs: .+|Billed tokens: .+|Estimated training cost: .+|Note: .+"
    r"|FAILED: .+|OK: .+"
)


def check_dataset(broken: BrokenDataset) -> None:
    """`dataset check` reports (exit 0, or 1 on errors) and `split` splits or says why in one line."""
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_dataset(broken, Path(tmp))
        checked = runner.invoke(cli, ["dataset", "check", str(path)], catch_exceptions=True)
        assert "Traceback" not in checked.output, checked.output
        assert checked.exit_code in (0, 1), (checked.exit_code, checked.output, checked.exception)
        assert checked.exception is None or isinstance(checked.exception, SystemExit), repr(
            checked.exception
        )
        lines = output_lines(checked)
        if lines and lines[0].startswith("Error: "):
            assert_one_line_error(checked, str(path), None)
        else:
            # A report: one line per problem, then the verdict, which matches the exit code.
            bad = [line for line in lines if not CHECK_LINE.fullmatch(line)]
            assert not bad, checked.output
            assert lines[-1].startswith("FAILED: " if checked.exit_code else "OK: "), lines[-1]
        split = runner.invoke(
            cli,
            ["dataset", "split", str(path), "-o", str(Path(tmp) / "out")],
            catch_exceptions=True,
        )
        assert "Traceback" not in split.output, split.output
        assert split.exit_code in (0, 1), (split.exit_code, split.output, split.exception)
        if split.exit_code == 0:
            assert split.exception is None, repr(split.exception)
            assert split.output.startswith("Split by "), split.output
        else:
            assert_one_line_error(split, str(path), None)


@FUZZ
@given(broken=broken_datasets())
# Found: an unknown key holding "\r" printed raw, which broke its problem line in two; a
# role "\ud800" (a lone surrogate) crashed printing the report; content "\ud800" stopped the
# check at token counting with "Error: 'utf-8' codec can't encode…" and no line number; a
# .conversations file that is not UTF-8 gave "Error: 'utf-8' codec can't decode…" for split.
@example(BrokenDataset("convs.jsonl", 0, (("set", ("messages", 1), {"role": "user", "a\rb": 1}),)))
@example(BrokenDataset("convs.jsonl", 0, (("set", ("messages", 1, "role"), "\ud800"),)))
@example(BrokenDataset("convs.jsonl", 0, (("set", ("messages", 1, "content"), "\ud800"),)))
@example(BrokenDataset("convs.jsonl", sidecar=(("insert", 0, b"\xff"),)))
def test_dataset_check_and_split_contract(broken: BrokenDataset) -> None:
    """A broken dataset: check reports by line (exit 0/1), split splits or errs in one line."""
    check_dataset(broken)
