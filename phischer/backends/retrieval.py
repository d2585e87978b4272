"""The offline `retrieval` backend: BM25 over a persona's chat dataset.

Each assistant turn of the dataset is a possible answer, keyed by the user turn before it.
A text is answered with the reply whose key best matches it, skipping the persona's recent
replies to this number so it does not repeat itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np

from phischer.backends.base import BackendError, PersonaView, Reply

# bm25s sets its own logger to DEBUG on import; let it follow the app's level instead.
logging.getLogger("bm25s").setLevel(logging.NOTSET)
log = logging.getLogger(__name__)

TOKEN_RE = re.compile(r"\w+", re.UNICODE)
# Group-chat turns carry a "Name: " prefix (dataset rule); names are not what a text is about.
# Only capitalised one-to-three-word names count, so "pineapple on pizza: yes?" stays whole.
SPEAKER_RE = re.compile(r"^[A-Z][\w'.-]*(?: [A-Z][\w'.-]*){0,2}: ", re.MULTILINE)
CANDIDATES = 10
RECENT_REPLIES = 3
RECHECK_S = 1.0  # how often a dataset file is checked for changes


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; no stop-word removal, since 'how are you' is all stop words."""
    return TOKEN_RE.findall(text.lower())


# Up to this many cells (keys x vocabulary), the index also keeps a dense score table: a
# query is then one gather and one sum (~5 µs) instead of a scatter-add per token.
DENSE_CELLS = 4_000_000


@dataclass
class Index:
    """BM25 over the keys (built by bm25s), and the answers they lead to."""

    bm25: bm25s.BM25
    answers: list[str]
    dense: np.ndarray | None = None

    def __post_init__(self) -> None:
        table = self.bm25.scores
        data, docs, ptr = table["data"], table["indices"], table["indptr"]
        columns = len(ptr) - 1  # token ids run up to this (the vocabulary may skip some)
        if self.dense is None and len(self.answers) * (columns + 1) <= DENSE_CELLS:
            dense = np.zeros((columns + 1, len(self.answers)), dtype=np.float32)
            for t in range(columns):
                dense[t, docs[ptr[t] : ptr[t + 1]]] = data[ptr[t] : ptr[t + 1]]
            self.dense = dense  # the last row stays zero: where unknown tokens go

    def scores(self, tokens: list[str]) -> np.ndarray:
        """BM25 score of every key for the query tokens (same values as bm25s.get_scores).

        bm25s keeps one column of precomputed scores per token; summing the query's
        columns directly costs a few microseconds, where get_scores spends ~0.3 ms of
        generic bookkeeping on the same sum.
        """
        vocab = self.bm25.vocab_dict
        if self.dense is not None:
            unknown = len(self.dense) - 1
            return self.dense[[vocab.get(token, unknown) for token in tokens]].sum(axis=0)
        table = self.bm25.scores
        data, docs, ptr = table["data"], table["indices"], table["indptr"]
        out = np.zeros(len(self.answers), dtype=np.float32)
        for token in tokens:
            t = vocab.get(token)
            if t is not None:
                # A token's column lists each document once, so fancy-index += is safe.
                out[docs[ptr[t] : ptr[t + 1]]] += data[ptr[t] : ptr[t + 1]]
        return out

    def best(self, query: str, avoid: set[str], turn: int) -> str:
        """The best answer for `query` that is not in `avoid`."""
        scores = self.scores(tokenize(query))
        # Top-k over the non-zero entries only: most scores are zero and a full argpartition
        # over them costs far more than the match itself (FIELD-NOTES).
        nonzero = np.flatnonzero(scores)
        top = nonzero[np.argsort(-scores[nonzero], kind="stable")[:CANDIDATES]].tolist()
        fresh = [i for i in top if self.answers[i] not in avoid]
        if fresh:
            ranked = scores[fresh].tolist()
            ties = [i for i, score in zip(fresh, ranked, strict=True) if score >= ranked[0] - 1e-6]
            # Equal matches (many "hey"s) take turns so the clone does not sound canned.
            return self.answers[ties[turn % len(ties)]]
        # Nothing matches (or only what was just said): still answer in the persona's
        # voice, deterministically, without repeating itself.
        pick = zlib.crc32(query.encode()) % len(self.answers)
        for offset in range(len(self.answers)):
            answer = self.answers[(pick + offset) % len(self.answers)]
            if answer not in avoid:
                return answer
        return self.answers[pick]


@dataclass
class Pairs:
    """The (text, reply) pairs of a chat JSONL file, and the malformed lines left out."""

    keys: list[str]
    answers: list[str]
    skipped: int = 0  # lines that are not a chat example (see _turns)
    first_skipped: int | None = None  # 1-based number of the first such line

    def none_to_answer(self, path: Path) -> str:
        """Why `path` cannot serve: no pairs (and how many malformed lines were left out)."""
        note = ""
        if self.skipped:
            lines = "line" if self.skipped == 1 else "lines"
            note = f" ({self.skipped} malformed {lines} skipped, first: line {self.first_skipped})"
        return f"dataset {path} has no user→assistant pairs to answer from{note}"


