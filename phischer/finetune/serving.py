"""How to serve a trained LoRA adapter behind an OpenAI-compatible URL (vLLM, Ollama, llama.cpp)."""

from __future__ import annotations

import shlex
from pathlib import Path

VLLM_URL = "http://127.0.0.1:8000/v1"
OLLAMA_URL = "http://127.0.0.1:11434/v1"
LLAMA_CPP_URL = "http://127.0.0.1:8080/v1"
# vLLM refuses any other --max-lora-rank ("max_lora_rank (12) must be one of (8, 16, ...)").
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
VLLM_MAX_LORA_RANK = VLLM_LORA_RANKS[-1]
# Ollama converts a safetensors LoRA only onto a base whose GGUF architecture is "llama" or
# "gemma2" (ollama's convert.ConvertAdapter; anything else is "unsupported architecture").
# The Hugging Face model_types that become those: Llama, Mistral 7B and Mixtral, Gemma 2.
OLLAMA_ADAPTER_TYPES = ("llama", "mistral", "mixtral", "gemma2")
OLLAMA_FAMILIES = "Llama-family (llama, mistral, mixtral) and Gemma 2 (gemma2) base models"


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that fits an adapter of this rank."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), rank)


def vllm_rank_warning(rank: int) -> str | None:
    """Why vLLM cannot serve an adapter of this rank (None: it can)."""
    if rank <= VLLM_MAX_LORA_RANK:
        return None
    return (
        f"vLLM serves LoRA adapters of rank up to {VLLM_MAX_LORA_RANK} (--max-lora-rank), not "
        f"{rank}: retrain with --lora-rank {VLLM_MAX_LORA_RANK} or less to serve it with vLLM, "
        "or serve it with llama.cpp"
    )


def ollama_can_convert(model_type: str | None) -> bool | None:
    """Whether Ollama's ADAPTER takes a LoRA on this base model type (None: type unknown)."""
    return None if model_type is None else model_type in OLLAMA_ADAPTER_TYPES


def resolve_base(base_model: str) -> tuple[str, bool]:
    """The base model as commands should name it, and whether it is a local folder.

    A local folder is written out absolute: Ollama reads a relative FROM against the
    Modelfile's folder, and the commands may be run from anywhere. A hub id stays as given.
    """
    path = Path(base_model).expanduser()
    return (str(path.resolve()), True) if path.is_dir() else (base_model, False)


def _hub_id_note(base: str) -> str:
    return (
        f"Ollama cannot read a Hugging Face hub id: replace the FROM value with the Ollama tag "
        f"of exactly {base}, or a local safetensors folder or GGUF file of those weights."
    )


def modelfile(base_model: str, adapter_dir: Path) -> str:
    """An Ollama Modelfile: the base the adapter was trained on, plus the adapter folder."""
    base, base_is_path = resolve_base(base_model)
    note = "" if base_is_path else f"# {_hub_id_note(base)}\n"
    return f"{note}FROM {base}\nADAPTER {adapter_dir.resolve()}\n"


def _vllm_section(base: str, adapter: Path, name: str, rank: int) -> str:
    q = shlex.quote
    warning = vllm_rank_warning(rank)
    if warning is not None:
        return f"Not for this adapter: {warning}.\n"
    return (
        f"    vllm serve {q(base)} --enable-lora --lora-modules {name}={q(str(adapter))} "
        f"--max-lora-rank {vllm_max_lora_rank(rank)} --port 8000\n\n"
        f"Check it: `curl {VLLM_URL}/models` lists `{name}`.\n"
    )


def _ollama_section(
    base: str, base_is_path: bool, adapter: Path, name: str, model_type: str | None
) -> str:
    q = shlex.quote
    convertible = ollama_can_convert(model_type)
    if convertible is False:
        return (
            f"Not for this adapter: Ollama converts safetensors LoRA adapters only for "
            f"{OLLAMA_FAMILIES}, and `{base}` is a `{model_type}` model (its config.json "
            "`model_type`), so no Modelfile was written. Serve it with vLLM or llama.cpp.\n"
        )
    caveat = (
        ""
        if convertible
        else f"\nOllama converts safetensors LoRA adapters only for {OLLAMA_FAMILIES}; the "
        f"type of `{base}` could not be read here: check that it is one of them.\n"
    )
    hub_note = "" if base_is_path else f"\n{_hub_id_note(base)} Then:\n"
    return f"""`{adapter / "Modelfile"}` was written next to the adapter:

    FROM {base}
    ADAPTER {adapter}
{caveat}{hub_note}
    ollama serve &    # unless the Ollama service already runs
    ollama create {name} -f {q(str(adapter / "Modelfile"))}

Train with `--serve-url {OLLAMA_URL}` (or `phischer persona edit NAME --base-url {OLLAMA_URL}`).
"""


def serving_guide(
    *,
    base_model: str,
    adapter_dir: Path,
    name: str,
    rank: int,
    serve_url: str,
    model_type: str | None = None,
) -> str:
    """SERVING.md: exact commands for each server, and what the persona now points at.

    `rank` is the adapter's own r; `model_type` the base's config.json model_type, which
    decides whether Ollama can take the adapter at all (None: unknown, said so).
    """
    q = shlex.quote
    adapter = adapter_dir.resolve()
    base, base_is_path = resolve_base(base_model)
    gguf_base = q(base) if base_is_path else "BASE_MODEL_DIR"
    gguf_note = "" if base_is_path else f"; BASE_MODEL_DIR is a local download of `{base}`"
    return f"""# Serving the `{name}` adapter

Adapter: `{adapter}` (LoRA r={rank} on `{base}`).
The persona now uses backend `openai`, model `{name}`, base URL `{serve_url}`: start one of
the servers below at that URL and text the persona; no code change is needed. To point the
persona at another server later: `phischer persona edit NAME --base-url URL` (its numbers
and conversations stay; `--api-key-env VAR` if that server wants a key).

## vLLM ({VLLM_URL})

{_vllm_section(base, adapter, name, rank)}
## Ollama ({OLLAMA_URL})

{_ollama_section(base, base_is_path, adapter, name, model_type)}
## llama.cpp ({LLAMA_CPP_URL})

    python convert_hf_to_gguf.py {gguf_base} --outfile base.gguf
    python convert_lora_to_gguf.py {q(str(adapter))} --base {gguf_base} --outfile {q(str(adapter / (name + "-lora.gguf")))}
    llama-server -m base.gguf --lora {q(str(adapter / (name + "-lora.gguf")))} --port 8080

(`convert_*.py` ship in the llama.cpp repository{gguf_note}.) Train with
`--serve-url {LLAMA_CPP_URL}`.
"""
