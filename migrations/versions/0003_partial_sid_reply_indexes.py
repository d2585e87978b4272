"""message_sid and reply_to_id indexes without NULL keys (two index pages fewer per text)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 05:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SID = sa.text("message_sid IS NOT NULL")
REPLY = sa.text("reply_to_id IS NOT NULL")


def upgrade() -> None:
    # The unique constraint lives in the table definition on SQLite: batch mode rebuilds
    # the table without it; the partial unique index then enforces the same rule.
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_constraint("uq_messages_message_sid", type_="unique")
        batch_op.drop_index("ix_messages_reply_to_id")
    op.create_index(
        "uq_messages_message_sid", "messages", ["message_sid"], unique=True,
        sqlite_where=SID, postgresql_where=SID,
    )  # fmt: skip
    op.create_index(
        "ix_messages_reply_to_id", "messages", ["reply_to_id"],
        sqlite_where=REPLY, postgresql_where=REPLY,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_messages_reply_to_id", table_name="messages")
    op.drop_index("uq_messages_message_sid", table_name="messages")
    with op.batch_alter_table("messages") as batch_op:
        batch_op.create_unique_constraint("uq_messages_message_sid", ["message_sid"])
        batch_op.create_index("ix_messages_reply_to_id", ["reply_to_id"], unique=False)
