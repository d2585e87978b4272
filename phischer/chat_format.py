"""What a chat fine-tuning message says: one reading shared by `dataset check` and retrieval."""

from __future__ import annotations

from typing import Any

# Content may also be a list of parts (OpenAI's chat format): the part types fine-tuning takes
# and the roles each may appear in. Images come only from the user (vision fine-tuning);
# a refusal part only from the assistant. A "function" message's content is a string only.
PART_ROLES: dict[str, tuple[str, ...]] = {
    "text": ("system", "user", "assistant", "tool"),
    "image_url": ("user",),
    "refusal": ("assistant",),
}
# Parts whose words are the message's text: each holds its string under its own type's name.
TEXT_PARTS = ("text", "refusal")


def json_kind(value: Any) -> str:
    """What a decoded JSON value is, as JSON names it: "a number", "an array", "null", …"""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def content_texts(content: Any) -> list[str] | None:
    """The texts a message's content holds, in order; None when it cannot be read as text.

    A string is one text; null (a tool call's turn) none; a list of parts holds the string
    of each text or refusal part, and images hold no text. Anything else (a number, an
    object, a part that is not an object of a known type with its string) is unreadable.
    Where a part may appear (an image in an assistant turn) is `dataset check`'s business.
    """
    if isinstance(content, str):
        return [content]
    if content is None:
        return []
    if not isinstance(content, list):
        return None
    texts: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS:
            value = part.get(kind)
            if not isinstance(value, str):
                return None
            texts.append(value)
        elif kind != "image_url":
            return None
    return texts
