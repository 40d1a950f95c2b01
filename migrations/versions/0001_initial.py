"""Initial schema: signing keys, issued tokens, audit events, replay guard.

Revision ID: 0001
Revises:
Create Date: 2024-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("public_jwk", sa.Text(), nullable=False),
        sa.Column("private_key_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("activated_at", sa.Double(), nullable=True),
        sa.Column("retired_at", sa.Double(), nullable=True),
        sa.Column("not_after", sa.Double(), nullable=False),
        sa.Column("publish_until", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("kid", name="pk_signing_keys"),
    )

    op.create_table(
        "issued_tokens",
        sa.Column("jti", sa.String(256), nullable=False),
        sa.Column("identity", sa.Text(), nullable=False),
        sa.Column("issuer_name", sa.String(64), nullable=False),
        sa.Column("audience", sa.Text(), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("issued_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("subject_token_sha256", sa.String(64), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=True),
        sa.Column("actor_identity", sa.Text(), nullable=True),
        sa.Column("signing_kid", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("jti", name="pk_issued_tokens"),
    )
    op.create_index("ix_issued_tokens_identity", "issued_tokens", ["identity"])
    op.create_index("ix_issued_tokens_expires_at", "issued_tokens", ["expires_at"])
    op.create_index("ix_issued_tokens_subject_token_sha256", "issued_tokens", ["subject_token_sha256"])

    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("client_id", sa.Text(), nullable=True),
        sa.Column("issuer", sa.Text(), nullable=True),
        sa.Column("external_subject", sa.Text(), nullable=True),
        sa.Column("identity", sa.Text(), nullable=True),
        sa.Column("grant", sa.Text(), nullable=True),
        sa.Column("mode_notes", sa.Text(), nullable=False),
        sa.Column("requested_targets", sa.Text(), nullable=False),
        sa.Column("granted_target", sa.Text(), nullable=True),
        sa.Column("requested_scopes", sa.Text(), nullable=True),
        sa.Column("granted_scopes", sa.Text(), nullable=False),
        sa.Column("lifetime", sa.Integer(), nullable=True),
        sa.Column("issued_jti", sa.String(256), nullable=True),
        sa.Column("subject_token_sha256", sa.String(64), nullable=True),
        sa.Column("actor_identity", sa.Text(), nullable=True),
        sa.Column("config_version", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )
    op.create_index("ix_audit_events_time", "audit_events", ["time"])
    op.create_index("ix_audit_events_identity", "audit_events", ["identity"])
    op.create_index("ix_audit_events_issued_jti", "audit_events", ["issued_jti"])
    op.create_index("ix_audit_events_outcome", "audit_events", ["outcome"])

    op.create_table(
        "replay_guard",
        sa.Column("namespace", sa.String(128), nullable=False),
        sa.Column("jti", sa.String(256), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "jti", name="pk_replay_guard"),
    )
    op.create_index("ix_replay_guard_expires_at", "replay_guard", ["expires_at"])


def downgrade() -> None:
    op.drop_table("replay_guard")
    op.drop_table("audit_events")
    op.drop_table("issued_tokens")
    op.drop_table("signing_keys")
