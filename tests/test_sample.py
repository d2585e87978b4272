"""The bundled sample personas: export up to date, Facebook quirks present, voices consistent."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from phischer.backends.base import PersonaView
from phischer.backends.retrieval import RetrievalBackend, load_pairs
from phischer.commands import RESERVED_WORDS
from phischer.dataset import build_examples, write_jsonl
from phischer.importers import load

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "phischer" / "sample"
PERSONAS = json.loads((SAMPLE / "personas.json").read_text(encoding="utf-8"))
BY_KEYWORD = {p["keyword"]: p for p in PERSONAS}


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_sample_export", ROOT / "scripts" / "make_sample_export.py"
    )
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each sample persona imported through the real importer and builder, as `seed` does."""
    out = tmp_path_factory.mktemp("samples")
    paths = {}
    for p in PERSONAS:
        path = out / f"{p['keyword']}.jsonl"
        conversations = load("messenger", SAMPLE / p["export"])
        write_jsonl(build_examples(conversations, p["me"], system=p["system"]), path)
        paths[p["keyword"]] = path
    return paths


def test_personas_json_describes_two_distinct_personas() -> None:
    assert [p["keyword"] for p in PERSONAS] == ["marguerite", "dex"]
    assert [p["name"] for p in PERSONAS] == ["Marguerite Okafor", "Dex Varga"]
    for p in PERSONAS:
        assert set(p) == {"name", "keyword", "greeting", "system", "export", "me"}
        assert p["keyword"] == p["keyword"].lower() and p["keyword"] not in RESERVED_WORDS
        assert p["me"] == p["name"]
        assert p["system"].startswith(f"You are {p['name']}")
        assert (SAMPLE / p["export"] / "your_facebook_activity/messages/inbox").is_dir()
    assert BY_KEYWORD["marguerite"]["greeting"].endswith(" x")
    assert BY_KEYWORD["dex"]["greeting"] == BY_KEYWORD["dex"]["greeting"].lower()


def test_committed_export_matches_the_generator(tmp_path: Path) -> None:
    # The app reads the committed JSON; editing the source without regenerating fails here.
    _generator().build(tmp_path)
    assert _files(tmp_path) == _files(SAMPLE)


def test_export_has_facebooks_quirks() -> None:
    folder = SAMPLE / "messenger" / "marguerite" / "your_facebook_activity/messages/inbox"
    thread = next(folder.glob("helenemarchetti_*"))
    raw = (thread / "message_1.json").read_text(encoding="ascii")
    # "Hélène" as UTF-8 bytes read back as latin-1, then \u-escaped.
    assert '"name": "H\\u00c3\\u00a9l\\u00c3\\u00a8ne Marchetti"' in raw
    newest = json.loads(raw)
    older = json.loads((thread / "message_2.json").read_text(encoding="ascii"))
    assert newest["thread_path"] == f"inbox/{thread.name}"
    assert newest["magic_words"] == [] and newest["is_still_participant"] is True
    assert newest["participants"] == older["participants"]
    for doc in (newest, older):
        stamps = [m["timestamp_ms"] for m in doc["messages"]]
        assert stamps == sorted(stamps, reverse=True)
    assert newest["messages"][-1]["timestamp_ms"] > older["messages"][0]["timestamp_ms"]

    messages = [
        m
        for f in (SAMPLE / "messenger").rglob("message_*.json")
        for m in json.loads(f.read_text(encoding="ascii"))["messages"]
    ]
    assert any("photos" in m and "content" not in m for m in messages)
    assert any("sticker" in m for m in messages)
    assert any(m.get("call_duration", 0) > 0 and "content" in m for m in messages)
    assert any(m["is_unsent"] and "content" not in m for m in messages)
    assert any(m.get("content", "").startswith("Reacted ") for m in messages)
    assert any(m["type"] == "Share" for m in messages)
    assert any(m["type"] == "Subscribe" for m in messages)


@pytest.mark.parametrize("keyword", ["marguerite", "dex"])
def test_import_yields_enough_clean_exchanges(datasets: dict[str, Path], keyword: str) -> None:
    keys, answers = load_pairs(datasets[keyword])
    assert len(set(zip(keys, answers, strict=True))) >= 170
    text = datasets[keyword].read_text(encoding="utf-8")
    assert "\u00c3" not in text  # mojibake fixed everywhere
    assert "called you" not in text and "to the group." not in text
    # Non-text items never become turns: no notices, no links, no empty turns.
    for answer in answers:
        assert "to your message" not in answer and "https://" not in answer


def test_voices_stay_consistent(datasets: dict[str, Path]) -> None:
    _, marguerite = load_pairs(datasets["marguerite"])
    _, dex = load_pairs(datasets["dex"])
    # Marguerite signs every text with "x"; Dex never uses a capital letter.
    assert all(line.endswith(" x") for a in marguerite for line in a.splitlines())
    assert all(a == a.lower() for a in dex)


@pytest.mark.parametrize(
    ("keyword", "text", "expected"),
    [
        ("marguerite", "what do you do for work", "lighthouse keeper"),
        ("marguerite", "where do you live", "harbour in Gullhaven"),
        ("marguerite", "do you have any pets", "Bosun"),
        ("marguerite", "good night", "Good night"),
        ("dex", "what do you do for work", "bike courier"),
        ("dex", "where do you live", "above a launderette"),
        ("dex", "do you have any pets", "kevin"),
        ("dex", "tell me a joke", "two tyred"),
    ],
)
def test_retrieval_answers_common_texts_in_voice(
    datasets: dict[str, Path], keyword: str, text: str, expected: str
) -> None:
    p = BY_KEYWORD[keyword]
    persona = PersonaView(
        id=1,
        name=p["name"],
        keyword=keyword,
        backend="retrieval",
        model=None,
        base_url=None,
        api_key_env=None,
        dataset=str(datasets[keyword]),
        system_prompt=p["system"],
        greeting=p["greeting"],
        temperature=None,
        max_tokens=None,
    )
    messages = [{"role": "system", "content": p["system"]}, {"role": "user", "content": text}]
    assert expected in RetrievalBackend().reply(persona, messages).text
