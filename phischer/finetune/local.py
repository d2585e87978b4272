"""Local LoRA fine-tuning with transformers + peft: chat template, assistant-only loss, resume.

torch, transformers and peft are the optional `train` extra, so they are imported inside
the functions that need them: the rest of phischer works without them.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from phischer import personas
from phischer.config import Settings
from phischer.db import Database
from phischer.finetune import jobs
from phischer.finetune.common import (
    LOSS_PNG,
    FineTuneError,
    Interrupted,
    format_errors_message,
    sanitize_suffix,
)
from phischer.finetune.serving import (
    modelfile,
    ollama_can_convert,
    resolve_base,
    serving_guide,
    vllm_rank_warning,
)
from phischer.models import FineTuneJob, utcnow
from phischer.printing import plural

IGNORE = -100  # label value the loss skips (PyTorch's CrossEntropyLoss ignore_index)
DEFAULT_SERVE_URL = "http://127.0.0.1:8000/v1"
INSTALL_HINT = (
    "--provider local needs the train extra: pip install -e '.[train]' "
    "(pin torch==2.13.0 for the CPU build)"
)

# The served model name goes into `--lora-modules NAME=PATH`, `ollama create NAME` and the
# default output folder: letters, digits, '.', '-' and '_' only, like an Ollama model name.
LORA_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A Hugging Face hub id: "name" or "org/name" (letters, digits, '-', '_', '.'), as the hub
# itself allows them. Anything else given to --base-model can only be a local path.
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")  # the folders the Trainer saves
# Warnings the libraries raise about their own code while training (nothing the user can
# change): filtered around the training call only, by message, category and module.
LIBRARY_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # Trainer.train() still reads the property it deprecated (transformers 5.x).
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers(\.|$)"),
    # GPT-2-style models store linear layers as Conv1D: peft notices and adapts by itself.
    (r"fan_in_fan_out is set to False", UserWarning, r"peft(\.|$)"),
)
# tokenizer.model_max_length when the tokenizer does not know it (transformers' placeholder
# is 1e30): anything this large is no real context length.
UNKNOWN_LENGTH = 10**9

Echo = Callable[[str], None]


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


# -- examples -> token ids and labels --------------------------------------------------------


def read_examples(path: Path) -> list[list[dict[str, str]]]:
    """The `messages` lists of a chat JSONL (already checked by `dataset check`)."""
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line)["messages"])
    return out


def _render(tokenizer: Any, messages: list[dict[str, str]], prompt: bool = False) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def assistant_spans(
    tokenizer: Any, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the model must learn to write.

    Each assistant turn spans from the end of the prompt rendered with the generation
    header to the end of the conversation rendered through that turn, so the span holds the
    reply and the template's end-of-turn marker (the model learns to stop). This works with
    any template, with or without `{% generation %}`. Templates that rewrite earlier turns
    (e.g. dropping reasoning) break the prefix property; then the reply text itself is found.
    """
    full = _render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = _render(tokenizer, messages[:i], prompt=True)
        through = _render(tokenizer, messages[: i + 1])
        if (
            len(through) > len(before) >= cursor
            and full.startswith(through)
            and through.startswith(before)
        ):
            spans.append((len(before), len(through)))
        else:
            start = full.find(message["content"], cursor)
            if start < 0:
                continue
            spans.append((start, start + len(message["content"])))
        cursor = spans[-1][1]
    return full, spans


