"""Property tests of the retrieval backend's tokenizer and answers, for any text at all.

The contract: `tokenize` takes any str (lone surrogates, combining marks, RTL, ZWJ emoji
sequences, megabytes) without raising, gives the same tokens every time (its caches warm or
cold), never a blank token, and at least one token for a text that is not blank; a text and
its NFKC or case-folded forms give the same tokens (the docstring's "read alike").
`RetrievalBackend` builds an index from any dataset of such texts and answers any text with
one of the dataset's answers. Set PHISCHER_FUZZ_HUNT=N to hunt with N random examples.
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from phischer.backends import retrieval
from phischer.backends.base import BackendError, PersonaView
from phischer.backends.retrieval import RetrievalBackend, read_pairs, tokenize

HUNT = int(os.environ.get("PHISCHER_FUZZ_HUNT", "0"))


def fuzz(examples: int) -> settings:
    """Quick and deterministic in `make test`; random and long with PHISCHER_FUZZ_HUNT."""
    return settings(
        max_examples=HUNT or examples,
        derandomize=not HUNT,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# Pieces the tokenizer treats specially, so examples mix scripts and rules far more often
# than uniformly drawn code points would.
PIECES = [
    "don't", "l’été", "qu'il", "ʼ", "'", "’s", "ada's", "don´t", "`", "´", " \u0301", "΄",
    "café", "cafe\u0301", "q\u0303", "Łódź", "œ", "ß", "İ", "ı", "ǅ", "ﬀ", "K", "ΐ", "\u0345",
    "Ærø", "ǽ", "Þ", "καλημέρα", "ΰ", "α\u0308",  # folded letters: Latin and Greek
    "ｈｅｌｌｏ", "①", "㎏", "ﷺ", "ﾊﾟ",  # compatibility forms
    "مَرْحَبًا", "ـ", "\u064b", "שָׁלוֹם", "\u05c7", "\u200f", "\u202e", "\u061c",  # RTL, marks
    "नमस्ते", "\u0301", "\u20dd", "e\u0301\u0301\u0301",  # combining marks alone and stacked
    "你吃饭了吗", "今日は", "々", "สวัสดีครับ", "\u0e31", "ລາວ", "ខ្មែរ", "မြန်မာ", "𠀀𪜀",
    "😂", "👍🏽", "❤️", "👨\u200d👩\u200d👧", "🏳️\u200d🌈", "🇫🇷", "#️⃣", "\u200d", "\ufe0f",
    "\ud83d", "\ude02", "\udfff",  # lone surrogates (half an emoji from a cut UTF-16 string)
    "?", "…", "...", "\x00", "\x07", "\u2028", "\u00a0", "\u3000", " ", "\n", "\t",
]  # fmt: skip
any_char = st.characters(codec=None, exclude_categories=())  # surrogates too
texts = st.one_of(
    st.text(any_char),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(any_char, max_size=3)), max_size=12).map(
        "".join
    ),
    # Long: a piece repeated into one long run (a word, a CJK phrase, marks on one letter).
    st.builds(lambda piece, n: piece * n, st.sampled_from(PIECES), st.integers(1, 5_000)),
)


def blank(text: str) -> bool:
    """Whether `text` is nothing but whitespace (a key or text the tokenizer may drop)."""
    return all(c.isspace() for c in text)


def clear_caches() -> None:
    """Empty the tokenizer's caches, so a second call shows whether a cache changes tokens."""
    retrieval._fold_accents.cache_clear()
    retrieval._contraction.cache_clear()


@fuzz(400)
@given(text=texts)
def test_tokenize_takes_any_text(text: str) -> None:
    """Any str: no exception, str tokens with no whitespace, the same tokens every time."""
    tokens = tokenize(text)
    assert isinstance(tokens, list)
    for token in tokens:
        assert isinstance(token, str) and token
        assert not any(c.isspace() for c in token), (text, tokens)
    assert tokenize(text) == tokens  # cached
    clear_caches()
    assert tokenize(text) == tokens  # cold
    if not blank(text):
        # A key with no token cannot be indexed (bm25s fails on a dataset of such keys).
        assert tokens, text


