"""Configuration versions: every trust configuration a broker loaded, with its document.

Audit records carry ``config_version`` (the first 12 hex digits of the document's SHA-256);
this table keeps the document itself so that ``sts config show VERSION`` prints the exact text
that decided (docs/trust-changes.md).

Revision ID: config_versions
Revises: approvals
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "config_versions"
down_revision: str | Sequence[str] | None = "approvals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "config_versions",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("first_loaded_at", sa.Double(), nullable=False),
        sa.Column("last_loaded_at", sa.Double(), nullable=False),
        sa.Column("loaded_by", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_config_versions"),
    )
    op.create_index("ix_config_versions_version", "config_versions", ["version"])
    op.create_index("ix_config_versions_last_loaded_at", "config_versions", ["last_loaded_at"])


def downgrade() -> None:
    op.drop_index("ix_config_versions_last_loaded_at", table_name="config_versions")
    op.drop_index("ix_config_versions_version", table_name="config_versions")
    op.drop_table("config_versions")
