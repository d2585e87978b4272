"""The retrieval backend: pairs from the dataset, BM25 scores, answers, caching."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from phischer.backends.base import BackendError, PersonaView
from phischer.backends.retrieval import (
    RetrievalBackend,
    _turns,
    load_pairs,
    read_pairs,
    tokenize,
)


def persona(dataset) -> PersonaView:
    return PersonaView(1, "Ada", "ada", "retrieval", None, None, None, str(dataset), None, None,
                       None, None)  # fmt: skip


def write(path, examples):
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in examples))
    return path


def test_pairs_key_each_assistant_turn_by_the_user_turn_before(tmp_path):
    path = write(tmp_path / "d.jsonl", [
        [{"role": "system", "content": "S"}, {"role": "assistant", "content": "orphan"},
         {"role": "user", "content": "Tash: dream job?\nMo: footballer"},
         {"role": "assistant", "content": "astronaut"},
         {"role": "user", "content": "pineapple on pizza: yes or no"},
         {"role": "assistant", "content": "yes"}],
        [{"role": "user", "content": "pineapple on pizza: yes or no"},
         {"role": "assistant", "content": "yes"}],
    ])  # fmt: skip
    keys, answers = load_pairs(path)
    assert keys == ["dream job?\nfootballer", "pineapple on pizza: yes or no"]
    assert answers == ["astronaut", "yes"]


@pytest.mark.parametrize(
    "said", ["Émilie: on se voit ce soir?", "Łukasz Nowak: on se voit ce soir?", "Саша: привет"]
)
def test_a_speaker_capitalised_in_any_script_is_not_part_of_the_key(tmp_path, said):
    # Group chats prefix each speaker's turn with their name (DESIGN §7), Émilie's as Emma's.
    path = write(tmp_path / "d.jsonl", [[{"role": "user", "content": said},
                                         {"role": "assistant", "content": "yes"}]])  # fmt: skip
    keys, _ = load_pairs(path)
    assert keys == [said.split(": ", 1)[1]]


def test_scores_equal_bm25s(tmp_path):
    from tests.conftest import ADA_PAIRS, write_dataset

    backend = RetrievalBackend()
    index = backend.index(persona(write_dataset(tmp_path / "a.jsonl", ADA_PAIRS)))
    for query in ("hey how are you", "what do you do", "good good night", "zzz", ""):
        tokens = tokenize(query)
        expected = index.bm25.get_scores(tokens) if tokens else np.zeros(len(index.answers))
        np.testing.assert_allclose(index.scores(tokens), expected, rtol=1e-6)


def test_sparse_and_dense_scoring_agree(tmp_path, monkeypatch):
    import phischer.backends.retrieval as retrieval
    from tests.conftest import ADA_PAIRS, write_dataset

    path = write_dataset(tmp_path / "a.jsonl", ADA_PAIRS)
    dense = RetrievalBackend().index(persona(path))
    monkeypatch.setattr(retrieval, "DENSE_CELLS", 0)  # a corpus too big for the dense table
    sparse = RetrievalBackend().index(persona(path))
    assert dense.dense is not None and sparse.dense is None
    for query in ("hey how are you", "what do you do", "good good night", "zzz", ""):
        tokens = tokenize(query)
        np.testing.assert_allclose(dense.scores(tokens), sparse.scores(tokens), rtol=1e-6)
        assert dense.best(query, set(), 0) == sparse.best(query, set(), 0)


def test_dataset_file_is_looked_at_once_per_recheck_window(tmp_path):
    from tests.conftest import ADA_PAIRS, BO_PAIRS, write_dataset

    path = write_dataset(tmp_path / "a.jsonl", ADA_PAIRS)
    backend = RetrievalBackend(recheck_s=3600)
    first = backend.index(persona(path))
    write_dataset(path, BO_PAIRS + [("extra line", "so the size changes")])
    assert backend.index(persona(path)) is first  # within the window: no stat, no rebuild
    path.unlink()
    assert backend.index(persona(path)) is first


def test_index_is_cached_and_rebuilt_when_the_file_changes(tmp_path):
    from tests.conftest import ADA_PAIRS, BO_PAIRS, write_dataset

    path = write_dataset(tmp_path / "a.jsonl", ADA_PAIRS)
    backend = RetrievalBackend(recheck_s=0)
    first = backend.index(persona(path))
    assert backend.index(persona(path)) is first
    write_dataset(path, BO_PAIRS + [("extra line", "so the size changes")])
    second = backend.index(persona(path))
    assert second is not first and "yo. tired. u?" in second.answers
    assert len(backend._indexes) == 1  # the stale index was dropped


def test_reply_uses_last_user_turn_and_avoids_recent_replies(tmp_path):
    from tests.conftest import ADA_PAIRS, write_dataset

    backend = RetrievalBackend()
    p = persona(write_dataset(tmp_path / "a.jsonl", ADA_PAIRS))
    thread = [{"role": "system", "content": "S"}, {"role": "user", "content": "good night"}]
    assert backend.reply(p, thread).text == "Sleep well, dear. Dream of engines."
    thread += [{"role": "assistant", "content": "Sleep well, dear. Dream of engines."},
               {"role": "user", "content": "good night"}]  # fmt: skip
    assert backend.reply(p, thread).text != "Sleep well, dear. Dream of engines."


@pytest.mark.parametrize("content", ["", "not json\n", '{"messages": [{"role": "user"}]}\n'])
def test_unusable_dataset_is_a_backend_error(tmp_path, content):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(BackendError, match="no user→assistant pairs"):
        RetrievalBackend().index(persona(path))


def test_a_dataset_that_failed_to_build_is_not_read_again_until_it_changes(tmp_path, monkeypatch):
    import phischer.backends.retrieval as retrieval
    from tests.conftest import write_dataset

    reads: list = []
    real = retrieval.read_pairs
    monkeypatch.setattr(retrieval, "read_pairs", lambda path: reads.append(path) or real(path))
    path = tmp_path / "bad.jsonl"
    path.write_text("not json\n" * 1000)
    backend = RetrievalBackend(recheck_s=0)
    for _ in range(3):  # every text to the persona: the same reason, the file read once
        with pytest.raises(BackendError, match="no user→assistant pairs"):
            backend.index(persona(path))
    assert reads == [path]
    write_dataset(path, [("hey how are you", "splendid")])  # fixed: built at the next text
    assert backend.index(persona(path)).answers == ["splendid"]
    assert reads == [path, path]


def test_missing_dataset_is_a_backend_error(tmp_path):
    with pytest.raises(BackendError, match="is missing"):
        RetrievalBackend().index(persona(tmp_path / "gone.jsonl"))


# -- malformed lines: skipped, counted, one warning, never a crash ------------------------

GOOD = [{"role": "user", "content": "good night"},
        {"role": "assistant", "content": "Sleep well, dear."}]  # fmt: skip
MALFORMED = {
    "not JSON": "this is not json",
    "cut-short JSON": '{"messages": [{"role": "user", "content": "hey"}',
    "an array": '["not", "an", "object"]',
    "a string": '"messages"',
    "a number": "42",
    "null": "null",
    "NaN": "NaN",
    "no messages": '{"prompt": "hey", "completion": "hi"}',
    "messages null": '{"messages": null}',
    "messages a string": '{"messages": "hey"}',
    "messages a number": '{"messages": 5}',
    "messages an object": '{"messages": {"role": "user", "content": "hey"}}',
    "a string entry": '{"messages": [{"role": "user", "content": "hey"}, "hi"]}',
    "a null entry": '{"messages": [null, {"role": "assistant", "content": "hi"}]}',
    "an array entry": '{"messages": [{"role": "user", "content": "hey"}, ["assistant", "hi"]]}',
    "role a number": '{"messages": [{"role": 1, "content": "hey"}, '
    '{"role": "assistant", "content": "hi"}]}',
    "role a list": '{"messages": [{"role": ["user"], "content": "hey"}, '
    '{"role": "assistant", "content": "hi"}]}',
    "role missing": '{"messages": [{"content": "hey"}, {"role": "assistant", "content": "hi"}]}',
    "content a number": '{"messages": [{"role": "user", "content": 42}, '
    '{"role": "assistant", "content": "hi"}]}',
    "content a list": '{"messages": [{"role": "user", "content": [{"type": "text"}]}, '
    '{"role": "assistant", "content": "hi"}]}',
    "content an object": '{"messages": [{"role": "user", "content": "hey"}, '
    '{"role": "assistant", "content": {"text": "hi"}}]}',
    "nested too deep": "[" * 100_000 + "]" * 100_000,
    "a 5000-digit number": '{"messages": ' + "9" * 5000 + "}",
}


def skip_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "phischer.backends.retrieval" and r.levelname == "WARNING"
    ]


@pytest.mark.parametrize("bad", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_line_is_skipped_with_one_warning(tmp_path, caplog, bad):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": GOOD}) + "\n" + bad + "\n")
    backend = RetrievalBackend()
    with caplog.at_level("WARNING"):
        index = backend.index(persona(path))
        reply = backend.reply(persona(path), [{"role": "user", "content": "good night"}])
    assert index.answers == ["Sleep well, dear."]  # nothing from the bad line, not even "None"
    assert reply.text == "Sleep well, dear."
    assert skip_warnings(caplog) == [
        f"Dataset {path}: skipped 1 malformed line (first: line 2); "
        "`phischer dataset check` says what is wrong with them"
    ]
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_undecodable_line_is_skipped(tmp_path, caplog):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xff\xfe{"messages": []}\n' + json.dumps({"messages": GOOD}).encode())
    with caplog.at_level("WARNING"):
        keys, answers = load_pairs(path)
    assert (keys, answers) == (["good night"], ["Sleep well, dear."])
    assert skip_warnings(caplog) == [
        f"Dataset {path}: skipped 1 malformed line (first: line 1); "
        "`phischer dataset check` says what is wrong with them"
    ]


def test_many_malformed_lines_make_one_warning_with_count_and_first_line(tmp_path, caplog):
    secret = "my bank pin is 4321"
    lines = [json.dumps({"messages": GOOD}), "", f'{{"messages": ["{secret}"]}}']
    lines += list(MALFORMED.values()) + [json.dumps({"messages": GOOD[:1] + GOOD})]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    backend = RetrievalBackend(recheck_s=0)
    with caplog.at_level("WARNING"):
        backend.index(persona(path))
        backend.index(persona(path))  # cached: no second load, no second warning
    (warning,) = skip_warnings(caplog)
    assert f"skipped {1 + len(MALFORMED)} malformed lines (first: line 3)" in warning
    assert str(path) in warning and secret not in caplog.text  # datasets are personal chats
    # Rebuilt when the file changes: that load warns again.
    with path.open("a") as fh:
        fh.write("not json\n")
    caplog.clear()
    with caplog.at_level("WARNING"):
        backend.index(persona(path))
    (warning,) = skip_warnings(caplog)
    assert f"skipped {2 + len(MALFORMED)} malformed lines (first: line 3)" in warning


def test_well_formed_lines_without_text_are_no_answers_and_no_warning(tmp_path, caplog):
    # Valid chat JSONL that holds no text pair (a tool call, content left out, empty list,
    # a BOM from a Windows editor): nothing to answer from, but nothing malformed either.
    tool_call = [{"role": "user", "content": "weather?"},
                 {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}]  # fmt: skip
    no_content = [{"role": "user", "content": "hey"}, {"role": "assistant"}]
    path = tmp_path / "d.jsonl"
    examples = [GOOD, tool_call, no_content, []]
    path.write_text("\ufeff" + "".join(json.dumps({"messages": m}) + "\n" for m in examples))
    with caplog.at_level("WARNING"):
        keys, answers = load_pairs(path)
    assert (keys, answers) == (["good night"], ["Sleep well, dear."])
    assert skip_warnings(caplog) == []


def test_dataset_of_only_malformed_lines_is_a_backend_error_that_counts_them(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(list(MALFORMED.values())[:3]) + "\n")
    with caplog.at_level("WARNING"), pytest.raises(BackendError) as raised:
        RetrievalBackend().index(persona(path))
    assert str(raised.value) == (
        f"dataset {path} has no user→assistant pairs to answer from "
        "(3 malformed lines skipped, first: line 1)"
    )
    assert skip_warnings(caplog) == []  # the error says it: one line, not two


def test_server_answers_from_a_dataset_with_malformed_lines(
    personas, make_app, twilio_post, caplog
):
    with personas["ada"].open("a", encoding="utf-8") as fh:
        fh.write('{"messages": [{"role": "user", "content": "hey"}, "hi"]}\n["x"]\n')
    with caplog.at_level("WARNING"):
        app = make_app()
        response = twilio_post("good night", target=app)
    assert response.status_code == 200
    assert response.replies == ["Sleep well, dear. Dream of engines."]
    (warning,) = skip_warnings(caplog)
    assert "skipped 2 malformed lines (first: line 6)" in warning
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


# -- every line `dataset check` accepts is read ------------------------------------------

ASK = {"role": "user", "content": "good night"}
SLEEP = {"role": "assistant", "content": "Sleep well, dear."}
CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/moon.png"}}
# Each valid shape (`dataset check` finds no error in it) and the (key, answer) pairs it gives.
VALID_SHAPES = {
    "text parts": (
        [{"role": "user", "content": [{"type": "text", "text": "good night"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "Sleep well,"},
                                           {"type": "text", "text": "dear."}]}],
        [("good night", "Sleep well,\ndear.")],
    ),
    "an image beside the text": (
        [{"role": "user", "content": [IMAGE, {"type": "text", "text": "look, the moon"}]},
         {"role": "assistant", "content": "Lovely. Like a lamp."}],
        [("look, the moon", "Lovely. Like a lamp.")],
    ),
    "an image only: nothing to key": (
        [{"role": "user", "content": [IMAGE]}, {"role": "assistant", "content": "Lovely."}],
        [],
    ),
    "a refusal part": (
        [{"role": "user", "content": "your bank pin?"},
         {"role": "assistant", "content": [{"type": "refusal", "refusal": "Not telling!"}]}],
        [("your bank pin?", "Not telling!")],
    ),
    "a refusal field beside the content": (
        [{"role": "user", "content": "your bank pin?"},
         {"role": "assistant", "content": "Not telling!", "refusal": "Not telling!"}],
        [("your bank pin?", "Not telling!")],
    ),
    "names": (
        [{"role": "user", "name": "mo", "content": "good night"}, {**SLEEP, "name": "ada"}],
        [("good night", "Sleep well, dear.")],
    ),
    "a tool call: the answer after it is keyed by the user's text": (
        [{"role": "system", "content": "S"}, {"role": "user", "content": "weather?"},
         {"role": "assistant", "content": None, "tool_calls": [CALL]},
         {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "sunny"}]},
         {"role": "assistant", "content": "Sunny, take a hat."}],
        [("weather?", "Sunny, take a hat.")],
    ),
    "a function call (the older form)": (
        [{"role": "user", "content": "weather?"},
         {"role": "assistant", "function_call": {"name": "weather", "arguments": "{}"}},
         {"role": "function", "name": "weather", "content": "sunny"},
         {"role": "assistant", "content": "Sunny, take a hat."}],
        [("weather?", "Sunny, take a hat.")],
    ),
    "weight 0: context, not an answer": (
        [ASK, {**SLEEP, "weight": 0}, {"role": "user", "content": "you too"},
         {"role": "assistant", "content": "Thank you, love.", "weight": 1}],
        [("you too", "Thank you, love.")],
    ),
    "two texts in a row, and a system message between turns": (
        [{"role": "user", "content": "hey"}, {"role": "user", "content": "you up?"},
         {"role": "assistant", "content": "Yes, dear."}, {"role": "system", "content": "S"},
         ASK, SLEEP],
        [("hey\nyou up?", "Yes, dear."), ("good night", "Sleep well, dear.")],
    ),
}  # fmt: skip


def test_every_valid_shape_is_read_as_dataset_check_accepts_it(tmp_path, caplog):
    from phischer.dataset_check import check_file

    path = write(tmp_path / "d.jsonl", [m for m, _ in VALID_SHAPES.values()])
    report = check_file(path)
    assert report.errors == []
    with caplog.at_level("WARNING"):
        pairs = read_pairs(path)
    assert pairs.skipped == 0 and skip_warnings(caplog) == []
    expected = [pair for _, shape_pairs in VALID_SHAPES.values() for pair in shape_pairs]
    assert list(zip(pairs.keys, pairs.answers, strict=True)) == list(dict.fromkeys(expected))


def test_content_parts_answer_over_the_webhook(personas, make_app, twilio_post):
    asked = [{"type": "text", "text": "what is your favourite"}, {"type": "text", "text": "engine"}]
    said = [{"type": "text", "text": "The Analytical one."}]
    parts = [{"role": "user", "content": [*asked, IMAGE]}, {"role": "assistant", "content": said}]
    with personas["ada"].open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"messages": parts}) + "\n")
    response = twilio_post("favourite engine?", target=make_app())
    assert response.replies == ["The Analytical one."]


def test_a_weight_0_answer_is_never_said(tmp_path):
    path = write(tmp_path / "d.jsonl", [
        [ASK, {"role": "assistant", "content": "ugh whatever", "weight": 0}],
        [{"role": "user", "content": "hey how are you"}, SLEEP],
    ])  # fmt: skip
    backend = RetrievalBackend()
    assert backend.index(persona(path)).answers == ["Sleep well, dear."]
    assert backend.reply(persona(path), [ASK]).text == "Sleep well, dear."


def chat_messages() -> st.SearchStrategy[list[dict]]:
    """Chat JSONL messages of every role, content form and optional key, mostly valid."""
    text = st.sampled_from(["hey", "good night", "Sleep well.", " "])

    def parts(*kinds: str) -> st.SearchStrategy[list[dict]]:
        part = st.one_of(
            [st.builds(lambda t, k=k: {"type": k, k: t}, text) for k in kinds if k != "image_url"]
            + ([st.just(IMAGE)] if "image_url" in kinds else [])
        )
        return st.lists(part, min_size=1, max_size=3)

    def message(role: str, content: st.SearchStrategy, **optional: st.SearchStrategy):
        return st.fixed_dictionaries({"role": st.just(role), "content": content}, optional=optional)

    name = st.just("mo")
    return st.lists(
        st.one_of(
            message("system", st.one_of(text, parts("text"))),
            message("user", st.one_of(text, parts("text", "image_url")), name=name),
            message(
                "assistant",
                st.one_of(text, parts("text", "refusal")),
                name=name,
                weight=st.sampled_from([0, 1]),
                refusal=st.sampled_from(["no", None]),
            ),
            st.builds(
                lambda m: {**m, "content": None, "tool_calls": [CALL]},
                message("assistant", st.none(), weight=st.sampled_from([0, 1])),
            ),
            message("tool", st.one_of(text, parts("text")), tool_call_id=st.just("c1")),
            message("function", text, name=st.just("weather")),
        ),
        min_size=1,
        max_size=6,
    )


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(messages=chat_messages())
def test_no_line_dataset_check_accepts_is_skipped(messages):
    from phischer.dataset_check import check_example

    assume(not [m for m, severity in check_example({"messages": messages}) if severity == "error"])
    assert _turns({"messages": messages}) is not None


def test_dataset_check_and_retrieval_read_content_through_one_function():
    import phischer.backends.retrieval as retrieval
    import phischer.dataset_check as dataset_check
    from phischer.chat_format import content_texts
    from phischer.tokens import count_tokens

    assert retrieval.content_texts is dataset_check.content_texts is content_texts
    content = [{"type": "text", "text": "look at"}, IMAGE, {"type": "text", "text": "the moon"}]
    model = "gpt-4o-mini"
    text_tokens = count_tokens("look at", model) + count_tokens("the moon", model)
    plain = dataset_check.example_tokens([{"role": "user", "content": None}], model)[0]
    assert dataset_check.example_tokens([{"role": "user", "content": content}], model) == (
        plain + text_tokens,
        1,
    )


# -- tokens: scripts, normal forms, emoji and punctuation --------------------------------

SAME_WORDS = {
    "decomposed accent": ("cafe", "cafe\u0301"),
    "composed accent": ("cafe", "café"),
    "two accents": ("resume", "Résumé"),
    "diaeresis": ("naive", "naïve"),
    "cedilla": ("ca", "ça"),
    "Vietnamese stacked marks": ("duoc", "được"),
    "Polish ł and acute": ("lodz", "Łódź"),
    "French œ": ("coeur", "cœur"),
    "a mark no precomposed letter holds": ("q", "q\u0303"),
    "full-width letters": ("hello", "ｈｅｌｌｏ"),
    "German sharp s": ("strasse", "Straße"),
    "Danish and Norwegian ø and æ": ("aero", "Ærø"),
    "Danish and Norwegian å beside æ": ("blabaer", "blåbær"),
    "Icelandic þ and ð": ("thad", "það"),
    "Turkish dotless and dotted i": ("istanbul", "ıstanbul"),
    "Turkish capital dotted I": ("istanbul", "İstanbul"),
    "a stroke or ligature under an accent": ("ae", "ǽ"),
    "Greek tonos": ("καλημερα", "καλημέρα"),
    "Greek capitals, tonos on the capital": ("καλημερα", "ΚΑΛΗΜΈΡΑ"),
    "Greek dialytika": ("ευρωπαικη", "Ευρωπαϊκή"),
    "a mark no precomposed Greek letter holds": ("α", "α\u0308"),
    # Case folding decomposes ΐ (ι and two marks) where its capital folds to ϊ and one mark.
    "Greek capital with two accents": ("ι", "\u0399\u0308\u0301"),
    "Greek, composed, with two accents": ("ι", "\u0390"),
    "Greek capital, composed, with two accents": ("υ", "\u03ab\u0301"),
    "Arabic vowel marks": ("مرحبا", "مَرْحَبًا"),
    "Arabic stretching stroke": ("مرحبا", "مرحبــا"),
    "Hebrew points": ("שלום", "שָׁלוֹם"),
    "Russian ё as е": ("елка", "Ёлка"),
    "Russian ё, decomposed": ("елка", "е\u0308лка"),
}


@pytest.mark.parametrize("plain, written", SAME_WORDS.values(), ids=SAME_WORDS.keys())
def test_one_word_written_two_ways_is_one_token(plain, written):
    assert tokenize(written) == tokenize(plain) == [plain]


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("नमस्ते, आप कैसे हैं?", ["नमस्ते", "आप", "कैसे", "हैं"]),  # vowel signs stay in the word
        # Cyrillic letters keep their marks (й is not и), but for ё, typed е
        ("καλημέρα, мой ёж, її", ["καλημερα", "мой", "еж", "її"]),
        ("l’été", ["lete", "ete"]),  # folded before the elision is looked for
        ("你吃饭了没有", ["你吃", "吃饭", "饭了", "了没", "没有"]),
        ("今日は元気?", ["今日", "日は", "は元", "元気"]),
        ("밥 먹었어?", ["밥", "먹었", "었어"]),  # Hangul too: a word carries its endings
        ("ㅋㅋㅋ", ["ᄏᄏ", "ᄏᄏ"]),  # compatibility jamo, as NFKC writes them
        ("สวัสดีครับ", ["สวั", "วัส", "สดี", "ดีค", "ครั", "รับ"]),  # a letter keeps its marks
        ("😂😂 ok", ["😂", "😂", "ok"]),
        ("❤️ 👍🏽", ["❤", "👍"]),  # no U+FE0F, no skin tone
        ("??", ["?", "?"]),
        ("…", [".", ".", "."]),
    ],
)
def test_tokens_of_other_scripts_emoji_and_punctuation(text, tokens):
    assert tokenize(text) == tokens


@pytest.mark.parametrize("key", ["\u0640", "\u064b\u064b", "\u0640 \u0640", "\u05b8"])
def test_a_key_of_optional_marks_only_is_those_marks(tmp_path, key):
    from tests.conftest import write_dataset

    # Dropping them left no token: bm25s failed (ValueError) on a dataset of such keys, so
    # `phischer serve` could not start, and the text was answered by the error fallback.
    path = write_dataset(tmp_path / "d.jsonl", [(key, "THE ANSWER")])
    reply = RetrievalBackend().reply(persona(path), [{"role": "user", "content": "hello"}])
    assert reply.text == "THE ANSWER"
    assert tokenize(key) == [c for c in key if not c.isspace()]
    path = write_dataset(tmp_path / "e.jsonl", UNRELATED + [(key, "THE ANSWER")])
    reply = RetrievalBackend().reply(persona(path), [{"role": "user", "content": key}])
    assert reply.text == "THE ANSWER"


APOSTROPHE_WORDS = {
    "a contraction, joined": ("i don't know", ["i", "dont", "know"]),
    "typographic apostrophes": ("don’t ‘cause I’m", ["dont", "cause", "im"]),
    "the modifier letter apostrophe": ("donʼt", ["dont"]),
    "grave and acute accents typed for it": ("don`t don´t", ["dont", "dont"]),
    "accents for it, with the Unicode path's tokens": ("don`t don´t ça", ["dont", "dont", "ca"]),
    "an acute accent after a space is a quote": ("don ´t", ["don", "t"]),
    "the Greek tonos typed for it": ("j΄ai", ["jai", "ai"]),
    "'s also gives its stem": ("what's ada's", ["whats", "what", "adas", "ada"]),
    "French elision also gives the word": (
        "j’ai vu l'heure",
        ["jai", "ai", "vu", "lheure", "heure"],
    ),
    "qu' and Italian ll'": ("qu'il dell'anno", ["quil", "il", "dellanno", "anno"]),
    "no elision before a consonant": ("o'clock i'll", ["oclock", "ill"]),
    "quotes are not apostrophes": ("'hey' goin'", ["hey", "goin"]),
    "other scripts": ("м’ясо", ["мясо"]),
}


@pytest.mark.parametrize("text, tokens", APOSTROPHE_WORDS.values(), ids=APOSTROPHE_WORDS.keys())
def test_apostrophes_join_the_word_as_texters_spell_it(text, tokens):
    assert tokenize(text) == tokens


UNRELATED = [(f"question number {i}", f"answer number {i}") for i in range(40)]


@pytest.mark.parametrize(
    "key, decoy, text",
    [
        # Apostrophes: texters leave them out.
        ("i don't know", "i know", "i dont know"),
        ("i dont know", "i know", "i don’t know"),
        ("j'ai faim", "faim", "jai faim"),
        ("ada's cat", "cat", "adas cat"),
        # Accents: likewise.
        ("café demain", "demain", "cafe demain"),
        ("send your resume", "send your", "send your résumé"),
        ("tu es naïve", "tu es", "tu es naive"),
        ("καλημέρα φίλε", "φίλε", "καλημερα φιλε"),
        ("vi ses i København", "vi ses i", "vi ses i Kobenhavn"),
        ("i don't know", "i know", "i don´t know"),
    ],
)
def test_a_text_without_apostrophes_or_accents_finds_the_key_with_them(tmp_path, key, decoy, text):
    from tests.conftest import write_dataset

    # The decoy shares every other word and is shorter, so it wins unless the word with
    # the apostrophe or accent matches too.
    path = write_dataset(tmp_path / "d.jsonl", UNRELATED + [(decoy, "DECOY"), (key, "THE ANSWER")])
    reply = RetrievalBackend().reply(persona(path), [{"role": "user", "content": text}])
    assert reply.text == "THE ANSWER"


@pytest.mark.parametrize(
    "key, text",
    [
        ("你今天吃饭了没有", "吃饭了吗"),
        ("今日はお元気ですか", "元気?"),
        ("밥은 먹었어요?", "밥 먹었어?"),  # Korean: particles and endings on the word
        ("밥 먹었어?", "밥먹었어?"),  # and the spaces texters drop
        ("ㅋㅋㅋㅋ", "ㅋㅋ"),
        ("مرحبا كيف حالك", "مَرْحَبًا"),
        ("😂😂😂", "😂"),
        ("👍", "👍🏽"),
        ("?", "??"),
    ],
)
def test_texts_without_latin_words_find_their_answer(tmp_path, key, text):
    from tests.conftest import write_dataset

    path = write_dataset(tmp_path / "d.jsonl", UNRELATED + [(key, "THE ANSWER")])
    reply = RetrievalBackend().reply(persona(path), [{"role": "user", "content": text}])
    assert reply.text == "THE ANSWER"


# -- not repeating itself ----------------------------------------------------------------


def test_recent_replies_are_struck_out_before_the_top_candidates(tmp_path):
    from tests.conftest import write_dataset

    # Twelve ways to write "lol", all answered "haha": more than the CANDIDATES considered.
    lols = [(f"lol{'!' * i}", "haha") for i in range(12)]
    path = write_dataset(tmp_path / "d.jsonl", lols + [("lol ok then", "ok ok")] + UNRELATED)
    backend = RetrievalBackend()
    thread = [{"role": "user", "content": "lol"}]
    assert backend.reply(persona(path), thread).text == "haha"
    thread += [{"role": "assistant", "content": "haha"}, {"role": "user", "content": "lol"}]
    assert backend.reply(persona(path), thread).text == "ok ok"  # the next match, not a guess


GOOD_NIGHT = "Sleep well, dear."
HELLO = "Hello!\nHow are you?"  # an answer of two lines


@pytest.mark.parametrize(
    "sent",
    [
        [HELLO, GOOD_NIGHT],
        [GOOD_NIGHT, HELLO],
        [HELLO, "Sleep well,\ndear.", "ok"],  # the answer has a newline of its own
    ],
    ids=["said last", "said first", "of two lines, in the middle"],
)
def test_each_reply_of_a_merged_turn_is_not_repeated(tmp_path, sent):
    import datetime as dt

    from phischer.thread import build_thread
    from tests.conftest import write_dataset

    good_night = sent[1] if len(sent) > 2 else GOOD_NIGHT
    pairs = [("good night", good_night), ("good night then", "Night night!"), ("hey", HELLO)]
    pairs += [("ok", "ok")]
    path = write_dataset(tmp_path / "d.jsonl", UNRELATED + pairs)
    backend = RetrievalBackend()
    # Two texts answered before the next came in: their replies are stored one after the
    # other, and the thread merges them into one assistant turn.
    t = dt.datetime(2025, 1, 1)
    rows = [("in", "hey", t), ("in", "good night", t)]
    rows += [("out", reply, t + dt.timedelta(seconds=i + 1)) for i, reply in enumerate(sent)]
    rows.append(("in", "good night", t + dt.timedelta(minutes=1)))
    thread = build_thread(rows[::-1], system_prompt=None, history_turns=8, gap_hours=6)
    assert [m["role"] for m in thread] == ["user", "assistant", "user"]
    assert backend.reply(persona(path), thread).text == "Night night!"


STORY = " ".join(["Once upon a time there was an engine that could compute anything at all."] * 3)
# Answers the webhook cannot store as they are: cut at MAX_REPLY_CHARS (60 below), a control
# character dropped, a lone surrogate (half an emoji) replaced. Each is the best match for
# "tell me a story"; a second, weaker match is there to be said next.
CHANGED_ON_THE_WAY_OUT = {
    "longer than MAX_REPLY_CHARS": STORY,
    "a control character": "Once upon a time\x07 there was an engine.",
    "a lone surrogate": "Once upon a time \ud83d there was an engine.",
}
NEXT = "Another time, dear."


@pytest.mark.parametrize(
    "answer", CHANGED_ON_THE_WAY_OUT.values(), ids=CHANGED_ON_THE_WAY_OUT.keys()
)
def test_a_reply_changed_on_the_way_out_is_not_repeated(tmp_path, answer):
    from functools import partial

    from phischer.replies import sendable
    from tests.conftest import write_dataset

    pairs = [("tell me a story", answer), ("tell me a story, a long one please", NEXT)]
    path = write_dataset(tmp_path / "d.jsonl", UNRELATED + pairs)
    backend = RetrievalBackend(sent_as=partial(sendable, limit=60))
    thread = [{"role": "user", "content": "tell me a story"}]
    assert backend.reply(persona(path), thread).text == answer
    stored = sendable(answer, 60)  # what the webhook stores, and the next thread holds
    assert stored != answer
    thread += [{"role": "assistant", "content": stored}, thread[0]]
    assert backend.reply(persona(path), thread).text == NEXT


def test_when_nothing_matches_a_reply_cut_on_the_way_out_is_not_repeated(tmp_path):
    from functools import partial

    from phischer.replies import sendable
    from tests.conftest import write_dataset

    path = write_dataset(tmp_path / "d.jsonl", [("tell me a story", STORY), ("bye", NEXT)])
    backend = RetrievalBackend(sent_as=partial(sendable, limit=60))
    thread = [{"role": "user", "content": "zzz"}]  # no key shares a word: the fallback answers
    first = backend.reply(persona(path), thread).text
    thread += [{"role": "assistant", "content": sendable(first, 60)}, thread[0]]
    assert {first, backend.reply(persona(path), thread).text} == {STORY, NEXT}


@pytest.mark.parametrize(
    "answer", CHANGED_ON_THE_WAY_OUT.values(), ids=CHANGED_ON_THE_WAY_OUT.keys()
)
def test_the_webhook_does_not_repeat_a_reply_it_cut_or_cleaned(
    personas, make_app, twilio_post, answer
):
    from phischer.replies import sendable

    pairs = [("tell me a story", answer), ("tell me a story, a long one please", NEXT)]
    with personas["ada"].open("a", encoding="utf-8") as fh:
        for user, assistant in pairs:
            messages = [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
            fh.write(json.dumps({"messages": messages}) + "\n")
    app = make_app(max_reply_chars=60)
    assert twilio_post("tell me a story", target=app).replies == [sendable(answer, 60)]
    assert twilio_post("tell me a story", target=app).replies == [NEXT]


def test_a_dataset_with_one_answer_repeats_it_and_only_it(tmp_path):
    from tests.conftest import write_dataset

    path = write_dataset(tmp_path / "d.jsonl", [(f"text {i}", "k") for i in range(5_000)])
    backend = RetrievalBackend()
    index = backend.index(persona(path))
    assert index.distinct == ["k"]  # the fallback walks distinct answers, not 5,000 keys
    thread = [{"role": "user", "content": "🙂"}, {"role": "assistant", "content": "k"},
              {"role": "user", "content": "text 7"}]  # fmt: skip
    assert backend.reply(persona(path), thread).text == "k"


def test_top_candidates_are_the_same_with_or_without_the_partition(tmp_path, monkeypatch):
    import phischer.backends.retrieval as retrieval

    rng = np.random.default_rng(0)
    words = ["hey", "you", "good", "night", "work", "cat", "tea", "rain", "lol", "ok"]
    pairs = [(" ".join(rng.choice(words, 4)), f"answer {i % 300}") for i in range(3000)]
    from tests.conftest import write_dataset

    index = RetrievalBackend().index(persona(write_dataset(tmp_path / "d.jsonl", pairs)))
    queries = [" ".join(rng.choice(words, 3)) for _ in range(50)]
    avoid = {"answer 1", "answer 2"}
    monkeypatch.setattr(retrieval, "PARTITION_ABOVE", 10**9)
    sorted_all = [index.best(q, avoid, turn) for turn, q in enumerate(queries)]
    monkeypatch.setattr(retrieval, "PARTITION_ABOVE", 0)
    assert [index.best(q, avoid, turn) for turn, q in enumerate(queries)] == sorted_all


# -- the dataset changing while the server answers ---------------------------------------


def test_a_file_rewritten_in_place_is_answered_from_meanwhile(tmp_path, caplog):
    from tests.conftest import ADA_PAIRS, BO_PAIRS, write_dataset

    path = write_dataset(tmp_path / "a.jsonl", ADA_PAIRS)
    backend = RetrievalBackend(recheck_s=0)
    hey = [{"role": "user", "content": "hey how are you"}]
    assert backend.reply(persona(path), hey).text == ADA_PAIRS[0][1]
    full = write_dataset(tmp_path / "b.jsonl", BO_PAIRS).read_bytes()
    path.write_bytes(b"")  # open(..., "w") empties the file before writing it again
    with caplog.at_level("WARNING"):
        assert backend.reply(persona(path), hey).text == ADA_PAIRS[0][1]
        assert backend.reply(persona(path), hey).text == ADA_PAIRS[0][1]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (
        "no user→assistant pairs" in warning and "answering from the copy loaded before" in warning
    )
    path.write_bytes(full[: full.index(b"\n") + 20])  # one line and part of the next
    assert backend.reply(persona(path), hey).text == "yo. tired. u?"
    path.write_bytes(full)
    assert backend.index(persona(path)).answers == [a for _, a in BO_PAIRS]


def test_a_file_saved_by_rename_is_answered_from_while_it_is_missing(tmp_path):
    from tests.conftest import ADA_PAIRS, BO_PAIRS, write_dataset

    path = write_dataset(tmp_path / "a.jsonl", ADA_PAIRS)
    backend = RetrievalBackend(recheck_s=0)
    first = backend.index(persona(path))
    path.rename(tmp_path / "a.jsonl~")
    assert backend.index(persona(path)) is first
    write_dataset(tmp_path / "new.jsonl", BO_PAIRS).rename(path)
    assert backend.index(persona(path)).answers == [a for _, a in BO_PAIRS]


def test_a_copy_that_keeps_the_old_mtime_and_size_is_still_a_change(tmp_path):
    import os

    from tests.conftest import write_dataset

    path = write_dataset(tmp_path / "a.jsonl", [("hey how are you", "splendid")])
    backend = RetrievalBackend(recheck_s=0)
    assert backend.index(persona(path)).answers == ["splendid"]
    before = path.stat()
    # `cp -p old.jsonl a.jsonl` (or rsync -a, a backup restored): same length, old mtime.
    write_dataset(path, [("hey how are you", "fabulous")])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert backend.index(persona(path)).answers == ["fabulous"]


def test_texts_are_answered_from_the_old_index_while_a_new_one_builds(tmp_path):
    import threading

    from tests.conftest import ADA_PAIRS, BO_PAIRS, write_dataset

    path = write_dataset(tmp_path / "a.jsonl", ADA_PAIRS)
    backend = RetrievalBackend(recheck_s=0)
    first = backend.index(persona(path))
    write_dataset(path, BO_PAIRS)
    got: list = []
    with backend._lock_of(str(path)):  # another request is building (seconds, if big)
        reader = threading.Thread(target=lambda: got.append(backend.index(persona(path))))
        reader.start()
        reader.join(timeout=5)
        assert got == [first]  # not queued behind the build
    assert backend.index(persona(path)).answers == [a for _, a in BO_PAIRS]


@pytest.fixture
def unreadable_yet(tmp_path):
    """A dataset that is a named pipe: building its index waits until `release()` writes it."""
    from tests.conftest import ADA_PAIRS, held_dataset, write_dataset

    content = write_dataset(tmp_path / "content.jsonl", ADA_PAIRS).read_bytes()
    pipe = tmp_path / "slow.jsonl"
    with held_dataset(pipe, content) as release:
        release.path = pipe  # type: ignore[attr-defined]
        yield release


def in_thread(call) -> tuple[threading.Thread, list]:
    """`call()` started in a thread, and the list its result goes into."""
    got: list = []
    thread = threading.Thread(target=lambda: got.append(call()), daemon=True)
    thread.start()
    return thread, got


def test_a_build_does_not_hold_up_another_datasets_index(tmp_path, unreadable_yet, monkeypatch):
    from tests.conftest import ADA_PAIRS, BO_PAIRS, write_dataset

    builds: list = []
    real_build = RetrievalBackend._build
    monkeypatch.setattr(
        RetrievalBackend, "_build", lambda self, path: builds.append(path) or real_build(self, path)
    )
    backend = RetrievalBackend()
    slow = persona(unreadable_yet.path)  # a big dataset, seconds to index
    first, got_first = in_thread(lambda: backend.index(slow))
    second, got_second = in_thread(lambda: backend.index(slow))
    other, got_other = in_thread(
        lambda: backend.index(persona(write_dataset(tmp_path / "b.jsonl", BO_PAIRS)))
    )
    other.join(5)
    assert got_other and got_other[0].answers == [a for _, a in BO_PAIRS]  # not queued
    assert first.is_alive() and second.is_alive()
    unreadable_yet()
    first.join(5), second.join(5)
    assert got_first[0] is got_second[0] and got_first[0].answers == [a for _, a in ADA_PAIRS]
    assert builds.count(unreadable_yet.path) == 1  # the one asked for twice: built once


def test_indexes_no_persona_uses_are_dropped(tmp_path):
    from tests.conftest import ADA_PAIRS, BO_PAIRS, write_dataset

    ada, bo = (persona(write_dataset(tmp_path / f"{n}.jsonl", p)) for n, p in
               (("ada", ADA_PAIRS), ("bo", BO_PAIRS)))  # fmt: skip
    backend = RetrievalBackend()
    index = backend.index(ada)
    backend.index(bo)
    backend.forget_unused([ada])  # Bo removed, or edited onto another dataset
    assert backend.built(ada) and not backend.built(bo)
    assert backend.index(ada) is index  # still cached: not built again
    openai = dataclasses.replace(ada, backend="openai")
    backend.forget_unused([openai])  # `persona edit --backend openai`: the index is unused
    assert not backend.built(ada)


def test_an_index_built_for_a_text_as_its_dataset_is_dropped_is_not_kept(unreadable_yet):
    backend = RetrievalBackend()
    old = persona(unreadable_yet.path)  # the persona as the text took it: on the old dataset
    text, got = in_thread(lambda: backend.index(old))
    time.sleep(0.1)  # building, as `persona edit --dataset` is read
    backend.forget_unused([dataclasses.replace(old, dataset="/elsewhere.jsonl")])
    unreadable_yet()
    text.join(5)
    assert got and got[0].best("hey how are you", set(), 0)  # the text gets its answer
    assert not backend.built(old)  # but the old index is not held for good


def test_a_dataset_that_is_a_folder_is_a_backend_error(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(BackendError, match=r"cannot be read \(Is a directory\)"):
        RetrievalBackend().index(persona(tmp_path / "d.jsonl"))
