"""How the CLI words counts and lines up columns of any script."""

from __future__ import annotations

import pytest

from phischer.printing import display_width, pad, plural


@pytest.mark.parametrize(
    ("text", "width"),
    [
        ("Ada", 3),
        ("Zoë", 3),  # precomposed ë
        ("Zoe\u0308", 3),  # e and a combining diaeresis: one column
        ("李小龍", 6),  # CJK ideographs: two columns each
        ("김민지", 6),  # Hangul syllables
        ("ＡＢ", 4),  # fullwidth Latin
        ("ｱｲ", 2),  # halfwidth katakana
        ("👩\u200d💻", 4),  # two wide emoji joined by a zero-width joiner
        ("", 0),
    ],
)
def test_display_width_counts_terminal_columns(text: str, width: int) -> None:
    assert display_width(text) == width


def test_pad_fills_terminal_columns_and_never_cuts() -> None:
    assert pad("李", 4) == "李  " and pad("Zoe\u0308", 4) == "Zoe\u0308 "
    assert pad("李小龍", 4) == "李小龍"


def test_plural() -> None:
    assert [plural(n, "step") for n in (0, 1, 2, 1000)] == [
        "0 steps", "1 step", "2 steps", "1,000 steps"
    ]  # fmt: skip
    assert [plural(n, "reply", "replies") for n in (1, 2)] == ["1 reply", "2 replies"]