def _encode_whole(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    # input_ids and labels (IGNORE outside assistant turns) of the whole conversation.
    full, spans = assistant_spans(tokenizer, messages)
    if tokenizer.is_fast:
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [
            tok if any(s < e_span and e > s_span for s_span, e_span in spans) else IGNORE
            for tok, (s, e) in zip(ids, enc["offset_mapping"], strict=True)
        ]
    else:
        # Slow tokenizers give no offsets: count the tokens of each prefix instead.
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        labels = [IGNORE] * len(ids)
        for start, end in spans:
            a = len(tokenizer(full[:start], add_special_tokens=False)["input_ids"])
            b = len(tokenizer(full[:end], add_special_tokens=False)["input_ids"])
            labels[a:b] = ids[a:b]
    return ids, labels


def _feature(ids: list[int], labels: list[int], max_length: int) -> dict[str, list[int]] | None:
    # Windows end with the reply being learned: cut from the front, not the end.
    ids, labels = ids[-max_length:], labels[-max_length:]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def encode_example(
    tokenizer: Any, messages: list[dict[str, str]], max_length: int
) -> dict[str, list[int]] | None:
    """input_ids and labels (IGNORE outside assistant turns), keeping the end when too long.

    Returns None when no assistant token survives truncation (nothing to learn from).
    """
    return _feature(*_encode_whole(tokenizer, messages), max_length)


@dataclass
class Encoded:
    """A file's training features and how many examples --max-seq-length cut or emptied."""

    features: list[dict[str, list[int]]]
    dropped: int = 0  # no assistant token left after the cut: not trained on
    truncated: int = 0  # longer than max_length and kept: their start was cut off


def encode_file(tokenizer: Any, path: Path, max_length: int, progress: bool = False) -> Encoded:
    """Encode every example of a file, counting the ones too long for max_length."""
    from tqdm import tqdm

    encoded = Encoded(features=[])
    examples = read_examples(path)
    # Tens of thousands of examples take seconds: a bar on a terminal, quiet in a pipe.
    bar = tqdm(
        examples,
        desc=f"Tokenizing {path.name}",
        unit="example",
        leave=False,
        file=sys.stderr,
        disable=None if progress else True,
    )
    with bar:
        for messages in bar:
            ids, labels = _encode_whole(tokenizer, messages)
            feature = _feature(ids, labels, max_length)
            if feature is None:
                encoded.dropped += 1
                continue
            if len(ids) > max_length:
                encoded.truncated += 1
            encoded.features.append(feature)
    return encoded


def report_cuts(path: Path, encoded: Encoded, max_length: int, echo: Echo) -> None:
    """Say how many examples of a file --max-seq-length cut, and how many it emptied."""
    if encoded.truncated:
        was, its = ("was", "its") if encoded.truncated == 1 else ("were", "their")
        echo(
            f"{path.name}: {plural(encoded.truncated, 'example')} longer than --max-seq-length "
            f"{max_length} {was} cut to {its} last {max_length} tokens ({its} start, system "
            "prompt included, is not seen in training)."
        )
    if encoded.dropped:
        its = "its" if encoded.dropped == 1 else "their"
        echo(
            f"{path.name}: skipped {plural(encoded.dropped, 'example')} with no assistant "
            f"tokens in {its} last {max_length} tokens."
        )


class PadCollator:
    """Right-pads a batch: pad id for inputs, IGNORE for labels, 0 in the attention mask."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in batch)
        ids, labels, mask = [], [], []
        for f in batch:
            pad = width - len(f["input_ids"])
            ids.append(f["input_ids"] + [self.pad_id] * pad)
            labels.append(f["labels"] + [IGNORE] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


# -- training --------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run did."""

    adapter_dir: Path
    losses: list[float]  # training loss per logged step of this run
    global_step: int
    steps_this_run: int
    resumed_from: str | None
    examples: int
    dropped: int
    tokens_seen: int
    eval_loss: float | None = None
    truncated: int = 0  # examples cut to --max-seq-length (their start lost)
    # (step, loss) from the trainer's log history, earlier runs of a resumed job included.
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    already_complete: bool = False  # the checkpoint had reached the plan: nothing was trained


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


def require_train_extra() -> None:
    """Fail with the install hint unless torch, transformers and peft can be imported."""
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise FineTuneError(INSTALL_HINT) from None


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


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The highest-numbered checkpoint-N folder in checkpoints, as the Trainer resumes it."""
    if not checkpoints.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in checkpoints.iterdir()
        if (m := CHECKPOINT_RE.fullmatch(p.name)) and p.is_dir()
    ]
    return max(found)[1] if found else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def same_base_model(recorded: str, requested: str) -> bool:
    """Whether an adapter's recorded base model is the one asked for (a folder or a hub id)."""
    if recorded == requested:
        return True
    was, now = Path(recorded).expanduser(), Path(requested).expanduser()
    if was.is_dir() and now.is_dir():
        return was.resolve() == now.resolve()
    # A folder since moved, named relative to another directory, or the hub id it was
    # downloaded as: its name is all there is to compare.
    return was.name == now.name


def check_checkpoint_settings(output_dir: Path, lora: LoraSettings, base_model: str) -> None:
    """Refuse to resume or finish a checkpoint of another base model, rank, alpha or targets.

    Resuming would fail deep in load_state_dict (or, on a base of the same shape, go on
    training weights learnt on another model), and a finished run would be served with
    commands for a base or rank its adapter does not have: say so in one line before
    anything loads.
    """
    checkpoints = output_dir / "checkpoints"
    last = last_checkpoint(checkpoints)
    if last is None:
        return
    config = _read_json(last / "adapter_config.json")
    differs = []
    recorded_base = config.get("base_model_name_or_path")
    if isinstance(recorded_base, str) and not same_base_model(recorded_base, base_model):
        differs.append(f"--base-model {recorded_base}")
    if config.get("r") not in (None, lora.rank):
        differs.append(f"--lora-rank {config['r']}")
    if config.get("lora_alpha") not in (None, lora.alpha):
        differs.append(f"--lora-alpha {config['lora_alpha']}")
    # peft records "all-linear" as the module names it found, so only a list given here
    # can be compared with the one it recorded.
    recorded = config.get("target_modules")
    targets = lora.target_modules
    if isinstance(targets, list) and isinstance(recorded, list) and set(recorded) != set(targets):
        differs.append(f"target modules {', '.join(sorted(recorded))}")
    if differs:
        raise FineTuneError(
            f"{checkpoints} was trained with {' '.join(differs)}: delete it or pass another "
            "--output-dir"
        )


def adapter_rank(adapter_dir: Path, default: int) -> int:
    """The LoRA rank r the saved adapter really has (its adapter_config.json), else default."""
    rank = _read_json(adapter_dir / "adapter_config.json").get("r")
    return rank if isinstance(rank, int) and rank > 0 else default


def base_model_type(base_model: str) -> str | None:
    """The base model's config.json model_type ("llama", "qwen2"…), read without a download.

    A local folder's config.json, else the hub cache's copy (training put it there); None
    when neither is readable.
    """
    path = Path(base_model).expanduser()
    config_file: Path | None = path / "config.json"
    if not path.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(base_model, "config.json")
        except (ImportError, ValueError):  # no train extra, or not a valid repo id
            cached = None
        config_file = Path(cached) if isinstance(cached, str) else None
    if config_file is None:
        return None
    model_type = _read_json(config_file).get("model_type")
    return model_type if isinstance(model_type, str) else None


def _checkpoint_state(checkpoint: Path) -> dict[str, Any]:
    return _read_json(checkpoint / "trainer_state.json")  # unreadable: {} (resume reports it)


def finished_checkpoint(output_dir: Path, lora: LoraSettings) -> tuple[Path, int] | None:
    """The last checkpoint and its step, if it already reached this run's plan; else None.

    The plan is --max-steps when given, else the epochs: a checkpoint's trainer_state.json
    holds its step and (fractional) epoch, so nothing heavy is loaded to tell.
    """
    last = last_checkpoint(output_dir / "checkpoints")
    if last is None:
        return None
    state = _checkpoint_state(last)
    try:
        step, epoch = int(state.get("global_step") or 0), float(state.get("epoch") or 0)
    except (TypeError, ValueError):
        return None
    done = step >= lora.max_steps if lora.max_steps else epoch >= lora.epochs - 1e-6
    return (last, step) if done and step > 0 else None


def _plan(lora: LoraSettings) -> str:
    if lora.max_steps:
        return f"--max-steps {lora.max_steps}"
    return plural(lora.epochs, "epoch")


def _finished_result(
    base_model: str, output_dir: Path, lora: LoraSettings, checkpoint: Path, step: int, echo: Echo
) -> TrainResult:
    # A rerun of a finished run: the Trainer would take one more step past the end, so say
    # where the adapter is and hand back the checkpoint's history instead of training.
    echo(
        f"Already complete: {checkpoint.name} reached step {step} ({_plan(lora)}); the "
        f"adapter is in {output_dir}. To train again, delete {output_dir / 'checkpoints'} "
        "or pass another --output-dir."
    )
    if not (output_dir / "adapter_model.safetensors").is_file():
        # Stopped between the last checkpoint and the final save: the checkpoint has it.
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(checkpoint / name, output_dir / name)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(base_model).save_pretrained(str(output_dir))
    history = _checkpoint_state(checkpoint).get("log_history") or []
    return TrainResult(
        adapter_dir=output_dir,
        losses=[],
        global_step=step,
        steps_this_run=0,
        resumed_from=str(checkpoint),
        examples=0,
        dropped=0,
        tokens_seen=0,
        loss_history=_history(history, "loss"),
        eval_history=_history(history, "eval_loss"),
        already_complete=True,
    )


def _history(log_history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    # (step, value) of a Trainer log history. The run's closing summary has "train_loss",
    # not "loss", so it is not a step.
    return [(int(e["step"]), float(e[key])) for e in log_history if key in e]


@contextmanager
def quiet_library(local_model: bool) -> Iterator[None]:
    """Keep transformers' own console output out of a training call; restore it after.

    Its info/warning log lines are raised to errors only, the library warnings in
    LIBRARY_WARNINGS are filtered, and for a local folder (nothing to download) its
    "Loading weights" bars are hidden; a hub download keeps its progress bars.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        for message, category, module in LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        hf_logging.set_verbosity_error()
        if local_model:
            hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars and local_model:
                hf_logging.enable_progress_bar()


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """The whole message of `exc` on one line, cut at `limit` characters."""
    # Not just its first line: transformers' "Couldn't instantiate the backend tokenizer
    # from one of:" puts what is missing on the lines after it.
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _load(base_model: str) -> tuple[Any, Any]:
    import torch  # train_lora checked the train extra first
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        dtype = torch.float32
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise FineTuneError(f"cannot load base model {base_model}: {_one_line(exc)}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise FineTuneError(
            f"{base_model} has no chat template: use an instruct/chat model "
            "(its tokenizer_config.json defines chat_template)"
        )
    return tokenizer, model


def context_length(model: Any, tokenizer: Any) -> int | None:
    """The most tokens the model reads: its config's position limit or the tokenizer's, if known."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limits = [getattr(text, key, None) for key in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    known = [n for n in limits if isinstance(n, int) and 0 < n < UNKNOWN_LENGTH]
    return min(known) if known else None


def _fit_context(base_model: str, model: Any, tokenizer: Any, requested: int, echo: Echo) -> int:
    # Longer inputs than the model has positions for fail mid-training ("index out of range
    # in self" for GPT-2's learned positions): cap them, and say so.
    limit = context_length(model, tokenizer)
    if limit is None or requested <= limit:
        return requested
    echo(
        f"Note: {Path(base_model).name or base_model} reads at most {limit} tokens: "
        f"--max-seq-length {requested} lowered to {limit}."
    )
    return limit


def train_lora(
    base_model: str,
    train_path: Path,
    output_dir: Path,
    lora: LoraSettings,
    *,
    validation_path: Path | None = None,
    echo: Echo = print,
    progress: bool = True,
    on_start: Callable[[bool], None] | None = None,
) -> TrainResult:
    """Train (or resume) a LoRA adapter and save it to output_dir.

    A checkpoint that already reached the plan (--max-steps, else the epochs) is not
    trained again: the result says `already_complete` and holds the checkpoint's history.
    `on_start(already_complete)` runs once the model and data are loaded, just before
    training (or before a finished run is handed back): nothing failed to load by then.
    """
    check_base_model(base_model)
    require_train_extra()
    check_checkpoint_settings(output_dir, lora, base_model)
    finished = finished_checkpoint(output_dir, lora)
    with quiet_library(local_model=Path(base_model).is_dir()):
        if finished is not None:
            if on_start is not None:
                on_start(True)
            return _finished_result(base_model, output_dir, lora, *finished, echo)
        return _train(
            base_model, train_path, output_dir, lora, validation_path, echo, progress, on_start
        )


def _train(
    base_model: str,
    train_path: Path,
    output_dir: Path,
    lora: LoraSettings,
    validation_path: Path | None,
    echo: Echo,
    progress: bool,
    on_start: Callable[[bool], None] | None,
) -> TrainResult:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    tokenizer, model = _load(base_model)
    max_length = _fit_context(base_model, model, tokenizer, lora.max_seq_length, echo)

    encoded = encode_file(tokenizer, train_path, max_length, progress)
    report_cuts(train_path, encoded, max_length, echo)
    if not encoded.features:
        raise FineTuneError(f"{train_path}: no example has an assistant turn to learn from")
    features = encoded.features
    eval_features = None
    if validation_path is not None:
        encoded_eval = encode_file(tokenizer, validation_path, max_length, progress)
        report_cuts(validation_path, encoded_eval, max_length, echo)
        eval_features = encoded_eval.features

    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    steps_per_epoch = math.ceil(len(features) / lora.batch_size)
    total = lora.max_steps or steps_per_epoch * lora.epochs
    checkpoints = output_dir / "checkpoints"
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=lora.batch_size,
        per_device_eval_batch_size=lora.batch_size,
        num_train_epochs=lora.epochs,
        max_steps=lora.max_steps or -1,
        learning_rate=lora.learning_rate,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        # Per-step losses on short runs (tests, smoke runs); every 10 steps on real ones.
        logging_steps=1 if total <= 100 else 10,
        save_strategy="steps",
        save_steps=lora.save_steps,
        save_total_limit=2,
        seed=lora.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen=True,
        # Our own bar (below) shows the progress and the loss; transformers' bars would not.
        disable_tqdm=True,
        use_cpu=not _cuda(),
    )
    checkpoint = last_checkpoint(checkpoints)
    last = str(checkpoint) if checkpoint is not None else None
    start_step = 0
    if checkpoint is not None:
        start_step = int(_checkpoint_state(checkpoint).get("global_step") or 0)
        echo(f"Resuming from {last} (step {start_step}).")

    counter = _step_counter(TrainerCallback)
    bar = _progress_bar(TrainerCallback, show=progress)
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=PadCollator(pad_id),
        train_dataset=features,
        eval_dataset=eval_features or None,
        callbacks=[counter, bar],
    )
    # The Trainer prints every log dict ({'loss': '3.042', ...}) through one of these.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if on_start is not None:
        on_start(False)
    echo(
        f"Training a rank-{lora.rank} LoRA on {base_model}: {plural(len(features), 'example')}, "
        f"{plural(total, 'step')} (batch {lora.batch_size}, lr {lora.learning_rate:g})."
    )
    try:
        trainer.train(resume_from_checkpoint=last)
    finally:
        # The Trainer skips on_train_end when training raises (or Ctrl-C): without this the
        # error would be printed on the bar's line.
        bar.close()
    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    losses = [
        float(entry["loss"])
        for entry in trainer.state.log_history
        if "loss" in entry and entry.get("step", 0) > start_step
    ]
    result = TrainResult(
        adapter_dir=output_dir,
        losses=losses,
        global_step=trainer.state.global_step,
        steps_this_run=counter.steps,
        resumed_from=last,
        examples=len(features),
        dropped=encoded.dropped,
        tokens_seen=int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0),
        truncated=encoded.truncated,
    )
    if eval_features:
        result.eval_loss = float(trainer.evaluate()["eval_loss"])
    # Read after evaluate(): it appends its {"eval_loss", "step"} entry to the same history.
    result.loss_history = _history(trainer.state.log_history, "loss")
    result.eval_history = _history(trainer.state.log_history, "eval_loss")
    return result


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _step_counter(base: type) -> Any:
    # Defined here because TrainerCallback is only importable with the train extra.
    class StepCounter(base):  # type: ignore[misc, valid-type]
        """Counts the optimizer steps this run made (a resumed run starts mid-way)."""

        steps = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.steps += 1

    return StepCounter()


