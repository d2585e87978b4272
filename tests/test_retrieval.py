"""The retrieval backend: pairs from the dataset, BM25 scores, answers, caching."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phischer.backends.base import BackendError, PersonaView
from phischer.backends.retrieval import RetrievalBackend, load_pairs, tokenize


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
