"""Just-in-time approvals: the ``approvals`` table and its version counter, which replicas
poll (and are notified of) to keep their in-memory view of granted approvals current.

Revision ID: approvals
Revises: audit_context
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "approvals"
down_revision: str | Sequence[str] | None = "audit_context"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("pending_key", sa.String(64), nullable=True),
        sa.Column("identity", sa.Text(), nullable=False),
        sa.Column("issuer_name", sa.Text(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=True),
        sa.Column("actor_identity", sa.Text(), nullable=True),
        sa.Column("grant", sa.Text(), nullable=True),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("elevated", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("max_window", sa.Integer(), nullable=False),
        sa.Column("decided_at", sa.Double(), nullable=True),
        sa.Column("decided_by", sa.Text(), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.Column("revoked_by", sa.Text(), nullable=True),
        sa.Column("revoke_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_approvals"),
        sa.UniqueConstraint("pending_key", name="uq_approvals_pending_key"),
    )
    op.create_index("ix_approvals_fingerprint", "approvals", ["fingerprint"])
    op.create_index("ix_approvals_identity", "approvals", ["identity"])
    op.create_index("ix_approvals_status", "approvals", ["status"])
    versions = sa.table("lifecycle_versions", sa.column("name", sa.String), sa.column("version", sa.BigInteger))
    op.bulk_insert(versions, [{"name": "approvals", "version": 0}])


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM lifecycle_versions WHERE name = 'approvals'"))
    op.drop_index("ix_approvals_status", table_name="approvals")
    op.drop_index("ix_approvals_identity", table_name="approvals")
    op.drop_index("ix_approvals_fingerprint", table_name="approvals")
    op.drop_table("approvals")
