"""The `openai` backend: any OpenAI-compatible chat server (OpenAI, vLLM, Ollama, llama.cpp)."""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import openai

from phischer.backends.base import BackendError, PersonaView, Reply
from phischer.ports import is_local_host, same_server, url_host, url_origin
from phischer.redact import add_secret, redact, shorten
from phischer.replies import INVISIBLE

OPENAI_URL = "https://api.openai.com/v1"
# Local servers (Ollama, llama.cpp, vLLM without --api-key) accept any key, but the SDK
# refuses to start without one.
LOCAL_PLACEHOLDER_KEY = "not-needed"
# A 401 from a server that got the placeholder: it wants a key of its own.
KEY_HINT = (
    "this server wants an API key, which phischer sends only from the variable the persona "
    "names: give it one with `phischer persona edit {keyword} --api-key-env VAR`"
)
# Another attempt is only worth starting with at least this much of the deadline left.
MIN_ATTEMPT_S = 0.5
# A server's error message or refusal is recorded and logged this long at most.
SHOWN_CHARS = 200
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# What OpenAI's reasoning models (o-series, gpt-5…) refuse with a 400 naming the parameter,
# and what the call does instead: the length cap has a new name, the temperature must go.
ADAPTATIONS = {"max_tokens": "max_completion_tokens", "temperature": None}
# The codes of those 400s. A 400 naming the same parameter for its value ("max_tokens is too
# large", code null) is the persona's setting at fault: renamed, it would be retried, and a
# server that ignores max_completion_tokens would then answer with no cap at all.
UNSUPPORTED_CODES = frozenset({"unsupported_parameter", "unsupported_value"})
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Who opens a turn, in a chat transcript a model writes instead of its reply, that is not its own.
OTHER_ROLES = ("user", "system", "human")
# What a line may open with before its label: blanks, and the invisible marks a model or a
# right-to-left text puts first (replies.INVISIBLE: zero-width spaces, bidi marks, a BOM),
# which would otherwise hide "\u200bAda: hey"'s label.
LABEL_LEAD = f"^[ \t{INVISIBLE}]*"
# A label's colon: ASCII, or the fullwidth one (and its small form) of CJK text: "Ada： hey".
LABEL_COLON = "[ \t]*[:\uff1a\ufe55][ \t]*"
# Who else a line of a transcript can be labelled as: a name of one or two words ("Sam:",
# "Mary Ann:"). Only read as a speaker in a reply that also holds a label of the persona's or
# a role's: alone, "Sam: hey" is as likely Ada's words as "Note: bring wine" or "Re: dinner".
OTHER_NAME = re.compile(
    LABEL_LEAD + r"([^\W\d_][\w'’.-]{0,30}(?: [^\W\d_][\w'’.-]{0,30})?)" + LABEL_COLON
)
ROLE_LABEL = re.compile(LABEL_LEAD + f"(?:{'|'.join(OTHER_ROLES)})" + LABEL_COLON, re.IGNORECASE)
# A chat template's special token ("<|im_end|>", "<|eot_id|>") that a local server with the
# wrong template leaves in the text: what follows it is not the reply.
SPECIAL_TOKEN = re.compile(r"<\|[^|<>\s]{1,40}\|>")

log = logging.getLogger(__name__)


