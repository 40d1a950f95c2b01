"""Table definitions (SQLAlchemy Core), the model that ``migrate.check`` compares the database with.

Portable choices, so one schema serves SQLite and PostgreSQL alike:
* times are float epoch seconds (``Double``), the unit the whole broker computes in;
* list-valued audit fields are JSON held in ``Text``;
* free-form audit text is unbounded ``Text``: an audit row must never be refused because a
  caller sent a long client id or request id.
A change here needs a new migration in ``migrations/versions``; ``check`` fails until it exists.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

# Deterministic constraint names, identical on every backend, so migrations can name them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("private_key_ciphertext", LargeBinary, nullable=False),
    Column("kek_id", String(64), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("activated_at", Double, nullable=True),
    Column("retired_at", Double, nullable=True),
    Column("not_after", Double, nullable=False),
    Column("publish_until", Double, nullable=True),
)

issued_tokens = Table(
    "issued_tokens",
    metadata,
    Column("jti", String(256), primary_key=True),
    Column("identity", Text, nullable=False),
    Column("issuer_name", String(64), nullable=False),
    Column("audience", Text, nullable=False),
    Column("scopes", Text, nullable=False),
    Column("issued_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("subject_token_sha256", String(64), nullable=False),
    Column("client_id", Text, nullable=True),
    Column("actor_identity", Text, nullable=True),
    Column("signing_kid", String(64), nullable=False),
    # Revocation (sts/lifecycle): set once, never cleared; the row then introspects inactive.
    Column("revoked_at", Double, nullable=True),
    Column("revoked_reason", Text, nullable=True),
    # The jti of the subject token when it is a token this broker issued (lineage).
    Column("parent_jti", String(256), nullable=True),
    # Token Status List index (sts/lifecycle/statuslist.py) when the token carries a `status` claim.
    Column("status_idx", BigInteger, nullable=True),
    Index("ix_issued_tokens_identity", "identity"),
    Index("ix_issued_tokens_parent_jti", "parent_jti"),
    Index("ix_issued_tokens_expires_at", "expires_at"),
    Index("ix_issued_tokens_subject_token_sha256", "subject_token_sha256"),
)

audit_events = Table(
    "audit_events",
    metadata,
    # SQLite autoincrements only an INTEGER PRIMARY KEY (its 64-bit rowid).
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("time", Double, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("error", Text, nullable=True),
    Column("reason", Text, nullable=True),
    Column("client_id", Text, nullable=True),
    Column("issuer", Text, nullable=True),
    Column("external_subject", Text, nullable=True),
    Column("identity", Text, nullable=True),
    Column("grant", Text, nullable=True),
    Column("mode_notes", Text, nullable=False),
    Column("requested_targets", Text, nullable=False),
    Column("granted_target", Text, nullable=True),
    Column("requested_scopes", Text, nullable=True),
    Column("granted_scopes", Text, nullable=False),
    Column("lifetime", Integer, nullable=True),
    Column("issued_jti", String(256), nullable=True),
    Column("subject_token_sha256", String(64), nullable=True),
    Column("actor_identity", Text, nullable=True),
    Column("config_version", Text, nullable=True),
    Column("detail", Text, nullable=True),
    # How many refusals the row stands for: 1, or more for identical unauthenticated refusals
    # from one peer coalesced into one record (sts.ops.coalesce). The database fills in 1, so
    # the group-commit writer never binds it on the hot path.
    Column("count", Integer, nullable=False, server_default=text("1")),
    Column("trace_id", String(32), nullable=True),
    # JSON object: structured facts of the decision, one key per capability (sts.audit)
    Column("context", Text, nullable=True),
    Index("ix_audit_events_time", "time"),
    # `sts audit list` filters (docs/audit-queries.md): each composite index serves "this
    # value, newest first, limit N" and a time window for it. Every index is one more insert
    # per exchange, so only the selective filters get one; outcome and issuer (a handful of
    # values) walk the time index.
    Index("ix_audit_events_identity", "identity", "time"),
    Index("ix_audit_events_request_id", "request_id"),
    Index("ix_audit_events_grant", "grant", "time"),
    Index("ix_audit_events_granted_target", "granted_target", "time"),
    Index("ix_audit_events_client_id", "client_id", "time"),
    # Partial: an issued record has no reason, so the exchange that succeeds never pays for it.
    Index("ix_audit_events_reason", "reason", "time", sqlite_where=text("reason IS NOT NULL"),
          postgresql_where=text("reason IS NOT NULL")),
)

# Usage counters for `sts inventory` (sts/store/usage.py): one row per (UTC day, identity,
# issuer, client, grant, target, granted scope set, outcome, reason), upserted by the group-
# commit writer in the transaction of the audit records it counts. ``key`` is the SHA-256 of
# those fields, so the one unique index stays small whatever the length of an identity.
usage_counts = Table(
    "usage_counts",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("day", Integer, nullable=False),  # days since 1970-01-01 UTC
    Column("identity", Text, nullable=False),
    Column("issuer", Text, nullable=False),  # "" when unknown
    Column("client_id", Text, nullable=False),  # "" for a public client
    Column("grant", Text, nullable=False),  # "" when no grant applied
    Column("target", Text, nullable=False),  # the granted target; "" for a refusal
    Column("scopes", Text, nullable=False),  # JSON array of the granted scopes, as audited
    Column("outcome", String(16), nullable=False),  # issued | denied | error | audit_allow
    Column("reason", Text, nullable=False),  # "" for an issued token
    Column("count", BigInteger, nullable=False),
    Column("first_seen", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
    Index("ix_usage_counts_day", "day"),
)

# One-time identifiers: a subject token's jti per issuer, a client assertion's jti (RFC 7523 §3).
replay_guard = Table(
    "replay_guard",
    metadata,
    Column("namespace", String(128), primary_key=True),
    Column("jti", String(256), primary_key=True),
    Column("expires_at", Double, nullable=False),
    Index("ix_replay_guard_expires_at", "expires_at"),
)

# One row per running broker process: the KEKs it holds, so that a key is promoted (or the keys
# re-encrypted) only when every running replica can open the result (sts/tokens/keyplan.py).
broker_replicas = Table(
    "broker_replicas",
    metadata,
    Column("replica_id", String(128), primary_key=True),
    Column("kek_ids", Text, nullable=False),  # space-separated KEK ids
    Column("started_at", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
)

# Kill switches (docs/operations.md#token-lifecycle): an operator stops new exchanges for an
# identity, issuer, client or grant. Rows are never deleted: a lift sets ``lifted_at``, so the
# table is also the record of who killed and lifted what, when and why.
kill_switches = Table(
    "kill_switches",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # identity | issuer | client | grant
    Column("value", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("until", Double, nullable=True),  # None: until lifted
    Column("reason", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("lifted_at", Double, nullable=True),
    Column("lifted_by", Text, nullable=True),
    Column("lift_reason", Text, nullable=True),
    Index("ix_kill_switches_lifted_at", "lifted_at"),
)

# One counter per kind of lifecycle state that replicas hold in memory ("kills",
# "revocations"): bumped in the transaction that changes the state, so a replica polls one row
# to learn whether its view is stale.
lifecycle_versions = Table(
    "lifecycle_versions",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

# One row per block of Token Status List indices reserved by a broker process: block ``id``
# covers the indices from ``(id - 1) * size`` (modulo the list capacity), so replicas never
# hand out the same index without reading anything per request.
status_list_blocks = Table(
    "status_list_blocks",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("size", Integer, nullable=False),
    Column("reserved_at", Double, nullable=False),
)

# Just-in-time approvals (docs/approvals.md): one row per approval request, from the refusal
# that created it to the approver's decision and a possible revocation; never deleted, so the
# table is also the record of who asked for what and who decided, when and why.
approvals = Table(
    "approvals",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("status", String(16), nullable=False),  # pending | approved | denied | revoked | expired
    # SHA-256 of the canonical JSON of who asked (identity, issuer, client, actor) and what.
    Column("fingerprint", String(64), nullable=False),
    # The fingerprint while the request is pending, else NULL: at most one pending request per
    # fingerprint, even when replicas record the same request at the same moment.
    Column("pending_key", String(64), nullable=True, unique=True),
    Column("identity", Text, nullable=False),
    Column("issuer_name", Text, nullable=False),
    Column("client_id", Text, nullable=True),
    Column("actor_identity", Text, nullable=True),
    Column("grant", Text, nullable=True),
    Column("target", Text, nullable=False),
    Column("request", Text, nullable=False),  # canonical JSON: target, scopes[, authorization_details]
    Column("elevated", Text, nullable=False),  # JSON list: what in it needs approval
    Column("request_id", Text, nullable=False),  # the refused exchange's request id
    Column("requested_at", Double, nullable=False),
    # When the current status stops counting: a pending request lapses, an approval's window
    # ends, a denial stops being answered.
    Column("expires_at", Double, nullable=False),
    Column("max_window", Integer, nullable=False),
    Column("decided_at", Double, nullable=True),
    Column("decided_by", Text, nullable=True),
    Column("decision_reason", Text, nullable=True),
    Column("revoked_at", Double, nullable=True),
    Column("revoked_by", Text, nullable=True),
    Column("revoke_reason", Text, nullable=True),
    Index("ix_approvals_fingerprint", "fingerprint"),
    Index("ix_approvals_identity", "identity"),
    Index("ix_approvals_status", "status"),
)

# Every trust configuration a broker loaded (docs/trust-changes.md#stored-versions): audit records name
# a version (``audit_events.config_version``, the first 12 hex digits of ``sha256``), and this
# row holds the exact document that decided. One row per document, written at load and reload
# (never on the request path); replicas loading the same document meet on the primary key.
config_versions = Table(
    "config_versions",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("version", String(16), nullable=False),
    Column("kind", String(16), nullable=False),  # file | directory (sts.config.sources)
    Column("source", Text, nullable=False),  # the path it was loaded from
    Column("document", Text, nullable=False),
    Column("first_loaded_at", Double, nullable=False),
    Column("last_loaded_at", Double, nullable=False),
    Column("loaded_by", Text, nullable=False),  # the replica that loaded it last
    Index("ix_config_versions_version", "version"),
    Index("ix_config_versions_last_loaded_at", "last_loaded_at"),
)