def _progress_bar(base: type, *, show: bool) -> Any:
    # One bar for the whole run with the latest training loss; it starts at a resumed step.
    class ProgressBar(base):  # type: ignore[misc, valid-type]
        """A tqdm bar over the optimizer steps, with the last logged loss as its postfix."""

        bar: Any = None
        out: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            from tqdm import tqdm

            self.out = sys.stderr
            self.bar = tqdm(
                file=self.out,
                total=state.max_steps,
                initial=state.global_step,
                desc="Training",
                unit="step",
                dynamic_ncols=True,
                # None: only on a terminal, as the OpenAI bars; a pipe or log file gets no
                # \r frames.
                disable=None if show else True,
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if self.bar is not None and logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}")

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.close()

        def close(self) -> None:
            """End the bar's line (once), so what is printed next starts on its own."""
            if self.bar is not None:
                self.bar.close()
                self.bar = None
                self.out.flush()  # its last newline before the summary on stdout

    return ProgressBar()


def write_loss_plot(result: TrainResult, path: Path, title: str) -> str:
    """Draw the run's loss curve to path; returns the summary line (it never fails the job)."""
    from phischer import plots

    train, valid = dict(result.loss_history), dict(result.eval_history)
    steps = sorted(train.keys() | valid.keys())
    try:
        plots.loss_curve(
            steps,
            [train.get(s) for s in steps],
            [valid.get(s) for s in steps] if valid else None,
            path,
            title,
        )
    except plots.PlotError as exc:
        # The adapter is trained and saved by now: a missing plot is not worth failing for.
        return f"No loss curve ({exc})."
    return f"Loss curve: {path}"


