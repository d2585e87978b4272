"""fine_tune_jobs.shown_event_ids: the ids of the newest events shown, not only the last one

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 00:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: a job stored before pages from its last_event_id, as it did.
    with op.batch_alter_table("finetune_jobs") as batch:
        batch.add_column(sa.Column("shown_event_ids", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("finetune_jobs") as batch:
        batch.drop_column("shown_event_ids")
