"""Token lifecycle: kill switches, revocation of issued tokens, their lineage, and the version
counters that replicas poll to keep their in-memory views current.

Revision ID: token_lifecycle
Revises: audit_trace_id
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "token_lifecycle"
down_revision: str | Sequence[str] | None = "audit_trace_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "kill_switches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("until", sa.Double(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("lifted_at", sa.Double(), nullable=True),
        sa.Column("lifted_by", sa.Text(), nullable=True),
        sa.Column("lift_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_kill_switches"),
    )
    op.create_index("ix_kill_switches_lifted_at", "kill_switches", ["lifted_at"])
    versions = op.create_table(
        "lifecycle_versions",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_lifecycle_versions"),
    )
    op.bulk_insert(versions, [{"name": "kills", "version": 0}, {"name": "revocations", "version": 0}])
    # batch mode: SQLite cannot alter a table in place beyond ADD COLUMN, and batch mode keeps
    # the downgrade portable too.
    with op.batch_alter_table("issued_tokens") as batch:
        batch.add_column(sa.Column("revoked_at", sa.Double(), nullable=True))
        batch.add_column(sa.Column("revoked_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("parent_jti", sa.String(256), nullable=True))
        batch.create_index("ix_issued_tokens_parent_jti", ["parent_jti"])


def downgrade() -> None:
    with op.batch_alter_table("issued_tokens") as batch:
        batch.drop_index("ix_issued_tokens_parent_jti")
        batch.drop_column("parent_jti")
        batch.drop_column("revoked_reason")
        batch.drop_column("revoked_at")
    op.drop_table("lifecycle_versions")
    op.drop_index("ix_kill_switches_lifted_at", table_name="kill_switches")
    op.drop_table("kill_switches")
