"""`finetune start --provider local`: LoRA on a tiny model and tokenizer built in the test."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

# Nothing here may reach the hub: every model and tokenizer is built from scratch. Set
# before transformers is imported (huggingface_hub reads them once).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from phischer.db import Database  # noqa: E402
from phischer.finetune import jobs, local, serving  # noqa: E402
from phischer.finetune.checkpoints import (  # noqa: E402
    adapter_rank,
    finished_checkpoint,
    same_base_model,
)
from phischer.finetune.encode import (  # noqa: E402
    IGNORE,
    PadCollator,
    assistant_spans,
    encode_example,
    encode_file,
    report_cuts,
)
from phischer.finetune.local_request import (  # noqa: E402
    DEFAULT_SERVE_URL,
    LocalRequest,
    LoraSettings,
    check_base_model,
)
from phischer.models import Persona  # noqa: E402
from phischer.personas import PersonaSpec, add_persona  # noqa: E402
from tests.conftest import jobs_in, persona_row, record_local_job, run, stderr_to  # noqa: E402
from tests.fake_openai import FakeOpenAI, greet_model  # noqa: E402
from tests.plot_helpers import assert_png  # noqa: E402

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
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user},
        {"role": "assistant", "content": assistant},
    ]


def build_tokenizer(path: Path) -> Any:
    """A word-level fast tokenizer over the fixture's words, with the chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(
        {w for pair in PAIRS for text in pair for w in text.split()}
        | set(SYSTEM.split())
        | {"extra", "words"}
    )
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[3:],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(path))
    return tok


