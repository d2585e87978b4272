"""The `openai` backend: any OpenAI-compatible chat server (OpenAI, vLLM, Ollama, llama.cpp)."""

from __future__ import annotations

import os
import threading

import openai

from phischer.backends.base import BackendError, PersonaView, Reply

OPENAI_URL = "https://api.openai.com/v1"
# Local servers (Ollama, llama.cpp, vLLM without --api-key) accept any key, but the SDK
# refuses to start without one.
LOCAL_PLACEHOLDER_KEY = "not-needed"


class OpenAIBackend:
    """Calls chat.completions with explicit timeout and retries; one client per endpoint."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout_s: float,
        max_retries: int,
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._clients: dict[tuple[str, str], openai.OpenAI] = {}
        self._lock = threading.Lock()

    def _endpoint(self, persona: PersonaView) -> tuple[str, str]:
        base_url = persona.base_url or self.base_url or OPENAI_URL
        if persona.api_key_env:
            key = os.environ.get(persona.api_key_env)
            if not key:
                raise BackendError(
                    f"{persona.api_key_env} is not set (persona {persona.name} reads its key there)"
                )
            return base_url, key
        if self.api_key:
            return base_url, self.api_key
        if base_url.rstrip("/") == OPENAI_URL:
            raise BackendError("No OPENAI_API_KEY: set it in .env")
        return base_url, LOCAL_PLACEHOLDER_KEY

    def client(self, persona: PersonaView) -> openai.OpenAI:
        """The (cached) SDK client for this persona's endpoint."""
        endpoint = self._endpoint(persona)
        with self._lock:
            client = self._clients.get(endpoint)
            if client is None:
                client = openai.OpenAI(
                    base_url=endpoint[0],
                    api_key=endpoint[1],
                    timeout=self.timeout_s,
                    max_retries=self.max_retries,
                )
                self._clients[endpoint] = client
        return client

    def warm(self, persona: PersonaView) -> None:
        """Nothing to prepare: the client is created on first use."""

    def reply(self, persona: PersonaView, messages: list[dict[str, str]]) -> Reply:
        """Ask the model for the persona's next message."""
        if not persona.model:
            raise BackendError(
                f"persona {persona.name} has no model: `phischer persona add --model`"
            )
        client = self.client(persona)
        kwargs: dict[str, object] = {}
        if persona.temperature is not None:
            kwargs["temperature"] = persona.temperature
        if persona.max_tokens is not None:
            kwargs["max_tokens"] = persona.max_tokens
        try:
            completion = client.chat.completions.create(
                model=persona.model,
                messages=messages,
                **kwargs,  # type: ignore[arg-type]
            )
        except openai.APITimeoutError:
            raise BackendError(f"model timed out after {self.timeout_s:g} s") from None
        except openai.APIConnectionError as exc:
            raise BackendError(f"cannot reach the model server: {exc}") from None
        except openai.RateLimitError as exc:
            raise BackendError(f"rate limited (429): {_detail(exc)}") from None
        except openai.APIStatusError as exc:
            raise BackendError(f"model server error {exc.status_code}: {_detail(exc)}") from None
        except openai.OpenAIError as exc:
            raise BackendError(f"model call failed: {exc}") from None
        choice = completion.choices[0] if completion.choices else None
        text = (choice.message.content or "").strip() if choice and choice.message else ""
        if not text:
            raise BackendError("model returned an empty reply")
        usage = completion.usage
        return Reply(
            text=text,
            model=completion.model or persona.model,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)[:200]
    return str(exc)[:200]
