"""Run one token exchange through the server's pipeline without effects, and report why.

:func:`explain_exchange` parses the request with the server's parser
(``sts.protocol.parse_exchange_params``), builds the runtime with ``sts.runtime.build_runtime``
(keys fetched as the server fetches them, or the ``--jwks`` key set instead), and runs
``TokenExchanger.exchange`` with the recording twins of ``sts.explain.twins``. A refusal is
turned into the answer and the audit record exactly as the token endpoint does
(``sts.http.token.TokenEndpoint._refuse``): ``outcome``, ``error``, ``reason``, ``detail`` and the
notes. The report is a JSON-ready dict (:data:`REPORT_KEYS`); ``sts.explain.render`` prints it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sts.approvals.decision import EMPTY as NO_APPROVALS
from sts.approvals.gate import ApprovalGate
from sts.audit import AuditEvent
from sts.client_auth import PUBLIC, AuthenticatedClient
from sts.config.loader import LoadedConfig
from sts.errors import InvalidClient, OAuthError
from sts.exchange import TokenExchanger
from sts.protocol import GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT, parse_exchange_params
from sts.runtime import build_runtime
from sts.spiffe.bundle_source import BundleStore
from sts.spiffe.verifier import commit_bundles
from sts.subject.explain import claim_checks, claim_details, failed_token_check, token_checks
from sts.subject.fetch import Fetcher
from sts.subject.jwks import CachePolicy, StaticKeys
from sts.explain.twins import (
    DryRunAudit,
    DryRunSigner,
    DryRunStatusIndex,
    DryRunUpstreams,
    DryRunWriter,
    Recorder,
    RecordingJWKS,
    RecordingRuntime,
    TokenFacts,
)

# Outcomes and the exit codes of `sts explain` (docs/explain.md).
WOULD_ISSUE: Final = "would_issue"
WOULD_REFUSE: Final = "would_refuse"
UNDECIDED: Final = "undecided"  # the server would answer 5xx (keys unreachable, a failure)
EXIT_CODES: Final = {WOULD_ISSUE: 0, WOULD_REFUSE: 1, UNDECIDED: 3}

# What explain never does, said in every report.
NOT_DONE: Final = (
    "no token was signed or issued",
    "no audit record was written",
    "no one-time jti was spent",
    "kill switches, revocations and approvals were not consulted (they live in the database)",
    "the signing key's remaining life, which also caps the lifetime, was not applied",
)


@dataclass(frozen=True)
class ExplainInput:
    """One exchange request as ``sts explain`` was asked to explain it."""

    subject_token: str
    audiences: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    scope: str | None = None
    actor_token: str | None = None
    client_id: str | None = None
    subject_token_type: str = TOKEN_TYPE_JWT
    actor_token_type: str = TOKEN_TYPE_JWT


def _params(req: ExplainInput) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {
        "grant_type": [GRANT_TYPE_TOKEN_EXCHANGE],
        "subject_token": [req.subject_token],
        "subject_token_type": [req.subject_token_type],
    }
    if req.audiences:
        params["audience"] = list(req.audiences)
    if req.resources:
        params["resource"] = list(req.resources)
    if req.scope is not None:
        params["scope"] = [req.scope]
    if req.actor_token is not None:
        params["actor_token"] = [req.actor_token]
        params["actor_token_type"] = [req.actor_token_type]
    return params


def _client(loaded: LoadedConfig, client_id: str | None) -> AuthenticatedClient:
    """The caller, assumed authenticated (explain holds no client secret): refused as the
    server would refuse it when the configuration has no such client or wants one."""
    clients = loaded.config.clients
    if client_id is None:
        if not clients.allow_public:
            raise InvalidClient(reason="client_authentication_required",
                                detail="the configuration does not allow public clients: pass --client-id")
        return PUBLIC
    if client_id not in {c.client_id for c in clients.registered}:
        raise InvalidClient(reason="unknown_client", detail=f"no registered client {client_id[:200]!r}")
    return AuthenticatedClient(client_id=client_id, method="assumed by sts explain")


async def explain_exchange(
    loaded: LoadedConfig,
    request: ExplainInput,
    *,
    jwks: Mapping[str, Any] | None = None,
    now: float | None = None,
    dev_mode: bool = False,
    fetcher: Fetcher | None = None,
) -> dict[str, Any]:
    """Explain ``request`` against ``loaded``. ``jwks``: verify every issuer's tokens with this
    JWK Set instead of fetching keys; ``now``: the time to decide at (default: the clock)."""
    at = time.time() if now is None else now
    clock = (lambda: at) if now is not None else time.time
    rec = Recorder(now=at)
    own_fetcher = fetcher is None
    fetcher = fetcher or Fetcher()
    cache = RecordingJWKS(fetcher, policy=CachePolicy(lookup_wait=15.0), clock=clock)
    cache.recorder = rec
    bundles = BundleStore(clock=clock)
    event = AuditEvent(time=at, request_id="explain", config_version=loaded.version)
    error: OAuthError | None = None
    response: Any = None
    try:
        async def no_claim(namespace: str, jti: str, until: float) -> bool:
            return True  # client assertions are not checked by explain

        runtime = build_runtime(loaded, cache, no_claim, dev_mode=dev_mode, clock=clock, bundles=bundles)
        # SPIFFE trust domains' bundles: read or fetched as the server does at start.
        commit_bundles(bundles, runtime.pending_bundles)
        if runtime.spiffe is not None:
            await bundles.start()
        if jwks is not None:
            for keys_id in runtime.key_sources.values():
                cache.register(keys_id, StaticKeys(dict(jwks)))
        recording = RecordingRuntime(runtime, rec)
        exchanger = TokenExchanger(
            runtime=lambda: recording,  # type: ignore[arg-type,return-value]
            signer=DryRunSigner(rec, jwks),  # type: ignore[arg-type]
            audit=DryRunAudit(rec),  # type: ignore[arg-type]
            writer=DryRunWriter(rec),  # type: ignore[arg-type]
            clock=clock,
            status_index=DryRunStatusIndex(rec),  # type: ignore[arg-type]
            # Approvals live in the database: the gate's own twin answers from an empty snapshot
            # and never records a request (an elevated request is refused as not yet approved).
            approvals=ApprovalGate(lambda: NO_APPROVALS, None, clock=clock, record=False),  # type: ignore[arg-type]
            # A target naming a model provider: which upstream would answer, without calling it.
            upstreams=DryRunUpstreams(rec, clock),  # type: ignore[arg-type]
        )
        try:
            client = _client(loaded, request.client_id)
            event.client_id = client.client_id
            parsed = parse_exchange_params(_params(request))
            response = await exchanger.exchange(parsed, client, event)
        except OAuthError as exc:
            error = exc
            # As the token endpoint's _refuse records a refusal.
            event.outcome = "error" if exc.status >= 500 else "denied"
            event.error = exc.error
            event.reason = exc.reason
            event.detail = exc.detail
            event.mode_notes.extend(exc.notes)
    finally:
        await bundles.stop()
        await cache.stop()
        if own_fetcher:
            await fetcher.aclose()
    return _report(loaded, request, rec, event, error, response, jwks is not None)


def explain_exchange_sync(loaded: LoadedConfig, request: ExplainInput, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(explain_exchange(loaded, request, **kwargs))


# --- the report --------------------------------------------------------------------------------


def _token_report(facts: TokenFacts, now: float) -> dict[str, Any]:
    header = facts.header or {}
    claims = facts.unverified_claims or {}
    out: dict[str, Any] = {"role": facts.role}
    trust = facts.trust
    if trust is not None:
        out["issuer"] = {
            "name": trust.name,
            "why": f"the token's iss {claims.get('iss')!r} equals the configured issuer exactly",
            "algorithms": sorted(trust.algorithms),
            "audiences": sorted(trust.rules.audiences),
        }
    elif facts.trust_domain is not None:
        out["issuer"] = {"name": facts.trust_domain, "why": "SPIFFE trust domain of the SVID's SPIFFE ID"}
    elif facts.kind == "untrusted_issuer":
        out["issuer"] = {"name": None, "why": f"no configured issuer has iss {str(claims.get('iss'))[:200]!r}"}
    out["key"] = dict(facts.key) if facts.key is not None else {"kid": header.get("kid"), "alg": header.get("alg")}
    if facts.key_error:
        out["key"]["error"] = facts.key_error
    details = {
        "structure": "compact JWS, JSON header and claims",
        "issuer": (f"SPIFFE ID {str(claims.get('sub'))[:200]!r}" if trust is None and facts.trust_domain is not None
                   else f"iss {str(claims.get('iss'))[:200]!r}"),
        "header": f"alg {header.get('alg')!r}" + (f" in {sorted(trust.algorithms)!r}" if trust else "")
                  + (f", typ {trust.expected_typ!r}" if trust and trust.expected_typ else ""),
        "key": f"kid {header.get('kid')!r}" + (f": {facts.key_error}" if facts.key_error else ""),
        "signature": f"{header.get('alg')} over the header and claims",
    }
    checks = [c.as_dict() for c in token_checks(facts.kind, facts.reason, details)]
    if trust is not None:
        reached = facts.kind in (None, "claims") or failed_token_check(facts.kind, facts.reason) is None
        failure = facts.claim_error if facts.kind == "claims" else None
        checks += [c.as_dict() for c in claim_checks(failure, claim_details(claims, trust.rules, now), reached=reached)]
    elif facts.trust_domain is not None:
        # JWT-SVIDs: the SPIFFE verifier reports its claim checks as one verdict.
        result = "failed" if facts.kind == "claims" else "ok" if facts.kind is None or failed_token_check(
            facts.kind, facts.reason) is None else "not_checked"
        checks.append({"check": "claims", "result": result, "detail": f"{facts.reason}" if result == "failed" else
                       "aud, exp, and the SPIFFE ID of the trust domain"})
    out["checks"] = checks
    if facts.kind is not None:
        out["refused"] = {"check": facts.kind, "reason": facts.reason}
    out["verified"] = facts.subject is not None
    # Claims: the token the operator handed in; marked unverified unless the signature held.
    out["claims"] = claims
    if facts.mapping is not None:
        m = facts.mapping
        out["mapping"] = {
            "issuer": m.issuer_name,
            "preset": m.preset,
            "rules": [r.as_dict() for r in m.rules],
            "identity_source": m.identity_source,
        }
    if facts.mapping_denied is not None:
        d = facts.mapping_denied
        out.setdefault("mapping", {})["denied"] = {"reason": d.reason, "rule": d.rule_location, "message": d.message}
    if facts.identity is not None:
        out["identity"] = facts.identity.identity
        out["attributes"] = dict(facts.identity.attributes)
        out["notes"] = list(facts.mapping_notes)
    return out


def _report(loaded: LoadedConfig, request: ExplainInput, rec: Recorder, event: AuditEvent,
            error: OAuthError | None, response: Any, offline: bool) -> dict[str, Any]:
    if error is None:
        outcome = WOULD_ISSUE
    elif error.status >= 500:
        outcome = UNDECIDED
    else:
        outcome = WOULD_REFUSE
    report: dict[str, Any] = {
        "outcome": outcome,
        "config": {"path": str(loaded.path) if loaded.path else None, "version": loaded.version},
        "at": rec.now,
        "keys": "the --jwks file" if offline else "as the server gets them (the configured key set, discovery or jwks_uri)",
        "request": {
            "audiences": list(request.audiences),
            "resources": list(request.resources),
            "scope": request.scope,
            "client_id": request.client_id,
            "actor_token": request.actor_token is not None,
        },
    }
    if error is not None:
        report["refusal"] = {
            "status": error.status,
            "answer": error.body(),  # what the caller would see, and all it would see
            "reason": error.reason,
            "detail": error.detail,
        }
    if rec.client_checked is not None:
        report["client"] = {"client_id": rec.client_checked[0], "may_exchange": rec.client_checked[1]}
    report["tokens"] = [_token_report(f, rec.now) for f in rec.tokens.values()]
    trace = rec.trace
    if trace is not None:
        report["target"] = trace.target
        report["grants"] = [g.as_dict() for g in trace.grants]
        report["decision"] = _decision(rec.decision)
        # The trace reached the decision by itself; it must be the server's (tests pin it).
        report["trace_agrees"] = rec.decision is not None and trace.agrees_with(rec.decision)
    if rec.jtis:
        report["one_time_jti"] = [{"namespace": j["namespace"], "jti": j["jti"], "spent": False} for j in rec.jtis]
    if error is None and rec.claims is not None:
        report["token"] = {
            "claims": rec.claims,
            "lifetime": event.lifetime,
            "algorithm": rec.signing_key["alg"] if rec.signing_key else None,
            "token_type": getattr(response, "token_type", None),
            "status_list_index": rec.status_index,
        }
    report["notes"] = list(event.mode_notes)
    report["audit"] = event.log_fields()
    report["not_done"] = list(NOT_DONE)
    return report


def _decision(decision: Any) -> dict[str, Any] | None:
    if decision is None:
        return None
    if hasattr(decision, "error"):
        return {"allow": False, "error": decision.error, "reason": decision.reason, "grant": decision.grant}
    return {"allow": True, "grant": decision.grant, "target": decision.target, "scopes": list(decision.scopes),
            "lifetime": decision.lifetime, "algorithm": decision.algorithm}
