"""Drop the audit indexes no query reads: every exchange paid to maintain them.

``outcome`` has three values, so an index on it never narrows a scan that the ``time`` index
does not already order (``sts audit list --outcome`` walks ``time`` newest first); ``issued_jti``
is looked up in ``issued_tokens`` (its primary key), never in the audit table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_audit_events_outcome", table_name="audit_events")
    op.drop_index("ix_audit_events_issued_jti", table_name="audit_events")


def downgrade() -> None:
    op.create_index("ix_audit_events_issued_jti", "audit_events", ["issued_jti"])
    op.create_index("ix_audit_events_outcome", "audit_events", ["outcome"])