def save_tiny_model(path: Path, config_class: Any, model_class: Any, **config: Any) -> Path:
    """The fixture's tokenizer and a model of `config`, seeded random weights, saved to path."""
    tok = build_tokenizer(path)
    torch.manual_seed(0)
    model_config = config_class(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **config,
    )
    model_class(model_config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide Llama and its tokenizer saved to a folder (built once per module)."""
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny-llama"),
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        # Room for the default --max-seq-length 1024 (RoPE: no weights per position); a
        # shorter context is capped with a notice (the GPT-2 test below).
        max_position_embeddings=1024,
        # Wide init: with the default 0.02 the frozen lm_head keeps logits near uniform.
        initializer_range=0.5,
    )


def write_train(path: Path, pairs: list[tuple[str, str]] = PAIRS) -> Path:
    """A chat JSONL of the pairs."""
    path.write_text("".join(json.dumps({"messages": conversation(u, a)}) + "\n" for u, a in pairs))
    return path


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    # A 32-wide model trains ~40x faster on one thread than on two busy cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FAST = LoraSettings(
    rank=8, alpha=16, dropout=0.0, learning_rate=1e-2, batch_size=2, max_steps=30, save_steps=10
)


def tokens(tok: Any, ids: list[int]) -> list[str]:
    """Token strings for ids."""
    return tok.convert_ids_to_tokens(ids)


def two_exchanges() -> list[dict[str, str]]:
    """A conversation with two assistant turns (labels come from both)."""
    return conversation("hi there", "hello dear friend") + [
        {"role": "user", "content": "good night"},
        {"role": "assistant", "content": "sleep well dear"},
    ]


# -- the label mask ------------------------------------------------------------------------


def test_labels_cover_only_assistant_turns_and_their_end_marker(tiny_model: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_model))
    feature = encode_example(tok, two_exchanges(), max_length=128)
    assert feature is not None
    learned = [
        t if label != IGNORE else "_"
        for t, label in zip(tokens(tok, feature["input_ids"]), feature["labels"], strict=True)
    ]
    assert learned == [
        "_",
        "_",
        "_",
        "_",
        "_",
        "_",  # <s> <|system|> you are ada <|end|>
        "_",
        "_",
        "_",
        "_",  # <|user|> hi there <|end|>
        "_",
        "hello",
        "dear",
        "friend",
        "<|end|>",  # <|assistant|> is the prompt
        "_",
        "_",
        "_",
        "_",  # <|user|> good night <|end|>
        "_",
        "sleep",
        "well",
        "dear",
        "<|end|>",
    ]
    assert [
        i
        for i, label in zip(feature["input_ids"], feature["labels"], strict=True)
        if label != IGNORE
    ] == tok.convert_tokens_to_ids(
        ["hello", "dear", "friend", "<|end|>", "sleep", "well", "dear", "<|end|>"]
    )


def test_long_examples_keep_their_end_and_hopeless_ones_are_dropped(tiny_model: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_model))
    messages = conversation("hi there", "hello dear friend")
    kept = encode_example(tok, messages, max_length=6)
    assert tokens(tok, kept["input_ids"]) == [
        "<|end|>",
        "<|assistant|>",
        "hello",
        "dear",
        "friend",
        "<|end|>",
    ]
    assert kept["labels"][:2] == [IGNORE, IGNORE]
    no_reply = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
    assert encode_example(tok, no_reply, max_length=64) is None


def test_template_that_rewrites_history_falls_back_to_the_reply_text(tiny_model: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_model))
    # The header counts the turns, so a shorter prefix is not a prefix of the full text.
    tok.chat_template = "{{ messages|length }} " + CHAT_TEMPLATE
    tok.add_tokens(["1", "2", "3", "4"])
    messages = conversation("hi there", "hello dear friend")
    full, spans = assistant_spans(tok, messages)
    assert [full[a:b] for a, b in spans] == ["hello dear friend"]


def test_padding_collator_masks_padding() -> None:
    batch = PadCollator(pad_id=0)(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": [8], "labels": [8]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# -- training ------------------------------------------------------------------------------


# The test's own generate() below reads the property transformers deprecated (train_lora
# filters it around training only).
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_training_lowers_the_loss_and_the_adapter_reloads(tiny_model: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    train = write_train(tmp_path / "train.jsonl")
    out = tmp_path / "adapter"
    result = local.train_lora(
        str(tiny_model), train, out, FAST, echo=lambda _: None, progress=False
    )
    assert result.global_step == 30 and result.steps_this_run == 30
    assert result.resumed_from is None and result.examples == len(PAIRS)
    assert len(result.losses) == 30 and all(math.isfinite(x) for x in result.losses)
    # What loss.png is drawn from: every logged step, no validation without a file.
    assert result.loss_history == list(zip(range(1, 31), result.losses, strict=True))
    assert result.eval_history == []
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < first / 3, (first, last)
    assert result.tokens_seen > 0
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (8, 16)

    base = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_model))
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    prompt = tok.apply_chat_template(
        conversation("hi there", "")[:2], tokenize=False, add_generation_prompt=True
    )
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        base_logits = base(**ids).logits
        model = PeftModel.from_pretrained(base, str(out)).eval()
        tuned_logits = model(**ids).logits
        generated = model.generate(
            **ids,
            max_new_tokens=4,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    assert not torch.allclose(base_logits, tuned_logits)  # the adapter was loaded and applies
    reply = tok.decode(generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert reply.split() == ["hello", "dear", "friend"]


def test_rerun_resumes_from_the_last_checkpoint(tiny_model: Path, tmp_path: Path) -> None:
    train = write_train(tmp_path / "train.jsonl")
    out = tmp_path / "adapter"
    quiet = {"echo": lambda _: None, "progress": False}
    first = local.train_lora(
        str(tiny_model),
        train,
        out,
        replace(FAST, max_steps=6, save_steps=3),
        **quiet,
    )
    assert first.global_step == 6
    assert (out / "checkpoints" / "checkpoint-6").is_dir()
    said: list[str] = []
    second = local.train_lora(
        str(tiny_model),
        train,
        out,
        replace(FAST, max_steps=12, save_steps=3),
        echo=said.append,
        progress=False,
    )
    assert second.resumed_from is not None
    assert Path(second.resumed_from).name == "checkpoint-6"
    assert said[0] == f"Resuming from {second.resumed_from} (step 6)."
    assert (second.global_step, second.steps_this_run) == (12, 6)
    assert len(second.losses) == 6
    # The loss curve keeps the first run's steps (restored from the checkpoint's history).
    assert [step for step, _ in second.loss_history] == list(range(1, 13))
    assert [loss for _, loss in second.loss_history[6:]] == second.losses


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def ada(database: Database, tmp_path: Path) -> Path:
    """A retrieval persona 'Ada Lovelace' (#ada)."""
    data = write_train(tmp_path / "ada.jsonl")
    with database.write() as session:
        add_persona(session, PersonaSpec(name="Ada Lovelace", keyword="ada", dataset=str(data)))
    return data


def start_local(train: Path, *options: str) -> Any:
    """`phischer finetune start TRAIN --persona ada --provider local OPTIONS…`."""
    return run("finetune", "start", str(train), "--persona", "ada", "--provider", "local", *options)


@pytest.fixture
def served(fake_openai: FakeOpenAI) -> FakeOpenAI:
    """A loopback OpenAI-compatible server standing in for vLLM serving the adapter."""
    fake_openai.responder = greet_model
    return fake_openai


def test_cli_local_trains_writes_serving_notes_and_switches_the_persona(
    tiny_model: Path,
    ada: Path,
    tmp_path: Path,
    database: Database,
    served: FakeOpenAI,
    make_app: Any,
    twilio_post: Any,
) -> None:
    train = write_train(tmp_path / "train.jsonl", PAIRS * 2)
    out = tmp_path / "ada-adapter"
    result = start_local(
        train,
        "--base-model",
        str(tiny_model),
        "--max-steps",
        "20",
        "--lora-rank",
        "8",
        "--lora-alpha",
        "16",
        "--learning-rate",
        "1e-2",
        "--batch-size",
        "2",
        "--save-steps",
        "10",
        "--output-dir",
        str(out),
        "--serve-url",
        served.base_url,
        "--validation",
        str(write_train(tmp_path / "val.jsonl", PAIRS[:2])),
    )
    assert result.exit_code == 0, result.output
    assert (out / "adapter_model.safetensors").is_file()
    serving = (out / "SERVING.md").read_text()
    adapter = out.resolve()
    assert (
        f"vllm serve {tiny_model.resolve()} --enable-lora --lora-modules "
        f"ada-lovelace={adapter} --max-lora-rank 8 --port 8000"
    ) in serving
    assert f"ollama create ada-lovelace -f {adapter / 'Modelfile'}" in serving
    assert (
        f"python convert_lora_to_gguf.py {adapter} --base {tiny_model.resolve()} "
        f"--outfile {adapter / 'ada-lovelace-lora.gguf'}"
    ) in serving
    assert f"llama-server -m base.gguf --lora {adapter / 'ada-lovelace-lora.gguf'}" in serving
    assert (out / "Modelfile").read_text() == f"FROM {tiny_model.resolve()}\nADAPTER {adapter}\n"
    assert "vllm serve" in result.output  # the commands are printed too
    assert "Validation loss: " in result.output
    lines = result.output.splitlines()
    validation = next(i for i, x in enumerate(lines) if x.startswith("Validation loss: "))
    assert lines[validation + 1] == f"Loss curve: {out / 'loss.png'}"
    assert_png(out / "loss.png")
    assert f"Persona Ada Lovelace now uses model ada-lovelace at {served.base_url}" in result.output

    p = persona_row(database)
    (job,) = jobs_in(database)
    assert (p.backend, p.model, p.base_url) == ("openai", "ada-lovelace", served.base_url)
    assert job.job_id.startswith("local-") and job.provider == "local"
    assert job.status == "succeeded" and job.finished_at is not None
    assert job.output_dir == str(adapter) and job.fine_tuned_model == "ada-lovelace"
    assert job.persona_id == p.id and job.base_model == str(tiny_model)
    assert job.validation_file == str((tmp_path / "val.jsonl").resolve())
    hyper = json.loads(job.hyperparameters)
    assert (hyper["rank"], hyper["alpha"], hyper["max_steps"]) == (8, 16, 20)
    listed = run("finetune", "list")
    (line,) = [x for x in listed.output.splitlines() if x.startswith(job.job_id)]
    # Its result is the adapter folder (as README says), not the name it is served under.
    assert " local " in line and line.endswith(f"  {adapter}")
    status = run("finetune", "status", job.job_id)
    assert status.output.strip() == f"{job.job_id}: succeeded (local LoRA in {adapter})"

    # A signed text now goes to the adapter's server under the LoRA module name.
    response = twilio_post("hi there", "+15550123", target=make_app())
    assert response.replies == ["hey it's ada-lovelace"]
    (chat,) = served.calls("POST", "/v1/chat/completions")
    assert chat.json()["model"] == "ada-lovelace"
    # The adapter's server is not OpenAI's: it never sees OPENAI_API_KEY.
    assert chat.auth == "Bearer not-needed"


@pytest.mark.parametrize("hub", [False, True])
def test_cli_local_unloadable_base_model_fails_cleanly_and_records_no_job(
    ada: Path, tmp_path: Path, database: Database, hub: bool
) -> None:
    train = write_train(tmp_path / "train.jsonl")
    if hub:
        broken = "phischer-tests/no-such-model"  # a hub id, offline (HF_HUB_OFFLINE above)
    else:
        folder = tmp_path / "broken-model"  # a model folder transformers cannot load
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        broken = str(folder)
    result = start_local(train, "--base-model", broken, "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 1
    errors = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: cannot load base model {broken}")
    # The whole reason, not a first line ending in "from one of:" with the list cut off.
    assert not errors[0].rstrip().endswith(":")
    if not hub:
        assert "tokenizer" in errors[0] and "(1)" in errors[0]
    p = persona_row(database)
    # Nothing was trained: no failed job in `finetune list` either.
    assert jobs_in(database) == []
    assert p.backend == "retrieval" and p.model is None


def test_cli_local_needs_a_base_model_and_a_clean_file(
    ada: Path, tmp_path: Path, database: Database
) -> None:
    train = write_train(tmp_path / "train.jsonl")
    result = start_local(train)
    assert result.exit_code == 1
    assert "Error: --provider local needs --base-model" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(train.read_text() + "{oops\n")
    result = start_local(
        bad,
        "--base-model",
        "whatever",
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 1
    assert f"Error: {bad}: 1 format error (first on line {len(PAIRS) + 1})" in result.output
    assert not (tmp_path / "out").exists()
    result = start_local(
        train, "--base-model", "whatever", "--serve-url", "localhost:8000", "--output-dir",
        str(tmp_path / "out"),
    )  # fmt: skip
    assert result.exit_code == 1
    assert (
        "Error: --serve-url 'localhost:8000' must be an http(s) URL, e.g. http://127.0.0.1:8000/v1"
    ) in result.output
    assert not (tmp_path / "out").exists()
    assert jobs_in(database) == []


class _SlowTokenizer:
    """The tiny tokenizer without offsets, as a slow (Python) tokenizer would be."""

    is_fast = False

    def __init__(self, fast: Any) -> None:
        self._fast = fast

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self._fast(text, add_special_tokens=add_special_tokens)["input_ids"]}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fast, name)


def test_slow_tokenizers_get_the_same_labels_from_prefix_lengths(tiny_model: Path) -> None:
    fast = transformers.AutoTokenizer.from_pretrained(str(tiny_model))
    messages = two_exchanges()
    assert encode_example(_SlowTokenizer(fast), messages, 128) == encode_example(
        fast, messages, 128
    )


# -- flags, names and serving notes (no training) --------------------------------------------


def test_from_options_maps_every_flag(tmp_path: Path) -> None:
    options: dict[str, Any] = {
        "persona": "ada",
        "base_model": "Qwen/Qwen2.5-1.5B-Instruct",
        "validation": tmp_path / "val.jsonl",
        "epochs": 5,
        "lora_rank": 4,
        "lora_alpha": 8,
        "learning_rate": 1e-4,
        "max_seq_length": 256,
        "batch_size": 1,
        "max_steps": None,
        "save_steps": 7,
        "output_dir": tmp_path / "out",
        "serve_url": "http://127.0.0.1:11434/v1",
        "lora_name": "ada-v2",
        "suffix": None,
    }
    request = LocalRequest.from_options(tmp_path / "train.jsonl", **options)
    assert request.lora == LoraSettings(
        rank=4,
        alpha=8,
        learning_rate=1e-4,
        epochs=5,
        max_steps=None,
        batch_size=1,
        max_seq_length=256,
        save_steps=7,
    )
    assert (request.base_model, request.validation_path) == (
        "Qwen/Qwen2.5-1.5B-Instruct",
        tmp_path / "val.jsonl",
    )
    assert (request.output_dir, request.serve_url, request.lora_name) == (
        tmp_path / "out",
        "http://127.0.0.1:11434/v1",
        "ada-v2",
    )
    # No --epochs: three passes, as --help says.
    default = LocalRequest.from_options(tmp_path / "t.jsonl", **{**options, "epochs": None})
    assert default.lora.epochs == 3


@pytest.mark.parametrize(("rank", "max_rank"), [(1, 8), (8, 8), (12, 16), (64, 64), (300, 320)])
def test_vllm_max_lora_rank_is_one_vllm_accepts(rank: int, max_rank: int) -> None:
    assert serving.vllm_max_lora_rank(rank) == max_rank
    guide = serving.serving_guide(
        base_model="Qwen/Qwen2.5-1.5B-Instruct",
        adapter_dir=Path("/adapters/ada"),
        name="ada",
        rank=rank,
        serve_url=serving.VLLM_URL,
    )
    assert f"--max-lora-rank {max_rank} --port 8000" in guide


def test_modelfile_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ollama reads a relative FROM against the Modelfile's folder, not the training folder.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "base").mkdir(parents=True)
    assert serving.modelfile("models/base", Path("adapters/ada")) == (
        f"FROM {tmp_path.resolve() / 'models' / 'base'}\n"
        f"ADAPTER {tmp_path.resolve() / 'adapters' / 'ada'}\n"
    )
    # A hub id is not a folder here: it stays as given, with what Ollama needs instead.
    assert serving.modelfile("meta-llama/Llama-3.2-1B-Instruct", Path("/a")) == (
        "# Ollama cannot read a Hugging Face hub id: replace the FROM value with the Ollama "
        "tag of exactly meta-llama/Llama-3.2-1B-Instruct, or a local safetensors folder or "
        "GGUF file of those weights.\n"
        "FROM meta-llama/Llama-3.2-1B-Instruct\nADAPTER /a\n"
    )


@pytest.mark.parametrize("name", ["ada lovelace", "ada=1", "../ada", "-ada", "x" * 65, ""])
def test_cli_local_refuses_a_lora_name_that_breaks_commands(
    ada: Path, tmp_path: Path, database: Database, name: str
) -> None:
    train = write_train(tmp_path / "train.jsonl")
    result = start_local(
        train, "--base-model", "whatever", "--lora-name", name, "--output-dir", str(tmp_path / "o")
    )
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: --lora-name {name!r} must be 1-64 letters, digits, '.', '-' or '_' "
        "(it becomes a model name and a folder name), e.g. --lora-name ada-v2"
    ]
    assert not (tmp_path / "o").exists()
    assert jobs_in(database) == []


def test_cli_local_without_the_train_extra_is_one_line_and_records_nothing(
    ada: Path, tmp_path: Path, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = write_train(tmp_path / "train.jsonl")
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    result = start_local(train, "--base-model", "whatever", "--output-dir", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert result.output.splitlines() == [f"Error: {local.INSTALL_HINT}"]
    assert jobs_in(database) == []
    assert persona_row(database).backend == "retrieval"


def test_cli_local_refuses_the_openai_suffix(ada: Path, tmp_path: Path, database: Database) -> None:
    train = write_train(tmp_path / "train.jsonl")
    result = start_local(train, "--base-model", "whatever", "--suffix", "v2")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: --suffix only applies to --provider openai, not local "
        "(the local model name is --lora-name)"
    ]
    assert jobs_in(database) == []


def test_rerun_closes_the_row_of_a_run_killed_hard(
    tiny_model: Path, ada: Path, tmp_path: Path, database: Database
) -> None:
    out = tmp_path / "ada-adapter"
    # What a SIGKILLed run leaves: its row still "running", for this folder and another.
    for job_id, folder in (("local-killed", out), ("local-elsewhere", tmp_path / "other")):
        record_local_job(database, job_id, folder.resolve(), base_model=str(tiny_model))
    train = write_train(tmp_path / "train.jsonl", PAIRS)
    result = start_local(
        train, "--base-model", str(tiny_model), "--max-steps", "2", "--output-dir", str(out)
    )
    assert result.exit_code == 0, result.output

    rows = {j.job_id: j for j in jobs_in(database)}
    (new,) = [j for j in rows if j.startswith("local-2")]
    assert rows[new].status == "succeeded"
    killed = rows["local-killed"]
    assert (killed.status, killed.error) == ("cancelled", f"interrupted; resumed by {new}")
    assert killed.finished_at is not None
    assert rows["local-elsewhere"].status == "running"  # another folder: not this run's


# -- what a local run prints, reruns of a finished run, --base-model folders ------------------


def short_run(tiny_model: Path, tmp_path: Path, *options: str) -> Any:
    """A 3-step local run of the CLI into tmp_path/out (1 s on the tiny model)."""
    train = write_train(tmp_path / "train.jsonl")
    return start_local(
        train, "--base-model", str(tiny_model), "--max-steps", "3", "--batch-size", "2",
        "--output-dir", str(tmp_path / "out"), *options,
    )  # fmt: skip


def test_cli_local_keeps_its_step_in_the_progress_file_status_wait_reads(
    tiny_model: Path, ada: Path, tmp_path: Path, database: Database
) -> None:
    assert short_run(tiny_model, tmp_path).exit_code == 0
    progress = json.loads((tmp_path / "out" / ".progress.json").read_text())
    assert (progress["step"], progress["total_steps"]) == (3, 3)
    assert isinstance(progress["loss"], float) and progress["loss"] > 0


def test_cli_local_prints_our_bar_and_summary_not_the_trainers_logs(
    tiny_model: Path, ada: Path, tmp_path: Path, database: Database
) -> None:
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    val = write_train(tmp_path / "val.jsonl", PAIRS[:2])  # evaluate() runs too
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # whatever pytest filters, every warning is seen
        filters = list(warnings.filters)
        result = short_run(tiny_model, tmp_path, "--validation", str(val))
        assert warnings.filters == filters  # the training call's filters were its own
    assert result.exit_code == 0, result.output
    out = result.output
    # The Trainer's log dicts ({'loss': '3.042', ...}, {'train_runtime': ...}), its
    # deprecation warning and its weight-loading bar are gone...
    assert not re.search(r"\{'\w+': ", out), out
    assert "FutureWarning" not in out and "Loading weights" not in out
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [
        str(w.message) for w in caught
    ]
    # ...and our summary remains. Our bar is for a terminal only: this output is no
    # terminal, so it holds no bar frames (\r) (the bar: test_the_bars_on_a_terminal).
    assert "Training:" not in out and "Tokenizing" not in out and "\r" not in out, out
    assert re.search(r"^Loss \d+\.\d{3} -> \d+\.\d{3} over 3 steps\.$", out, re.M), out
    assert re.search(r"^Validation loss: \d+\.\d{3}$", out, re.M), out
    # transformers' own settings are back as they were for the rest of the process.
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == (verbosity, bars)


def test_cli_local_counts_one_example_and_one_step_in_the_singular(
    tiny_model: Path, ada: Path, tmp_path: Path, database: Database
) -> None:
    train = write_train(tmp_path / "train.jsonl", PAIRS[:1])
    out = tmp_path / "out"
    options = ("--base-model", str(tiny_model), "--max-steps", "1", "--output-dir", str(out))
    result = start_local(train, *options)
    assert result.exit_code == 0, result.output
    assert re.search(
        r"^Training a rank-16 LoRA on .+: 1 example, 1 step \(batch 4, ", result.output, re.M
    )
    assert re.search(r"^Loss \d+\.\d{3} -> \d+\.\d{3} over 1 step\.$", result.output, re.M)


def test_cli_local_rerun_of_a_finished_run_trains_nothing(
    tiny_model: Path, ada: Path, tmp_path: Path, database: Database
) -> None:
    first = short_run(tiny_model, tmp_path)
    assert first.exit_code == 0, first.output
    out = tmp_path / "out"
    adapter = (out / "adapter_model.safetensors").read_bytes()
    # Whatever changed since (the persona moved back, the notes deleted) is redone.
    (out / "SERVING.md").unlink()
    with database.write() as session:
        p = session.scalar(sa.select(Persona).where(Persona.keyword == "ada"))
        p.backend, p.model, p.base_url = "retrieval", None, None

    again = short_run(tiny_model, tmp_path)
    assert again.exit_code == 0, again.output
    lines = again.output.splitlines()
    assert lines[0] == (
        f"Already complete: checkpoint-3 reached step 3 (--max-steps 3); the adapter is in "
        f"{out}. To train again, delete {out / 'checkpoints'} or pass another --output-dir."
    )
    assert not [x for x in lines if re.match(r"Resuming|Training|Loss \d", x)], lines
    assert f"Loss curve: {out / 'loss.png'}" in lines
    assert sorted(x.name for x in (out / "checkpoints").iterdir()) == ["checkpoint-3"]
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
    assert (out / "SERVING.md").is_file()
    p = persona_row(database)
    (job,) = jobs_in(database)  # the finished run's, not a new one
    assert (p.backend, p.model) == ("openai", "ada-lovelace")
    assert job.status == "succeeded" and job.error is None
    assert lines[-1] == f"Job {job.job_id} succeeded: adapter in {out.resolve()}"


def test_finished_checkpoint_follows_max_steps_or_epochs(tmp_path: Path) -> None:
    def checkpoint(step: int, epoch: float) -> None:
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        state = {"global_step": step, "epoch": epoch, "log_history": []}
        (folder / "trainer_state.json").write_text(json.dumps(state))

    assert finished_checkpoint(tmp_path, LoraSettings(max_steps=1)) is None
    checkpoint(9, 1.5)
    checkpoint(12, 2.0)  # the highest step is the last one, not the last name in order
    last = tmp_path / "checkpoints" / "checkpoint-12"
    assert finished_checkpoint(tmp_path, LoraSettings(max_steps=12)) == (last, 12)
    assert finished_checkpoint(tmp_path, LoraSettings(max_steps=10)) == (last, 12)
    assert finished_checkpoint(tmp_path, LoraSettings(max_steps=13)) is None
    assert finished_checkpoint(tmp_path, LoraSettings(epochs=2)) == (last, 12)
    assert finished_checkpoint(tmp_path, LoraSettings(epochs=3)) is None


NO_SUCH_FOLDER = (
    "no such folder (give a local model folder holding config.json, "
    "or a hub id like Qwen/Qwen2.5-1.5B-Instruct)"
)


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ("/tmp/nowhere/nomodel", NO_SUCH_FOLDER),
        ("~/nomodel", NO_SUCH_FOLDER),  # the shell did not expand it: no such folder either
        ("models/nomodel", NO_SUCH_FOLDER),  # models/ is here: a path, not a hub id
        ("models", "that folder has no config.json"),
        ("train.jsonl", "is a file"),
    ],
)
def test_cli_local_refuses_a_base_model_that_is_no_model_folder(
    ada: Path,
    tmp_path: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
    given: str,
    error: str,
) -> None:
    (tmp_path / "models").mkdir()  # the tests run in tmp_path
    train = write_train(tmp_path / "train.jsonl")
    # Refused before the train extra is even imported (as if peft were not installed).
    monkeypatch.setitem(sys.modules, "peft", None)
    result = start_local(train, "--base-model", given, "--output-dir", str(tmp_path / "o"))
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: --base-model {given}") and error in line, line
    assert not (tmp_path / "o").exists()
    assert jobs_in(database) == []


