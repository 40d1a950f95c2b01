"""Audit records gain ``count``: one row may stand for several identical refusals.

Identical refusals without a verified identity, from one peer within a short window, are
written as one record with a count (sts.ops.coalesce); every other row keeps the default 1.

Revision ID: audit_refusal_count
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "audit_refusal_count"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL 11+ adds it without rewriting the table, and SQLite's
    # ADD COLUMN accepts NOT NULL with a constant default in place.
    op.add_column("audit_events", sa.Column("count", sa.Integer(), nullable=False, server_default=sa.text("1")))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("count")
