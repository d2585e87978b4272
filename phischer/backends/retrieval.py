"""The offline `retrieval` backend: BM25 over a persona's chat dataset.

Each assistant turn of the dataset is a possible answer, keyed by the user turns before it.
A text is answered with the reply whose key best matches it, skipping the persona's recent
replies to this number so it does not repeat itself.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import bm25s
import numpy as np

from phischer.backends.base import BackendError, PersonaView, Reply
from phischer.chat_format import content_texts
from phischer.daemon_pool import DaemonPool
from phischer.per_process import PerProcess
from phischer.thread import join_texts, split_turn

# bm25s sets its own logger to DEBUG on import; let it follow the app's level instead.
logging.getLogger("bm25s").setLevel(logging.NOTSET)
log = logging.getLogger(__name__)

CANDIDATES = 10
# Past this many matching keys, a partition before the sort is cheaper than sorting them all
# (measured: 6.1 µs against 5.4 at 300 keys, 7.5 against 18 at 1,000, 31 against 770 at 10k).
PARTITION_ABOVE = 500
RECENT_REPLIES = 3
RECHECK_S = 1.0  # how often a dataset file is checked for changes
# What says a dataset file changed: (mtime_ns, ctime_ns, size). The ctime too, since copies
# that keep the old mtime (`cp -p`, `rsync -a`, a backup restored) do not keep it.
Stamp = tuple[int, int, int]

# Scripts written without spaces between words (Han, kana, Thai, Lao, Myanmar, Khmer): a run
# of them is a phrase, not a word, so it is cut into overlapping pairs of characters (what
# search engines do for CJK): "吃饭了吗" and "你吃饭了没有" then share 吃饭 and 饭了.
# Hangul too, as search engines cut it: Korean puts spaces between phrases, but a word
# carries its particles and endings ("밥은", "먹었어요"), and texters often drop the spaces
# ("밥먹었어"), so whole runs left "밥 먹었어?" and "밥은 먹었어요?" without a token in common.
UNSPACED = (
    "\u0e00-\u0eff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u3005-\u3007\u3040-\u30ff"
    "\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
    "\U00020000-\U0003ffff"
)
# Vowel points Arabic and Hebrew writers mostly leave out, and the Arabic stretching stroke
# (tatweel): dropped, so "مَرْحَبًا" and "مرحبــا" read as the usual "مرحبا".
OPTIONAL_MARKS_RE = re.compile(
    "[\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7\u0610-\u061a\u0640\u064b-\u065f\u0670]+"
)


def _char_class(category: str | tuple[str, ...]) -> str:
    """A regex class of the BMP characters whose Unicode category starts with `category`."""
    # From Python's own Unicode tables, so no hand-kept list goes stale. BMP only: a class
    # reaching past it is matched range by range, several times slower.
    spans: list[list[int]] = []
    for c in range(0x10000):
        if unicodedata.category(chr(c)).startswith(category):
            if spans and spans[-1][1] == c - 1:
                spans[-1][1] = c
            else:
                spans.append([c, c])
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in spans)


_MARKS = _char_class("M")
# Group-chat turns carry a "Name: " prefix (dataset rule); names are not what a text is about.
# Only capitalised one-to-three-word names count, so "pineapple on pizza: yes?" stays whole;
# capitalised in any cased script ("Émilie: ", "Łukasz: ", "Саша: "), not only in ASCII.
_CAPITAL = f"[{_char_class(('Lu', 'Lt'))}][\\w'.-]*"
SPEAKER_RE = re.compile(f"^{_CAPITAL}(?: {_CAPITAL}){{0,2}}: ", re.MULTILINE)
# Apostrophes other than ASCII's that keyboards type: the typographic ones autocorrect puts
# in, the modifier letter (a letter to Unicode, which kept "donʼt" one odd word), and the
# grave and acute accents, which keyboards whose apostrophe key is hard to find get typed
# instead ("don`t", "don´t"). NFKC has made ´ (and the Greek tonos ΄, its twin) a space
# and a combining acute by the time these are replaced, so that pair is what stands for it.
OTHER_APOSTROPHES = ("\u2019", "\u2018", "\u02bc", "`", " \u0301")
_WORD = f"[^\\W{UNSPACED}]"
# A word keeps its combining marks: Python's \w leaves them out, which cut "कैसे" into "क"
# and "स". Written as runs of letters between runs of marks, so a word without marks costs
# one scan.
_MARKED = f"{_WORD}+(?:[{_MARKS}]+{_WORD}*)*"
TOKEN_RE = re.compile(
    # An apostrophe between letters keeps the word whole ("don't", "l'heure"): see _contraction.
    f"({_MARKED}(?:'{_MARKED})*)"
    f"|([{UNSPACED}]+)"
    # Each emoji or other symbol is a token of its own, so "😂" answers like "😂" did. Skin
    # tones (U+1F3FB-F) and the U+FE0F after a symbol are not, so 👍🏽 and ❤️ match 👍 and ❤.
    f"|([{_char_class('So')}\U0001f000-\U0001f3fa\U0001f400-\U0001faff])"
)
CLUSTER_RE = re.compile(f".[{_MARKS}]*", re.DOTALL)  # a letter with the marks on it
ASCII_TOKEN_RE = re.compile(r"[a-z0-9_]+")  # what \w+ finds in ASCII, without the Unicode work
ASCII_WORD_RE = re.compile(r"[a-z0-9_]+(?:'[a-z0-9_]+)*")  # the same, apostrophes kept
# French, Italian and Catalan drop a short word's vowel before a vowel or h: l'heure, j'ai,
# c'est, qu'il, dell'anno. The word after the apostrophe is what the text is about. (Accents
# are folded before this is asked: "l'été" reads "l'ete".)
ELISION_VOWELS = frozenset("aeiouyh")


# Letters Unicode does not decompose that texters write without the stroke or ligature all
# the same, on keyboards that lack them: Polish ł, Vietnamese and Croatian đ, French œ
# (autocorrect's), Danish and Norwegian ø and æ (typed "o" and "ae" abroad: "Kobenhavn";
# their å decomposes, so it reads "a" like the "a" they type for it), Icelandic þ and ð
# ("th", "d") and Turkish dotless ı ("i", as its capital I and dotted İ read already).
# Not ß: case folding has made it "ss" before this is asked.
UNDECOMPOSED = str.maketrans(
    {"ł": "l", "đ": "d", "œ": "oe", "ø": "o", "æ": "ae", "þ": "th", "ð": "d", "ı": "i"}
)


def _accent_folds() -> dict[int, str]:
    """str.translate table: each Latin or Greek letter with diacritics (and ё) to the letters without."""
    # Texters drop accents ("cafe", "naive", "khong"); Greeks type "καλημερα" for
    # "καλημέρα" (tonos and dialytika left out, and capitals never had them). Latin and
    # Greek letters only: other scripts' marks are kept or dropped on purpose above (Hindi
    # vowel signs, Arabic vowel points), and in Cyrillic a mark can make another letter (й
    # is not и). Letters, so Greek punctuation (ano teleia: "·") is not touched.
    folds: dict[int, str] = {}
    for c in range(0x80, 0x10000):
        char = chr(c)
        if unicodedata.name(char, "").startswith(("LATIN ", "GREEK ")) and char.isalpha():
            parts = unicodedata.normalize("NFKD", char)
            base = "".join(ch for ch in parts if not unicodedata.category(ch).startswith("M"))
            base = base.translate(UNDECOMPOSED)  # ǿ: ø, then o
            if base and base != char:
                folds[c] = base
    # The one Cyrillic letter texters write without its mark: Russian ё is typed е nearly
    # always (search engines fold it too), while й, ї, ў are letters of their own.
    folds[ord("ё")] = "е"
    return folds


ACCENT_FOLDS = _accent_folds()
# A mark left on an ASCII or Greek letter (no precomposed letter holds that pair, so NFKC
# kept it apart): "q\u0303", "α\u0308".
LOOSE_MARKS_RE = re.compile(f"(?<=[a-z\u03b1-\u03c9])[{_MARKS}]+")


# Cached: str.translate with a dict costs ~60 ns a character, and the words of a persona's
# texts and dataset repeat (a hit costs about what an isascii() check does).
@functools.lru_cache(maxsize=1 << 16)
def _fold_accents(word: str) -> str:
    """`word` with the diacritics of its Latin and Greek letters dropped ("résumé": "resume")."""
    word = word.translate(ACCENT_FOLDS)
    return word if word.isascii() else LOOSE_MARKS_RE.sub("", word)


def _elided(head: str, rest: str) -> bool:
    """Whether `head` + apostrophe reads as an elided article or pronoun before `rest`."""
    return (len(head) == 1 or head.endswith(("qu", "ll"))) and rest[:1] in ELISION_VOWELS


@functools.lru_cache(maxsize=1 << 14)  # contractions are few and frequent ("don't", "i'm")
def _contraction(word: str) -> tuple[str, ...]:
    """Tokens of a word with ' inside: as texters spell it ("dont"), and its main part.

    Joined, because texts drop the apostrophe ("dont", "im", "jai", "cest") and a key with
    it must still match. A possessive or 's also gives its stem ("ada's" is about ada, and
    "what's" about what); an elided article or pronoun gives the word after it ("l'heure"
    matches "heure"). No "t" or "s" token: those matched every contraction alike.
    """
    parts = word.split("'")
    joined = "".join(parts)
    if parts[-1] == "s":
        return joined, "".join(parts[:-1])
    if _elided(parts[0], parts[1]):
        return joined, "".join(parts[1:])
    return (joined,)


def tokenize(text: str) -> list[str]:
    """Word, character-pair and emoji tokens; no stop words dropped ('how are you' is all).

    NFKC and case folding first, so full-width letters, composed and decomposed accents and
    ß/ss read alike; then Latin and Greek letters lose their accents (texters drop them). A
    text of punctuation only ("?", "...") is its characters, so it matches the same
    punctuation in the dataset rather than nothing: only a blank text has no token.
    """
    if text.isascii():  # most texts: no normalising, marks, symbols or unspaced scripts
        text = marked = text.lower()
        if "`" in text:  # typed for an apostrophe (OTHER_APOSTROPHES)
            text = text.replace("`", "'")
        if "'" not in text:
            tokens = ASCII_TOKEN_RE.findall(text)
        else:
            tokens = []
            for word in ASCII_WORD_RE.findall(text):
                if "'" in word:
                    tokens.extend(_contraction(word))
                else:
                    tokens.append(word)
    else:
        marked = unicodedata.normalize("NFKC", text).casefold()
        # Case folding can undo NFKC: "ΐ" folds to ι and two marks, while its capital
        # "Ϊ́" reads ϊ and one; composed again, both are ΐ (the check is the cheap part).
        if not unicodedata.is_normalized("NFKC", marked):
            marked = unicodedata.normalize("NFKC", marked)
        text = OPTIONAL_MARKS_RE.sub("", marked)
        for apostrophe in OTHER_APOSTROPHES:  # str.replace: far cheaper than a regex pass
            text = text.replace(apostrophe, "'")
        tokens = []
        for word, unspaced, symbol in TOKEN_RE.findall(text):
            if unspaced:
                chars = CLUSTER_RE.findall(unspaced)  # a Thai letter and its vowel marks: one
                if len(chars) > 1:
                    tokens.extend(a + b for a, b in zip(chars, chars[1:], strict=False))
                else:
                    tokens.append(unspaced)
            elif word:
                if not word.isascii():
                    word = _fold_accents(word)
                if "'" in word:
                    tokens.extend(_contraction(word))
                else:
                    tokens.append(word)
            else:
                tokens.append(symbol)
    if tokens:
        return tokens
    # A text of optional marks only (a tatweel, a vowel point) is those marks: a key with no
    # token cannot be indexed, and bm25s fails on a dataset whose keys all have none.
    return [c for c in text if not c.isspace()] or [c for c in marked if not c.isspace()]


# Up to this many cells (keys x vocabulary), the index also keeps a dense score table: a
# query is then one gather and one sum (~5 µs) instead of a scatter-add per token.
DENSE_CELLS = 4_000_000


def as_is(text: str) -> str:
    """`text` unchanged: how an answer reads when nothing cuts or cleans it on the way out."""
    return text


@dataclass
class Index:
    """BM25 over the keys (built by bm25s), and the answers they lead to."""

    bm25: bm25s.BM25
    answers: list[str]
    dense: np.ndarray | None = None
    # How an answer reads once sent (replies.sendable: cut to MAX_REPLY_CHARS, characters an
    # SMS cannot carry cleaned). The recent replies to strike out come back from the
    # database in that form, so answers are compared in it too.
    sent_as: Callable[[str], str] = as_is
    # The keys leading to each answer as sent: one (an int, no list to keep per answer) or
    # several (many "lol"s answered "haha"); its keys are each answer once, in order.
    keys_of: dict[str, int | list[int]] = field(init=False, repr=False)
    distinct: list[str] = field(init=False, repr=False)
    # Answers (as sent) of several lines: their first line -> how many lines they have, so
    # `said` looks for them in a turn without trying every run of its lines.
    longer: dict[str, tuple[int, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        keys_of: dict[str, int | list[int]] = {}
        for i, answer in enumerate(self.answers):
            sent = self.sent_as(answer)
            seen = keys_of.setdefault(sent, i)
            if seen != i:
                if isinstance(seen, int):
                    keys_of[sent] = seen = [seen]
                seen.append(i)
        self.keys_of = keys_of
        self.distinct = list(keys_of)
        longer: dict[str, tuple[int, ...]] = {}
        for sent in self.distinct:
            lines = split_turn(sent)
            if len(lines) > 1 and len(lines) not in longer.get(lines[0], ()):
                longer[lines[0]] = (*longer.get(lines[0], ()), len(lines))
        self.longer = longer
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

    def said(self, turns: list[str]) -> set[str]:
        """The answers (as sent) that the persona's `turns` hold, each reply of a merged turn too.

        Replies sent in a row are one turn of the thread, joined (thread.join_texts): each of
        them is a run of the turn's lines, so every run that is an answer counts. A line of
        a longer reply that is an answer of its own counts too: the persona just said it.
        """
        keys_of, longer = self.keys_of, self.longer
        found: set[str] = set()
        for turn in turns:
            lines = split_turn(turn)
            for i, line in enumerate(lines):
                if line in keys_of:
                    found.add(line)
                for count in longer.get(line, ()):
                    if i + count <= len(lines):
                        run = join_texts(lines[i : i + count])
                        if run in keys_of:
                            found.add(run)
        return found

    def best(self, query: str, avoid: set[str], turn: int) -> str:
        """The best answer for `query` whose sent form is not in `avoid`."""
        scores = self.scores(tokenize(query))
        # Recent replies are struck out before the top-k, not after it: when one answer fills
        # the first CANDIDATES places ("haha" to every "lol"), the next one still gets a turn.
        for answer in avoid:
            struck = self.keys_of.get(answer)
            if struck is not None:
                scores[struck] = 0
        # Top-k over the non-zero entries only: most scores are zero and a full argpartition
        # over them costs far more than the match itself (FIELD-NOTES).
        nonzero = np.flatnonzero(scores)
        if len(nonzero) > PARTITION_ABOVE:
            # Common words match most keys of a big dataset (~50k of 100k): sorting them all
            # took ~3 ms. Keep only those at or above the CANDIDATES-th score (ties included,
            # so the stable sort below picks exactly what sorting everything would).
            values = scores[nonzero]
            kth = len(values) - CANDIDATES
            nonzero = nonzero[values >= np.partition(values, kth)[kth]]
        top = nonzero[np.argsort(-scores[nonzero], kind="stable")[:CANDIDATES]].tolist()
        if top:
            ranked = scores[top].tolist()
            ties = [i for i, score in zip(top, ranked, strict=True) if score >= ranked[0] - 1e-6]
            # Equal matches (many "hey"s) take turns so the clone does not sound canned.
            return self.answers[ties[turn % len(ties)]]
        # Nothing matches (or only what was just said): still answer in the persona's
        # voice, deterministically, without repeating itself. Over distinct answers, so this
        # looks at most len(avoid) + 1 of them, however many keys share an answer.
        distinct = self.distinct
        pick = zlib.crc32(query.encode("utf-8", "surrogatepass")) % len(distinct)
        for offset in range(len(distinct)):
            sent = distinct[(pick + offset) % len(distinct)]
            if sent not in avoid:
                return self.first_answer(sent)
        return self.first_answer(distinct[pick])  # the dataset has nothing else to say

    def first_answer(self, sent: str) -> str:
        """The first answer of the dataset that is sent as `sent`."""
        keys = self.keys_of[sent]
        return self.answers[keys if isinstance(keys, int) else keys[0]]


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


def _turns(obj: object) -> list[tuple[str, str, bool]] | None:
    """(role, text, trained) of each message of a parsed line, or None if it is not a chat example.

    A chat example is an object whose "messages" is a list of objects with a string "role"
    and a content that reads as text (chat_format.content_texts: a string, null for a tool
    call, or a list of text, refusal and image parts). `trained` is False for a "weight": 0
    message.
    """
    messages = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(messages, list):
        return None
    turns: list[tuple[str, str, bool]] = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        role = message.get("role")
        texts = content_texts(message.get("content"))
        if not isinstance(role, str) or texts is None:
            return None
        turns.append((role, "\n".join(texts), message.get("weight") != 0))
    return turns


def read_pairs(path: Path) -> Pairs:
    """Each assistant turn of a chat JSONL file keyed by the user turns before it.

    Best effort: a line that is not a chat example (not UTF-8, not JSON, not an object,
    no "messages" list, a message that is not an object with a string role and a content
    that reads as text) is skipped and counted, never raised; `phischer dataset check`
    explains it. Only OSError (the file cannot be read at all) escapes.

    Which turns count: the key is every user turn since the assistant last said something
    (joined with newlines, as the serving thread merges texts sent in a row); system, tool
    and function messages and "name" fields are neither key nor answer. An assistant turn
    with no text (a tool call) does not end the question, so the answer after the tool's
    result is keyed by the user's text. A "weight": 0 turn is no answer, since its author
    marked it as not to be learned, and retrieval would repeat it word for word; it still
    ends the question, since the user's next turn answers it. Images are left out; text
    and refusal parts are read as the message's text, joined with newlines.
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
            asked: list[str] = []  # the user's turns since the assistant last said something
            for role, text, trained in turns:
                if role == "user":
                    if text.strip():
                        asked.append(text)
                elif role == "assistant" and text.strip():
                    key = SPEAKER_RE.sub("", join_texts(asked)).strip()
                    answer = text.strip()
                    if trained and key and (key, answer) not in seen:
                        seen.add((key, answer))
                        pairs.keys.append(key)
                        pairs.answers.append(answer)
                    asked = []
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

    def __init__(self, recheck_s: float = RECHECK_S, sent_as: Callable[[str], str] = as_is) -> None:
        """`sent_as`: how a reply reads once stored and sent (see Index.sent_as)."""
        self._sent_as = sent_as
        # dataset -> the Stamp it was built from and the index: the last good one.
        self._indexes: dict[str, tuple[Stamp, Index]] = {}
        # dataset -> the Stamp that failed to build: not retried until it changes.
        self._failed: dict[str, Stamp | None] = {}
        # dataset never built -> the Stamp that failed and why: every text to the persona
        # fails with that reason until the file changes, without reading it again.
        self._broken: dict[str, tuple[Stamp, str]] = {}
        # dataset -> the lock its builds take: one per file, so a text to one persona never
        # waits for another persona's build. Kept when the index is dropped (a few dozen
        # bytes), so a build still running then and a new one never hold different locks.
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()  # only to create those
        # Datasets the personas use (`forget_unused`); None: not told, every index is kept.
        self._in_use: frozenset[str] | None = None
        self._recheck_s = recheck_s
        self._checked: dict[str, tuple[float, Index]] = {}  # dataset -> (when, index)
        # Builds ahead of the first text (`warm`): one thread, made in each process, since a
        # thread does not survive gunicorn's fork (nor may a build hold a lock across it).
        self._builder = PerProcess(lambda: DaemonPool(max_workers=1, name="phischer-index"))

    def index(self, persona: PersonaView) -> Index:
        """The cached index of the persona's dataset (rebuilt only if the file changes)."""
        if not persona.dataset:
            raise BackendError(f"persona {persona.name} has no --dataset for the retrieval backend")
        # The file is looked at once every recheck_s, not on every text.
        now = time.monotonic()
        name = persona.dataset
        checked = self._checked.get(name)
        if checked is not None and now - checked[0] < self._recheck_s:
            return checked[1]
        try:
            index = self._current(persona)
            self._checked[name] = (now, index)
        finally:
            # A text that took its persona before `persona edit --dataset` was read may
            # build the old file after forget_unused dropped it: it answers from that
            # index, which is not kept. Stored, then checked: forget_unused sets _in_use,
            # then drops, so one of the two sees the other's change.
            if self._in_use is not None and name not in self._in_use:
                self._forget(name)
        return index

    def forget_unused(self, personas: Iterable[PersonaView]) -> None:
        """Drop the indexes of datasets none of `personas` (all there are) answers from."""
        # Called when the personas are re-read and changed (at most once per PERSONA_TTL_S),
        # never per text. A text already holding a dropped index answers from it all the same.
        in_use = frozenset(p.dataset for p in personas if p.backend == "retrieval" and p.dataset)
        self._in_use = in_use
        for name in self._indexes.copy().keys() | self._broken.copy().keys():
            if name not in in_use:
                self._forget(name)

    def _forget(self, name: str) -> None:
        """Drop what is kept of one dataset (its index, its failures), but not its lock."""
        self._checked.pop(name, None)
        self._indexes.pop(name, None)
        self._failed.pop(name, None)
        self._broken.pop(name, None)

    def _lock_of(self, name: str) -> threading.Lock:
        """The lock that builds of dataset `name` take (made once, whoever asks first)."""
        lock = self._locks.get(name)
        if lock is None:
            with self._locks_lock:  # two threads making one each would build it twice
                lock = self._locks.setdefault(name, threading.Lock())
        return lock

    def _current(self, persona: PersonaView) -> Index:
        """The index of the dataset as it is on disk now, or the last good one while it is not.

        A file being rewritten can be seen empty, cut short or (an editor saving by rename)
        missing for a moment; answering from the copy loaded before beats failing the text.
        """
        assert persona.dataset
        name = persona.dataset
        path = Path(name)
        built = self._indexes.get(name)
        try:
            st = os.stat(path)
        except OSError:
            if built is None:
                raise BackendError(f"dataset {path} of persona {persona.name} is missing") from None
            return self._stale(name, None, built[1], f"dataset {path} is missing")
        stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if built is not None and built[0] == stamp:
            self._failed.pop(name, None)  # back as it was (a save by rename undone)
            return built[1]
        if built is not None and self._failed.get(name, ()) == stamp:
            return built[1]  # this version already failed (and said so)
        broken = self._broken.get(name)
        if built is None and broken is not None and broken[0] == stamp:
            raise BackendError(broken[1])
        # While another request builds (seconds, for 100k examples), answer from the old index
        # rather than queue every text behind it; with no old index there is nothing else.
        lock = self._lock_of(name)
        if not lock.acquire(blocking=built is None):
            assert built is not None
            return built[1]
        try:
            built = self._indexes.get(name)
            if built is not None and built[0] == stamp:
                return built[1]
            try:
                index = self._build(path)
            except BackendError as exc:
                if built is None:
                    self._broken[name] = (stamp, str(exc))
                    raise
                return self._stale(name, stamp, built[1], str(exc))
            self._indexes[name] = (stamp, index)
            self._failed.pop(name, None)
            self._broken.pop(name, None)
            return index
        finally:
            lock.release()

    def _stale(self, name: str, stamp: Stamp | None, index: Index, why: str) -> Index:
        """The last good index, with one warning per version of the file that fails to load."""
        if name not in self._failed or self._failed[name] != stamp:
            log.warning("%s; answering from the copy loaded before until it is fixed", why)
        self._failed[name] = stamp
        return index

    def _build(self, path: Path) -> Index:
        try:
            pairs = read_pairs(path)
        except OSError as exc:  # a folder, no permission: what the user can fix, in one line
            raise BackendError(f"dataset {path} cannot be read ({exc.strerror})") from None
        if not pairs.answers:
            raise BackendError(pairs.none_to_answer(path))
        warn_skipped(path, pairs)  # once per build: the index is cached until the file changes
        bm25 = bm25s.BM25()
        bm25.index([tokenize(k) for k in pairs.keys], show_progress=False)
        return Index(bm25=bm25, answers=pairs.answers, sent_as=self._sent_as)

    def warm(self, persona: PersonaView) -> None:
        """Start building the persona's index in a daemon thread, unless it is built; return at once."""
        # A text arriving meanwhile waits for this same build on its lock (_current), then
        # finds it done: the index is never built twice.
        if persona.dataset and persona.dataset not in self._indexes:
            self._builder.get().submit(self._build_ahead, persona)

    def built(self, persona: PersonaView) -> bool:
        """Whether an index of the persona's dataset is built (a text needs not wait for one)."""
        return persona.dataset is not None and persona.dataset in self._indexes

    def _build_ahead(self, persona: PersonaView) -> None:
        try:
            self.index(persona)
        except BackendError as exc:  # its texts fail with the same reason, each logged
            log.warning("Could not prepare persona %s: %s", persona.name, exc)

    def reply(self, persona: PersonaView, messages: list[dict[str, str]]) -> Reply:
        """Answer the last user turn from the dataset."""
        index = self.index(persona)
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        # The persona's replies as they were stored, i.e. sent: Index.best compares in that
        # form. A turn holds every reply sent in a row (two texts answered before the next
        # came in): Index.said finds each of them.
        assistant = [m["content"] for m in messages if m["role"] == "assistant"]
        recent = index.said(assistant[-RECENT_REPLIES:])
        answer = index.best(query, recent, turn=len(assistant))
        return Reply(text=answer, model="retrieval")
