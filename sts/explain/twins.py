"""Recording, side-effect-free twins of what the exchange pipeline calls.

Each twin has the interface of the real part and either delegates to it while recording what
went in and out (the runtime, the verifier, the JWKS cache, the SPIFFE trust), or stands in for
a part with side effects and records what it would have done instead (the writer's one-time
``jti`` claim, the audit sink, the signer, the status-list allocator). Invariant: nothing a twin
does is visible outside the process: no database row, no spent ``jti``, no signed token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sts import jose
from sts.audit import AuditEvent
from sts.store.records import IssuedTokenRecord
from sts.subject.claims import ClaimError, validate_claims
from sts.subject.jwks import JWKSCache
from sts.subject.model import VerifiedSubject
from sts.subject.oidc import AssertionTerms, IssuerKeysUnavailable, IssuerTrust, OIDCVerifier, SubjectRejected
from sts.tokens.keyring import ActiveKey
from sts.tokens.claims import ACCESS_TOKEN_TYP
from sts.tokens.signer import SignedToken
from sts.trust.explain import DecisionTrace, MappingTrace, explain_mapping
from sts.trust.mapping import MappingDenied
from sts.trust.policy import Allow, Deny

DRY_RUN_KID = "explain-dry-run"


@dataclass
class TokenFacts:
    """One presented token (subject or actor) as the verifier saw it."""

    role: str
    header: dict[str, Any] | None = None
    unverified_claims: dict[str, Any] | None = None
    issuer_name: str | None = None
    trust: IssuerTrust | None = None
    trust_domain: str | None = None
    key: dict[str, Any] | None = None
    key_error: str | None = None
    kind: str | None = None  # the SubjectRejected kind, when refused
    reason: str | None = None
    claim_error: str | None = None  # ClaimError reason[:claim] of a claims refusal
    subject: VerifiedSubject | None = None
    mapping: MappingTrace | None = None
    mapping_denied: MappingDenied | None = None
    identity: Any = None
    mapping_notes: tuple[str, ...] = ()


@dataclass
class Recorder:
    """Everything the twins observed during one run of the pipeline, in order."""

    now: float
    tokens: dict[str, TokenFacts] = field(default_factory=dict)
    current: TokenFacts | None = None
    client_checked: tuple[str, bool] | None = None
    decision: Allow | Deny | None = None
    trace: DecisionTrace | None = None
    jtis: list[dict[str, Any]] = field(default_factory=list)
    signing_key: dict[str, Any] | None = None
    claims: dict[str, Any] | None = None
    status_index: bool = False
    event: AuditEvent | None = None
    issued: IssuedTokenRecord | None = None

    def begin(self, token: str) -> TokenFacts:
        role = "subject" if "subject" not in self.tokens else "actor"
        facts = TokenFacts(role)
        try:
            peek = jose.unsafe_decode(token)
            facts.header, facts.unverified_claims = dict(peek.header), dict(peek.claims)
        except jose.JOSEError:
            pass
        self.tokens[role] = facts
        self.current = facts
        return facts


class RecordingJWKS(JWKSCache):
    """The server's key cache (fetching as the server does, or static keys given with
    ``--jwks``), noting which key each lookup found."""

    recorder: Recorder | None = None

    async def lookup(self, issuer_name: str, kid: str | None, alg: str) -> jose.PublicKey:
        facts = self.recorder.current if self.recorder is not None else None
        try:
            key = await super().lookup(issuer_name, kid, alg)
        except Exception as exc:
            if facts is not None:
                state = self.status().get(issuer_name, {})
                facts.key_error = f"{type(exc).__name__}" + (f" (last fetch error: {state['last_error']})"
                                                              if state.get("last_error") else "")
            raise
        if facts is not None:
            facts.key = {"kid": key.kid, "alg": alg, "kty": getattr(key, "kty", None), "requested_kid": kid}
        return key


class RecordingVerifier:
    """Delegates to the real ``OIDCVerifier`` and records the token, the issuer picked and
    the outcome."""

    def __init__(self, inner: OIDCVerifier, recorder: Recorder) -> None:
        self._inner = inner
        self._rec = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def trusts(self, iss: str) -> bool:
        return self._inner.trusts(iss)

    def replay_window(self, issuer_name: str) -> int | None:
        return self._inner.replay_window(issuer_name)

    async def verify(self, token: str, *, assertion: AssertionTerms | None = None) -> VerifiedSubject:
        facts = self._rec.begin(token)
        iss = (facts.unverified_claims or {}).get("iss")
        facts.trust = self._inner.trust_for(iss)
        facts.issuer_name = facts.trust.name if facts.trust is not None else None
        try:
            subject = await self._inner.verify(token, assertion=assertion)
        except SubjectRejected as exc:
            facts.kind, facts.reason = exc.kind, exc.reason
            if exc.kind == "claims" and facts.trust is not None and facts.unverified_claims is not None:
                # The verifier keeps only the reason; the same pure check names the claim.
                try:
                    validate_claims(facts.unverified_claims, facts.trust.rules, self._rec.now)
                except ClaimError as err:
                    facts.claim_error = f"{err.reason}:{err.detail}" if err.reason == "claim_type" else err.reason
            raise
        except IssuerKeysUnavailable:
            facts.kind, facts.reason = "signature", "issuer_keys_unavailable"
            raise
        facts.subject = subject
        return subject


class RecordingSpiffe:
    """Delegates to the SPIFFE trust (JWT-SVIDs, X.509-SVIDs) and records the outcome."""

    def __init__(self, inner: Any, recorder: Recorder) -> None:
        self._inner = inner
        self._rec = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def verify_jwt(self, token: str) -> Any:
        facts = self._rec.begin(token)
        return await self._observe(facts, self._inner.verify_jwt(token))

    async def verify_x509(self, token: str, peer: Any) -> Any:
        facts = self._rec.begin(token)
        return await self._observe(facts, self._inner.verify_x509(token, peer))

    async def _observe(self, facts: TokenFacts, pending: Any) -> Any:
        try:
            subject = await pending
        except SubjectRejected as exc:
            facts.kind, facts.reason = exc.kind, exc.reason
            facts.trust_domain = exc.issuer_name
            raise
        except IssuerKeysUnavailable as exc:
            facts.kind, facts.reason, facts.trust_domain = "signature", "issuer_keys_unavailable", exc.issuer_name
            raise
        facts.subject = subject
        facts.trust_domain = subject.issuer_name
        facts.issuer_name = subject.issuer_name
        return subject


class RecordingRuntime:
    """The compiled configuration the pipeline runs against, observed: every call goes to the
    real runtime (``sts.runtime.BrokerRuntime``); attributes it does not intercept pass
    through, so steps added to the pipeline later run unchanged."""

    def __init__(self, inner: Any, recorder: Recorder) -> None:
        self._inner = inner
        self._rec = recorder
        self.verifier = RecordingVerifier(inner.verifier, recorder)
        self.spiffe = RecordingSpiffe(inner.spiffe, recorder) if inner.spiffe is not None else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def client_may_exchange(self, client_id: str) -> bool:
        allowed = bool(self._inner.client_may_exchange(client_id))
        self._rec.client_checked = (client_id, allowed)
        return allowed

    def client_may_use(self, grant_type: str, client_id: str) -> bool:
        # Step 1 asks by grant type; explain runs token exchange, so this is "may exchange".
        allowed = bool(self._inner.client_may_use(grant_type, client_id))
        self._rec.client_checked = (client_id, allowed)
        return allowed

    def map_identity(self, subject: VerifiedSubject) -> Any:
        facts = self._rec.current
        mappings = getattr(self._inner.trust, "mappings", {})
        if facts is not None and subject.issuer_name in mappings and (
                self._inner.spiffe is None or not self._inner.spiffe.handles(subject.issuer_name)):
            facts.mapping = explain_mapping(mappings[subject.issuer_name], subject)
        try:
            identity, notes = self._inner.map_identity(subject)
        except MappingDenied as exc:
            if facts is not None:
                facts.mapping_denied = exc
            raise
        if facts is not None:
            facts.identity, facts.mapping_notes = identity, tuple(notes)
        return identity, notes

    def decide(self, **kwargs: Any) -> Allow | Deny:
        decision = self._inner.decide(**kwargs)
        self._rec.decision = decision
        self._rec.trace = self._inner.explain_decision(**kwargs)
        return decision


class DryRunWriter:
    """The group-commit writer's one-time ``jti`` claim, not performed: the claim is recorded
    and answered as a first use, so the explained token stays usable."""

    def __init__(self, recorder: Recorder) -> None:
        self._rec = recorder

    async def claim_once(self, namespace: str, jti: str, expires_at: float, *, now: float | None = None) -> bool:
        self._rec.jtis.append({"namespace": namespace, "jti": jti[:256], "until": expires_at})
        return True


class DryRunAudit:
    """The audit sink, not writing: keeps the event (and issued-token row) it was handed."""

    def __init__(self, recorder: Recorder) -> None:
        self._rec = recorder

    async def record(self, event: AuditEvent, issued: IssuedTokenRecord | None = None) -> None:
        self._rec.event = event
        self._rec.issued = issued


class DryRunSigner:
    """The signer, not signing: records the claims and the algorithm of the token that would
    be issued. Its key has no end of life, so the signing key's own remaining life (which the
    server also caps the lifetime by) is not applied; the report says so."""

    def __init__(self, recorder: Recorder, jwks: Mapping[str, Any] | None = None) -> None:
        self._rec = recorder
        self._keys: dict[str, ActiveKey] = {}
        self._jwks: Mapping[str, Any] = jwks if jwks is not None else {"keys": []}

    def key_for(self, alg: str) -> ActiveKey:
        if alg not in self._keys:
            private = jose.generate_private_key(alg, DRY_RUN_KID)
            self._keys[alg] = ActiveKey(private=private, public=private.public(), not_after=math.inf)
        self._rec.signing_key = {"alg": alg}
        return self._keys[alg]

    def sign(self, claims: Mapping[str, Any], key: ActiveKey, typ: str = ACCESS_TOKEN_TYP) -> SignedToken:
        self._rec.claims = dict(claims)
        return SignedToken(token="", kid=key.private.kid, alg=key.private.alg)

    def jwks(self) -> Mapping[str, Any]:
        # The broker's own keys are in its database, which explain does not open: its own
        # tokens (a transaction token offered for replacement, a delegation chain's subject
        # token) verify only against the JWK Set explain was given, else not at all.
        return self._jwks


class DryRunUpstreams:
    """The model-provider client (sts.upstream), not calling out: records which upstream a
    target would be answered from (docs/providers). No assertion is signed, no provider is
    contacted, no cached provider token is read; the lifetime is then policy's alone."""

    def __init__(self, recorder: Recorder, clock: Any) -> None:
        self._rec = recorder
        self._clock = clock

    async def token(self, upstream: Any, *, issuer: str, granted_scopes: tuple[str, ...], note: Any) -> Any:
        from sts.upstream import UpstreamResult

        context = {"name": upstream.name, "provider": upstream.provider, "endpoint": upstream.endpoint, "dry_run": True}
        note("upstream", context)
        return UpstreamResult(access_token="", expires_at=math.inf, scope=None, context=context)


class DryRunStatusIndex:
    """The status-list index allocator, reserving nothing (index 0 stands in)."""

    def __init__(self, recorder: Recorder) -> None:
        self._rec = recorder

    async def allocate(self) -> int:
        self._rec.status_index = True
        return 0
