"""Chat-export importers: each module registers one format in `IMPORTERS` when imported."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from phischer.importers import discord, messenger, telegram, twitter, whatsapp  # noqa: F401
from phischer.importers.base import IMPORTERS, Conversation, ImportErrorMessage, Message

__all__ = ["IMPORTERS", "Conversation", "ImportErrorMessage", "Message", "formats", "load"]


def formats() -> list[str]:
    """The registered format names, sorted."""
    return sorted(IMPORTERS)


def load(fmt: str, path: Path | str) -> Iterator[Conversation]:
    """Conversations from the export at `path` in format `fmt`, one at a time."""
    importer = IMPORTERS.get(fmt)
    if importer is None:
        raise ImportErrorMessage(f"Unknown format {fmt!r}: choose one of {', '.join(formats())}")
    path = Path(path)
    if not path.exists():
        raise ImportErrorMessage(f"No such file or folder: {path}")
    return importer(path)
