"""How the CLI words what it prints: counts with their nouns."""

from __future__ import annotations


def plural(n: int, word: str) -> str:
    """`n word`, with an s unless n is 1 ("1 example", "2 examples")."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")
