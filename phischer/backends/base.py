"""What every backend takes and returns, and how failures are reported."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

from phischer.models import Persona


class BackendError(Exception):
    """The model could not answer (timeout, rate limit, server error, empty output, …)."""


@dataclass(frozen=True)
class PersonaView:
    """A read-only snapshot of a persona, safe to hand to another thread."""

    id: int
    name: str
    keyword: str
    backend: str
    model: str | None
    base_url: str | None
    api_key_env: str | None
    dataset: str | None
    system_prompt: str | None
    greeting: str | None
    temperature: float | None
    max_tokens: int | None

    @classmethod
    def of(cls, p: Persona) -> PersonaView:
        """Snapshot an ORM persona (every field of the view is a column of the same name)."""
        return cls(**{f.name: getattr(p, f.name) for f in fields(cls)})

    @property
    def model_label(self) -> str:
        """What to record as the message's model."""
        if self.backend == "retrieval":
            return "retrieval"
        return self.model or "?"


@dataclass(frozen=True)
class Reply:
    """A backend's answer and what it cost."""

    text: str
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Backend(Protocol):
    """Turns a chat thread (system + user/assistant turns) into the persona's next message."""

    def reply(self, persona: PersonaView, messages: list[dict[str, str]]) -> Reply:
        """Answer the last user turn; raise BackendError on failure."""
        ...

    def warm(self, persona: PersonaView) -> None:
        """Start preparing anything expensive ahead of the first request; never blocks."""
        ...
