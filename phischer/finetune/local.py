"""Local LoRA fine-tuning with transformers + peft: load the model, train, and start_local.

torch, transformers and peft are the optional `train` extra, so they are imported inside
the functions that need them: the rest of phischer works without them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from phischer import personas
from phischer.config import Settings
from phischer.db import Database
from phischer.finetune import jobs
from phischer.finetune.checkpoints import (
    adapter_rank,
    check_checkpoint_settings,
    checkpoint_state,
    finished_checkpoint,
    finished_result,
    last_checkpoint,
    read_json,
    save_adapter,
)
from phischer.finetune.common import (
    LOSS_PNG,
    Echo,
    FineTuneError,
    check_dataset,
    one_line,
)
from phischer.finetune.encode import PadCollator, encode_file, report_cuts
from phischer.finetune.local_jobs import PROGRESS_FILE, JobRecorder, interrupted, training_lock
from phischer.finetune.local_request import LocalRequest, LoraSettings, check_base_model, lora_name
from phischer.finetune.loss_plot import write_loss_plot
from phischer.finetune.serving import (
    modelfile,
    ollama_can_convert,
    serving_guide,
    vllm_rank_warning,
)
from phischer.finetune.train_result import TrainResult, history_of
from phischer.finetune.trainer_callbacks import progress_bar, progress_file, step_counter
from phischer.models import FineTuneJob
from phischer.printing import plural

INSTALL_HINT = (
    "--provider local needs the train extra: pip install -e '.[train]' "
    "(pin torch==2.13.0 for the CPU build)"
)
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


def require_train_extra() -> None:
    """Fail with the install hint unless torch, transformers and peft can be imported."""
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise FineTuneError(INSTALL_HINT) from None


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
    model_type = read_json(config_file).get("model_type")
    return model_type if isinstance(model_type, str) else None


@contextmanager
def quiet_library(local_model: bool) -> Iterator[None]:
    """Keep transformers' own console output out of a training call; restore it after.

    Its (and huggingface_hub's) info/warning log lines are raised to errors only, the library
    warnings in LIBRARY_WARNINGS are filtered, and for a local folder (nothing to download)
    its "Loading weights" bars are hidden; a hub download keeps its progress bars.
    """
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    verbosity, hub_verbosity = hf_logging.get_verbosity(), hub_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        for message, category, module in LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        hf_logging.set_verbosity_error()
        # A hub id while offline: every retry of every request is a warning (45 lines) before
        # the one-line error that says the model could not be loaded.
        hub_logging.set_verbosity_error()
        if local_model:
            hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            hub_logging.set_verbosity(hub_verbosity)
            if bars and local_model:
                hf_logging.enable_progress_bar()


def _one_line(exc: BaseException, limit: int = 400) -> str:
    """The whole message of `exc` on one line, cut at `limit` characters."""
    # Not just its first line: transformers' "Couldn't instantiate the backend tokenizer
    # from one of:" puts what is missing on the lines after it.
    return one_line(str(exc), limit) or type(exc).__name__


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
            return finished_result(base_model, output_dir, lora, *finished, echo)
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
        start_step = int(checkpoint_state(checkpoint).get("global_step") or 0)
        echo(f"Resuming from {last} (step {start_step}).")

    counter = step_counter(TrainerCallback)
    bar = progress_bar(TrainerCallback, show=progress)
    progress_out = progress_file(TrainerCallback, output_dir / PROGRESS_FILE)
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=PadCollator(pad_id),
        train_dataset=features,
        eval_dataset=eval_features or None,
        callbacks=[counter, bar, progress_out],
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

    def write(folder: Path) -> None:
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))

    save_adapter(output_dir, write)
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
    result.loss_history = history_of(trainer.state.log_history, "loss")
    result.eval_history = history_of(trainer.state.log_history, "eval_loss")
    return result


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# -- the `finetune start --provider local` service ---------------------------------------------


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


def _run_recorded(
    request: LocalRequest, output_dir: Path, recorder: JobRecorder, echo: Echo
) -> TrainResult:
    # train_lora, its end stored in the job the recorder made: failed, or cancelled by Ctrl-C.
    try:
        return train_lora(
            request.base_model,
            request.train_path,
            output_dir,
            request.lora,
            validation_path=request.validation_path,
            echo=echo,
            on_start=recorder,
        )
    except KeyboardInterrupt:
        raise interrupted(recorder, output_dir) from None
    except Exception as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        recorder.end("failed", message)
        if isinstance(exc, FineTuneError):
            raise
        raise FineTuneError(f"local training failed: {message}") from exc


def start_local(
    db: Database, settings: Settings, request: LocalRequest, *, echo: Echo
) -> FineTuneJob:
    """Check the data, train the adapter, write serving notes, and point the persona at it."""
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
        check_dataset(path, echo, "nothing was trained")
    # Before the job is recorded: a missing extra is not a failed training run.
    require_train_extra()
    warning = vllm_rank_warning(request.lora.rank)
    if warning is not None:
        echo(f"Warning: {warning}.")
    with training_lock(output_dir):
        # Inside the lock: a run refused for the folder starts no second job to warn of.
        jobs.warn_unfinished(db, persona_id, persona_name, echo)
        recorder = JobRecorder(db, request, output_dir, persona_id, name)
        result = _run_recorded(request, output_dir, recorder, echo)
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
        serve_flags = f"--model {name} --base-url {request.serve_url}"
        with db.write() as session:
            stored = jobs.get_job(session, recorder.job_id)
            jobs.apply_update(
                session,
                stored,
                jobs.JobUpdate(status="succeeded", trained_tokens=result.tokens_seen or None),
            )
            stored.fine_tuned_model = name
            # A job of the persona started after this one and already succeeded has switched
            # it: that newer model stays (as an older OpenAI job's success leaves it too).
            newer = jobs.newer_success(session, stored)
            kept = newer and jobs.kept_newer(persona_name, newer, stored.job_id, serve_flags)
            switched = None if kept else jobs.switch_persona(session, stored, request.serve_url)
            switched_name, row = switched.name if switched else None, stored
        echo(guide)
        notes = output_dir / "SERVING.md"
        if kept:
            echo(kept)
            return row
        if switched_name is None:
            raise FineTuneError(
                jobs.removed_while_trained(
                    f"persona {persona_name!r}",
                    recorder.job_id,
                    f"the adapter is in {output_dir} (serving notes: {notes})",
                    serve_flags,
                )
            )
        echo(
            f"Persona {switched_name} now uses model {name} at {request.serve_url} "
            f"(serving notes: {notes})."
        )
        return row
