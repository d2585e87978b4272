"""Typed SQLAlchemy 2.x models: personas, contacts, messages, fine-tuning jobs."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    """Naive UTC now: SQLite has no time zones, so every timestamp is stored as naive UTC."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


# Column sizes the webhook checks before storing (PostgreSQL enforces them; SQLite does not).
PHONE_MAX = 32
SID_MAX = 64
# A sender of ours: a number, or a channel's sender ("whatsapp:+1…", "rcs:…", "messenger:…").
ADDRESS_MAX = 64


class Base(DeclarativeBase):
    """Declarative base with a naming convention so Alembic names constraints the same way."""

    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Persona(Base):
    """A clone: how to reach its model, and the prompt it was trained with."""

    __tablename__ = "personas"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    keyword: Mapped[str] = mapped_column(sa.String(50), unique=True)
    backend: Mapped[str] = mapped_column(sa.String(20), default="retrieval")
    model: Mapped[str | None] = mapped_column(sa.String(200))
    base_url: Mapped[str | None] = mapped_column(sa.String(500))
    api_key_env: Mapped[str | None] = mapped_column(sa.String(100))
    dataset: Mapped[str | None] = mapped_column(sa.String(1000))
    system_prompt: Mapped[str | None] = mapped_column(sa.Text)
    greeting: Mapped[str | None] = mapped_column(sa.Text)
    temperature: Mapped[float | None] = mapped_column(sa.Float)
    max_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    is_default: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Contact(Base):
    """One phone number: its active persona, opt-out state, thread reset point and daily count."""

    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    phone: Mapped[str] = mapped_column(sa.String(PHONE_MAX), unique=True)
    persona_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("personas.id", ondelete="SET NULL")
    )
    opted_out: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    opted_out_at: Mapped[dt.datetime | None]
    thread_reset_at: Mapped[dt.datetime | None]
    # Replies counted per UTC day on the row itself: the daily limit then costs no COUNT query.
    reply_day: Mapped[dt.date | None] = mapped_column(sa.Date)
    replies_today: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    persona: Mapped[Persona | None] = relationship(lazy="raise")


class Message(Base):
    """One SMS in or out, with what it cost and how it went."""

    __tablename__ = "messages"
    __table_args__ = (
        sa.Index("ix_messages_contact_created", "contact_id", "created_at"),
        # Partial: replies have no MessageSid until a REST send, texts answer nothing, so
        # NULL keys stay out of these indexes and each text writes two index pages fewer.
        sa.Index(
            "uq_messages_message_sid",
            "message_sid",
            unique=True,
            sqlite_where=sa.text("message_sid IS NOT NULL"),
            postgresql_where=sa.text("message_sid IS NOT NULL"),
        ),
        sa.Index(
            "ix_messages_reply_to_id",
            "reply_to_id",
            sqlite_where=sa.text("reply_to_id IS NOT NULL"),
            postgresql_where=sa.text("reply_to_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    persona_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("personas.id", ondelete="SET NULL")
    )
    # "in" or "out".
    direction: Mapped[str] = mapped_column(sa.String(3))
    # chat: part of the conversation sent to the model; command, optout, refused, media,
    # fallback: everything else (never shown to the model).
    kind: Mapped[str] = mapped_column(sa.String(16), default="chat")
    body: Mapped[str] = mapped_column(sa.Text, default="")
    # Twilio's MessageSid (inbound) or the SID of a REST send (outbound).
    message_sid: Mapped[str | None] = mapped_column(sa.String(SID_MAX))
    # An outbound reply points at the inbound message it answers (idempotent retries).
    reply_to_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("messages.id", ondelete="SET NULL")
    )
    # received, refused, processing, replied, failed, queued, sent, send_retry, send_failed.
    status: Mapped[str] = mapped_column(sa.String(16), default="received")
    # Outbound: the last delivery status Twilio reported (sent, delivered, undelivered,
    # failed, partially_delivered, …) through the status callback; NULL until one arrives.
    delivery: Mapped[str | None] = mapped_column(sa.String(32))
    error: Mapped[str | None] = mapped_column(sa.Text)
    model: Mapped[str | None] = mapped_column(sa.String(200))
    latency_ms: Mapped[int | None] = mapped_column(sa.Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    completion_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    num_media: Mapped[int] = mapped_column(sa.Integer, default=0)
    # Our end of the conversation: the number or sender the text was sent to (Twilio's
    # `To`), and on a reply the one it goes out from. NULL when unknown (stored before
    # revision 0008, or posted without a `To`): REST replies then use TWILIO_PHONE_NUMBER.
    our_address: Mapped[str | None] = mapped_column(sa.String(ADDRESS_MAX))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(onupdate=utcnow)


class FineTuneJob(Base):
    """A fine-tuning job (OpenAI or local LoRA) and what it produced."""

    __tablename__ = "finetune_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Not unique: two OpenAI-compatible servers, or one restarted, can hand out the same id;
    # a job is its id on its server, and a reused id on the same server is the newer job.
    job_id: Mapped[str] = mapped_column(sa.String(100), index=True)
    provider: Mapped[str] = mapped_column(sa.String(20), default="openai")
    # The base URL an openai job lives on; NULL for a local job (and for openai jobs stored
    # before the server was recorded, revision 0006).
    server: Mapped[str | None] = mapped_column(sa.String(500))
    persona_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("personas.id", ondelete="SET NULL")
    )
    base_model: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[str] = mapped_column(sa.String(32), default="created")
    fine_tuned_model: Mapped[str | None] = mapped_column(sa.String(300))
    training_file: Mapped[str | None] = mapped_column(sa.String(1000))
    validation_file: Mapped[str | None] = mapped_column(sa.String(1000))
    training_file_id: Mapped[str | None] = mapped_column(sa.String(100))
    validation_file_id: Mapped[str | None] = mapped_column(sa.String(100))
    suffix: Mapped[str | None] = mapped_column(sa.String(64))
    hyperparameters: Mapped[str | None] = mapped_column(sa.Text)  # JSON
    output_dir: Mapped[str | None] = mapped_column(sa.String(1000))
    trained_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    last_event_id: Mapped[str | None] = mapped_column(sa.String(100))
    # JSON list of the ids of the newest events (up to a page) when last shown: a server may
    # list an event late, below one already shown, or swap two of one second (revision 0009).
    shown_event_ids: Mapped[str | None] = mapped_column(sa.Text)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None]
