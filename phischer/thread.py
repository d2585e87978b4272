"""History -> chat messages for the model, in the same shape the dataset builder writes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from phischer.commands import parse, starts_hash

# Outbound statuses that mean the persona really said it (fallbacks are kind "fallback").
SPOKEN = ("replied", "queued", "sent")
# Texts one side sent in a row are one turn, joined by this (the dataset builder's rule too).
TURN_JOINER = "\n"
# The most texts one thread reads: a run of thousands left unanswered (a model down for days
# while a script keeps texting) would otherwise all go into one prompt. Past it, the oldest
# turn (which may be cut) is left out, or, when it is the only one, keeps its newest texts.
MAX_THREAD_TEXTS = 500
# The most characters of history one thread reads (about 4,000 tokens of English): HISTORY_TURNS
# of long texts (a burst sent while the model was down, each up to Twilio's 1,600) would
# overflow a small model's context, and the number would get the fallback until #reset. A
# chat of SMS never comes near it. Past it, as past MAX_THREAD_TEXTS, the oldest turn goes.
MAX_THREAD_CHARS = 16_000


def join_texts(texts: Iterable[str]) -> str:
    """One turn of texts sent in a row, as the thread and the dataset hold it."""
    return TURN_JOINER.join(texts)


def split_turn(turn: str) -> list[str]:
    """The lines of a turn: each text join_texts put into it is a run of one or more of them."""
    # A text with a newline of its own is several lines: which runs were texts is not
    # written anywhere, so a reader matches runs against the texts it knows (retrieval).
    return turn.split(TURN_JOINER)


def chat_text(body: str) -> str:
    """The part of an inbound body the persona answers ("#ada hi" -> "hi")."""
    stripped = body.strip()
    if not starts_hash(stripped):
        return stripped  # the common case, without a full parse per history row
    command = parse(body)
    return command.text if command.action in ("chat", "switch") else ""


def rows_needed(history_turns: int) -> int:
    """How many newest rows to fetch first: enough when each side sends one text a turn."""
    # Runs of texts (replies that failed or never arrived) need more: build_thread reads on
    # from a lazy source until the window's oldest turn is whole (Store.history_pages).
    return max(history_turns, 1) * 2 + 2


def session_gap(gap_hours: float) -> dt.timedelta:
    """The longest silence a session holds (timedelta.max: never split, for 0, NaN or too big)."""
    if not gap_hours > 0:
        return dt.timedelta.max
    try:
        return dt.timedelta(hours=gap_hours)
    except OverflowError:  # inf, 1e300: longer than any timedelta, so no silence is that long
        return dt.timedelta.max


def ends_session(gap_hours: float) -> Callable[[dt.timedelta], bool]:
    """Whether a silence starts a new session: longer than the gap (exactly the gap does not)."""
    # The one rule for the serving thread and the dataset builder (DESIGN §7), which refuses
    # 0 for --gap-hours first. A bound method, so the builder can map it in C over every gap.
    return session_gap(gap_hours).__lt__


def build_thread(
    rows: Iterable[tuple[str, str, dt.datetime]],
    *,
    system_prompt: str | None,
    history_turns: int,
    gap_hours: float,
) -> list[dict[str, str]]:
    """System prompt, then the turns of the current session, oldest first.

    `rows` are (direction, body, created_at) of one number's chat with one persona since
    its last #reset, newest first, read only as far as needed. The session ends at the
    first silence longer than `gap_hours` (the dataset builder's rule; 0 never splits);
    consecutive same-role turns are merged (join_texts); at most `history_turns` whole
    turns are kept, and the first one is a user turn.
    """
    ends = ends_session(gap_hours)
    wanted = max(history_turns, 1)
    # Newest first, each turn's texts newest first. Reading stops at the session's start or
    # once a turn older than the window begins: only then is the window's oldest turn whole
    # (a run of texts longer than the rows fetched so far is not cut in the middle).
    turns: list[tuple[str, list[str]]] = []
    newer: dt.datetime | None = None
    read = chars = 0
    for direction, body, created_at in rows:
        if newer is not None and ends(newer - created_at):
            break
        if read == MAX_THREAD_TEXTS:
            if len(turns) > 1:
                turns.pop()  # its older texts are not read: not a turn any example has
            break
        read += 1
        newer = created_at
        text = chat_text(body) if direction == "in" else body
        if not text:
            continue
        role = "user" if direction == "in" else "assistant"
        chars += len(text)
        if chars > MAX_THREAD_CHARS and turns:
            # The oldest turn read so far is cut if this text belongs to it (it keeps its
            # newest texts when it is the only one), whole if this one starts another.
            if turns[-1][0] == role and len(turns) > 1:
                turns.pop()
            break
        if turns and turns[-1][0] == role:
            turns[-1][1].append(text)
        elif len(turns) == wanted:
            break
        else:
            turns.append((role, [text]))
    while turns and turns[-1][0] != "user":  # the oldest turn kept is a user's
        turns.pop()

    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + [
        {"role": role, "content": join_texts(reversed(texts))} for role, texts in reversed(turns)
    ]