def _turns(obj: object) -> list[tuple[str, str | None]] | None:
    """(role, text) of each message of a parsed line, or None if it is not a chat example.

    A chat example is an object whose "messages" is a list of objects with a string "role"
    and a string or null "content" (null: a tool-call turn, which has no text to match).
    """
    messages = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(messages, list):
        return None
    turns: list[tuple[str, str | None]] = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not (content is None or isinstance(content, str)):
            return None
        turns.append((role, content))
    return turns


def read_pairs(path: Path) -> Pairs:
    """Each assistant turn of a chat JSONL file keyed by the user turn before it.

    Best effort: a line that is not a chat example (not UTF-8, not JSON, not an object,
    no "messages" list, a message that is not an object with a string role and a string or
    null content) is skipped and counted, never raised; `phischer dataset check` explains
    it. Only OSError (the file cannot be read at all) escapes.
    """
    pairs = Pairs(keys=[], answers=[])
    seen: set[tuple[str, str]] = set()
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                # utf-8-sig on the first line: editors on Windows start files with a BOM.
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
                if not line:
                    continue
                # ValueError covers JSONDecodeError and over-long integer literals;
                # RecursionError, arrays nested thousands deep.
                turns = _turns(json.loads(line))
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                turns = None
            if turns is None:
                pairs.skipped += 1
                if pairs.first_skipped is None:
                    pairs.first_skipped = number
                continue
            for (prev_role, prev), (role, text) in zip(turns, turns[1:], strict=False):
                if role != "assistant" or prev_role != "user" or prev is None or text is None:
                    continue
                key = SPEAKER_RE.sub("", prev).strip()
                answer = text.strip()
                if key and answer and (key, answer) not in seen:
                    seen.add((key, answer))
                    pairs.keys.append(key)
                    pairs.answers.append(answer)
    return pairs


def warn_skipped(path: Path, pairs: Pairs) -> None:
    """Log one WARNING naming the file if malformed lines were skipped (never their content)."""
    if pairs.skipped:
        log.warning(
            "Dataset %s: skipped %d malformed line%s (first: line %d); "
            "`phischer dataset check` says what is wrong with them",
            path,
            pairs.skipped,
            "" if pairs.skipped == 1 else "s",
            pairs.first_skipped,
        )


def load_pairs(path: Path) -> tuple[list[str], list[str]]:
    """(keys, answers) from a chat JSONL file (see read_pairs); warns once about skipped lines."""
    pairs = read_pairs(path)
    warn_skipped(path, pairs)
    return pairs.keys, pairs.answers


class RetrievalBackend:
    """BM25 answers from the persona's dataset; one index per dataset file per process."""

    local = True  # answers in-process in well under a millisecond
    # It reads the last user turn and the RECENT_REPLIES replies before it; the webhook
    # fetches no more history than that.
    max_turns = 2 * RECENT_REPLIES + 2

    def __init__(self, recheck_s: float = RECHECK_S) -> None:
        self._indexes: dict[tuple[str, int, int], Index] = {}
        self._lock = threading.Lock()
        self._recheck_s = recheck_s
        self._checked: dict[str, tuple[float, Index]] = {}  # dataset -> (when, index)

    def index(self, persona: PersonaView) -> Index:
        """The cached index of the persona's dataset (rebuilt only if the file changes)."""
        if not persona.dataset:
            raise BackendError(f"persona {persona.name} has no --dataset for the retrieval backend")
        # The file is looked at once every recheck_s, not on every text.
        now = time.monotonic()
        checked = self._checked.get(persona.dataset)
        if checked is not None and now - checked[0] < self._recheck_s:
            return checked[1]
        index = self._current(persona)
        self._checked[persona.dataset] = (now, index)
        return index

    def _current(self, persona: PersonaView) -> Index:
        assert persona.dataset
        path = Path(persona.dataset)
        try:
            st = os.stat(path)
        except OSError:
            raise BackendError(f"dataset {path} of persona {persona.name} is missing") from None
        cache_key = (str(path), st.st_mtime_ns, st.st_size)
        index = self._indexes.get(cache_key)
        if index is not None:
            return index
        with self._lock:
            index = self._indexes.get(cache_key)
            if index is None:
                index = self._build(path)
                self._indexes = {k: v for k, v in self._indexes.items() if k[0] != str(path)} | {
                    cache_key: index
                }
        return index

    @staticmethod
    def _build(path: Path) -> Index:
        pairs = read_pairs(path)
        if not pairs.answers:
            raise BackendError(pairs.none_to_answer(path))
        warn_skipped(path, pairs)  # once per build: the index is cached until the file changes
        bm25 = bm25s.BM25()
        bm25.index([tokenize(k) or [""] for k in pairs.keys], show_progress=False)
        return Index(bm25=bm25, answers=pairs.answers)

    def warm(self, persona: PersonaView) -> None:
        """Build the index now (before gunicorn forks, so workers share it)."""
        self.index(persona)

    def reply(self, persona: PersonaView, messages: list[dict[str, str]]) -> Reply:
        """Answer the last user turn from the dataset."""
        index = self.index(persona)
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        assistant = [m["content"] for m in messages if m["role"] == "assistant"]
        answer = index.best(query, set(assistant[-RECENT_REPLIES:]), turn=len(assistant))
        return Reply(text=answer, model="retrieval")
