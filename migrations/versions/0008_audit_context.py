"""Audit events: a JSON ``context`` object for structured facts of a decision.

Delegation chains, granted authorization details, upstream providers and what explaining a
refusal needs each record a key of it, so that those capabilities do not each add a column.

Revision ID: audit_context
Revises: status_list
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "audit_context"
down_revision: str | Sequence[str] | None = "status_list"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("context", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("context")
