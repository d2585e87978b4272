"""Checks that a file is a real, non-blank PNG of the size phischer draws."""

from __future__ import annotations

from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, size: tuple[int, int] = (450, 800)) -> None:
    """The file starts with PNG's magic bytes, decodes to `size` (rows, columns), has ink."""
    import matplotlib.image
    import numpy as np

    assert Path(path).read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == size
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    assert len(colours) > 10  # axes, text, bars or lines: not a blank canvas
