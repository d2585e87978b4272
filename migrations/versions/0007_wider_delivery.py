"""messages.delivery holds every status Twilio reports: "partially_delivered" is 19 characters

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.alter_column(
            "delivery", type_=sa.String(32), existing_type=sa.String(16), existing_nullable=True
        )


def downgrade() -> None:
    # Fails on PostgreSQL while a row holds a longer status (nothing is cut silently).
    with op.batch_alter_table("messages") as batch:
        batch.alter_column(
            "delivery", type_=sa.String(16), existing_type=sa.String(32), existing_nullable=True
        )