class OpenAIBackend:
    """Calls chat.completions within one deadline, retries included; one client per endpoint.

    The SDK's own retries are off: each of them gets the full timeout again, so with
    MODEL_RETRIES=1 a hanging model held the webhook for twice REPLY_TIMEOUT_S (past
    Twilio's 15 s) and an async call ran past the recovery sweep's assumption, which then
    answered the same text a second time. Here every attempt gets what is left of
    `timeout_s`, and a timed-out call is not retried (nothing is left).
    """

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
        # Parameters a model refused, by (base URL, model): later calls adapt up front.
        # Frozen sets, replaced whole: a reply reads one while another thread adds to it.
        self._refused: dict[tuple[str, str], frozenset[str]] = {}

    def _endpoint(self, persona: PersonaView) -> tuple[str, str]:
        base_url = persona.base_url or self.base_url or OPENAI_URL
        if persona.api_key_env:
            key = os.environ.get(persona.api_key_env)
            if not key:
                raise BackendError(
                    f"{persona.api_key_env} is not set (persona {persona.name} reads its key there)"
                )
            add_secret(key, persona.api_key_env)
            return base_url, key
        # OPENAI_API_KEY goes only to OpenAI and to OPENAI_BASE_URL's server: a persona on
        # another server (a local vLLM, a friend's, another provider) would otherwise hand
        # the key to whoever runs it. Such a server gets its key from --api-key-env.
        to_openai = same_server(base_url, OPENAI_URL)
        if self.api_key and (to_openai or same_server(base_url, self.base_url)):
            return base_url, self.api_key
        if to_openai:
            raise BackendError("No OPENAI_API_KEY: set it in .env")
        return base_url, LOCAL_PLACEHOLDER_KEY

    def client(self, persona: PersonaView) -> openai.OpenAI:
        """The (cached) SDK client for this persona's endpoint."""
        endpoint = self._endpoint(persona)
        with self._lock:
            client = self._clients.get(endpoint)
            if client is None:
                client = sdk_client(
                    endpoint[0],
                    endpoint[1],
                    timeout_s=self.timeout_s,
                    max_retries=0,  # retried in `reply`, within the deadline
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
        key = (str(client.base_url), persona.model)
        kwargs: dict[str, object] = {}
        if persona.temperature is not None:
            kwargs["temperature"] = persona.temperature
        if persona.max_tokens is not None:
            kwargs["max_tokens"] = persona.max_tokens
        for param in self._refused.get(key, ()):
            _adapt(kwargs, param)
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            try:
                completion = client.chat.completions.create(
                    model=persona.model,
                    messages=messages,
                    timeout=max(deadline - time.monotonic(), 0.001),
                    **kwargs,  # type: ignore[arg-type]
                )
                break
            except ValueError as exc:  # a 200 whose JSON does not parse (the SDK's json.loads)
                raise _not_a_completion(exc) from None
            except openai.APITimeoutError:  # before APIConnectionError: it is a subclass
                raise BackendError(f"model timed out after {self.timeout_s:g} s") from None
            except openai.BadRequestError as exc:
                param = _unsupported(exc)
                if param not in kwargs:
                    raise _describe(exc, key[0]) from None
                # Not a retry: the same request in the form this model takes, at once.
                _adapt(kwargs, param)
                with self._lock:
                    self._refused[key] = self._refused.get(key, frozenset()) | {param}
                log.info("Model %s refuses %s: %s", persona.model, param, _detail(exc))
            except openai.OpenAIError as exc:
                error = _describe(exc, key[0])
                if isinstance(exc, openai.AuthenticationError) and (
                    client.api_key == LOCAL_PLACEHOLDER_KEY
                ):
                    error = BackendError(f"{error}; {KEY_HINT.format(keyword=persona.keyword)}")
                wait = _retry_wait(exc, attempt)
                last = attempt == self.max_retries
                if last or wait is None or time.monotonic() + wait + MIN_ATTEMPT_S > deadline:
                    raise error from None
                time.sleep(wait)
                attempt += 1
        try:
            return _reply_of(completion, persona)
        except (AttributeError, TypeError, IndexError, KeyError) as exc:
            # The SDK hands back a web page as a str and builds any JSON into a completion
            # without checking it: a wrong URL or a proxy's page fails here, not in create().
            raise _not_a_completion(exc) from None


def _reply_of(completion: Any, persona: PersonaView) -> Reply:
    """The text to send from a completion, or the BackendError saying why there is none."""
    if not completion.choices:
        raise BackendError("model server answered with no choices (no reply in it)")
    choice = completion.choices[0]
    message = choice.message
    content = _content_text(message.content if message else None)
    answer = strip_reasoning(content)
    text = own_words(answer, persona.name)
    finish = choice.finish_reason
    if finish == "content_filter":
        # What got past the filter is cut short at best: not sent as the persona's words.
        raise BackendError("the model server's content filter stopped the reply")
    if not text:
        raise BackendError(_no_text(message, finish, content, answer, persona))
    usage = completion.usage
    return Reply(
        text=text,
        model=str(completion.model or persona.model),
        prompt_tokens=getattr(usage, "prompt_tokens", None),
        completion_tokens=getattr(usage, "completion_tokens", None),
    )


def _no_text(message: Any, finish: object, content: str, answer: str, persona: PersonaView) -> str:
    """Why a completion holds nothing to text, as precisely as it shows."""
    refusal = getattr(message, "refusal", None)
    if isinstance(refusal, str) and refusal.strip():
        return f"model refused to answer: {shorten(refusal.strip(), SHOWN_CHARS)}"
    calls = getattr(message, "tool_calls", None)
    if calls:
        # phischer offers no tools: the server or a proxy in front of it added some.
        names = sorted({str(getattr(getattr(c, "function", None), "name", "?")) for c in calls})
        tools = shorten(", ".join(names), SHOWN_CHARS)
        return f"model called a tool ({tools}) instead of replying; phischer offers it none"
    if finish == "length":
        cap = f"--max-tokens {persona.max_tokens}" if persona.max_tokens else "its length cap"
        return (
            f"model used all of {cap} before writing a reply (finish_reason length; a "
            "reasoning model spends them thinking first): raise it with `phischer persona "
            f"edit {persona.keyword} --max-tokens N`"
        )
    if answer:
        return "model wrote only a speaker label or another's turn, no reply of its own"
    if content.strip():
        return "model returned only its reasoning (a <think> block), no reply"
    return "model returned an empty reply"


def _content_text(content: object) -> str:
    """A message's content as text: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        # Mistral's Magistral answers [{"type": "thinking", …}, {"type": "text", "text": …}]:
        # only the text parts are the reply.
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    if not isinstance(content, str):
        raise TypeError(f"content is {type(content).__name__}")
    return content


def strip_reasoning(text: str) -> str:
    """`text` without the <think>…</think> block a reasoning model may open its answer with."""
    # DeepSeek-R1 and Qwen3 served raw (vLLM without a reasoning parser, llama.cpp with
    # --reasoning-format none, older Ollama) put their thinking in the content. R1's own
    # chat template already opens the <think> in the prompt, so the answer often holds only
    # the closing tag: everything before it is thinking too. An unclosed <think> was cut
    # off mid-thought (finish_reason length): there is no reply in it at all.
    text = text.strip()
    opened = text.startswith(THINK_OPEN)
    end = text.find(THINK_CLOSE)
    if end >= 0 and (opened or THINK_OPEN not in text[:end]):
        return text[end + len(THINK_CLOSE) :].strip()
    return "" if opened else text


def own_words(text: str, name: str) -> str:
    """`text` without speaker labels ("Ada: hi") or the turns a model wrote for others."""
    # A chat model shown a group chat's "Bo: " lines, or one served with the wrong template,
    # may label its own reply or write a transcript: the texter's turn first ("User: hi\n
    # Ada: hey"), or next ("hey\nUser: …"). The persona's training turns carry no label, and
    # a labelled reply kept in the thread teaches the model to label the next one: so its
    # labels go, turns of others before its own are skipped and the transcript is cut at
    # the first one after.
    token = SPECIAL_TOKEN.search(text)
    if token:
        text = text[: token.start()]
    own = _own_label(name)
    lines = text.splitlines(keepends=True)
    owned = [own.match(line) for line in lines]
    # A transcript: a role's or the persona's label shows the model writes turns as "Who: ".
    transcript = any(owned) or any(map(ROLE_LABEL.match, lines))
    kept: list[str] = []
    others_first = False  # the reply opened with another's turn: skipped up to its own
    for line, label in zip(lines, owned, strict=True):
        if label:
            others_first = False
            kept.append(line[label.end() :])
        elif _others_turn(line, transcript):
            if "".join(kept).strip():
                break  # the model goes on to write someone else's turn: its reply ends
            others_first = True
        elif not others_first:
            kept.append(line)
    return "".join(kept).strip()


def _others_turn(line: str, transcript: bool) -> bool:
    """Whether `line` opens a turn not the persona's: "User: …", or "Sam: …" in a transcript."""
    if ROLE_LABEL.match(line):
        return True
    other = OTHER_NAME.match(line) if transcript else None
    if other is None:
        return False
    # A name starts with a capital; an abbreviation in capitals ("PS:", "FYI:") is a note.
    label = other.group(1)
    return label[0].isupper() and not (len(label) > 1 and label.isupper())


@functools.lru_cache(maxsize=64)
def _own_label(name: str) -> re.Pattern[str]:
    """The pattern of a line's own label: the persona's name, its first word, or "assistant"."""
    names = {name.strip(), name.strip().split(" ")[0], "assistant"} - {""}
    own = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(f"{LABEL_LEAD}(?:{own}){LABEL_COLON}", re.IGNORECASE)


def sdk_client(
    base_url: str,
    api_key: str,
    *,
    timeout_s: float,
    max_retries: int,
    client_class: type[openai.OpenAI] = openai.OpenAI,
) -> openai.OpenAI:
    """An SDK client (a `client_class`) on `base_url` that reaches a local server directly."""
    host = urlsplit(base_url.strip()).hostname
    http_client = None
    if host and is_local_host(host):
        # The SDK's HTTP client sends every http:// URL through HTTP_PROXY / ALL_PROXY unless
        # NO_PROXY names the host, loopback included: a corporate proxy cannot reach the
        # Ollama or vLLM on this machine (or the LAN), and would answer every text with a 502.
        # A mount of None makes the host's requests skip the environment's proxy.
        http_client = openai.DefaultHttpxClient(mounts={f"all://{url_host(host)}": None})
    return client_class(
        base_url=base_url,
        api_key=api_key,
        timeout=timeout_s,
        max_retries=max_retries,
        http_client=http_client,
    )


def _not_a_completion(exc: Exception) -> BackendError:
    """The error for a 200 that is not a chat completion (a web page, other JSON)."""
    return BackendError(
        "model server answered something that is not a chat completion (is the persona's "
        f"base URL an OpenAI-compatible /v1 endpoint?): {type(exc).__name__}"
    )


def _unsupported(exc: openai.BadRequestError) -> str | None:
    """The parameter of ADAPTATIONS a 400 says this model does not take (None: another 400)."""
    param = exc.param if isinstance(exc.param, str) else None
    if param not in ADAPTATIONS:
        return None
    # Servers that mirror OpenAI's message without its code still say "Unsupported …".
    if exc.code in UNSUPPORTED_CODES or _detail(exc).lower().startswith("unsupported"):
        return param
    return None


def _adapt(kwargs: dict[str, object], param: str) -> None:
    """Rename or drop `param` in the call's arguments, as ADAPTATIONS says."""
    value = kwargs.pop(param, None)
    renamed = ADAPTATIONS.get(param)
    if renamed is not None and value is not None:
        kwargs[renamed] = value


def _describe(exc: openai.OpenAIError, base_url: str) -> BackendError:
    """The one-line error recorded on the message for a failed call (secrets redacted)."""
    return BackendError(redact(_said(exc, base_url)))


def _said(exc: openai.OpenAIError, base_url: str) -> str:
    if isinstance(exc, openai.APIConnectionError):
        # Which server: personas may each have their own (--base-url), and the SDK's
        # "Connection error." names none of them.
        return f"cannot reach the model server at {url_origin(base_url)}: {exc}"
    if isinstance(exc, openai.RateLimitError):
        return f"rate limited (429): {_detail(exc)}"
    if isinstance(exc, openai.APIStatusError):
        return f"model server error {exc.status_code}: {_detail(exc)}"
    return f"model call failed: {exc}"


def _retry_wait(exc: openai.OpenAIError, attempt: int) -> float | None:
    """Seconds to wait before retrying `exc` (None: not worth retrying), as the SDK would."""
    if isinstance(exc, openai.APIConnectionError):
        return min(0.5 * 2**attempt, 8.0)
    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in RETRY_STATUSES:
        return None
    headers = exc.response.headers
    if headers.get("x-should-retry") == "false":
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            value = float(headers.get(name, "")) * scale
        except ValueError:
            continue
        if 0 <= value <= 60:
            return value
    return min(0.5 * 2**attempt, 8.0)


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return shorten(str(message), SHOWN_CHARS)
    return shorten(str(exc), SHOWN_CHARS)
