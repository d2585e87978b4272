"""How to serve a trained LoRA adapter behind an OpenAI-compatible URL (vLLM, Ollama, llama.cpp)."""

from __future__ import annotations

import shlex
from pathlib import Path

VLLM_URL = "http://127.0.0.1:8000/v1"
OLLAMA_URL = "http://127.0.0.1:11434/v1"
LLAMA_CPP_URL = "http://127.0.0.1:8080/v1"
# vLLM refuses any other --max-lora-rank ("max_lora_rank (12) must be one of (8, 16, ...)").
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that fits an adapter of this rank."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), rank)


def _base(base_model: str) -> tuple[str, bool]:
    # A local folder is written out absolute: Ollama reads a relative FROM against the
    # Modelfile's folder, and the commands may be run from anywhere.
    path = Path(base_model).expanduser()
    return (str(path.resolve()), True) if path.is_dir() else (base_model, False)


def modelfile(base_model: str, adapter_dir: Path) -> str:
    """An Ollama Modelfile: the base the adapter was trained on, plus the adapter folder."""
    return f"FROM {_base(base_model)[0]}\nADAPTER {adapter_dir.resolve()}\n"


def serving_guide(
    *, base_model: str, adapter_dir: Path, name: str, rank: int, serve_url: str
) -> str:
    """SERVING.md: exact commands for each server, and what the persona now points at."""
    q = shlex.quote
    adapter = adapter_dir.resolve()
    base, base_is_path = _base(base_model)
    gguf_base = q(base) if base_is_path else "BASE_MODEL_DIR"
    ollama_note = (
        ""
        if base_is_path
        else f"\n`FROM` must be the same weights the adapter was trained on: a local copy of "
        f"`{base}` (safetensors folder) or the Ollama tag of exactly that model.\n"
    )
    gguf_note = "" if base_is_path else f"; BASE_MODEL_DIR is a local download of `{base}`"
    return f"""# Serving the `{name}` adapter

Adapter: `{adapter}` (LoRA r={rank} on `{base}`).
The persona now uses backend `openai`, model `{name}`, base URL `{serve_url}`: start one of
the servers below at that URL and text the persona; no code change is needed. To point the
persona at another server later: `phischer persona remove NAME`, then `phischer persona add
NAME --keyword KW --backend openai --model {name} --base-url URL`.

## vLLM ({VLLM_URL})

    vllm serve {q(base)} --enable-lora --lora-modules {name}={q(str(adapter))} --max-lora-rank {vllm_max_lora_rank(rank)} --port 8000

Check it: `curl {VLLM_URL}/models` lists `{name}`.

## Ollama ({OLLAMA_URL})

`{adapter / "Modelfile"}` was written next to the adapter:

    FROM {base}
    ADAPTER {adapter}
{ollama_note}
    ollama serve &    # unless the Ollama service already runs
    ollama create {name} -f {q(str(adapter / "Modelfile"))}

Train with `--serve-url {OLLAMA_URL}` (or re-add the persona with that `--base-url`).

## llama.cpp ({LLAMA_CPP_URL})

    python convert_hf_to_gguf.py {gguf_base} --outfile base.gguf
    python convert_lora_to_gguf.py {q(str(adapter))} --base {gguf_base} --outfile {q(str(adapter / (name + "-lora.gguf")))}
    llama-server -m base.gguf --lora {q(str(adapter / (name + "-lora.gguf")))} --port 8080

(`convert_*.py` ship in the llama.cpp repository{gguf_note}.) Train with
`--serve-url {LLAMA_CPP_URL}`.
"""
