"""finetune_jobs.server: a job is its id on the server it lives on, not a unique id

Two OpenAI-compatible servers (or one restarted) can hand out the same job id: the unique
job_id made `finetune start` fail after creating the job, leaving it unrecorded. Jobs stored
before keep a NULL server (which one they ran on is not known); lookups still find them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("finetune_jobs") as batch:
        batch.add_column(sa.Column("server", sa.String(500), nullable=True))
        batch.drop_constraint("uq_finetune_jobs_job_id", type_="unique")
        batch.create_index("ix_finetune_jobs_job_id", ["job_id"])


def downgrade() -> None:
    # Fails while two rows share a job id: delete one of them first (nothing is dropped silently).
    with op.batch_alter_table("finetune_jobs") as batch:
        batch.drop_index("ix_finetune_jobs_job_id")
        batch.create_unique_constraint("uq_finetune_jobs_job_id", ["job_id"])
        batch.drop_column("server")
