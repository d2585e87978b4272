"""What `finetune start --provider local` asks for, and the checks of the names it is given."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phischer.finetune.common import FineTuneError, sanitize_suffix
from phischer.finetune.serving import VLLM_URL

DEFAULT_SERVE_URL = VLLM_URL  # the server SERVING.md names first

# The served model name goes into `--lora-modules NAME=PATH`, `ollama create NAME` and the
# default output folder: letters, digits, '.', '-' and '_' only, like an Ollama model name.
LORA_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A Hugging Face hub id: "name" or "org/name" (letters, digits, '-', '_', '.'), as the hub
# itself allows them. Anything else given to --base-model can only be a local path.
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass(frozen=True)
class LoraSettings:
    """Training knobs (the `finetune start --provider local` flags)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    learning_rate: float = 2e-4
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 4
    max_seq_length: int = 1024
    save_steps: int = 50
    seed: int = 0
    target_modules: str | list[str] = "all-linear"


@dataclass(frozen=True)
class LocalRequest:
    """What `finetune start --provider local` asks for."""

    train_path: Path
    persona: str
    base_model: str
    validation_path: Path | None = None
    output_dir: Path | None = None
    serve_url: str = DEFAULT_SERVE_URL
    lora_name: str | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)

    @classmethod
    def from_options(cls, train: Path, **o: Any) -> LocalRequest:
        """Build from the click options of `finetune start`."""
        if not o.get("base_model"):
            raise FineTuneError(
                "--provider local needs --base-model: a local model folder or a hub id "
                "(e.g. Qwen/Qwen2.5-1.5B-Instruct)"
            )
        lora = LoraSettings(
            rank=o["lora_rank"],
            alpha=o["lora_alpha"],
            learning_rate=o["learning_rate"],
            epochs=o.get("epochs") or 3,
            max_steps=o.get("max_steps"),
            batch_size=o["batch_size"],
            max_seq_length=o["max_seq_length"],
            save_steps=o["save_steps"],
        )
        return cls(
            train_path=train,
            persona=o["persona"],
            base_model=o["base_model"],
            validation_path=o.get("validation"),
            output_dir=o.get("output_dir"),
            serve_url=o.get("serve_url") or DEFAULT_SERVE_URL,
            lora_name=o.get("lora_name"),
            lora=lora,
        )


def lora_name(persona_name: str, requested: str | None) -> str:
    """The model name the server exposes: --lora-name as given, else from the persona name."""
    if requested is None:
        return sanitize_suffix(persona_name, flag="--lora-name")
    if not LORA_NAME_RE.fullmatch(requested):
        raise FineTuneError(
            f"--lora-name {requested!r} must be 1-64 letters, digits, '.', '-' or '_' "
            "(it becomes a model name and a folder name), e.g. --lora-name ada-v2"
        )
    return requested


def check_base_model(base_model: str) -> None:
    """Refuse a --base-model that is neither a local model folder nor a hub id, in one line.

    Only looks at the disk (no heavy import): a folder must hold config.json; a name that
    does not exist here must look like a hub id ("Qwen/Qwen2.5-1.5B-Instruct"), not a path.
    """
    path = Path(base_model)
    hint = "a local model folder holding config.json, or a hub id like Qwen/Qwen2.5-1.5B-Instruct"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FineTuneError(
                f"--base-model {base_model}: that folder has no config.json (give the folder "
                "that holds the model's config.json, weights and tokenizer)"
            )
        return
    if path.exists():
        raise FineTuneError(f"--base-model {base_model} is a file: give {hint}")
    parent = path.parent
    looks_local = parent != Path(".") and parent.is_dir()  # e.g. models/typo with models/ here
    if looks_local or not HUB_ID_RE.fullmatch(base_model) or ".." in base_model:
        raise FineTuneError(f"--base-model {base_model}: no such folder (give {hint})")
