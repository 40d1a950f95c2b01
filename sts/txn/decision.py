"""Transaction tokens: who may get one, with what, and what it says (pure).

Follows draft-ietf-oauth-transaction-tokens-10 (29 July 2026), the newest revision found.

Request (§"Txn-Token Request"): ``requested_token_type`` is
``urn:ietf:params:oauth:token-type:txn_token``; ``audience`` "MUST be set to the Trust Domain
name"; ``scope`` is REQUIRED; ``request_context`` and ``request_details`` are JSON objects.

Processing (§"Txn-Token Request Processing"): the TTS "MUST validate the requesting workload
client authentication and determine if that workload is authorized to obtain the Txn-Tokens
with the requested value(s)" — only an authenticated registered client is a requesting
workload here, and only grants with ``transaction_tokens`` issue them (deny by default). The
TTS is authoritative for ``rctx`` (from ``request_context``, checked against a JSON Schema) and
``tctx`` (from ``request_details``, checked against the grant's JSON Schema; refused when the
grant declares none).

Scope (§"Scope Processing"): "The TTS MUST ensure that the requested scope of the Txn-Token is
equal or less than the scope(s) associated with the original subject_token"; (§"Unknown
subject_token scope") "MUST NOT treat an unknown scope as unconstrained". The scope associated
with a subject token is its ``scope`` claim when it has one, and the grant's configured scopes
in every case (the configuration is the trusted source for workload tokens without scopes):
the requested scope must lie within both.

Replacement (§"Txn-Token as a subject_token"): the TTS "MUST NOT enable modification to
asserted values that expand the scope of permitted actions", "MUST NOT modify txn, sub, and aud
values", "MUST NOT issue a new Txn-Token when the Txn-Token being replaced has expired", and
"MUST maintain the Call Chain of workloads that requested the Txn-Token being replaced". Here a
replacement keeps ``txn``, ``sub``, ``aud``, ``tctx`` and ``rctx`` exactly, takes a scope within
the replaced token's, never outlives it, names the new requester in ``req_wl`` and the earlier
requesters, oldest first, in ``req_wl_chain`` (the draft leaves the mechanism open). The draft
also allows "additional asserted values"; this broker refuses ``request_context`` and
``request_details`` on a replacement, because it cannot tell whether an added value narrows or
widens what downstream services permit.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from sts.trust.authz_details import compile_schema, schema_problem

if TYPE_CHECKING:
    from sts.config.models import BrokerConfig

TXN_TOKEN_TYP: Final = "txntoken+jwt"
TXN_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:txn_token"
# RFC 8693 §2.2.1: "N_A" when the issued token is not an access token (the draft's MUST).
TXN_TOKEN_TYPE_N_A: Final = "N_A"
# A replacement's subject was verified by us, not by a configured issuer: the name audit
# records and kill switches see as its issuer.
REPLACEMENT_ISSUER_NAME: Final = "txn-token"
MAX_CHAIN: Final = 16

#: rctx when no schema is configured: the draft's examples (§"Request Context").
DEFAULT_REQUEST_CONTEXT_SCHEMA: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {
        "req_ip": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
        "authn": {"type": "string", "minLength": 1, "maxLength": 256},
        "transport": {"type": "string", "minLength": 1, "maxLength": 64},
    },
    "additionalProperties": False,
}

Error = Literal["invalid_request", "invalid_target", "invalid_scope", "unauthorized_client"]


@dataclass(frozen=True)
class TxnAllow:
    """Issue a transaction token with these values. ``prior`` is the replaced token's claims."""

    grant: str | None
    sub: str
    txn: str
    scopes: tuple[str, ...]
    req_wl: str
    req_wl_chain: tuple[str, ...]
    tctx: Mapping[str, Any] | None
    rctx: Mapping[str, Any] | None
    lifetime: int
    replacement: bool


@dataclass(frozen=True)
class TxnDeny:
    error: Error
    reason: str
    grant: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class _Grant:
    name: str
    scopes: frozenset[str]
    clients: frozenset[str] | None
    details: Any  # a compiled JSON Schema validator, or None


