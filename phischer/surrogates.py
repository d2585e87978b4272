"""Lone surrogates: half of an emoji that a JSON export can hold and UTF-8 cannot."""

from __future__ import annotations

import re

# A JSON "\ud83d" escape without its pair parses to a lone surrogate (json joins proper
# pairs into one character, so every surrogate left in a str is lone). Apps write them when
# they cut a text in the middle of an emoji.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def replace_lone_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, as a UTF-8 decoder would."""
    return LONE_SURROGATE.sub(REPLACEMENT, text)