def copy_loss_plot(job: FineTuneJob, target: Path) -> str:
    """`finetune status LOCAL_JOB --plot`: copy the run's loss.png; returns the line to print."""
    source = Path(job.output_dir or ".") / LOSS_PNG
    if not source.is_file():
        return f"No loss curve: {job.job_id} wrote no {source} (nothing written to {target})."
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return f"Loss curve: {target}"


# -- the `finetune start --provider local` service ---------------------------------------------


def _new_job_id(session: Any) -> str:
    base = f"local-{utcnow():%Y%m%d-%H%M%S}"
    job_id, n = base, 1
    while jobs.find_job(session, job_id) is not None:
        n += 1
        job_id = f"{base}-{n}"
    return job_id


def _finished_job(session: Any, output_dir: Path, persona_id: int, name: str) -> FineTuneJob | None:
    # The succeeded job that trained this folder for this persona and model name, if any.
    return session.scalars(
        sa.select(FineTuneJob)
        .where(
            FineTuneJob.provider == "local",
            FineTuneJob.status == "succeeded",
            FineTuneJob.output_dir == str(output_dir.resolve()),
            FineTuneJob.persona_id == persona_id,
            FineTuneJob.fine_tuned_model == name,
        )
        .order_by(FineTuneJob.id.desc())
    ).first()


