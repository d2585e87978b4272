"""`dataset split`: train and validation files by conversation, so no thread is on both sides."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phischer.atomic import atomic_files
from phischer.dataset_check import (
    CR_ONLY,
    VALIDATION_SUFFIX,
    DatasetError,
    is_blank,
    open_checked,
    parse_line,
    read_lines,
)
from phischer.printing import plural


@dataclass
class SplitResult:
    """Where `dataset split` wrote its two files and how many of what went where."""

    train_path: Path
    validation_path: Path
    train_examples: int
    validation_examples: int
    train_conversations: int
    validation_conversations: int
    from_sidecar: bool = True

    def format(self) -> str:
        """The summary `dataset split` prints."""
        how = (
            "conversation ids from the .conversations file"
            if self.from_sidecar
            else "conversations inferred from overlapping examples (no .conversations file)"
        )
        lines = [
            f"Split by {how}:",
            f"  train:      {plural(self.train_examples, 'example')} from "
            f"{plural(self.train_conversations, 'conversation')} -> {self.train_path}",
            f"  validation: {plural(self.validation_examples, 'example')} from "
            f"{plural(self.validation_conversations, 'conversation')} -> {self.validation_path}",
        ]
        if not self.from_sidecar:
            lines.append(
                "Note: windows of one chat that do not overlap cannot be linked without the "
                ".conversations file `phischer import` writes; keep it next to the JSONL."
            )
        return "\n".join(lines)


def sidecar_path(path: Path) -> Path:
    """`OUT.jsonl.conversations`: one conversation id per example line."""
    return path.with_name(path.name + ".conversations")


def _turns(obj: Any) -> list[tuple[str, str]]:
    messages = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(messages, list):
        return []
    return [
        (str(m.get("role")), json.dumps(m.get("content"), ensure_ascii=False))
        for m in messages
        if isinstance(m, dict) and m.get("role") != "system"
    ]


def _continues(previous: list[tuple[str, str]], current: list[tuple[str, str]]) -> bool:
    """Whether `current` is a window of the same conversation as `previous` (see infer_…)."""
    if not previous or not current:
        return False
    if previous[0] == current[0]:
        return True
    n = len(previous)
    return any(previous[j:] == current[: n - j] for j in range(n) if n - j <= len(current))


def infer_conversations(path: Path) -> list[str]:
    """Conversation ids for a JSONL with no sidecar, one per non-blank line.

    Rule: an example continues the previous line's conversation when, ignoring system
    messages, both start with the same message, or it starts with the tail of the previous
    example (overlapping or growing windows of one thread). Anything else starts a new
    conversation, except that an example written twice, anywhere in the file, joins the
    two conversations: apart, one copy could train and the other validate. Wrongly merging
    two threads only makes the split coarser; it never leaks.
    """
    runs: list[int] = []  # per line, the run of lines it was read in
    parent: list[int] = []  # per run, a run it is joined to (itself when none)
    first_run: dict[int, int] = {}  # an example's turns (hashed) -> the run it came in first
    previous: list[tuple[str, str]] = []
    for number, raw in read_lines(path):
        if is_blank(raw):
            continue
        obj, problem = parse_line(number, raw)
        if problem is not None:
            raise DatasetError(f"{path}: {problem}; run `phischer dataset check` first")
        turns = _turns(obj)
        if not _continues(previous, turns):
            parent.append(len(parent))
        run = len(parent) - 1
        if turns:
            # A hash, not the text: memory per line stays a few numbers. A collision only
            # joins two runs, which never leaks.
            _join(parent, first_run.setdefault(hash(tuple(turns)), run), run)
        runs.append(run)
        previous = turns
    names: dict[int, str] = {}  # numbered by first line, as before any join
    return [names.setdefault(_root(parent, r), f"run-{len(names) + 1:06d}") for r in runs]


def _root(parent: list[int], run: int) -> int:
    while parent[run] != run:
        parent[run] = parent[parent[run]]  # halve the path: later look-ups stay short
        run = parent[run]
    return run


def _join(parent: list[int], a: int, b: int) -> None:
    ra, rb = _root(parent, a), _root(parent, b)
    parent[max(ra, rb)] = min(ra, rb)


def _example_key(path: Path, number: int, raw: bytes) -> int:
    """What makes two lines one example: their turns (system aside, as inferred), else bytes."""
    obj, problem = parse_line(number, raw)
    if problem is not None and problem.kind == CR_ONLY:
        # Read as one line, the file would be "N conversation ids for 1 example".
        raise DatasetError(f"{path}: {problem}")
    turns = _turns(obj) if problem is None else []
    # A hash, as in infer_conversations: a collision only joins two conversations.
    return hash(tuple(turns)) if turns else hash(raw)


def join_copies(ids: list[str], keys: list[int]) -> list[str]:
    """Each line's conversation, conversations that share an example joined into one.

    A `.conversations` file may give one example two ids (a chat exported twice, files
    concatenated): apart, one copy could train and the other validate. A joined group is
    named by its smallest id, so the split does not depend on the order of the lines.
    """
    names = sorted(set(ids))
    index = {cid: i for i, cid in enumerate(names)}
    parent = list(range(len(names)))
    first: dict[int, int] = {}  # an example's key -> the conversation it came in first
    for cid, key in zip(ids, keys, strict=True):
        _join(parent, first.setdefault(key, index[cid]), index[cid])
    return [names[_root(parent, index[cid])] for cid in ids]


def _read_ids(path: Path) -> tuple[list[str], list[str], bool]:
    """(each line's id, each line's conversation group, whether the ids came from a sidecar)."""
    side = sidecar_path(path)
    if not side.exists():
        ids = infer_conversations(path)  # copies already joined
        return ids, ids, False
    keys = [_example_key(path, n, raw) for n, raw in read_lines(path) if not is_blank(raw)]
    n_lines = len(keys)
    try:
        text = side.read_bytes().decode("utf-8")  # not read_text: it turns "\r" into "\n"
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{side}: not UTF-8 text (byte {exc.start + 1}); re-run `phischer import` or delete "
            "the .conversations file"
        ) from None
    # Lines end at "\n" only, as in the JSONL: an id may hold any other character (a "\r" or
    # "\u2028" from a chat's name or id), which splitlines() would take for a line end.
    ids = [line.rstrip("\r") for line in text.split("\n")]
    if ids[-1] == "":
        ids.pop()
    if len(ids) != n_lines:
        raise DatasetError(
            f"{side}: {len(ids):,} conversation ids for {n_lines:,} examples in {path.name}; "
            "re-run `phischer import` or delete the .conversations file"
        )
    return ids, join_copies(ids, keys), True


def choose_validation(sizes: dict[str, int], validation: float, seed: int) -> set[str]:
    """Conversation ids for validation: seeded order, first fit up to the example share."""
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    total = sum(sizes.values())
    # 0.2 * 100 must mean 20, not 19 (the 1e-9); and a share near 1 (0.9999999999) must
    # still leave training a conversation: never the whole total, at most all but the
    # smallest conversation.
    target = min(validation * total + 1e-9, total - min(sizes.values()))
    chosen: list[str] = []
    held = 0
    for cid in order:
        if held + sizes[cid] <= target:
            chosen.append(cid)
            held += sizes[cid]
    if not chosen:
        # Every conversation is bigger than the share asked for: take the smallest one so
        # validation is never empty (train still keeps the others).
        chosen.append(min(order, key=lambda cid: sizes[cid]))
    return set(chosen)


def _output_paths(path: Path, out_dir: Path | None) -> tuple[Path, Path]:
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    folder = out_dir if out_dir is not None else path.parent
    return folder / f"{stem}.train.jsonl", folder / f"{stem}{VALIDATION_SUFFIX}"


def split_file(
    path: Path, validation: float = 0.2, seed: int = 0, out_dir: Path | None = None
) -> SplitResult:
    """Split a JSONL into train/validation by conversation: no thread on both sides."""
    path = Path(path)
    open_checked(path)
    if not 0 < validation < 1:
        raise DatasetError(f"--validation must be between 0 and 1 (exclusive), got {validation}")
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    ids, groups, from_sidecar = _read_ids(path)
    if not ids:
        raise DatasetError(f"{path}: no examples to split")
    sizes: dict[str, int] = {}
    for group in groups:
        sizes[group] = sizes.get(group, 0) + 1
    if len(sizes) < 2:
        which = "the one example comes" if len(ids) == 1 else f"all {len(ids):,} examples come"
        raise DatasetError(
            f"{path}: {which} from one conversation; a split by conversation needs at least 2"
        )
    held_out = choose_validation(sizes, validation, seed)
    train_path, validation_path = _output_paths(path, out_dir)
    if path.resolve() in (train_path.resolve(), validation_path.resolve()):
        raise DatasetError(f"{path}: output would overwrite the input; use -o DIR")
    counts = {False: 0, True: 0}
    targets = (train_path, validation_path, sidecar_path(train_path), sidecar_path(validation_path))
    with atomic_files(*targets, mode="wb") as (train, val, train_ids, val_ids):
        lines = (raw for _, raw in read_lines(path) if not is_blank(raw))
        for raw, cid, group in zip(lines, ids, groups, strict=True):
            # Each line keeps its own id; its side is its group's.
            is_val = group in held_out
            (val if is_val else train).write(raw + b"\n")
            (val_ids if is_val else train_ids).write(cid.encode("utf-8") + b"\n")
            counts[is_val] += 1
    return SplitResult(
        train_path=train_path,
        validation_path=validation_path,
        train_examples=counts[False],
        validation_examples=counts[True],
        train_conversations=len(sizes) - len(held_out),
        validation_conversations=len(held_out),
        from_sidecar=from_sidecar,
    )