@fuzz(400)
@given(text=texts)
def test_normal_and_case_folded_forms_read_alike(text: str) -> None:
    """A text, its NFKC form and its case-folded form give the same tokens."""
    tokens = tokenize(text)
    assert tokenize(unicodedata.normalize("NFKC", text)) == tokens
    assert tokenize(unicodedata.normalize("NFD", text)) == tokens
    # Folded after canonical ordering, as Unicode's caseless matching does: U+0345 (the iota
    # subscript) is a mark that folds to the letter ι, so marks out of order around it
    # ("\u0345\u0300") read as ι with a grave if folded first, and ι after a stray grave if not.
    assert tokenize(unicodedata.normalize("NFD", text).casefold()) == tokens
    assert tokenize(text.upper()) == tokenize(text.upper().casefold())


ascii_texts = st.lists(
    st.one_of(
        st.sampled_from(
            ["don't", "l'heure", "what's", "o'clock", "'", "''", "a'b'c", "_", " ", "don`t", "`"]
        ),
        st.text(st.characters(codec="ascii"), max_size=4),
    ),
    max_size=10,
).map("".join)


@fuzz(300)
@given(text=ascii_texts)
def test_the_ascii_shortcut_reads_as_the_general_path(text: str) -> None:
    """An ASCII text gets the tokens the Unicode path would give it (plus " é", read "e")."""
    tokens = tokenize(text)
    if any(c.isalnum() or c == "_" for c in text):  # else punctuation, read char by char
        assert tokenize(text + " \u00e9") == [*tokens, "e"]


def write(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """A chat JSONL file of one (user, assistant) example per pair."""
    with path.open("w", encoding="utf-8") as fh:
        for user, assistant in pairs:
            messages = [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
            fh.write(json.dumps({"messages": messages}) + "\n")  # lone surrogates as \ud83d
    return path


def persona(dataset: Path) -> PersonaView:
    return PersonaView(1, "Ada", "ada", "retrieval", None, None, None, str(dataset), None, None,
                       None, None)  # fmt: skip


SMALL = [
    ("hey how are you", "good u?"),
    ("what's up", "not much"),
    ("你吃饭了吗", "吃了"),
    ("مرحبا", "أهلا"),
    ("😂😂", "lol"),
    ("?", "what"),
    ("café demain", "oui"),
]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[RetrievalBackend, Path]:
    """One backend and its dataset for all examples: the index is built once."""
    return RetrievalBackend(), write(tmp_path_factory.mktemp("small") / "d.jsonl", SMALL)


@fuzz(300)
@given(data=st.data())
def test_reply_is_always_an_answer_from_the_dataset(small, data) -> None:
    """Any text, after any recent replies, gets a non-empty answer of the dataset."""
    backend, path = small
    answers = {a for _, a in SMALL}
    said = data.draw(st.lists(st.one_of(st.sampled_from(sorted(answers)), texts), max_size=4))
    thread = []
    for reply in said:
        thread += [{"role": "user", "content": "x"}, {"role": "assistant", "content": reply}]
    thread.append({"role": "user", "content": data.draw(texts)})
    answer = backend.reply(persona(path), thread).text
    assert answer and answer in answers


key_texts = texts.filter(lambda t: t.strip())  # read_pairs keeps only keys with a non-blank text


@fuzz(150)
@given(
    pairs=st.lists(st.tuples(key_texts, st.sampled_from(["a", "b", "c"])), min_size=1, max_size=4),
    text=texts,
)
@example(pairs=[("\u0640", "a")], text="hello")  # a key of marks retrieval drops: no tokens
@example(pairs=[("\u064b\u064b", "a"), ("ـ ـ", "b")], text="\u0640")
def test_any_dataset_builds_and_answers(tmp_path_factory, pairs, text) -> None:
    """A dataset of any keys builds an index, and any text gets one of its answers."""
    path = write(tmp_path_factory.mktemp("any") / "d.jsonl", pairs)
    if not read_pairs(path).answers:  # every key was a speaker's name only ("Mo: "): said so
        with pytest.raises(BackendError, match="no user→assistant pairs"):
            RetrievalBackend().reply(persona(path), [{"role": "user", "content": text}])
        return
    reply = RetrievalBackend().reply(persona(path), [{"role": "user", "content": text}])
    assert reply.text in {a for _, a in pairs}
