"""Conversations -> OpenAI chat fine-tuning examples (DESIGN §7), and writing them as JSONL.

Shape of every example: a system prompt, then strictly alternating user/assistant turns
that start with a user turn and end with an assistant turn (the person being cloned is the
assistant). The webhook builds its thread the same way, so the model is served exactly the
shape it was trained on.

Decisions where the contract is silent:
- Sessions: a silence longer than `gap_hours` starts a new conversation. Sessions, not
  threads, are the unit written to the `.conversations` sidecar (`<thread id>#<n>`), so
  `dataset split` can split a single long chat (one WhatsApp export) by conversation. A
  conversation marked `one_session` (an X self-thread: posts added days apart still answer
  the one topic prompt) is never split.
- Turns: consecutive messages by one sender merge with "\\n". In a group chat, consecutive
  messages by *different* other people also form one user turn, each speaker's run
  prefixed `Name: `; keeping user and assistant strictly alternating is what the serving
  thread does too.
- Windows: non-overlapping chunks of at most `max_turns` turns (an even number: user turns
  pair with the reply after them). OpenAI trains on every assistant turn of an example, so
  sliding windows would train the same reply several times and multiply the cost; chunks
  train each reply once. A chunk never crosses a session boundary. The webhook's thread is
  instead the last HISTORY_TURNS turns before each reply, so with HISTORY_TURNS = max_turns
  every example's context is the end of a thread served for that reply (and never longer).
- Your messages that open a session before anyone else wrote (nothing to answer) are not
  in any example: an example must start with a user turn, as every served reply does. They
  are counted as `openers` in the stats.
- Length: OpenAI cuts an example over its token limit (MAX_EXAMPLE_TOKENS) from the end,
  which loses the replies there while still billing the limit every epoch. So an example
  over it loses its oldest user/assistant pairs until it fits (it still starts with a user
  turn and ends with a reply, and is the end of a served thread); one whose last message
  and reply alone are over is left out (`too_long`).
- Duplicates: the same session id, place and turns, whitespace at the ends of the texts
  and of their lines aside (see `_dedupe_key`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import compress, count, groupby, islice
from operator import attrgetter, itemgetter, le, sub
from pathlib import Path
from typing import TextIO

from phischer.atomic import atomic_files
from phischer.base_models import DEFAULT_CONTEXT_LIMIT
from phischer.dataset_split import sidecar_path
from phischer.importers.base import Conversation, ImportErrorMessage, Message, name_key
from phischer.surrogates import replace_lone_surrogates
from phischer.thread import ends_session, join_texts
from phischer.tokens import REPLY_PRIMING, TOKENS_PER_MESSAGE, count_message_tokens

# The longest example OpenAI trains on whole: 65,536 tokens for every current fine-tunable
# model (base_models.CONTEXT_LIMITS), counted with o200k_base as `dataset check` counts.
MAX_EXAMPLE_TOKENS = DEFAULT_CONTEXT_LIMIT
# A token is at least one UTF-8 byte and a character at most four, so an example under a
# quarter of the limit in characters fits without being tokenised (nearly every one). Not
# one token per character: a rare character such as U+13000 is four tokens.
_MAX_TOKENS_PER_CHAR = 4

# Why a thread with no text message left (all media, all service notices, …) is skipped.
NO_TEXT = "no text"

DEFAULT_SYSTEM = (
    "You are {me}. Reply to text messages the way {me} would: same voice, same length, same habits."
)

# The default when the export has no real name for the person (see `names_a_person`).
NEUTRAL_SYSTEM = (
    "Reply to text messages the way this person would: same voice, same length, same habits."
)
# Words an export (or a user following the README's `--me me`) uses instead of a name.
_STAND_INS = frozenset({"", "me", "i", "myself", "you", "yourself"})
_ID_LIKE = re.compile(r"[@+]?[\d\s().-]+")  # a numeric id or a phone number
_PLACEHOLDERS = re.compile(r"(?:<(?:email|phone|url)>\s*)+")  # a name --mask-pii masked whole


@dataclass
class Example:
    """One training example: the conversation (session) it came from and its chat messages."""

    conversation_id: str
    messages: list[dict[str, str]]


@dataclass
class BuildStats:
    """What the builder saw: filled in while `build_examples` is iterated."""

    threads: int = 0  # with at least one text message kept (the rest are in `skipped`)
    # Threads left out whole, by reason: the importer's ("bot chat") or NO_TEXT.
    skipped: Counter[str] = field(default_factory=Counter)
    messages: int = 0  # kept by the importer
    dropped: Counter[str] = field(default_factory=Counter)
    senders: Counter[str] = field(default_factory=Counter)
    me_messages: int = 0
    me_name: str | None = None  # the sender name --me matched first (named in the prompt)
    system: str | None = None  # the system prompt written into every example
    sessions: int = 0
    openers: int = 0  # your messages with nothing before them to answer
    examples: int = 0
    repaired: int = 0  # examples written with U+FFFD for half an emoji (see write_jsonl)
    duplicates: int = 0  # examples left out because the same one was already written
    shortened: int = 0  # examples written without their oldest turns, to fit the token limit
    too_long: int = 0  # examples left out: their last message and reply alone are over it


def system_prompt(me: str, system: str | None = None) -> str:
    """The system prompt for a dataset (and the persona serving it); `{me}` is filled in."""
    if system:
        return system.replace("{me}", me)
    return DEFAULT_SYSTEM.replace("{me}", me) if names_a_person(me) else NEUTRAL_SYSTEM


def names_a_person(name: str) -> bool:
    """False for a stand-in ("me"), an id or phone number, or a masked placeholder."""
    # The default prompt names the person as the export does; "You are me." or "You are
    # 4242." says nothing, so those get NEUTRAL_SYSTEM (an X archive without account.js
    # names its owner "me"; a WhatsApp contact never saved is its phone number).
    word = name_key(name)
    return not (word in _STAND_INS or _ID_LIKE.fullmatch(word) or _PLACEHOLDERS.fullmatch(word))


def match_me(message: Message, me: str) -> bool:
    """True when `me` names this message's sender: name, alias or sender id (case-insensitive)."""
    want = name_key(me)
    if name_key(message.sender) == want or (
        message.sender_id and name_key(message.sender_id) == want
    ):
        return True
    return any(name_key(a) == want for a in message.aliases)