def _scope_set(claims: Mapping[str, Any]) -> frozenset[str] | None | Literal[False]:
    """The subject token's ``scope`` claim as a set; None when absent; False when unusable."""
    if "scope" not in claims:
        return None
    raw = claims["scope"]
    if not isinstance(raw, str):
        return False
    return frozenset(s for s in raw.split(" ") if s)


@dataclass(frozen=True)
class CompiledTransactionTokens:
    """The ``transaction_tokens`` configuration, compiled. Invariant: immutable; ``issue`` and
    ``replace`` are pure functions of their arguments."""

    trust_domain: str
    lifetime: int
    algorithm: str
    replacement_clients: frozenset[str]
    context: Any
    grants: Mapping[str, _Grant] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: BrokerConfig) -> CompiledTransactionTokens | None:
        txn = cfg.transaction_tokens
        if txn is None:
            return None
        grants = {
            g.name: _Grant(
                g.name,
                frozenset(g.transaction_tokens.scopes),
                frozenset(g.transaction_tokens.clients) if g.transaction_tokens.clients is not None else None,
                compile_schema(g.transaction_tokens.request_details_schema)
                if g.transaction_tokens.request_details_schema is not None else None,
            )
            for g in cfg.grants
            if g.transaction_tokens is not None and g.mode == "enforce"
        }
        return cls(
            trust_domain=txn.trust_domain,
            lifetime=txn.lifetime,
            algorithm=cfg.tokens.algorithm,
            replacement_clients=frozenset(txn.replacement_clients),
            context=compile_schema(txn.request_context_schema or DEFAULT_REQUEST_CONTEXT_SCHEMA),
            grants=grants,
        )

    def _audience(self, audiences: Sequence[str], resources: Sequence[str], *, required: bool) -> TxnDeny | None:
        targets = tuple(dict.fromkeys((*audiences, *resources)))
        if not targets:
            return TxnDeny("invalid_target", "txn_audience_missing") if required else None
        if targets != (self.trust_domain,):
            return TxnDeny("invalid_target", "txn_audience_not_trust_domain")
        return None

    def issue(
        self,
        *,
        matched_grants: Sequence[str],
        identity: str,
        client_id: str | None,
        audiences: Sequence[str],
        resources: Sequence[str],
        scopes: Sequence[str] | None,
        subject_claims: Mapping[str, Any],
        request_context: Mapping[str, Any] | None,
        request_details: Mapping[str, Any] | None,
        new_txn: str | None = None,
    ) -> TxnAllow | TxnDeny:
        """A first transaction token for ``identity`` (matched by ``matched_grants``, in file
        order), requested by the authenticated client ``client_id``."""
        if client_id is None:
            return TxnDeny("invalid_request", "txn_client_unauthenticated")
        refused = self._audience(audiences, resources, required=True)
        if refused is not None:
            return refused
        if not scopes:
            return TxnDeny("invalid_request", "txn_scope_missing")
        candidates = [self.grants[n] for n in matched_grants if n in self.grants]
        if not candidates:
            return TxnDeny("invalid_request", "txn_no_grant")
        allowed = [g for g in candidates if g.clients is None or client_id in g.clients]
        if not allowed:
            return TxnDeny("unauthorized_client", "txn_client_not_allowed", candidates[0].name)
        wanted = frozenset(scopes)
        grant = next((g for g in allowed if wanted <= g.scopes), None)
        if grant is None:
            return TxnDeny("invalid_scope", "txn_scope_not_allowed", allowed[0].name)
        subject_scopes = _scope_set(subject_claims)
        if subject_scopes is False:
            return TxnDeny("invalid_scope", "txn_subject_scope_unusable", grant.name)
        if subject_scopes is not None and not wanted <= subject_scopes:
            return TxnDeny("invalid_scope", "txn_scope_beyond_subject", grant.name)
        rctx = None
        if request_context is not None:
            problem = schema_problem(self.context, request_context)
            if problem is not None:
                return TxnDeny("invalid_request", "txn_request_context_invalid", grant.name, problem)
            rctx = dict(request_context)
        tctx = None
        if request_details is not None:
            if grant.details is None:
                return TxnDeny("invalid_request", "txn_request_details_not_allowed", grant.name)
            problem = schema_problem(grant.details, request_details)
            if problem is not None:
                return TxnDeny("invalid_request", "txn_request_details_invalid", grant.name, problem)
            tctx = dict(request_details)
        return TxnAllow(
            grant=grant.name, sub=identity, txn=new_txn or str(uuid.uuid4()), scopes=tuple(dict.fromkeys(scopes)),
            req_wl=client_id, req_wl_chain=(), tctx=tctx, rctx=rctx, lifetime=self.lifetime, replacement=False,
        )

    def replace(
        self,
        prior: Mapping[str, Any],
        *,
        client_id: str | None,
        audiences: Sequence[str],
        resources: Sequence[str],
        scopes: Sequence[str] | None,
        request_context: Mapping[str, Any] | None,
        request_details: Mapping[str, Any] | None,
    ) -> TxnAllow | TxnDeny:
        """A replacement for the verified transaction token ``prior`` (claims), which never
        widens it."""
        if client_id is None:
            return TxnDeny("invalid_request", "txn_client_unauthenticated")
        if client_id not in self.replacement_clients:
            return TxnDeny("unauthorized_client", "txn_replacement_client_not_allowed")
        refused = self._audience(audiences, resources, required=False)
        if refused is not None:
            return refused
        if request_context is not None or request_details is not None:
            return TxnDeny("invalid_request", "txn_replacement_adds_context")
        txn, sub, req_wl = prior.get("txn"), prior.get("sub"), prior.get("req_wl")
        tctx, rctx = prior.get("tctx"), prior.get("rctx")
        chain = prior.get("req_wl_chain", [])
        prior_scopes = _scope_set(prior)
        if (not isinstance(txn, str) or not isinstance(sub, str) or not isinstance(req_wl, str) or not prior_scopes
                or not isinstance(chain, list) or not all(isinstance(c, str) for c in chain)
                or not isinstance(tctx, (dict, type(None))) or not isinstance(rctx, (dict, type(None)))):
            return TxnDeny("invalid_request", "txn_subject_claims_invalid")
        if len(chain) + 1 > MAX_CHAIN:
            return TxnDeny("invalid_request", "txn_replacement_chain_too_long")
        wanted = tuple(dict.fromkeys(scopes)) if scopes else tuple(s for s in prior["scope"].split(" ") if s)
        if not frozenset(wanted) <= prior_scopes:
            return TxnDeny("invalid_scope", "txn_replacement_widens_scope")
        return TxnAllow(
            grant=None, sub=sub, txn=txn, scopes=wanted, req_wl=client_id, req_wl_chain=(*chain, req_wl),
            tctx=tctx, rctx=rctx, lifetime=self.lifetime, replacement=True,
        )


def build_txn_claims(decision: TxnAllow, *, issuer: str, trust_domain: str, issued_at: int, expires_at: int,
                     jti: str) -> dict[str, Any]:
    """The claims of a transaction token (draft §"JWT Body Claims"): ``iat``, ``aud`` (the trust
    domain), ``exp``, ``txn``, ``sub``, ``scope`` and ``req_wl`` (REQUIRED), ``tctx`` and ``rctx``
    when there are any; ``iss`` (OPTIONAL, set so verifiers can find our keys) and ``jti`` (the
    issued-token record and revocation key)."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": trust_domain,
        "iat": issued_at,
        "exp": expires_at,
        "jti": jti,
        "txn": decision.txn,
        "sub": decision.sub,
        "scope": " ".join(decision.scopes),
        "req_wl": decision.req_wl,
    }
    if decision.req_wl_chain:
        claims["req_wl_chain"] = list(decision.req_wl_chain)
    if decision.tctx is not None:
        claims["tctx"] = dict(decision.tctx)
    if decision.rctx is not None:
        claims["rctx"] = dict(decision.rctx)
    return claims
