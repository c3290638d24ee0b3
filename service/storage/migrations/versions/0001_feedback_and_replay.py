"""Issued cards, feedback, and seen JWT ids.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "issued_card",
        sa.Column("uuid", sa.String(64), nullable=False),
        sa.Column("service_id", sa.String(128), nullable=False),
        sa.Column("hook_instance", sa.Text(), nullable=False),
        sa.Column("topic", sa.String(128), nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("ruleset_version", sa.String(128), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("suggestion_uuids", sa.Text(), nullable=False),
        sa.Column("suggestion_labels", sa.Text(), nullable=False),
        sa.Column("patient_hash", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("uuid", name="pk_issued_card"),
    )
    op.create_index("ix_issued_card_issued_at", "issued_card", ["issued_at"])

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dedupe_key", sa.String(64), nullable=False),
        sa.Column("card_uuid", sa.String(255), nullable=False),
        sa.Column("service_id", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accepted_suggestions", sa.Text(), nullable=False),
        sa.Column("override_code", sa.String(255), nullable=True),
        sa.Column("override_system", sa.String(1024), nullable=True),
        sa.Column("override_display", sa.String(1024), nullable=True),
        sa.Column("user_comment", sa.Text(), nullable=True),
        sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.UniqueConstraint("dedupe_key", name="uq_feedback_dedupe_key"),
    )
    op.create_index("ix_feedback_card_uuid", "feedback", ["card_uuid"])
    op.create_index("ix_feedback_outcome_timestamp", "feedback", ["outcome_timestamp"])
    op.create_index("ix_feedback_received_at", "feedback", ["received_at"])

    # service/auth/replay.py creates this table itself when it runs before any migration did
    if not sa.inspect(op.get_bind()).has_table("jwt_replay"):
        op.create_table(
            "jwt_replay",
            sa.Column("token_key", sa.String(64), nullable=False, comment="sha256(iss NUL jti), hex"),
            sa.Column("expires_at", sa.BigInteger(), nullable=False,
                      comment="epoch seconds after which the row may go"),
            sa.PrimaryKeyConstraint("token_key", name="pk_jwt_replay"),
        )
        op.create_index("ix_jwt_replay_expires_at", "jwt_replay", ["expires_at"])


def downgrade() -> None:
    op.drop_table("jwt_replay")
    op.drop_index("ix_feedback_received_at", table_name="feedback")
    op.drop_index("ix_feedback_outcome_timestamp", table_name="feedback")
    op.drop_index("ix_feedback_card_uuid", table_name="feedback")
    op.drop_table("feedback")
    op.drop_index("ix_issued_card_issued_at", table_name="issued_card")
    op.drop_table("issued_card")