class _MeMatcher:
    # Matching is per sender, not per message: decide once per distinct sender identity.
    def __init__(self, me: str) -> None:
        self.me = me
        self._cache: dict[object, bool] = {}

    def flags(self, messages: list[Message], senders: list[str]) -> list[bool]:
        cache = self._cache
        # An empty sender_id matches nothing (see match_me), so truthiness is enough here.
        if any(map(_by_sender_id, messages)) or any(map(_by_aliases, messages)):
            keys: list = [(m.sender, m.sender_id, m.aliases) for m in messages]
        else:  # names only (Messenger, WhatsApp): skip building a tuple per message
            keys = senders
        for key in set(keys).difference(cache):
            name, sid, aliases = key if isinstance(key, tuple) else (key, None, ())
            cache[key] = match_me(Message(name, "", _NO_TIME, sid, aliases), self.me)
        return list(map(cache.__getitem__, keys))


_NO_TIME = dt.datetime.min
_by_time = attrgetter("timestamp")
_role = itemgetter("role")
_content = itemgetter("content")
_by_sender = attrgetter("sender")
_by_text = attrgetter("text")
_by_sender_id = attrgetter("sender_id")
_by_aliases = attrgetter("aliases")


def _is_sorted(values: list[dt.datetime]) -> bool:
    return all(map(le, values, islice(values, 1, None)))


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
# A URL ends before the punctuation of the sentence around it ("see x.com/a." keeps its ".").
_URL_TAIL = r"(?:[^\s<>\"]*[^\s<>\".,;:!?)\]}'’])?"
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"]" + _URL_TAIL, re.I)
# Without a scheme: a host with a path (example.com/x, bit.ly/3xYz). A bare "node.js" or
# "example.com" stays: too many words and file names look like one.
_BARE_URL = re.compile(
    r"(?<![\w@./-])(?:[a-z\d](?:[a-z\d-]*[a-z\d])?\.)+[a-z]{2,24}/" + _URL_TAIL, re.I
)
# 7-15 digits, optionally with +country code and the usual separators, and an extension
# ("ext. 42", "x123"); digits glued to letters, dots or "#" (order ids, v10.0.19041, #1234567)
# or hyphenated into a longer run (112-4567890-1234567) are left alone. A candidate is then
# checked by `_phone`: dates, times, years, amounts, IP addresses and ISBNs are numbers too.
_PHONE = re.compile(
    r"(?<![\w+(.#])(?<!\d-)(?P<number>[+(]?\d(?:[\s().-]{0,2}\d){6,14})"
    r"(?:\s?(?i:ext\.?|extension|x)\s?\d{1,6})?(?![\w]|[.,-]\d)"
)
# A number named as something else just before it: "order 1234567", "Order ID: 112-…". Not
# "ID" or "case" alone: "caller ID 0612345678", "in case: 0612345678" are phone numbers.
_NAMED_NUMBER = re.compile(
    r"\b(?:order|invoice|ref|reference|ticket|tracking|confirmation|booking|receipt"
    r"|transaction|version|build|serial)\b\W{0,3}(?:(?:no|nr|number|num|id|code)\b\W{0,3})?$",
    re.I,
)
# A date is three groups, not part of a longer dotted run (06.12.34.56.78 is a French number).
_DATE = re.compile(
    r"(?<![\d./-])(?:\d{4}([-./])\d{1,2}\1\d{1,2}|\d{1,2}([-./])\d{1,2}\2\d{2,4})"
    r"(?![./-]?\d)"
)
# 10.30-11.45, 9:00 - 17:30: a range of times
_TIME_RANGE = re.compile(r"\d{1,2}[.:]\d{2}\s?[-–]\s?\d{1,2}[.:]\d{2}")
_COMPACT_DATE = re.compile(r"(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])")
_YEAR = re.compile(r"(?:1[89]|20)\d\d")
_IP = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)")
_THOUSANDS = re.compile(r"\d{1,3}(?:[ .,]\d{3})+")
_CURRENCY_BEFORE = re.compile(r"[$€£¥]\s?$")
_CURRENCY_AFTER = re.compile(
    r"^\s?(?:[$€£¥]|k\b|(?:euros?|dollars?|pounds?|yen|usd|eur|gbp|chf|sek|nok|dkk)\b)", re.I
)


