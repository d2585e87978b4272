"""messages.our_address: the number or sender a text was sent to, which its REST replies use

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: rows stored before stay NULL (their replies use
    # TWILIO_PHONE_NUMBER, as before), and adding the column rewrites no row.
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("our_address", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("our_address")
