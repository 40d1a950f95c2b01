"""Plain values handed to the storage layer: what is written, never how.

Field names and meaning follow the shared contracts ("Audit record fields", "Issued token
record"); times are float epoch seconds. No record ever holds a raw token or private key: tokens
appear as SHA-256 hex digests, private keys only as ciphertext sealed by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One audit event, written on every path of a token request (issued, denied, error)."""

    time: float
    request_id: str
    outcome: str  # "issued" | "denied" | "error"
    error: str | None = None  # RFC 6749 §5.2 error code
    reason: str | None = None  # internal, machine-readable code
    client_id: str | None = None
    issuer: str | None = None  # configured issuer name
    external_subject: str | None = None
    identity: str | None = None
    grant: str | None = None
    mode_notes: tuple[str, ...] = ()
    requested_targets: tuple[str, ...] = ()
    granted_target: str | None = None
    requested_scopes: tuple[str, ...] | None = None  # None: the request sent no `scope`
    granted_scopes: tuple[str, ...] = ()
    lifetime: int | None = None
    issued_jti: str | None = None
    subject_token_sha256: str | None = None
    actor_identity: str | None = None
    config_version: str | None = None
    detail: str | None = None  # private text, never sent to the caller
    # Refusals this record stands for: more than 1 only for a coalesced summary
    # (sts.ops.coalesce), which is inserted by sts.store.retention.insert_audit_records; the
    # group-commit writer leaves the column to its database default of 1.
    count: int = 1
    trace_id: str | None = None  # W3C trace id (32 hex digits) when tracing is on
    # Structured facts of the decision that have no column of their own (a delegation chain,
    # granted authorization details, an upstream provider, what explaining a refusal needs),
    # one key per capability; stored as a JSON object, capped by sts.audit.
    context: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedTokenRecord:
    """One token the broker signed (RFC 8693 §2.2.1 response), keyed by its ``jti``."""

    jti: str
    identity: str
    issuer_name: str
    audience: str
    scopes: str  # space-joined, as in the RFC 6749 §3.3 `scope` parameter
    issued_at: float
    expires_at: float
    subject_token_sha256: str
    client_id: str | None = None
    actor_identity: str | None = None
    signing_kid: str
    parent_jti: str | None = None  # the subject token's jti when this broker issued it (lineage)
    status_idx: int | None = None  # its Token Status List index, when it carries a `status` claim


@dataclass(frozen=True, slots=True)
class SigningKeyRow:
    """One signing key of the broker. ``state`` is "next" (published, signs nothing), "active"
    (signs until ``not_after``) or "retired" (published until ``publish_until``)."""

    kid: str
    alg: str
    state: str
    public_jwk: dict[str, Any]
    private_key_ciphertext: bytes
    kek_id: str
    created_at: float
    activated_at: float | None
    retired_at: float | None
    not_after: float
    publish_until: float | None


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """One running broker process's report of the key-encryption keys it holds, refreshed by
    its key loop. ``expires_at`` is when the report stops counting if it is not renewed."""

    replica_id: str
    kek_ids: frozenset[str]
    started_at: float
    last_seen: float
    expires_at: float