def _phone(m: re.Match[str]) -> str:
    return m.group(0) if _not_a_phone(m) else "<PHONE>"


def _not_a_phone(m: re.Match[str]) -> bool:
    """Whether a phone-shaped run of digits is some other number people write."""
    text = m.group("number")
    before = m.string[max(0, m.start() - 40) : m.start()]
    if _NAMED_NUMBER.search(before):
        return True
    if _DATE.search(text) or _TIME_RANGE.fullmatch(text) or _IP.fullmatch(text):
        return True  # "2024-01-02 10" of "2024-01-02 10:30", "10.30-11.45", 192.168.1.100
    groups = re.findall(r"\d+", text)
    if len(groups) == 1 and _COMPACT_DATE.fullmatch(text):
        return True  # 20240102
    if len(groups) > 1 and all(_YEAR.fullmatch(g) for g in groups):
        return True  # "2024 2025 2026"
    if text.replace("-", "").startswith(("978", "979")) and len(re.sub(r"\D", "", text)) == 13:
        return True  # an ISBN
    if _THOUSANDS.fullmatch(text):
        # 1 000 000 is an amount, 612 345 678 a Spanish mobile: a currency says which.
        after = m.string[m.end("number") :]
        return bool(_CURRENCY_BEFORE.search(before) or _CURRENCY_AFTER.match(after))
    return False


