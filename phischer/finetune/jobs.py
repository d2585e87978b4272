"""FineTuneJob rows: record a job, find it, and apply what the provider reports back."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from phischer.db import Database
from phischer.finetune.common import FINAL_STATES, Echo, FineTuneError
from phischer.models import FineTuneJob, Persona, utcnow
from phischer.redact import redact

LOCAL_PREFIX = "local-"  # local runs' job ids; OpenAI's start with "ftjob-"


@dataclass(frozen=True)
class JobUpdate:
    """What a status check learned about a job (None = unknown, keep the stored value)."""

    status: str
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: str | None = None
    last_event_id: str | None = None
    shown_event_ids: str | None = None  # JSON list, newest first


def record_job(session: Session, **fields: Any) -> FineTuneJob:
    """Insert a job row; `hyperparameters` may be a dict (stored as JSON)."""
    hyper = fields.get("hyperparameters")
    if isinstance(hyper, dict):
        fields["hyperparameters"] = json.dumps(hyper, sort_keys=True)
    job = FineTuneJob(**fields)
    if job.status in FINAL_STATES:
        job.finished_at = utcnow()
    session.add(job)
    session.flush()
    return job


def find_job(session: Session, job_id: str, server: str | None = None) -> FineTuneJob | None:
    """The stored row for a job id on `server`, else one stored with no server, or None.

    No server is a local job, or an openai one stored before servers were recorded. Two
    servers can number their jobs alike, and a restarted one reuses its ids: the id on this
    server comes first, and of two such rows the newer one (the job the server knows now).
    """
    same = FineTuneJob.server.is_(None)
    if server is not None:
        same = sa.or_(same, FineTuneJob.server == server)
    return session.scalars(
        sa.select(FineTuneJob)
        .where(FineTuneJob.job_id == job_id, same)
        .order_by(FineTuneJob.server.is_(None), FineTuneJob.id.desc())
    ).first()


def stored_elsewhere(session: Session, job_id: str, server: str) -> str | None:
    """The server other than `server` a job id is stored for (the newest such row), or None."""
    return session.scalars(
        sa.select(FineTuneJob.server)
        .where(FineTuneJob.job_id == job_id, FineTuneJob.server != server)
        .order_by(FineTuneJob.id.desc())
    ).first()


def get_job(session: Session, job_id: str, server: str | None = None) -> FineTuneJob:
    """The stored row for a job id (as `find_job`), or a one-line error naming `finetune list`."""
    job = find_job(session, job_id, server)
    if job is None:
        raise _unknown(job_id)
    return job


def find_job_here(session: Session, job_id: str) -> FineTuneJob | None:
    """`find_job`, but a local job id that is not stored is an error, not OpenAI's to look up."""
    job = find_job(session, job_id)
    if job is None and job_id.startswith(LOCAL_PREFIX):
        # Only this database knows local runs: asking OpenAI would fail on a missing key, or
        # say "not found" about a job that was never theirs.
        raise _unknown(job_id)
    return job


def _unknown(job_id: str) -> FineTuneError:
    return FineTuneError(f"no fine-tuning job {job_id!r} here (see `phischer finetune list`)")


def list_jobs(session: Session) -> list[tuple[FineTuneJob, str | None]]:
    """Every stored job, newest first, with its persona's name."""
    rows = session.execute(
        sa.select(FineTuneJob, Persona.name)
        .outerjoin(Persona, Persona.id == FineTuneJob.persona_id)
        .order_by(FineTuneJob.created_at.desc(), FineTuneJob.id.desc())
    )
    return [(job, name) for job, name in rows]


def unfinished_of(session: Session, persona_id: int) -> list[FineTuneJob]:
    """The persona's stored jobs that have not ended (as last checked), oldest first."""
    return list(
        session.scalars(
            sa.select(FineTuneJob)
            .where(FineTuneJob.persona_id == persona_id, FineTuneJob.status.not_in(FINAL_STATES))
            .order_by(FineTuneJob.id)
        )
    )


def warn_unfinished(db: Database, persona_id: int, name: str, echo: Echo) -> None:
    """Say which of the persona's jobs have not ended: the newest to succeed gets the persona."""
    from phischer.finetune.local_status import stopped_hard

    with db.read() as session:
        # A local run killed hard stays "running" for good: it trains no more.
        pending = unfinished_of(session, persona_id)
    pending = [j for j in pending if j.provider != "local" or not stopped_hard(j)]
    if not pending:
        return
    listed = ", ".join(f"{j.job_id} ({j.status} when last checked)" for j in pending)
    if len(pending) > 1:
        stop = "`phischer finetune cancel JOB` stops an OpenAI one"
    elif pending[0].provider == "local":
        stop = "Ctrl-C where it trains stops it"
    else:
        stop = f"`phischer finetune cancel {pending[0].job_id}` stops it"
    echo(
        f"Warning: {name} already has a fine-tuning job that has not ended: {listed}. If this "
        "new job succeeds, the persona answers with its model, whichever ends first (an older "
        f"job's success does not switch it back); {stop}."
    )


