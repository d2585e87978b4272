"""How the CLI words and lines up what it prints: counts with their nouns, padded columns."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

# Marks drawn on the character before them (combining accents, enclosing marks) and
# format characters (zero-width joiner and space, direction marks) take no column.
_ZERO_WIDTH = ("Mn", "Me", "Cf")


def plural(n: int, word: str, words: str | None = None) -> str:
    """`n word`, with an s (or as `words`) unless n is 1 ("1 example", "2 examples")."""
    return f"{n:,} {word if n == 1 else words or word + 's'}"


def display_width(text: str) -> int:
    """Terminal columns `text` takes: wide and fullwidth characters 2 (CJK), marks 0."""
    return sum(_char_width(c) for c in text)


def _char_width(char: str) -> int:
    if unicodedata.category(char) in _ZERO_WIDTH:
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def pad(text: str, width: int) -> str:
    """`text` and spaces up to `width` terminal columns, as str.ljust pads by characters."""
    return text + " " * max(0, width - display_width(text))


def table(rows: Sequence[Sequence[str]], gap: str = "  ") -> list[str]:
    """`rows` as lines in columns as wide as their widest cell (terminal columns), `gap` apart."""
    # Widths come from the rows: a fixed width let a long model name or persona push the
    # rest of its line out of its column.
    widths = [max(map(display_width, column)) for column in zip(*rows, strict=True)]
    return [gap.join(map(pad, row, widths)).rstrip() for row in rows]