def mask_pii(text: str) -> str:
    """Replace emails, URLs and phone numbers with <EMAIL>, <URL>, <PHONE>."""
    if "@" in text:
        text = _EMAIL.sub("<EMAIL>", text)
    if "://" in text or "www" in text.lower():  # URLs are matched in any case (WWW.Example.com)
        text = _URL.sub("<URL>", text)
    if "/" in text:
        text = _BARE_URL.sub("<URL>", text)
    return _PHONE.sub(_phone, text)


def _masked(text: str, mask: bool) -> str:
    # One place for "masked if asked": build_examples' flag is named like the function.
    return mask_pii(text) if mask else text


def _turns(
    messages: list[Message], mine: list[bool], is_group: bool, mask: bool
) -> tuple[list[dict[str, str]], int]:
    # One session -> alternating turns starting with "user"; returns (turns, openers).
    turns: list[dict[str, str]] = []
    parts: list[str] = []
    role = ""
    speaker = None
    openers = 0
    i = 0
    # Your messages before anyone else's have nothing to answer (see the module docstring).
    while i < len(messages) and mine[i]:
        openers += 1
        i += 1
    if not is_group and not mask:
        # Fast path for 1:1 chats (most of a big export): runs of one role joined in C.
        texts = list(map(_by_text, islice(messages, i, None)))
        for me, run in groupby(zip(mine[i:], texts, strict=True), key=itemgetter(0)):
            turns.append(_turn("assistant" if me else "user", map(itemgetter(1), run)))
        return turns, openers
    for m, me in zip(messages[i:], mine[i:], strict=True):
        text = _masked(m.text, mask)
        r = "assistant" if me else "user"
        if r != role:
            if parts:
                turns.append(_turn(role, parts))
            parts = []
            role = r
            speaker = None
        if is_group and not me and m.sender != speaker:
            # A WhatsApp contact that was never saved is named by its phone number.
            text = f"{_masked(m.sender, mask)}: {text}"
            speaker = m.sender
        parts.append(text)
    if parts:
        turns.append(_turn(role, parts))
    return turns, openers


def _turn(role: str, texts: Iterable[str]) -> dict[str, str]:
    """One turn of texts sent in a row, its line breaks all written "\\n"."""
    content = join_texts(texts)
    # A message written on Windows breaks its lines with "\r\n" in every format that keeps
    # them as typed (a quoted DiscordChatExporter CSV cell, a JSON string of Telegram,
    # Messenger or X), old Macs with "\r"; the rest of the dataset uses "\n" (texts in a
    # row are joined with it), and a clone should not learn two ways to break a line.
    # Checked per turn, not per message: most turns have none. One place for every format.
    if "\r" in content:
        content = content.replace("\r\n", "\n").replace("\r", "\n")
    return {"role": role, "content": content}


def _ends_session(gap_hours: float) -> Callable[[dt.timedelta], bool]:
    # NaN fails the comparison too; a gap too big for a timedelta (inf, 1e300) never splits,
    # the serving side's rule (ends_session), which unlike this option also allows 0.
    if not gap_hours > 0:
        raise ImportErrorMessage(f"--gap-hours must be more than 0, got {gap_hours:g}")
    return ends_session(gap_hours)


def _session_bounds(
    times: list[dt.datetime], ends: Callable[[dt.timedelta], bool]
) -> list[tuple[int, int]]:
    # (start, end) of each session: a new one wherever ends(times[i] - times[i - 1]). Built
    # from C-level maps, not a Python loop: this looks at every message of the export.
    if not times:
        return []
    cuts = list(compress(count(1), map(ends, map(sub, islice(times, 1, None), times))))
    return list(zip([0, *cuts], [*cuts, len(times)], strict=True))