@pytest.mark.parametrize("hub_id", ["Qwen/Qwen2.5-1.5B-Instruct", "gpt2", "org/model.v1_2-x"])
def test_hub_ids_still_pass_the_base_model_check(hub_id: str) -> None:
    check_base_model(hub_id)  # README: a local folder or a hub id


# -- settings a checkpoint was trained with, names, contexts, truncation ----------------------


def test_cli_local_switches_the_persona_off_its_previous_key_variable(
    tiny_model: Path, database: Database, tmp_path: Path, served: FakeOpenAI
) -> None:
    # Ada was served by another provider before, with that provider's key variable.
    with database.write() as session:
        spec = PersonaSpec(
            name="Ada Lovelace",
            keyword="ada",
            backend="openai",
            model="ada-on-together",
            base_url="https://api.together.example/v1",
            api_key_env="TOGETHER_API_KEY",
        )
        add_persona(session, spec)
    result = short_run(tiny_model, tmp_path, "--serve-url", served.base_url)
    assert result.exit_code == 0, result.output
    p = persona_row(database)
    # The local server gets a placeholder key, never TOGETHER_API_KEY (nor OPENAI_API_KEY).
    assert (p.model, p.base_url, p.api_key_env) == ("ada-lovelace", served.base_url, None)


@pytest.mark.parametrize(
    ("options", "trained_with"),
    [
        (["--lora-rank", "8"], "--lora-rank 16"),  # the finished run, rerun
        (["--lora-rank", "8", "--max-steps", "6"], "--lora-rank 16"),  # extended
        (["--lora-alpha", "16"], "--lora-alpha 32"),
        (["--lora-rank", "4", "--lora-alpha", "8"], "--lora-rank 16 --lora-alpha 32"),
    ],
)
def test_cli_local_refuses_checkpoints_of_other_lora_settings(
    tiny_model: Path,
    ada: Path,
    tmp_path: Path,
    database: Database,
    options: list[str],
    trained_with: str,
) -> None:
    first = short_run(tiny_model, tmp_path)  # --lora-rank 16 --lora-alpha 32, the defaults
    assert first.exit_code == 0, first.output
    out = tmp_path / "out"
    serving_md = (out / "SERVING.md").read_text()
    again = short_run(tiny_model, tmp_path, *options)
    assert again.exit_code == 1
    assert again.output.splitlines() == [
        f"Error: {out / 'checkpoints'} was trained with {trained_with}: delete it or pass "
        "another --output-dir"
    ]
    assert (out / "SERVING.md").read_text() == serving_md  # still the rank-16 commands
    assert "--max-lora-rank 16" in serving_md
    (job,) = jobs_in(database)  # no failed job for a refusal
    assert job.status == "succeeded"