def _record_local_job(
    session: Any, request: LocalRequest, output_dir: Path, persona_id: int, name: str
) -> FineTuneJob:
    job_id = _new_job_id(session)
    # A run killed hard (SIGKILL, power loss) never recorded its end: this run resumes it
    # from the same folder, so close its row instead of leaving it "running" for good.
    stale = session.scalars(
        sa.select(FineTuneJob).where(
            FineTuneJob.provider == "local",
            FineTuneJob.status == "running",
            FineTuneJob.output_dir == str(output_dir.resolve()),
        )
    )
    for old in stale:
        jobs.apply_update(
            session,
            old,
            jobs.JobUpdate(status="cancelled", error=f"interrupted; resumed by {job_id}"),
        )
    return jobs.record_job(
        session,
        job_id=job_id,
        provider="local",
        persona_id=persona_id,
        # A folder as an absolute path: `finetune list` may be run from anywhere.
        base_model=resolve_base(request.base_model)[0],
        status="running",
        training_file=str(request.train_path.resolve()),
        validation_file=(
            str(request.validation_path.resolve()) if request.validation_path else None
        ),
        suffix=name,
        hyperparameters={k: v for k, v in asdict(request.lora).items() if v is not None},
        output_dir=str(output_dir.resolve()),
    )


class _JobRecorder:
    """Records a run's job when training starts: a model that fails to load records nothing."""

    def __init__(
        self, db: Database, request: LocalRequest, output_dir: Path, persona_id: int, name: str
    ) -> None:
        self.db, self.request, self.output_dir = db, request, output_dir
        self.persona_id, self.name = persona_id, name
        self.job_id: str | None = None
        self.kept = False  # a finished run's job, reused: it keeps its success

    def __call__(self, already_complete: bool) -> None:
        """train_lora's on_start: record a new running job, or find the finished run's."""
        with self.db.write() as session:
            # Rerunning a finished run trains nothing: it keeps that run's job, not a new one.
            previous = None
            if already_complete:
                previous = _finished_job(session, self.output_dir, self.persona_id, self.name)
            row = previous or _record_local_job(
                session, self.request, self.output_dir, self.persona_id, self.name
            )
            self.job_id, self.kept = row.job_id, previous is not None

    def end(self, status: str, error: str) -> None:
        """Store how a run that had started ended early (a reused job is left as it was)."""
        if self.job_id is None or self.kept:
            return
        with self.db.write() as session:
            job = jobs.get_job(session, self.job_id)
            jobs.apply_update(session, job, jobs.JobUpdate(status=status, error=error))


