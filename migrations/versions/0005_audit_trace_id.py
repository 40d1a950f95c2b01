"""Audit events: the W3C trace id of the request, when tracing is on.

Revision ID: audit_trace_id
Revises: broker_replicas
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "audit_trace_id"
down_revision: str | Sequence[str] | None = "broker_replicas"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot alter a table in place beyond ADD COLUMN, and batch mode keeps
    # the downgrade portable too.
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("trace_id", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("trace_id")