def test_cli_local_refuses_checkpoints_of_another_base_model(
    tiny_model: Path, ada: Path, tmp_path: Path, database: Database
) -> None:
    first = short_run(tiny_model, tmp_path)
    assert first.exit_code == 0, first.output
    out = tmp_path / "out"
    serving_md = (out / "SERVING.md").read_text()
    # The same shapes, so nothing would fail: the rerun would call A's adapter B's, unasked.
    other = shutil.copytree(tiny_model, tmp_path / "other-model")
    again = short_run(tiny_model, tmp_path, "--base-model", str(other))
    assert again.exit_code == 1
    assert again.output.splitlines() == [
        f"Error: {out / 'checkpoints'} was trained with --base-model {tiny_model}: delete it "
        "or pass another --output-dir"
    ]
    assert (out / "SERVING.md").read_text() == serving_md
    (job,) = jobs_in(database)
    assert job.status == "succeeded"


def test_same_base_model_by_folder_or_by_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "qwen", tmp_path / "b" / "qwen"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    assert same_base_model(str(a), str(a / ".." / "qwen"))
    assert not same_base_model(str(a), str(b))  # two folders there: two models
    assert same_base_model(str(tmp_path / "moved" / "qwen"), str(b))  # gone: by its name
    assert same_base_model("Qwen/Qwen2.5-1.5B-Instruct", "/models/Qwen2.5-1.5B-Instruct")
    assert not same_base_model("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B")


