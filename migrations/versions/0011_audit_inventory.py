"""Audit queries and the inventory: indexes for `sts audit list` filters and the usage counters.

* ``audit_events``: ``(identity, time)`` replaces ``(identity)`` (same cost per insert, and it
  also orders by time); ``request_id``; ``(grant, time)``, ``(granted_target, time)``,
  ``(client_id, time)``; ``(reason, time)`` only where a reason is set (refusals and errors),
  so an issued record does not pay for it.
* ``usage_counts``: per-day counters the group-commit writer upserts in the transaction of the
  audit records it counts (sts/store/usage.py), read by `sts inventory`.

Revision ID: audit_inventory
Revises: config_versions
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "audit_inventory"
down_revision: str | Sequence[str] | None = "config_versions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOT_NULL_REASON = sa.text("reason IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_audit_events_identity", table_name="audit_events")
    op.create_index("ix_audit_events_identity", "audit_events", ["identity", "time"])
    op.create_index("ix_audit_events_request_id", "audit_events", ["request_id"])
    op.create_index("ix_audit_events_grant", "audit_events", ["grant", "time"])
    op.create_index("ix_audit_events_granted_target", "audit_events", ["granted_target", "time"])
    op.create_index("ix_audit_events_client_id", "audit_events", ["client_id", "time"])
    op.create_index("ix_audit_events_reason", "audit_events", ["reason", "time"],
                    sqlite_where=_NOT_NULL_REASON, postgresql_where=_NOT_NULL_REASON)
    op.create_table(
        "usage_counts",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("identity", sa.Text(), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("grant", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_usage_counts"),
    )
    op.create_index("ix_usage_counts_day", "usage_counts", ["day"])


def downgrade() -> None:
    op.drop_index("ix_usage_counts_day", table_name="usage_counts")
    op.drop_table("usage_counts")
    for name in ("reason", "client_id", "granted_target", "grant", "request_id", "identity"):
        op.drop_index(f"ix_audit_events_{name}", table_name="audit_events")
    op.create_index("ix_audit_events_identity", "audit_events", ["identity"])
