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
