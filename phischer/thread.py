"""History -> chat messages for the model, in the same shape the dataset builder writes."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from phischer.commands import parse
from phischer.models import Message

# Outbound statuses that mean the persona really said it (fallbacks are kind "fallback").
SPOKEN = ("replied", "queued", "sent")


def chat_text(body: str) -> str:
    """The part of an inbound body the persona answers ("#ada hi" -> "hi")."""
    command = parse(body)
    return command.text if command.action in ("chat", "switch") else ""


def build_thread(
    session: Session,
    *,
    contact_id: int,
    persona_id: int,
    system_prompt: str | None,
    reset_at: dt.datetime | None,
    history_turns: int,
    gap_hours: float,
) -> list[dict[str, str]]:
    """System prompt, then this number's turns with this persona in the current session.

    The session is what follows the last #reset and the last silence longer than
    SESSION_GAP_HOURS (the dataset builder's rule); consecutive same-role turns are merged
    with newlines; at most `history_turns` turns are kept, starting with a user turn.
    """
    query = (
        sa.select(Message.direction, Message.body, Message.created_at)
        .where(
            Message.contact_id == contact_id,
            Message.persona_id == persona_id,
            Message.kind == "chat",
            sa.or_(Message.direction == "in", Message.status.in_(SPOKEN)),
        )
        .order_by(Message.id.desc())
        # Merging can only shrink the count, so a few extra rows are enough.
        .limit(max(history_turns, 1) * 2 + 2)
    )
    if reset_at is not None:
        query = query.where(Message.created_at >= reset_at)
    rows = session.execute(query).all()

    gap = dt.timedelta(hours=gap_hours)
    kept: list[tuple[str, str]] = []
    newer: dt.datetime | None = None
    for direction, body, created_at in rows:
        if newer is not None and gap_hours > 0 and newer - created_at > gap:
            break
        newer = created_at
        text = chat_text(body) if direction == "in" else body
        if text:
            kept.append(("user" if direction == "in" else "assistant", text))
    kept.reverse()

    turns: list[dict[str, str]] = []
    for role, text in kept:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n" + text
        else:
            turns.append({"role": role, "content": text})
    turns = turns[-history_turns:] if history_turns > 0 else turns[-1:]
    while turns and turns[0]["role"] != "user":
        turns.pop(0)

    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + turns
