"""drop the pending-messages index: it cost every text two index pages; sweeps scan by id

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_messages_pending", table_name="messages")


def downgrade() -> None:
    where = sa.text("status IN ('processing', 'queued')")
    op.create_index(
        "ix_messages_pending", "messages", ["status"], sqlite_where=where, postgresql_where=where
    )
