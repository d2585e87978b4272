"""History -> chat messages for the model, in the same shape the dataset builder writes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from phischer.commands import parse

# Outbound statuses that mean the persona really said it (fallbacks are kind "fallback").
SPOKEN = ("replied", "queued", "sent")
# Texts one side sent in a row are one turn, joined by this (the dataset builder's rule too).
TURN_JOINER = "\n"


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
    if not body.lstrip().startswith("#"):
        return body.strip()  # the common case, without a full parse per history row
    command = parse(body)
    return command.text if command.action in ("chat", "switch") else ""


def rows_needed(history_turns: int) -> int:
    """How many newest rows to fetch: merging only shrinks the count, so a few extra suffice."""
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
    its last #reset, newest first. The session ends at the first silence longer than
    `gap_hours` (the dataset builder's rule; 0 never splits); consecutive same-role turns
    are merged (join_texts); at most `history_turns` turns are kept, and the first one is
    a user turn.
    """
    ends = ends_session(gap_hours)
    kept: list[tuple[str, str]] = []
    newer: dt.datetime | None = None
    for direction, body, created_at in rows:
        if newer is not None and ends(newer - created_at):
            break
        newer = created_at
        text = chat_text(body) if direction == "in" else body
        if text:
            kept.append(("user" if direction == "in" else "assistant", text))
    kept.reverse()

    turns: list[dict[str, str]] = []
    for role, text in kept:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = join_texts((turns[-1]["content"], text))
        else:
            turns.append({"role": role, "content": text})
    turns = turns[-history_turns:] if history_turns > 0 else turns[-1:]
    while turns and turns[0]["role"] != "user":
        turns.pop(0)

    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + turns
