"""Claims of the access tokens we issue (RFC 9068 §2.2, RFC 8693 §4.1 ``act``, RFC 7519 §4.1).

Pure: everything that varies (time, ids, lifetimes) is passed in, so the exact claim set is
table-testable. RFC 9068 §2.2 requires ``iss``, ``exp``, ``aud``, ``sub``, ``client_id``,
``iat`` and ``jti``; we add ``nbf``, ``scope`` (always, possibly empty, so downstream checks
never guess) and the workload claim holding where the identity came from; ``cnf`` (RFC 7800
§3.1) when the token is sender-constrained (RFC 9449 §6.1, RFC 8705 §3.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ACCESS_TOKEN_TYP = "at+jwt"


@dataclass(frozen=True, slots=True)
class AccessTokenSpec:
    """What policy decided to issue. Invariant: ``expires_at > issued_at``."""

    issuer: str
    subject: str
    audience: str
    client_id: str
    scopes: tuple[str, ...]
    issued_at: int
    expires_at: int
    jti: str
    workload_claim: str
    external_issuer: str
    external_subject: str
    attributes: Mapping[str, Any]
    actor: str | None = None
    prior_act: Mapping[str, Any] | None = None
    # RFC 7800 §3.1 confirmation: ``jkt`` (RFC 9449 §6.1) and/or ``x5t#S256`` (RFC 8705 §3.1).
    cnf: Mapping[str, str] | None = None
    # Token Status List §6.1 (sts.lifecycle.statuslist): {"status_list": {"idx", "uri"}}.
    status: Mapping[str, Any] | None = None
    # RFC 9396 §9.1: the granted authorization details (sts.trust.authz_details).
    authorization_details: tuple[Mapping[str, Any], ...] | None = None
    # A client acting with its client authentication alone (a chain hop, sts.trust.delegation):
    # the current actor is named by RFC 8693 §4.3 `client_id` instead of `sub`.
    actor_client: str | None = None
    # The chain record (sts.trust.delegation.CHAIN_CLAIM) while delegation chains are on.
    chain: tuple[Mapping[str, str], ...] | None = None


def build_access_token_claims(spec: AccessTokenSpec) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": spec.issuer,
        "sub": spec.subject,
        # RFC 9068 §3: one audience; the broker never issues a token for two targets.
        "aud": spec.audience,
        "exp": spec.expires_at,
        "iat": spec.issued_at,
        "nbf": spec.issued_at,
        "jti": spec.jti,
        "client_id": spec.client_id,
        "scope": " ".join(spec.scopes),
        spec.workload_claim: {
            "issuer": spec.external_issuer,
            "subject": spec.external_subject,
            "attributes": dict(spec.attributes),
        },
    }
    if spec.actor is not None or spec.actor_client is not None:
        # RFC 8693 §4.1: the current actor is the top-level `act`; earlier actors nest inside.
        act: dict[str, Any] = {"sub": spec.actor} if spec.actor is not None else {"client_id": spec.actor_client}
        if spec.prior_act:
            act["act"] = dict(spec.prior_act)
        claims["act"] = act
    if spec.cnf:
        claims["cnf"] = dict(spec.cnf)
    if spec.status is not None:
        claims["status"] = dict(spec.status)
    if spec.authorization_details is not None:
        claims["authorization_details"] = [dict(d) for d in spec.authorization_details]
    if spec.chain is not None:
        claims["sts_chain"] = [dict(hop) for hop in spec.chain]
    return claims