def build_examples(
    conversations: Iterable[Conversation],
    me: str,
    *,
    system: str | None = None,
    gap_hours: float = 6,
    max_turns: int = 12,
    mask_pii: bool = False,
    max_tokens: int = MAX_EXAMPLE_TOKENS,
    stats: BuildStats | None = None,
) -> Iterator[Example]:
    """Yield chat examples for `me`; raises ImportErrorMessage at the end if `me` never spoke."""
    if max_turns < 2:
        raise ImportErrorMessage("--max-turns must be at least 2 (one message and one reply)")
    if system is not None and not system.strip():
        # Every example would carry an empty system message, which OpenAI refuses.
        raise ImportErrorMessage(
            "--system is blank: give the prompt, or leave --system out for the default"
        )
    ends = _ends_session(gap_hours)
    stats = stats if stats is not None else BuildStats()
    matcher = _MeMatcher(me)
    # The default prompt names the person as the export spells them ("Zoë Martín"), not as
    # typed after --me ("zoe martin", "@zoemartin"): the first matching sender decides.
    sys_msg: dict[str, str] | None = None
    size = 2 * (max_turns // 2)
    seen: set[int] = set()  # hashes of the examples written, to leave out repeats
    for conv in conversations:
        stats.dropped.update(conv.dropped)
        # Importers yield time order and no empty texts, but an empty text would become an
        # empty turn, which OpenAI rejects, and out-of-order messages would mix sessions.
        msgs = list(filter(_by_text, conv.messages))
        if conv.skipped or not msgs:
            # Not a thread of the dataset: counting it would report more threads than
            # conversations. Its messages are already counted in `dropped`.
            stats.skipped[conv.skipped or NO_TEXT] += 1
            continue
        stats.threads += 1
        times = list(map(_by_time, msgs))
        if not _is_sorted(times):
            msgs.sort(key=_by_time)
            times = list(map(_by_time, msgs))
        senders = list(map(_by_sender, msgs))
        mine = matcher.flags(msgs, senders)
        stats.messages += len(msgs)
        stats.senders.update(senders)
        stats.me_messages += mine.count(True)
        if conv.one_session:
            bounds = [(0, len(msgs))] if msgs else []
        else:
            bounds = _session_bounds(times, ends)
        if not any(mine):
            stats.sessions += len(bounds)
            continue
        for a, b in bounds:
            stats.sessions += 1
            turns, openers = _turns(msgs[a:b], mine[a:b], conv.is_group, mask_pii)
            stats.openers += openers
            if turns and turns[-1]["role"] == "user":  # nobody answered: nothing to learn
                turns.pop()
            if not turns:
                continue
            if sys_msg is None:
                stats.me_name = next(
                    m.sender for m, me in zip(msgs[a:b], mine[a:b], strict=True) if me
                )
                # The name goes into the prompt too: masked, a phone number used as a
                # name does not leak through it.
                name = _masked(stats.me_name, mask_pii)
                stats.system = system_prompt(name, system)
                sys_msg = {"role": "system", "content": stats.system}
            # Named by when it began, not by its place in the file: two exports of one chat
            # covering different periods (WhatsApp keeps only the latest messages, so people
            # export again later) then agree on the id, and `dataset split` keeps it whole.
            session_id = f"{conv.id}#{times[a].isoformat(timespec='seconds')}"
            for i in range(0, len(turns), size):
                whole = turns[i : i + size]
                chunk = _fit(whole, sys_msg, max_tokens)
                if not chunk:
                    stats.too_long += 1
                    continue
                stats.shortened += len(chunk) < len(whole)
                key = _dedupe_key(session_id, i, chunk)
                if key in seen:
                    stats.duplicates += 1
                    continue
                seen.add(key)
                stats.examples += 1
                yield Example(session_id, [sys_msg, *chunk])
    if stats.me_messages == 0:
        raise ImportErrorMessage(_not_found(me, stats.senders))
    if stats.examples == 0 and stats.too_long:
        raise ImportErrorMessage(
            f"No examples: every one is over OpenAI's {max_tokens:,}-token limit for an "
            "example, even its last message and reply alone"
        )
    if stats.examples == 0:
        raise ImportErrorMessage(
            f"No examples: {me} never replied to anyone within --gap-hours {gap_hours:g} "
            "(every example ends with one of their replies)"
        )


def _fit(chunk: list[dict[str, str]], system: dict[str, str], limit: int) -> list[dict[str, str]]:
    """`chunk` less its oldest user/assistant pairs until it fits `limit` tokens, or []."""
    # [] when even the last pair is over: an example must end with a reply, and OpenAI
    # would cut that reply off (see the module docstring).
    overhead = REPLY_PRIMING + TOKENS_PER_MESSAGE * (len(chunk) + 1)
    chars = len(system["content"]) + sum(map(len, map(_content, chunk)))
    if chars * _MAX_TOKENS_PER_CHAR + overhead <= limit:
        return chunk
    sizes = list(map(count_message_tokens, chunk))
    total = REPLY_PRIMING + count_message_tokens(system) + sum(sizes)
    start = 0
    while total > limit and start + 2 < len(chunk):
        total -= sizes[start] + sizes[start + 1]
        start += 2
    return chunk[start:] if total <= limit else []


# Whitespace that ends a line inside a text: a hint found with `in` first, then removed.
_LINE_END_BLANKS = re.compile(r"[ \t]+\n")


def _dedupe_key(session_id: str, place: int, chunk: list[dict[str, str]]) -> int:
    """What makes two examples the same: session, place, and turns as read (see below)."""
    # The same chat exported twice (or a .txt beside its zip): its examples come again with
    # the same session id and words; training on them twice would only double their weight
    # and cost. The chunk's place is part of it: the same words twice in one session
    # ("ok" / "ok") are two examples, in a copy they come at the same place. Copies can
    # differ in blanks alone (a tool or editor trimmed the spaces ending a text or a line;
    # "\r\n" is already "\n", see _turn): those are ignored, not the spaces between words.
    texts = list(map(str.strip, map(_content, chunk)))
    joined = "".join(texts)
    if " \n" in joined or "\t\n" in joined:  # rare: the regex only then
        texts = [_LINE_END_BLANKS.sub("\n", text) for text in texts]
    return hash((session_id, place, *map(_role, chunk), *texts))


def _not_found(me: str, senders: Counter[str]) -> str:
    if not senders:
        return f"--me {me!r}: the export has no text messages at all"
    top = ", ".join(
        f"{_shown(name)} ({n})" for name, n in senders.most_common(8) if name != "prompt"
    )
    return f"--me {me!r} matches no sender; most frequent senders: {top}"


def _shown(name: str, limit: int = 60) -> str:
    # A sender name inside a one-line error: line breaks as spaces, and not endless.
    flat = " ".join(name.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def write_jsonl(
    examples: Iterable[Example], out_path: Path | str, stats: BuildStats | None = None
) -> int:
    """Write OUT.jsonl and OUT.jsonl.conversations atomically; returns the number of examples.

    Both files are written to temporary names and renamed at the end, so an error while
    building (bad export, --me not found) leaves no partial output behind. Half an emoji
    (a lone surrogate, which UTF-8 cannot hold) is written as U+FFFD; `stats.repaired`
    counts the examples that had one.
    """
    out = Path(out_path)
    sidecar = sidecar_path(out)
    written = repaired = 0
    # The sidecar first: a reader that finds OUT.jsonl also finds its conversations.
    with atomic_files(sidecar, out) as (side, fh):
        dumps = json.JSONEncoder(ensure_ascii=False).encode
        lines: list[str] = []
        ids: list[str] = []
        for ex in examples:
            lines.append(dumps({"messages": ex.messages}))
            ids.append(ex.conversation_id.replace("\n", " "))
            written += 1
            if len(lines) == 1000:  # a few big writes instead of one per line
                repaired += _write_lines(fh, lines)
                _write_lines(side, ids)
                lines.clear()
                ids.clear()
        if lines:
            repaired += _write_lines(fh, lines)
            _write_lines(side, ids)
    if stats is not None:
        stats.repaired += repaired
    return written


def _write_lines(fh: TextIO, lines: list[str]) -> int:
    # Encoding happens in write(), which writes nothing when it fails: only then are the
    # lines searched, so clean data (nearly all) pays nothing. Returns the lines repaired.
    try:
        fh.write("\n".join(lines) + "\n")
        return 0
    except UnicodeEncodeError:
        fixed = [replace_lone_surrogates(line) for line in lines]
        fh.write("\n".join(fixed) + "\n")
        return sum(a != b for a, b in zip(lines, fixed, strict=True))