def _resume_hint(output_dir: Path) -> str:
    # What a rerun of the same command will do, from what is on disk now.
    last = last_checkpoint(output_dir / "checkpoints")
    if last is None:
        return "no checkpoint was saved yet: rerun the same command to start again"
    step = _checkpoint_state(last).get("global_step") or "?"
    return f"rerun the same command to resume from {last.name} (step {step})"


def _interrupted(recorder: _JobRecorder, output_dir: Path) -> Interrupted:
    if recorder.job_id is None or recorder.kept:
        return Interrupted("Interrupted before training started: nothing was trained.")
    hint = _resume_hint(output_dir)
    recorder.end("cancelled", f"interrupted: {hint}")
    return Interrupted(f"Interrupted: {recorder.job_id} is cancelled; {hint}.")


def _write_serving_notes(request: LocalRequest, output_dir: Path, name: str, rank: int) -> str:
    # SERVING.md always; the Modelfile only for a base Ollama can put the adapter on.
    model_type = base_model_type(request.base_model)
    guide = serving_guide(
        base_model=request.base_model,
        adapter_dir=output_dir,
        name=name,
        rank=rank,
        serve_url=request.serve_url,
        model_type=model_type,
    )
    (output_dir / "SERVING.md").write_text(guide, encoding="utf-8")
    model_file = output_dir / "Modelfile"
    if ollama_can_convert(model_type) is False:
        model_file.unlink(missing_ok=True)  # an earlier version wrote one that cannot work
    else:
        model_file.write_text(modelfile(request.base_model, output_dir.resolve()), "utf-8")
    return guide