def test_adapter_rank_is_the_saved_adapters_own(tmp_path: Path) -> None:
    assert adapter_rank(tmp_path, 16) == 16  # nothing saved: the request's
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    assert adapter_rank(tmp_path, 16) == 8


def test_cli_local_names_lora_name_for_a_persona_name_without_letters(
    database: Database, tmp_path: Path
) -> None:
    train = write_train(tmp_path / "train.jsonl")
    with database.write() as session:
        add_persona(session, PersonaSpec(name="李雷", keyword="lilei", dataset=str(train)))
    result = run(
        "finetune", "start", str(train), "--persona", "lilei", "--provider", "local",
        "--base-model", "whatever", "--output-dir", str(tmp_path / "o"),
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "Error: cannot make a model name from '李雷': pass --lora-name with letters or digits"
    ]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_cli_local_refuses_a_learning_rate_that_is_no_positive_number(
    ada: Path, tmp_path: Path, database: Database, value: str
) -> None:
    train = write_train(tmp_path / "train.jsonl")
    result = start_local(
        train, "--base-model", "whatever", "--learning-rate", value, "--output-dir",
        str(tmp_path / "o"),
    )  # fmt: skip
    assert result.exit_code == 2
    reason = f"{float(value)} is not in the range x>0" if value in ("-1", "0") else (
        f"{value!r} is not a finite number"
    )  # fmt: skip
    assert result.output.splitlines()[-1] == (
        f"Error: Invalid value for '--learning-rate': {reason}."
    )
    assert not (tmp_path / "o").exists()
    assert jobs_in(database) == []


def test_cli_local_stores_a_relative_base_model_as_an_absolute_path(
    tiny_model: Path, ada: Path, tmp_path: Path, database: Database
) -> None:
    relative = os.path.relpath(tiny_model, tmp_path)  # the tests run in tmp_path
    result = short_run(Path(relative), tmp_path)
    assert result.exit_code == 0, result.output
    (job,) = jobs_in(database)
    assert job.base_model == str(tiny_model.resolve())
    listed = run("finetune", "list")
    assert str(tiny_model.resolve()) in listed.output


