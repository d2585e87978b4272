"""`finetune start --provider local`: LoRA on a tiny model and tokenizer built in the test."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from phischer.cli import cli
from phischer.db import Database
from phischer.finetune import local
from phischer.models import FineTuneJob, Persona
from phischer.personas import PersonaSpec, add_persona

# Nothing here may reach the hub: every model and tokenizer is built from scratch.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")  # the train extra is installed in the project venv
transformers = pytest.importorskip("transformers")

SYSTEM = "you are ada"
PAIRS = [
    ("hi there", "hello dear friend"),
    ("how are you", "splendid thank you"),
    ("what is new", "the engine computes numbers"),
    ("good night", "sleep well dear"),
    ("tell me more", "the loom weaves patterns"),
    ("any plans", "a long walk today"),
]
# A simple template without {% generation %}: the label mask must come from prefixes.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
SPECIALS = ["<pad>", "<s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def conversation(user: str, assistant: str) -> list[dict[str, str]]:
    """One training example's messages."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user},
            {"role": "assistant", "content": assistant}]


def build_tokenizer(path: Path) -> Any:
    """A word-level fast tokenizer over the fixture's words, with the chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for pair in PAIRS for text in pair for w in text.split()}
                   | set(SYSTEM.split()) | {"extra", "words"})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=SPECIALS[3:],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(path))
    return tok


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide Llama and its tokenizer saved to a folder (built once per module)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tokenizer(path)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(str(path))
    return path


def write_train(path: Path, pairs: list[tuple[str, str]] = PAIRS) -> Path:
    """A chat JSONL of the pairs."""
    path.write_text("".join(json.dumps({"messages": conversation(u, a)}) + "\n"
                            for u, a in pairs))
    return path
