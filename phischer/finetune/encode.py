"""A chat dataset as training features: token ids, and labels only on the assistant's turns."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phischer.finetune.common import Echo
from phischer.printing import plural

IGNORE = -100  # label value the loss skips (PyTorch's CrossEntropyLoss ignore_index)


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
