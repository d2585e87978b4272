"""Backend registry: one instance of each backend per app, created on first use."""

from __future__ import annotations

import functools
import threading

from phischer.backends.base import Backend, BackendError, PersonaView
from phischer.config import Settings

# Model calls in auto/async mode may outlive the webhook: give them longer than
# REPLY_TIMEOUT_S, since their reply goes out by REST anyway.
ASYNC_MODEL_TIMEOUT_S = 60.0


def model_timeout_s(settings: Settings) -> float:
    """Seconds a model call may take: longer than the webhook only if a late reply can go out."""
    # auto without Twilio credentials answers the fallback after REPLY_TIMEOUT_S (inbound.py):
    # a call running past that would spend tokens on a reply nobody can send.
    late_reply_possible = settings.reply_mode == "async" or (
        settings.reply_mode == "auto" and settings.can_send_sms
    )
    return ASYNC_MODEL_TIMEOUT_S if late_reply_possible else settings.reply_timeout_s


class Backends:
    """Maps a persona's backend name to its (shared) backend object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._made: dict[str, Backend] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Backend:
        """The backend called `name` (openai or retrieval)."""
        backend = self._made.get(name)
        if backend is None:
            with self._lock:
                backend = self._made.get(name) or self._make(name)
                self._made[name] = backend
        return backend

    def personas_changed(self, personas: list[PersonaView]) -> None:
        """Let go of what only personas no longer there, or changed since, needed."""
        # Only retrieval keeps anything per persona (an index per dataset). Not made yet:
        # it has nothing to drop.
        retrieval = self._made.get("retrieval")
        if retrieval is not None:
            retrieval.forget_unused(personas)  # type: ignore[attr-defined]

    def _make(self, name: str) -> Backend:
        if name == "retrieval":
            from phischer.backends.retrieval import RetrievalBackend
            from phischer.replies import sendable

            # Replies are stored as sent (cut, cleaned), and it avoids repeating the stored
            # ones: it must compare its answers in the same form, by the same function.
            limit = self.settings.max_reply_chars
            return RetrievalBackend(sent_as=functools.partial(sendable, limit=limit))
        if name == "openai":
            from phischer.backends.openai import OpenAIBackend

            s = self.settings
            return OpenAIBackend(
                api_key=s.openai_api_key,
                base_url=s.openai_base_url,
                timeout_s=model_timeout_s(s),
                max_retries=s.model_retries,
            )
        raise BackendError(f"unknown backend {name!r}: use openai or retrieval")