def newer_success(session: Session, job: FineTuneJob) -> FineTuneJob | None:
    """The latest job of `job`'s persona, started after it, that succeeded with its model."""
    # That one switched the persona: an older job ending after it must not switch it back.
    if job.persona_id is None:
        return None
    return session.scalars(
        sa.select(FineTuneJob)
        .where(
            FineTuneJob.persona_id == job.persona_id,
            FineTuneJob.id > job.id,
            FineTuneJob.status == "succeeded",
            FineTuneJob.fine_tuned_model.is_not(None),
        )
        .order_by(FineTuneJob.id.desc())
    ).first()


def kept_newer(persona: str, newer: FineTuneJob, job_id: str, flags: str) -> str:
    """Why a job that just succeeded switched nothing: a job started after it already had."""
    # One wording for the local and the OpenAI path; `flags` are what serve this job's model.
    return (
        f"Persona {persona} keeps {newer.fine_tuned_model} of {newer.job_id}, started after "
        f"{job_id}: to answer with this one, `phischer persona edit {shlex.quote(persona)} "
        f"--backend openai {flags}`."
    )


def removed_while_trained(persona: str, job_id: str, where: str, flags: str) -> str:
    """Why a trained model serves no persona (removed meanwhile), and how to serve it."""
    # One wording for the local and the OpenAI path; `flags` are what serve the model.
    return (
        f"{persona} was removed while {job_id} trained: {where}; point a persona at it with "
        f"`phischer persona edit NAME --backend openai {flags}` (or a new one: `phischer "
        f"persona add NAME --keyword WORD --backend openai {flags}`)"
    )


def persona_of(session: Session, job: FineTuneJob) -> Persona | None:
    """The persona the job trains for; None if it was removed."""
    # By id, not by name: `persona edit --name` while the job trains keeps the id (a removal
    # sets persona_id to NULL, so the id never names a persona added since).
    return session.get(Persona, job.persona_id) if job.persona_id is not None else None


def switch_persona(session: Session, job: FineTuneJob, base_url: str | None) -> Persona | None:
    """Point the job's persona at its model served at `base_url`; None if it was removed."""
    persona = persona_of(session, job)
    if persona is None:
        return None
    persona.backend, persona.model, persona.base_url = "openai", job.fine_tuned_model, base_url
    # A key variable the persona read for its previous server (e.g. TOGETHER_API_KEY) is not
    # this one's: unset, it would fail every text; set, it would leak to another server.
    persona.api_key_env = None
    session.flush()
    return persona


def apply_update(session: Session, job: FineTuneJob, update: JobUpdate) -> Persona | None:
    """Store a status update; on the first `succeeded`, point the persona at the new model.

    Returns the persona that was switched, if any. A job that was already `succeeded` with
    its model does not switch the persona again, so a later `persona edit` by hand is not overwritten
    by a repeated `finetune status`; nor does one older than a job that already switched it.
    """
    # Succeeded with its model is when the switch was made: OpenAI may name the model only
    # on a later check than the first to say "succeeded".
    switched_before = job.status == "succeeded" and job.fine_tuned_model
    job.status = update.status
    for attr in (
        "fine_tuned_model",
        "trained_tokens",
        "error",
        "last_event_id",
        "shown_event_ids",
    ):
        value = getattr(update, attr)
        if value is not None:
            setattr(job, attr, value)
    if update.error is not None:
        # Another program's words (OpenAI's job error, a library's exception) can quote a key
        # or a token: stored, it would be shown by every later `status`. Numbers stay, as
        # at the terminal: a dataset's own are the user's.
        job.error = redact(update.error, numbers=False)
    if update.status in FINAL_STATES and job.finished_at is None:
        job.finished_at = utcnow()
    switched = None
    first_success = update.status == "succeeded" and not switched_before
    if first_success and job.fine_tuned_model and newer_success(session, job) is None:
        # The model lives where the job ran (OPENAI_BASE_URL, OPENAI_API_KEY's account),
        # not on a server the persona may have pointed at before (e.g. a local vLLM for an
        # earlier LoRA, with its own key variable).
        switched = switch_persona(session, job, base_url=None)
    session.flush()
    return switched
