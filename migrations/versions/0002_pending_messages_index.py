"""partial index on messages still being answered or sent (recovery sweep)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 05:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PENDING_WHERE = "status IN ('processing', 'queued')"


def upgrade() -> None:
    op.create_index(
        "ix_messages_pending",
        "messages",
        ["status"],
        sqlite_where=sa.text(PENDING_WHERE),
        postgresql_where=sa.text(PENDING_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_pending", table_name="messages")
