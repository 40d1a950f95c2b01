"""Token Status List (draft-ietf-oauth-status-list-19): the status index of an issued token and
the blocks of indices reserved by broker processes.

Revision ID: status_list
Revises: token_lifecycle
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "status_list"
down_revision: str | Sequence[str] | None = "token_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "status_list_blocks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("reserved_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_status_list_blocks"),
    )
    with op.batch_alter_table("issued_tokens") as batch:
        batch.add_column(sa.Column("status_idx", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("issued_tokens") as batch:
        batch.drop_column("status_idx")
    op.drop_table("status_list_blocks")
