"""Replica reports: which key-encryption keys each running broker holds.

Revision ID: broker_replicas
Revises: audit_refusal_count
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "broker_replicas"
down_revision: str | Sequence[str] | None = "audit_refusal_count"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "broker_replicas",
        sa.Column("replica_id", sa.String(128), nullable=False),
        sa.Column("kek_ids", sa.Text(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("replica_id", name="pk_broker_replicas"),
    )


def downgrade() -> None:
    op.drop_table("broker_replicas")