def start_local(
    db: Database, settings: Settings, request: LocalRequest, *, echo: Echo
) -> FineTuneJob:
    """Check the data, train the adapter, write serving notes, and point the persona at it."""
    from phischer.dataset_check import check_file

    with db.read() as session:
        persona = personas.get_persona(session, request.persona)
        persona_id, persona_name = persona.id, persona.name
    name = lora_name(persona_name, request.lora_name)
    # The persona is pointed there after training: refuse a URL it could never call first.
    personas.check_base_url(request.serve_url, "--serve-url")
    output_dir = request.output_dir or settings.instance_path / "adapters" / name
    # Models come from a local folder (or the hub cache): a path that is not there is a typo.
    check_base_model(request.base_model)
    for path in filter(None, (request.train_path, request.validation_path)):
        report = check_file(path, progress=True)
        if report.errors:
            echo(report.format())
            raise FineTuneError(format_errors_message(path, report, "nothing was trained"))
    # Before the job is recorded: a missing extra is not a failed training run.
    require_train_extra()
    warning = vllm_rank_warning(request.lora.rank)
    if warning is not None:
        echo(f"Warning: {warning}.")
    recorder = _JobRecorder(db, request, output_dir, persona_id, name)
    try:
        result = train_lora(
            request.base_model,
            request.train_path,
            output_dir,
            request.lora,
            validation_path=request.validation_path,
            echo=echo,
            on_start=recorder,
        )
    except KeyboardInterrupt:
        raise _interrupted(recorder, output_dir) from None
    except Exception as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        recorder.end("failed", message)
        if isinstance(exc, FineTuneError):
            raise
        raise FineTuneError(f"local training failed: {message}") from exc
    assert recorder.job_id is not None  # train_lora calls on_start before it returns

    # The adapter's own rank: that is what the servers must be started for.
    rank = adapter_rank(output_dir, request.lora.rank)
    guide = _write_serving_notes(request, output_dir, name, rank)
    if result.losses:
        echo(
            f"Loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f} "
            f"over {plural(result.steps_this_run, 'step')}."
        )
    if result.eval_loss is not None:
        echo(f"Validation loss: {result.eval_loss:.3f}")
    base_name = Path(request.base_model).name or request.base_model
    plot = output_dir / LOSS_PNG
    if result.already_complete and plot.is_file():
        echo(f"Loss curve: {plot}")  # drawn by the run that trained it (with validation)
    else:
        title = f"{name}: rank-{rank} LoRA on {base_name}"
        echo(write_loss_plot(result, plot, title))
    with db.write() as session:
        stored = jobs.get_job(session, recorder.job_id)
        jobs.apply_update(
            session,
            stored,
            jobs.JobUpdate(status="succeeded", trained_tokens=result.tokens_seen or None),
        )
        stored.fine_tuned_model = name
        switched = jobs.switch_persona(session, stored, request.serve_url)
        switched_name, row = switched.name if switched else None, stored
    echo(guide)
    notes = output_dir / "SERVING.md"
    if switched_name is None:
        raise FineTuneError(
            jobs.removed_while_trained(
                f"persona {persona_name!r}",
                recorder.job_id,
                f"the adapter is in {output_dir} (serving notes: {notes})",
                f"--model {name} --base-url {request.serve_url}",
            )
        )
    echo(
        f"Persona {switched_name} now uses model {name} at {request.serve_url} "
        f"(serving notes: {notes})."
    )
    return row