def test_cli_local_warns_that_vllm_cannot_serve_a_rank_over_512(
    tiny_model: Path, ada: Path, tmp_path: Path, database: Database
) -> None:
    result = start_local(
        write_train(tmp_path / "train.jsonl"), "--base-model", str(tiny_model), "--max-steps",
        "1", "--lora-rank", "1024", "--lora-alpha", "1024", "--output-dir", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warning = (
        "vLLM serves LoRA adapters of rank up to 512 (--max-lora-rank), not 1024: retrain "
        "with --lora-rank 512 or less to serve it with vLLM, or serve it with llama.cpp"
    )
    assert result.output.splitlines()[0] == f"Warning: {warning}."
    serving_md = (tmp_path / "out" / "SERVING.md").read_text()
    assert f"## vLLM ({serving.VLLM_URL})\n\nNot for this adapter: {warning}.\n" in serving_md
    assert "vllm serve" not in serving_md and "--max-lora-rank 1024" not in result.output


def fail_at_batch(
    monkeypatch: pytest.MonkeyPatch, index: int, error: BaseException
) -> Callable[..., Any]:
    """Make the collator raise `error` on batch `index` (from 0); returns the real collator."""
    batches = iter(range(100))
    real = PadCollator.__call__

    def failing(self: PadCollator, batch: list[dict[str, list[int]]]) -> Any:
        if next(batches) == index:
            raise error
        return real(self, batch)

    monkeypatch.setattr(PadCollator, "__call__", failing)
    return real


def test_the_bars_on_a_terminal(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = stderr_to(monkeypatch)  # tqdm's bars (disable=None) draw only on a terminal
    train = write_train(tmp_path / "train.jsonl")
    settings = replace(FAST, max_steps=3)
    local.train_lora(str(tiny_model), train, tmp_path / "out", settings, echo=lambda _: None)
    drawn = terminal.getvalue()
    # Tokenizing (cleared when done), then training (kept, with the loss, its line ended).
    assert drawn.startswith("\rTokenizing train.jsonl:   0%|          | 0/6 "), drawn
    assert re.search(r"\rTraining: 100%\|[^\n\r]*\| 3/3 \[[^\n\r]*loss=\d+\.\d{3}\] *\n$", drawn)


def test_the_training_bar_ends_its_line_when_training_fails(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = stderr_to(monkeypatch)  # tqdm's bars (disable=None) draw only on a terminal
    fail_at_batch(monkeypatch, 2, RuntimeError("CUDA out of memory"))  # the third batch
    train = write_train(tmp_path / "train.jsonl")
    settings = replace(FAST, max_steps=5)
    try:
        local.train_lora(str(tiny_model), train, tmp_path / "out", settings, echo=lambda _: None)
    except RuntimeError as exc:
        # Read while the failed run is still referenced: once it is collected, tqdm closes
        # the bar by itself, too late for the error printed right after.
        drawn, error = terminal.getvalue(), str(exc)
    assert error == "CUDA out of memory"
    # The bar's last frame (short of 5/5) ends its line: the error prints on a line of its own.
    assert re.search(r"\rTraining:  20%\|[^\n\r]*\| 1/5 [^\n\r]*\n$", drawn), repr(drawn)


def test_cli_local_shows_progress_for_the_check_and_tokenizing(
    tiny_model: Path,
    ada: Path,
    tmp_path: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from phischer import dataset_check

    asked: dict[str, list[Any]] = {"check": [], "encode": []}
    real_check, real_encode = dataset_check.check_file, local.encode_file

    def check(path: Path, *args: Any, progress: bool = False, **kwargs: Any) -> Any:
        asked["check"].append((path.name, progress))
        return real_check(path, *args, progress=progress, **kwargs)

    def encode(tok: Any, path: Path, max_length: int, progress: bool = False) -> Any:
        asked["encode"].append((path.name, progress))
        return real_encode(tok, path, max_length, progress)

    monkeypatch.setattr(dataset_check, "check_file", check)
    monkeypatch.setattr(local, "encode_file", encode)
    val = write_train(tmp_path / "val.jsonl", PAIRS[:2])
    result = short_run(tiny_model, tmp_path, "--validation", str(val))
    assert result.exit_code == 0, result.output
    # Both draw a bar on a terminal only (disable=None: see test_the_bars_on_a_terminal).
    both = [("train.jsonl", True), ("val.jsonl", True)]
    assert asked == {"check": both, "encode": both}


def test_encode_file_counts_the_examples_it_cut_and_the_ones_it_emptied(
    tiny_model: Path, tmp_path: Path
) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_model))
    rows = [
        conversation("hi there", "hello dear friend"),  # 15 tokens: fits in 16
        conversation("what is new " * 3, "the engine computes numbers"),  # 23: cut
        # The reply, then 16 words of the other side: nothing to learn in the last 16 tokens.
        conversation("hi", "hello dear friend") + [{"role": "user", "content": "hi " * 16}],
    ]
    path = tmp_path / "cut.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    encoded = encode_file(tok, path, 16)
    assert (len(encoded.features), encoded.truncated, encoded.dropped) == (2, 1, 1)
    assert [len(f["input_ids"]) for f in encoded.features] == [15, 16]
    said: list[str] = []
    report_cuts(path, encoded, 16, said.append)
    assert said == [
        "cut.jsonl: 1 example longer than --max-seq-length 16 was cut to its last 16 tokens "
        "(its start, system prompt included, is not seen in training).",
        "cut.jsonl: skipped 1 example with no assistant tokens in its last 16 tokens.",
    ]


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GPT-2 (Conv1D layers, learned positions) that reads at most 32 tokens."""
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny-gpt2"),
        transformers.GPT2Config,
        transformers.GPT2LMHeadModel,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
    )


def test_cli_local_caps_max_seq_length_at_the_models_context(
    tiny_gpt2: Path, ada: Path, tmp_path: Path, database: Database
) -> None:
    long_user = "hi there how are you what is new " * 4  # 32 words: over 32 tokens in all
    train = write_train(tmp_path / "train.jsonl", [(long_user, "hello dear friend")] * 4 + PAIRS)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = start_local(
            train, "--base-model", str(tiny_gpt2), "--max-steps", "2", "--batch-size", "2",
            "--output-dir", str(out),
        )  # fmt: skip
    assert result.exit_code == 0, result.output  # not "index out of range in self"
    lines = result.output.splitlines()
    assert lines[:2] == [
        f"Note: {tiny_gpt2.name} reads at most 32 tokens: --max-seq-length 1024 lowered to 32.",
        "train.jsonl: 4 examples longer than --max-seq-length 32 were cut to their last 32 "
        "tokens (their start, system prompt included, is not seen in training).",
    ]
    # peft adapts GPT-2's Conv1D layers by itself: its notice about it is not shown.
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)], [
        str(w.message) for w in caught
    ]
    # Ollama cannot put a LoRA on a GPT-2 base: SERVING.md says so instead of a command.
    serving_md = (out / "SERVING.md").read_text()
    assert (
        "Not for this adapter: Ollama converts safetensors LoRA adapters only for Llama-family "
        "(llama, mistral, mixtral) and Gemma 2 (gemma2) base models, and "
        f"`{tiny_gpt2.resolve()}` is a `gpt2` model (its config.json `model_type`), so no "
        "Modelfile was written. Serve it with vLLM or llama.cpp.\n"
    ) in serving_md
    assert "ollama create" not in serving_md and not (out / "Modelfile").exists()


def test_cli_local_keeps_a_key_in_a_training_error_out_of_the_job_and_the_output(
    tiny_model: Path, ada: Path, tmp_path: Path, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A library's exception quoting the key (OPENAI_API_KEY, set for every test) or a token.
    key = os.environ["OPENAI_API_KEY"]
    fail_at_batch(monkeypatch, 1, RuntimeError(f"hub said: Bearer hf_0123456789abcdef, {key}"))
    result = short_run(tiny_model, tmp_path)
    assert result.exit_code == 1
    clean = "hub said: Bearer ***, <OPENAI_API_KEY>"
    assert result.output.splitlines()[-1] == f"Error: local training failed: {clean}"
    (job,) = jobs_in(database)
    assert (job.status, job.error) == ("failed", clean)
    status = run("finetune", "status", job.job_id)
    assert status.output.splitlines()[-1] == f"Error: {job.job_id} failed: {clean}"


def test_cli_local_ctrl_c_cancels_the_job_and_says_how_to_resume(
    tiny_model: Path,
    ada: Path,
    tmp_path: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = fail_at_batch(monkeypatch, 4, KeyboardInterrupt())  # Ctrl-C at step 5
    out = tmp_path / "out"
    options = ("--max-steps", "6", "--save-steps", "2", "--output-dir", str(out))
    train = write_train(tmp_path / "train.jsonl")
    result = start_local(train, "--base-model", str(tiny_model), *options)
    assert result.exit_code == 130
    (job,) = jobs_in(database)
    hint = "rerun the same command to resume from checkpoint-4 (step 4)"
    assert result.stderr == f"Interrupted: {job.job_id} is cancelled; {hint}.\n"
    assert (job.status, job.error) == ("cancelled", f"interrupted: {hint}")

    status = run("finetune", "status", job.job_id)
    assert status.exit_code == 0  # cancelled, as an OpenAI job cancelled: no error
    assert status.output.splitlines() == [
        f"{job.job_id}: cancelled (local LoRA in {out.resolve()})",
        f"  interrupted: {hint}",
    ]

    monkeypatch.setattr(PadCollator, "__call__", real)
    again = start_local(train, "--base-model", str(tiny_model), *options)
    assert again.exit_code == 0, again.output
    assert f"Resuming from {out / 'checkpoints' / 'checkpoint-4'} (step 4)." in again.output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_cli_local_stopped_by_kill_or_a_closed_terminal_ends_like_ctrl_c(
    tiny_model: Path, ada: Path, tmp_path: Path, database: Database, sig: signal.Signals
) -> None:
    train = write_train(tmp_path / "train.jsonl")
    command = [sys.executable, "-m", "phischer", "finetune", "start", str(train)]
    options = ["--persona", "ada", "--provider", "local", "--base-model", str(tiny_model)]
    proc = subprocess.Popen(
        [*command, *options, "--max-steps", "100000", "--output-dir", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # said once the job is recorded, before the first step
        assert line.startswith("Training a rank-16 LoRA on "), (line, proc.communicate())
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    (job,) = jobs_in(database)
    assert proc.returncode == 130, (out, err)
    assert err.splitlines()[-1] == f"Interrupted: {job.job_id} is cancelled; {job.error[13:]}."
    assert job.status == "cancelled" and job.error.startswith("interrupted: ")


def test_cli_local_ctrl_c_before_training_records_nothing(
    tiny_model: Path,
    ada: Path,
    tmp_path: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def ctrl_c(base_model: str) -> Any:
        raise KeyboardInterrupt  # while the model loads

    monkeypatch.setattr(local, "_load", ctrl_c)
    result = short_run(tiny_model, tmp_path)
    assert result.exit_code == 130
    assert result.stderr == "Interrupted before training started: nothing was trained.\n"
    assert jobs_in(database) == []


def test_cli_local_rerun_skips_a_checkpoint_cut_short_while_it_was_saved(
    tiny_model: Path, ada: Path, tmp_path: Path, database: Database
) -> None:
    out = tmp_path / "out"
    options = ("--max-steps", "6", "--save-steps", "3", "--output-dir", str(out))
    train = write_train(tmp_path / "train.jsonl")
    killed = start_local(train, "--base-model", str(tiny_model), "--max-steps", "4", *options[2:])
    assert killed.exit_code == 0, killed.output
    # What a run killed while it saved checkpoint-6 leaves: the Trainer writes the adapter and
    # the optimizer first and trainer_state.json last, so the folder has no state yet.
    cut = out / "checkpoints" / "checkpoint-6"
    shutil.copytree(out / "checkpoints" / "checkpoint-3", cut)
    (cut / "trainer_state.json").unlink()
    (cut / "optimizer.pt").write_bytes(b"PK\x03")  # cut short

    result = start_local(train, "--base-model", str(tiny_model), *options)
    assert result.exit_code == 0, result.output
    assert f"Resuming from {out / 'checkpoints' / 'checkpoint-4'} (step 4)." in result.output
    assert [j.status for j in jobs_in(database)] == ["succeeded", "succeeded"]
    state = json.loads((cut / "trainer_state.json").read_text())  # saved whole this time
    assert state["global_step"] == 6


def test_cli_local_ctrl_c_while_the_adapter_is_written_leaves_the_served_one_whole(
    tiny_model: Path,
    ada: Path,
    tmp_path: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import peft.peft_model
    from safetensors.torch import load_file

    out = tmp_path / "out"
    weights = out / "adapter_model.safetensors"
    train = write_train(tmp_path / "train.jsonl")
    options = ("--base-model", str(tiny_model), "--save-steps", "3", "--output-dir", str(out))
    assert start_local(train, "--max-steps", "3", *options).exit_code == 0
    served = weights.read_bytes()  # what a server loads from the folder meanwhile

    real = peft.peft_model.safe_save_file

    def cut_short(tensors: Any, filename: str, **kwargs: Any) -> None:
        if "checkpoints" in Path(filename).parts:
            return real(tensors, filename, **kwargs)
        real(tensors, filename, **kwargs)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt  # Ctrl-C half way through the final adapter

    monkeypatch.setattr(peft.peft_model, "safe_save_file", cut_short)
    stopped = start_local(train, "--max-steps", "6", *options)
    assert stopped.exit_code == 130
    assert "rerun the same command to resume from checkpoint-6 (step 6)" in stopped.stderr
    assert weights.read_bytes() == served  # the earlier adapter, whole
    assert not (out / ".saving").exists()

    monkeypatch.setattr(peft.peft_model, "safe_save_file", real)
    again = start_local(train, "--max-steps", "6", *options)
    assert again.exit_code == 0, again.output
    assert "Already complete: checkpoint-6 reached step 6" in again.output
    # The rerun serves the weights of step 6, not the adapter of the run before.
    final = out / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors"
    assert weights.read_bytes() == final.read_bytes() != served
    assert load_file(weights).keys() == load_file(final).keys()


def on_first_batch(monkeypatch: pytest.MonkeyPatch, action: Callable[[], Any]) -> None:
    """Run `action` (another command, as from a second shell) while the first batch is made."""
    real = PadCollator.__call__
    pending = [action]

    def acting(self: PadCollator, batch: list[dict[str, list[int]]]) -> Any:
        while pending:
            pending.pop()()
        return real(self, batch)

    monkeypatch.setattr(PadCollator, "__call__", acting)


def test_cli_local_switches_a_persona_renamed_while_it_trains(
    tiny_model: Path,
    ada: Path,
    tmp_path: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    edits: list[Any] = []
    on_first_batch(
        monkeypatch, lambda: edits.append(run("persona", "edit", "ada", "--name", "Ada King"))
    )
    result = short_run(tiny_model, tmp_path)
    assert edits[0].exit_code == 0, edits[0].output
    assert result.exit_code == 0, result.output
    p = persona_row(database)
    (job,) = jobs_in(database)
    assert (p.name, p.backend, p.model) == ("Ada King", "openai", "ada-lovelace")
    assert job.status == "succeeded" and job.persona_id == p.id
    assert "Persona Ada King now uses model ada-lovelace at " in result.output


def test_cli_local_success_keeps_the_model_of_a_job_started_after_it(
    tiny_model: Path,
    ada: Path,
    tmp_path: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An OpenAI job started while it trained, and succeeded first: the run switched it back.
    def newer_job_succeeds() -> None:
        with database.write() as session:
            job = jobs.record_job(
                session, job_id="ftjob-9", provider="openai", persona_id=persona_row(database).id,
                base_model="gpt-4.1-mini", status="running",
            )  # fmt: skip
            jobs.apply_update(session, job, jobs.JobUpdate("succeeded", fine_tuned_model="ft:x"))

    with database.write() as session:  # and one still running from before: said at start
        jobs.record_job(session, job_id="ftjob-1", provider="openai", status="running",
                        persona_id=persona_row(database).id, base_model="gpt-4.1-mini")  # fmt: skip
    on_first_batch(monkeypatch, newer_job_succeeds)
    result = short_run(tiny_model, tmp_path)
    assert result.exit_code == 0, result.output
    assert "Warning: Ada Lovelace already has a fine-tuning job that has not ended: ftjob-1 " in (
        result.output
    )
    assert persona_row(database).model == "ft:x"
    local_id = next(j.job_id for j in jobs_in(database) if j.provider == "local")
    assert result.output.splitlines()[-2] == (
        f"Persona Ada Lovelace keeps ft:x of ftjob-9, started after {local_id}: to answer with "
        "this one, `phischer persona edit 'Ada Lovelace' --backend openai --model ada-lovelace "
        f"--base-url {DEFAULT_SERVE_URL}`."
    )


def test_cli_local_refuses_a_second_run_into_the_folder_one_trains_into(
    tiny_model: Path,
    ada: Path,
    tmp_path: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    seconds: list[Any] = []
    # Another terminal starts the same command (into the same folder) while the first trains.
    on_first_batch(monkeypatch, lambda: seconds.append(short_run(tiny_model, tmp_path)))
    first = short_run(tiny_model, tmp_path)
    assert first.exit_code == 0, first.output
    assert seconds[0].exit_code == 1
    assert seconds[0].output == (
        f"Error: another `phischer finetune start` (pid {os.getpid()}) is training into "
        f"{out}: wait for it to end, or pass another --output-dir\n"
    )
    (job,) = jobs_in(database)  # the first run's, not closed as a killed run's
    assert (job.status, job.error) == ("succeeded", None)
    # Once it has ended, the folder is free again.
    assert short_run(tiny_model, tmp_path).exit_code == 0


def test_cli_local_says_in_one_line_that_the_persona_was_removed_while_it_trained(
    tiny_model: Path,
    ada: Path,
    tmp_path: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on_first_batch(monkeypatch, lambda: run("persona", "remove", "ada"))
    result = short_run(tiny_model, tmp_path)
    assert result.exit_code == 1
    (job,) = jobs_in(database)
    out = tmp_path / "out"
    assert result.stderr == (
        f"Error: persona 'Ada Lovelace' was removed while {job.job_id} trained: the adapter is "
        f"in {out} (serving notes: {out / 'SERVING.md'}); point a persona at it with "
        "`phischer persona edit NAME --backend openai --model ada-lovelace --base-url "
        "http://127.0.0.1:8000/v1` (or a new one: `phischer persona add NAME --keyword WORD "
        "--backend openai --model ada-lovelace --base-url http://127.0.0.1:8000/v1`)\n"
    )
    # The training itself succeeded: the job says so, and the adapter is there to serve.
    assert job.status == "succeeded" and job.persona_id is None
    assert (out / "adapter_model.safetensors").is_file()


def test_a_hub_id_while_offline_is_one_line_not_the_hubs_retry_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What huggingface_hub logs for each retry of each request while offline (45 lines
    # before the one-line error); logged here, since the real retries take 50 s.
    hub_http = logging.getLogger("huggingface_hub.utils._http")
    with local.quiet_library(local_model=False):
        hub_http.warning("'[Errno 111] Connection refused' thrown while requesting HEAD …")
        hub_http.warning("Retrying in 1s [Retry 1/5].")
    assert caplog.records == []
    hub_http.warning("after the training call")  # its verbosity is given back
    assert [r.getMessage() for r in caplog.records] == ["after the training call"]


# -- serving notes for each kind of base model ------------------------------------------------


def test_base_model_type_reads_config_json_without_a_download(tiny_model: Path) -> None:
    assert local.base_model_type(str(tiny_model)) == "llama"
    assert local.base_model_type("phischer-tests/not-in-the-cache") is None


def test_serving_guide_ollama_section_follows_the_base_model() -> None:
    def ollama(base: str, model_type: str | None) -> str:
        guide = serving.serving_guide(
            base_model=base,
            adapter_dir=Path("/adapters/ada"),
            name="ada",
            rank=16,
            serve_url=serving.VLLM_URL,
            model_type=model_type,
        )
        return guide.split("## Ollama (http://127.0.0.1:11434/v1)\n\n")[1].split("\n## ")[0]

    families = "Llama-family (llama, mistral, mixtral) and Gemma 2 (gemma2) base models"
    # README's example: a Qwen2.5 base, which Ollama cannot put a LoRA on.
    assert ollama("Qwen/Qwen2.5-1.5B-Instruct", "qwen2") == (
        f"Not for this adapter: Ollama converts safetensors LoRA adapters only for {families}, "
        "and `Qwen/Qwen2.5-1.5B-Instruct` is a `qwen2` model (its config.json `model_type`), "
        "so no Modelfile was written. Serve it with vLLM or llama.cpp.\n"
    )
    llama = ollama("meta-llama/Llama-3.2-1B-Instruct", "llama")
    assert "ollama create ada -f /adapters/ada/Modelfile" in llama
    # A hub id: what FROM must become, before `ollama create`.
    assert (
        "Ollama cannot read a Hugging Face hub id: replace the FROM value with the Ollama tag "
        "of exactly meta-llama/Llama-3.2-1B-Instruct, or a local safetensors folder or GGUF "
        "file of those weights. Then:\n"
    ) in llama
    unknown = ollama("meta-llama/Llama-3.2-1B-Instruct", None)
    assert (
        f"Ollama converts safetensors LoRA adapters only for {families}; the type of "
        "`meta-llama/Llama-3.2-1B-Instruct` could not be read here: check that it is one of "
        "them.\n"
    ) in unknown
    assert "ollama create ada" in unknown
