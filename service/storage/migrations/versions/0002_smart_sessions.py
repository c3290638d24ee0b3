"""SMART launch state and app sessions shared by all workers (service/storage/smart_sessions.py).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("smart_session"):  # the store creates it when it runs first
        return
    op.create_table(
        "smart_session",
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key_hash", name="pk_smart_session"),
    )
    op.create_index("ix_smart_session_kind_expires_at", "smart_session", ["kind", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_smart_session_kind_expires_at", table_name="smart_session")
    op.drop_table("smart_session")
