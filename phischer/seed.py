"""Seed the bundled fictional sample personas (imported through the real Messenger importer)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from phischer.backends.retrieval import load_pairs
from phischer.config import Settings, ensure_folder
from phischer.dataset import build_examples, write_jsonl
from phischer.db import Database
from phischer.importers import load
from phischer.models import Persona
from phischer.personas import PersonaError, PersonaSpec, add_persona

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


@dataclass(frozen=True)
class Seeded:
    """One sample persona that was added."""

    name: str
    keyword: str
    examples: int
    exchanges: int  # distinct (text, reply) pairs the retrieval backend answers from


def sample_specs() -> list[dict[str, str]]:
    """The sample personas described in phischer/sample/personas.json."""
    return json.loads((SAMPLE_DIR / "personas.json").read_text(encoding="utf-8"))


def seed_samples(settings: Settings, db: Database) -> list[Seeded]:
    """Import and add the sample personas when the database has no persona yet."""
    with db.read() as session:
        if _any_persona(session):
            return []
    out_dir = settings.instance_path / "samples"
    ensure_folder(out_dir, "the sample datasets")  # or one line saying why not
    specs: list[PersonaSpec] = []
    seeded: list[Seeded] = []
    for i, spec in enumerate(sample_specs()):
        conversations = load("messenger", SAMPLE_DIR / spec["export"])
        examples = build_examples(conversations, spec["me"], system=spec["system"])
        path = out_dir / f"{spec['keyword']}.jsonl"
        count = write_jsonl(examples, path)  # whole or not at all, also beside another seed
        specs.append(
            PersonaSpec(
                name=spec["name"],
                keyword=spec["keyword"],
                backend="retrieval",
                dataset=str(path),
                system_prompt=spec["system"],
                greeting=spec.get("greeting"),
                is_default=i == 0,
            )
        )
        exchanges = len(load_pairs(path)[1])
        seeded.append(Seeded(spec["name"], spec["keyword"], count, exchanges))
    # Checked again where they are added, all in one transaction: `make run` in two terminals
    # found no persona in both, and the second crashed on the first one's sample. SQLite's
    # write lock makes the second wait and find them; on PostgreSQL it meets them instead.
    try:
        with db.write() as session:
            if _any_persona(session):
                return []
            for persona in specs:
                add_persona(session, persona)
    except (PersonaError, sa.exc.IntegrityError):
        with db.read() as session:
            if _any_persona(session):
                return []  # another process seeded them meanwhile
        raise
    return seeded


def _any_persona(session: Any) -> bool:
    return bool(session.scalar(sa.select(sa.func.count()).select_from(Persona)))
