"""The token pipeline (RFC 8693 §2, RFC 7523 §2.1, RFC 9068, RFC 6749 §5).

Every request passes the same numbered steps in the same order, so no check can be skipped by
a new code path. Token exchange and the JWT-bearer grant (its assertion parsed as the subject
token, sts.assertion) are two doors to this one pipeline. Each step either narrows what is
known about the request or refuses it with an ``OAuthError`` whose public text names the kind
of check; the private reason and detail go to the audit record, which is written on every path
before the caller gets an answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sts.approvals.gate import ApprovalGate, NoApprovals
from sts.assertion.grant import admit_assertion, as_invalid_grant
from sts.audit import DATABASE_WAIT_SECONDS, AuditEvent, AuditSink
from sts.client_auth import AuthenticatedClient, ClientAuthenticator, replay_namespace
from sts.errors import (
    InvalidAuthorizationDetails,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
    UnauthorizedClient,
)
from sts.jose.b64 import b64url_encode
from sts.lifecycle.decision import EMPTY as NO_LIFECYCLE_STATE, LifecycleSnapshot
from sts.lifecycle.status_index import StatusIndexAllocator
from sts.lifecycle.statuslist import status_claim, status_list_uri
from sts.protocol import (
    GRANT_TYPE_JWT_BEARER,
    GRANT_TYPE_NAMES,
    JWT_SUBJECT_TOKEN_TYPES,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_TXN_TOKEN,
    ExchangeRequest,
)
from sts.sender.dpop import DpopProof
from sts.sender.guard import sender_binding
from sts.store.records import IssuedTokenRecord
from sts.store.writer import GroupCommitWriter
from sts.subject.model import VerifiedSubject, WorkloadIdentity
from sts.subject.oidc import AssertionTerms, IssuerKeysUnavailable, OIDCVerifier, SubjectRejected
from sts.subject.unverified import rejected_token_facts
from sts.spiffe.mapping import VerifiedSvid
from sts.spiffe.mtls import TOKEN_TYPE_MTLS, ClientCertificate
from sts.spiffe.verifier import SpiffeTrust
from sts.tokens.claims import AccessTokenSpec, build_access_token_claims
from sts.tokens.keyring import KeyUnavailable
from sts.tokens.own import OwnTokenVerifier, VerifiedOwnToken
from sts.tokens.profiles import shaped
from sts.tokens.signer import LocalSigner, SelfCheckFailed, SignedToken
from sts.trust.authz_details import DetailsRefused, requested_types
from sts.trust.delegation import (
    CHAIN_CLAIM,
    NO_DELEGATION,
    ChainRules,
    Presenter,
    Refusal,
    decide_hop,
    details_within,
    next_record,
)
from sts.trust.mapping import MappingDenied
from sts.trust.explain import DecisionTrace
from sts.trust.policy import Allow, Deny
from sts.txn.decision import (
    REPLACEMENT_ISSUER_NAME,
    TXN_TOKEN_TYP,
    TXN_TOKEN_TYPE,
    TXN_TOKEN_TYPE_N_A,
    CompiledTransactionTokens,
    TxnDeny,
    build_txn_claims,
)
from sts.txn.verify import TxnTokenRejected, verify_txn_token
from sts.upstream import UpstreamTokens

log = logging.getLogger("sts.exchange")

_LONGEST_CLOCK_SKEW = 300

# Fixed public text per kind of subject-token check (RFC 8693 §2.2.2 wants invalid_request).
_SUBJECT_TEXT = {
    "malformed": "The subject token is malformed.",
    "untrusted_issuer": "The subject token's issuer is not trusted.",
    "header": "The subject token's header is not acceptable.",
    "signature": "The subject token's signature is invalid.",
    "claims": "The subject token's claims are invalid or expired.",
    "replayed": "The subject token was already used.",
    "mapping": "The subject token does not satisfy the issuer's claim rules.",
    # X.509-SVIDs over mTLS (docs/spiffe.md)
    "certificate": "The subject certificate is not an acceptable X.509-SVID.",
    "binding": "The subject certificate is not the TLS client certificate.",
}
_ACTOR_TEXT = {k: v.replace("subject token", "actor token") for k, v in _SUBJECT_TEXT.items()}

_DENY_TEXT = {
    "invalid_request": "The subject is not allowed to exchange this token.",
    "invalid_target": "The requested target is not allowed.",
    "invalid_scope": "The requested scope is not allowed.",
}
_DENY_CLASS: dict[str, type[OAuthError]] = {
    "invalid_request": InvalidRequest,
    "invalid_target": InvalidTarget,
    "invalid_scope": InvalidScope,
}


class Runtime(Protocol):
    """The compiled trust configuration the pipeline runs against (swapped whole on reload)."""

    version: str
    issuer: str
    workload_claim: str
    verifier: OIDCVerifier
    clients: ClientAuthenticator
    spiffe: SpiffeTrust | None
    chains: ChainRules | None
    assertion_terms: AssertionTerms | None

    def map_identity(self, subject: VerifiedSubject) -> tuple[WorkloadIdentity, tuple[str, ...]]: ...

    def decide(
        self,
        *,
        identity: WorkloadIdentity,
        claims: Any,
        request: ExchangeRequest,
        actor: WorkloadIdentity | None,
        actor_claims: Any = None,
        own_subject: bool = False,
    ) -> Allow | Deny: ...

    def client_may_exchange(self, client_id: str) -> bool: ...

    def explain_decision(self, *, identity: WorkloadIdentity, claims: Any, request: ExchangeRequest,
                         actor: WorkloadIdentity | None, actor_claims: Any = None,
                         own_subject: bool = False) -> DecisionTrace: ...

    # Transaction tokens (sts.txn): None when not configured.
    txn: CompiledTransactionTokens | None

    def grants_matching(self, identity: WorkloadIdentity, claims: Any) -> tuple[str, ...]: ...
    def client_may_use(self, grant_type: str, client_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """RFC 8693 §2.2.1 successful response body."""

    access_token: str
    issued_token_type: str
    expires_in: int
    scope: str
    token_type: str = "Bearer"  # "DPoP" for a DPoP-bound token (RFC 9449 §5)
    # RFC 9396 §7: the granted authorization details, when the request had some.
    authorization_details: tuple[dict[str, Any], ...] | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "issued_token_type": self.issued_token_type,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
        }
        if self.authorization_details is not None:
            body["authorization_details"] = list(self.authorization_details)
        # RFC 6749 §3.3 has no empty scope ("scope = scope-token *( SP scope-token )"): with
        # nothing granted the parameter is omitted, never sent as "".
        if self.scope:
            body["scope"] = self.scope
        return body


def new_jti() -> str:
    # 144 random bits, base64url: what secrets.token_urlsafe(18) gives, without its detour
    # through random.SystemRandom.
    return b64url_encode(os.urandom(18))


def own_jti(issuer: str, claims: Any) -> str | None:
    """The ``jti`` of a token this broker issued (its ``iss`` is ours), else None: only those
    can be revoked here."""
    if isinstance(claims, Mapping) and claims.get("iss") == issuer and isinstance(claims.get("jti"), str):
        return claims["jti"]
    return None


def issued_lifetime(*, granted: int, now: float, subject_expires_at: float | None, key_not_after: float) -> int:
    """RFC 8693 leaves the lifetime to the server: the grant's lifetime, capped by the subject
    token's remaining life (so an exchange never extends a credential) and by the signing
    key's remaining life (so no token outlives the key that signed it)."""
    limit = float(granted)
    if subject_expires_at is not None:
        limit = min(limit, subject_expires_at - now)
    limit = min(limit, key_not_after - now)
    return max(0, math.floor(limit))


class TokenExchanger:
    """Runs the pipeline. Invariant: a token is returned only after its audit record and its
    issued-token row are durable."""

    def __init__(
        self,
        *,
        runtime: Callable[[], Runtime],
        signer: LocalSigner,
        audit: AuditSink,
        writer: GroupCommitWriter,
        clock: Callable[[], float] = time.time,
        lifecycle: Callable[[], LifecycleSnapshot] = lambda: NO_LIFECYCLE_STATE,
        status_index: StatusIndexAllocator | None = None,
        approvals: ApprovalGate | NoApprovals = NoApprovals(),
        upstreams: UpstreamTokens | None = None,
    ) -> None:
        self._runtime = runtime
        self._approvals = approvals
        self._upstreams = upstreams
        self._status_index = status_index
        self._lifecycle = lifecycle
        self._signer = signer
        self._audit = audit
        self._writer = writer
        self._clock = clock
        # Our own tokens come back as subject tokens in delegation chains: verified with the
        # keys we publish, read from the key ring (no network I/O).
        self._own = OwnTokenVerifier(lambda: signer.jwks(), clock=clock)

    async def exchange(self, request: ExchangeRequest, client: AuthenticatedClient, event: AuditEvent,
                       *, peer: ClientCertificate | None = None, dpop: DpopProof | None = None) -> TokenResponse:
        """Run the pipeline for a request of either grant type. Each grant answers a refused
        credential by its own RFC: token exchange with ``invalid_request`` (RFC 8693 §2.2.2),
        the JWT-bearer grant with ``invalid_grant`` (RFC 7521 §4.1.1, RFC 7523 §3.1)."""
        try:
            return await self._run(request, client, event, peer=peer, dpop=dpop)
        except InvalidRequest as exc:
            if request.grant_type != GRANT_TYPE_JWT_BEARER:
                raise
            raise as_invalid_grant(exc) from None

    async def _run(self, request: ExchangeRequest, client: AuthenticatedClient, event: AuditEvent,
                   *, peer: ClientCertificate | None = None, dpop: DpopProof | None = None) -> TokenResponse:
        """Run steps 1-8. ``event`` was started by the endpoint (which also audits failures
        that happen before this call). ``peer`` is the TLS client certificate (direct or from a
        trusted proxy), which an ``mtls`` subject token must match. ``dpop`` is the request's
        validated DPoP proof (sts.sender.guard), if it sent one."""
        rt = self._runtime()
        event.config_version = rt.version
        event.client_id = client.client_id
        event.requested_targets = list(request.targets)
        event.requested_scopes = list(request.scopes) if request.scopes is not None else None

        # 1. The client may use this grant type (a public caller is admitted by clients.allow_public).
        if client.client_id is not None and not rt.client_may_use(request.grant_type, client.client_id):
            raise UnauthorizedClient(reason=f"client_not_allowed_{GRANT_TYPE_NAMES.get(request.grant_type, 'grant')}")
        jwt_bearer = request.grant_type == GRANT_TYPE_JWT_BEARER

        # Transaction tokens (docs/transaction-tokens.md) take these steps with their own 6 and 7.
        if request.requested_token_type == TOKEN_TYPE_TXN_TOKEN or request.subject_token_type == TOKEN_TYPE_TXN_TOKEN:
            return await self._transaction_token(rt, request, client, event)

        # 2. We can verify this kind of subject token: JWTs (OIDC tokens, JWT-SVIDs), and
        #    X.509-SVIDs over mTLS when SPIFFE trust domains are configured.
        mtls = request.subject_token_type == TOKEN_TYPE_MTLS and rt.spiffe is not None
        if not mtls and request.subject_token_type not in JWT_SUBJECT_TOKEN_TYPES:
            raise InvalidRequest("The subject token type is not supported.", reason="unsupported_subject_token_type")
        if request.actor_token_type is not None and request.actor_token_type not in JWT_SUBJECT_TOKEN_TYPES:
            raise InvalidRequest("The actor token type is not supported.", reason="unsupported_actor_token_type")

        # 3. Verify the subject token: trusted issuer, allowed algorithm, signature, claims. With
        #    delegation chains on, a token naming our issuer is one of ours (sts.tokens.own); a
        #    JWT-bearer assertion never is (chains are token exchange's).
        own = (rt.chains is not None and not mtls and not jwt_bearer
               and OwnTokenVerifier.is_ours(request.subject_token, rt.issuer))
        subject = await self._verify(rt, request.subject_token, event, actor=False, mtls=mtls, peer=peer, own=own,
                                     assertion=rt.assertion_terms if jwt_bearer else None)
        event.issuer = subject.issuer_name
        event.external_subject = subject.subject[:512]
        event.subject_token_sha256 = subject.token_sha256
        if jwt_bearer:
            # 3b. The assertion as a grant (sts.assertion): an ID-JAG's audience, client and
            #     key binding, and the targets and scopes it bounds the request to.
            request, facts = admit_assertion(request, subject, client_id=client.client_id,
                                             dpop_jkt=dpop.jkt if dpop is not None else None, issuer=rt.issuer)
            event.add_context("assertion", facts)
            event.requested_targets = list(request.targets)
            event.requested_scopes = list(request.scopes) if request.scopes is not None else None

        # 4. A one-time jti where the issuer asks for one: checked present now, spent only once
        #    the decision allowed the exchange (step 7), so a refused request leaves it usable.
        #    Our own tokens are never one-time: a service may pass one on to several tools.
        #    A JWT-bearer assertion always is.
        one_time = [None if own else self._one_time_jti(rt, subject, _SUBJECT_TEXT, required=jwt_bearer)]

        # 5. Map claims to a workload identity (compiled CEL rules and mappings); our own
        #    tokens keep the identity mapped when their chain began.
        identity, notes = (subject.identity, ()) if isinstance(subject, VerifiedOwnToken) else self._map(rt, subject, _SUBJECT_TEXT)
        event.identity = identity.identity
        event.mode_notes.extend(notes)

        actor: WorkloadIdentity | None = None
        actor_claims: Any = None
        actor_expires_at: float | None = None
        # A subject token that is itself delegated (RFC 8693 §4.1 `act`) may only be exchanged
        # together with the current actor's token; otherwise the chain would be dropped and the
        # delegation check skipped.
        if "act" in subject.claims and request.actor_token is None and not own:
            raise InvalidRequest("A delegated subject token needs the actor's token.", reason="delegated_subject_without_actor")
        if request.actor_token is not None:
            actor_subject = await self._verify(rt, request.actor_token, event, actor=True)
            one_time.append(self._one_time_jti(rt, actor_subject, _ACTOR_TEXT))
            actor, actor_notes = self._map(rt, actor_subject, _ACTOR_TEXT)
            actor_claims = actor_subject.claims
            actor_expires_at = actor_subject.expires_at
            event.actor_identity = actor.identity
            event.mode_notes.extend(actor_notes)

        # 6. Decide: deny by default; exactly one target; scopes within the grant.
        decision = rt.decide(identity=identity, claims=subject.claims, request=request, actor=actor, actor_claims=actor_claims,
                             own_subject=own)
        event.mode_notes.extend(decision.audit_notes)
        event.grant = decision.grant
        if isinstance(decision, Deny):
            # What explaining the refusal needs (sts explain --request-id): refusals only.
            event.add_context("explain", rt.explain_decision(
                identity=identity, claims=subject.claims, request=request, actor=actor, actor_claims=actor_claims,
                own_subject=own,
            ).refusal_context())
            if own and isinstance(subject.claims.get(CHAIN_CLAIM), list):
                event.add_context("chain", subject.claims[CHAIN_CLAIM])
            raise _DENY_CLASS[decision.error](_DENY_TEXT[decision.error], reason=decision.reason)
        if decision.ignored_scopes:
            event.add_context("scope", {"ignored": list(decision.ignored_scopes)})
        # 6a. RFC 9396 authorization details against the target's declared types
        #     (sts.trust.authz_details): one attribute check when the request has none.
        details = None
        if request.authorization_details is not None:
            details = _granted_details(request.authorization_details, decision, identity, subject.claims, event)

        # 6a (continued). Delegation (sts.trust.delegation): may_act, the depth cap and, for our
        #     own tokens, the chain rules; what a chain hop issues never widens.
        presenter: Presenter | None = None
        if actor is not None:
            presenter = Presenter(identity=actor.identity, iss=actor_claims.get("iss"), sub=actor_claims.get("sub"))
        elif own and client.client_id is not None:
            presenter = Presenter(client_id=client.client_id)
        hop = None
        if presenter is not None or own:
            hop = decide_hop(subject_claims=subject.claims, own=own, presenter=presenter,
                             rules=decision.delegation or NO_DELEGATION, chains=rt.chains,
                             requested_scopes=request.scopes, granted_scopes=decision.scopes,
                             revoked=self._lifecycle().revoked if own else frozenset())
            if own and isinstance(subject.claims.get(CHAIN_CLAIM), list):
                event.add_context("chain", subject.claims[CHAIN_CLAIM])
            if isinstance(hop, Refusal):
                raise _DENY_CLASS[hop.error](_DENY_TEXT[hop.error], reason=hop.reason, detail=hop.detail)
            if own:
                decision = dataclasses.replace(decision, scopes=hop.scopes or decision.scopes, cap_to_subject_lifetime=True)
                if details and not details_within(details, subject.claims.get("authorization_details")):
                    raise InvalidAuthorizationDetails(reason="chain_details_widening")

        # 6b. Kill switches and revoked subject/actor tokens (sts/lifecycle): in-memory lookups.
        stopped = self._lifecycle().check(
            identity=identity.identity, actor=actor.identity if actor else None, issuer=subject.issuer_name,
            client=client.client_id, grant=decision.grant, subject_jti=own_jti(rt.issuer, subject.claims),
            actor_jti=own_jti(rt.issuer, actor_claims), now=self._clock())
        if stopped is not None:
            raise InvalidRequest(stopped.text, reason=stopped.reason, detail=stopped.detail)

        # 6c. Just-in-time approval (sts.approvals): a target's marked scopes are issued only
        #     within an approval of exactly this request (and never outlive it); otherwise
        #     approval_required with the approval request's id.
        if decision.approval is not None:
            decision = await self._approvals.check(decision, event, details)

        # 6d. A target naming a model provider is answered with the provider's token instead
        #     of ours (sts.upstream); the one-time jtis and the durable audit come first as below.
        if decision.upstream is not None:
            return await self._upstream_answer(rt, request, decision, subject, actor_expires_at, one_time, event)

        # 7. Build the claims (bound to the sender as the policy asks: sts.sender), sign, verify
        #    our own output, and spend the one-time jtis.
        binding = sender_binding(decision.sender_constraint, dpop, peer.sha256 if peer is not None else None)
        now = self._clock()
        try:
            key = self._signer.key_for(decision.algorithm)
        except KeyUnavailable as exc:
            raise ServerError(reason="signing_key_unavailable", detail=str(exc)) from None
        lifetime = issued_lifetime(
            granted=decision.lifetime,
            now=now,
            # A token carrying `act` never outlives the actor's own credential.
            subject_expires_at=min(
                (t for t in (subject.expires_at if decision.cap_to_subject_lifetime else None, actor_expires_at) if t is not None),
                default=None,
            ),
            key_not_after=key.not_after,
        )
        if lifetime < 1:
            raise InvalidRequest(_SUBJECT_TEXT["claims"], reason="subject_expires_too_soon")
        issued_at = int(now)
        status_idx = await self._status_idx(decision.status_list)
        spec = AccessTokenSpec(
            issuer=rt.issuer,
            subject=identity.identity,
            audience=decision.target,
            client_id=client.client_id or identity.identity,
            scopes=decision.scopes,
            issued_at=issued_at,
            expires_at=issued_at + lifetime,
            jti=new_jti(),
            workload_claim=rt.workload_claim,
            external_issuer=subject.origin_issuer if isinstance(subject, VerifiedOwnToken) else subject.issuer,
            external_subject=subject.origin_subject if isinstance(subject, VerifiedOwnToken) else subject.subject,
            attributes=identity.attributes,
            actor=actor.identity if actor else None,
            actor_client=presenter.client_id if presenter is not None and actor is None else None,
            prior_act=subject.claims.get("act") if presenter and isinstance(subject.claims.get("act"), dict) else None,
            cnf=binding.cnf,
            status=status_claim(status_list_uri(rt.issuer), status_idx) if status_idx is not None else None,
            authorization_details=details,
        )
        if rt.chains is not None:
            # The chain record every token carries while chains are on (sts.trust.delegation).
            record = next_record(hop.record if hop is not None else None, jti=spec.jti, grant=decision.grant,
                                 presenter=presenter, origin=subject.issuer_name)
            spec = dataclasses.replace(spec, chain=tuple(record))
            event.add_context("chain", record)
        # A target's token profile shapes the JWT for a model provider (sts.tokens.profiles).
        claims, typ = shaped(decision.profile, build_access_token_claims(spec), rt.workload_claim, decision.profile_audience)
        signed = await self._sign_and_spend(claims, key, typ, one_time)

        event.outcome = "issued"
        event.granted_target = decision.target
        event.granted_scopes = list(decision.scopes)
        event.lifetime = lifetime
        event.issued_jti = spec.jti

        # 8. Durable audit + issued-token row in one group-committed write, then answer.
        issued = IssuedTokenRecord(
            jti=spec.jti,
            identity=identity.identity,
            issuer_name=subject.issuer_name,
            audience=decision.target,
            scopes=" ".join(decision.scopes),
            issued_at=float(issued_at),
            expires_at=float(spec.expires_at),
            subject_token_sha256=subject.token_sha256,
            client_id=client.client_id,
            actor_identity=actor.identity if actor else None,
            signing_kid=signed.kid,
            parent_jti=own_jti(rt.issuer, subject.claims),
            status_idx=status_idx,
        )
        await self._audit.record(event, issued)
        return TokenResponse(
            access_token=signed.token,
            issued_token_type=request.requested_token_type,
            expires_in=lifetime,
            scope=" ".join(decision.scopes),
            token_type=binding.token_type,
            authorization_details=details,
        )

    async def _upstream_answer(self, rt: Runtime, request: ExchangeRequest, decision: Allow, subject: VerifiedSubject,
                               actor_expires_at: float | None, one_time: list[tuple[str, str, float, dict[str, str]] | None],
                               event: AuditEvent) -> TokenResponse:
        """Step 6d (docs/providers): the provider's access token for the upstream policy chose,
        its lifetime the provider's ``expires_in`` cut to what policy allows (the grant, the
        subject token, an actor's token, as in step 7); audited durably (with the SHA-256 of
        the provider token, never the token) before it is returned."""
        upstream = getattr(rt, "upstreams", {}).get(decision.upstream)
        if upstream is None or self._upstreams is None:
            raise ServerError(reason="upstream_not_configured", detail=decision.upstream)
        # A provider's token is an access token, of a format only the provider knows.
        if request.requested_token_type != TOKEN_TYPE_ACCESS_TOKEN:
            raise InvalidRequest("The requested token type cannot be issued for this target.", reason="upstream_token_type")
        got = await self._upstreams.token(upstream, issuer=rt.issuer, granted_scopes=decision.scopes, note=event.add_context)
        now = self._clock()
        lifetime = issued_lifetime(granted=decision.lifetime, now=now, key_not_after=got.expires_at, subject_expires_at=min(
            (t for t in (subject.expires_at if decision.cap_to_subject_lifetime else None, actor_expires_at) if t is not None),
            default=None))
        if lifetime < 1:
            raise InvalidRequest(_SUBJECT_TEXT["claims"], reason="subject_expires_too_soon")
        await self._spend_all(one_time)
        event.outcome = "issued"
        event.granted_target = decision.target
        event.granted_scopes = list(decision.scopes)
        event.lifetime = lifetime
        await self._audit.record(event)
        return TokenResponse(access_token=got.access_token, issued_token_type=TOKEN_TYPE_ACCESS_TOKEN, expires_in=lifetime,
                             scope=got.scope if got.scope is not None else " ".join(decision.scopes))

    async def _status_idx(self, wanted: bool) -> int | None:
        """A Token Status List index when the policy asks for a `status` claim (one attribute
        check otherwise); one database write per block of indices, none per token."""
        if not wanted:
            return None
        if self._status_index is None:
            raise ServerError(reason="status_list_unavailable", detail="no status index allocator")
        return await self._status_index.allocate()

    async def _verify(self, rt: Runtime, token: str, event: AuditEvent, *, actor: bool, mtls: bool = False,
                      peer: ClientCertificate | None = None, own: bool = False,
                      assertion: AssertionTerms | None = None) -> VerifiedSubject:
        texts = _ACTOR_TEXT if actor else _SUBJECT_TEXT
        prefix = "actor_" if actor else ""
        try:
            if own:
                return self._own.verify(token, issuer=rt.issuer, workload_claim=rt.workload_claim, chain_claim=CHAIN_CLAIM)
            if mtls and rt.spiffe is not None:
                return await rt.spiffe.verify_x509(token, peer)
            if rt.spiffe is not None and rt.spiffe.looks_like_jwt_svid(token, rt.verifier.trusts):
                return await rt.spiffe.verify_jwt(token)
            return await rt.verifier.verify(token, assertion=assertion)
        except SubjectRejected as exc:
            if exc.issuer_name and not actor:
                event.issuer = exc.issuer_name
            event.add_context("explain", rejected_token_facts(token, kind=exc.kind, reason=exc.reason, actor=actor))
            raise InvalidRequest(texts[exc.kind], reason=f"{prefix}{exc.reason}", detail=exc.detail) from None
        except IssuerKeysUnavailable as exc:
            raise TemporarilyUnavailable(
                reason=f"{prefix}issuer_keys_unavailable", detail=exc.issuer_name, retry_after=exc.retry_after
            ) from None

    @staticmethod
    def _one_time_jti(rt: Runtime, subject: VerifiedSubject, texts: dict[str, str],
                      *, required: bool = False) -> tuple[str, str, float, dict[str, str]] | None:
        """What spending ``subject``'s one-time jti takes (namespace, jti, until, texts), or None
        when its issuer does not ask for one-time tokens and ``required`` is false (an assertion
        of the JWT-bearer grant is always one-time). Refuses a missing or unusable jti."""
        if isinstance(subject, VerifiedSvid) and rt.spiffe is not None:
            window = rt.spiffe.replay_window(subject)
        else:
            window = rt.verifier.replay_window(subject.issuer_name)
        if window is None:
            if not required:
                return None
            # Remembered past the longest clock skew an issuer may be given (config: 300 s),
            # so the guard outlives every acceptance window.
            window = _LONGEST_CLOCK_SKEW
        jti = subject.claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise InvalidRequest(texts["claims"], reason="jti_missing")
        return replay_namespace("issuer", subject.issuer_name), jti, subject.expires_at + window, texts

    async def _sign_and_spend(self, claims: dict[str, Any], key: Any, typ: str,
                              one_time: list[tuple[str, str, float, dict[str, str]] | None]) -> SignedToken:
        """Sign (the signer verifies its own output), then spend the allowed exchange's one-time
        jtis: the replay guard is shared by all replicas and atomic, so of two requests racing
        with one token, one is refused here, after the decision and never before it."""
        try:
            signed = self._signer.sign(claims, key, typ=typ)
        except SelfCheckFailed as exc:
            raise ServerError(reason="self_check_failed", detail=str(exc)) from None
        await self._spend_all(one_time)
        return signed

    async def _spend_all(self, one_time: list[tuple[str, str, float, dict[str, str]] | None]) -> None:
        for spend in one_time:
            if spend is not None:
                await self._spend(*spend)

    async def _spend(self, namespace: str, jti: str, until: float, texts: dict[str, str]) -> None:
        claim = self._writer.claim_once(namespace, jti, until)
        if not await asyncio.wait_for(claim, DATABASE_WAIT_SECONDS):
            raise InvalidRequest(texts["replayed"], reason="jti_replayed")

    @staticmethod
    def _map(rt: Runtime, subject: VerifiedSubject, texts: dict[str, str]) -> tuple[WorkloadIdentity, tuple[str, ...]]:
        try:
            return rt.map_identity(subject)
        except MappingDenied as exc:
            raise InvalidRequest(texts["mapping"], reason=f"mapping_{exc.reason}", detail=str(exc),
                                 notes=exc.audit_notes) from None

    async def _transaction_token(self, rt: Runtime, request: ExchangeRequest, client: AuthenticatedClient,
                                 event: AuditEvent) -> TokenResponse:
        """Steps 2-8 for a transaction token (sts.txn): a first one from a verified subject
        token and a grant that allows it, or a replacement of one of ours that never widens."""
        txn = rt.txn
        if txn is None or request.requested_token_type != TOKEN_TYPE_TXN_TOKEN:
            # Not configured, or a transaction token offered for another kind of token: the
            # draft says it "MUST NOT" serve as an access token or a credential.
            raise InvalidRequest("The subject token type is not supported." if txn is not None else
                                 "The requested token type is not supported.", reason="txn_not_available")
        if request.actor_token is not None:
            raise InvalidRequest("Transaction tokens are issued without an actor token.", reason="txn_actor_token")
        if request.authorization_details is not None:
            raise InvalidAuthorizationDetails(reason="txn_authorization_details")
        one_time: list[tuple[str, str, float, dict[str, str]] | None] = []
        parent_jti: str | None = None
        if request.subject_token_type == TOKEN_TYPE_TXN_TOKEN:
            # 3. Our own transaction token: published key, typ, trust domain, not expired.
            try:
                prior = verify_txn_token(request.subject_token, issuer=rt.issuer, trust_domain=txn.trust_domain,
                                         jwks=self._signer.jwks(), now=self._clock())
            except TxnTokenRejected as exc:
                kind = _TXN_REJECTION_KIND.get(exc.reason, "signature")
                raise InvalidRequest(_SUBJECT_TEXT[kind], reason=f"txn_subject_{exc.reason}") from None
            event.issuer = REPLACEMENT_ISSUER_NAME
            event.subject_token_sha256 = hashlib.sha256(request.subject_token.encode("ascii")).hexdigest()
            event.external_subject = str(prior.get("sub"))[:512]
            parent_jti = prior.get("jti") if isinstance(prior.get("jti"), str) else None
            issuer_name, subject_exp = REPLACEMENT_ISSUER_NAME, float(prior["exp"])
            # 6. Replacement: same txn, sub, aud, tctx, rctx; scope within the replaced token's.
            decision = txn.replace(prior, client_id=client.client_id, audiences=request.audiences,
                                   resources=request.resources, scopes=request.scopes,
                                   request_context=request.request_context, request_details=request.request_details)
        else:
            # 2-5. As for any exchange: a JWT we verify, its one-time jti, the claim mapping.
            if request.subject_token_type not in JWT_SUBJECT_TOKEN_TYPES:
                raise InvalidRequest("The subject token type is not supported.", reason="unsupported_subject_token_type")
            subject = await self._verify(rt, request.subject_token, event, actor=False)
            event.issuer = subject.issuer_name
            event.external_subject = subject.subject[:512]
            event.subject_token_sha256 = subject.token_sha256
            # A delegated token (`act`) would lose its actors in a transaction token's `sub`.
            if "act" in subject.claims:
                raise InvalidRequest("A delegated subject token cannot become a transaction token.",
                                     reason="txn_delegated_subject")
            one_time.append(self._one_time_jti(rt, subject, _SUBJECT_TEXT))
            identity, notes = self._map(rt, subject, _SUBJECT_TEXT)
            event.identity = identity.identity
            event.mode_notes.extend(notes)
            parent_jti = own_jti(rt.issuer, subject.claims)
            issuer_name, subject_exp = subject.issuer_name, subject.expires_at
            # 6. Which grant lets this identity have a transaction token, for this client and scope.
            decision = txn.issue(matched_grants=rt.grants_matching(identity, subject.claims), identity=identity.identity,
                                 client_id=client.client_id, audiences=request.audiences, resources=request.resources,
                                 scopes=request.scopes, subject_claims=subject.claims,
                                 request_context=request.request_context, request_details=request.request_details)
        event.grant = decision.grant
        if isinstance(decision, TxnDeny):
            raise _TXN_DENY_CLASS[decision.error](_TXN_DENY_TEXT[decision.error], reason=decision.reason, detail=decision.detail)
        event.identity = decision.sub

        # 6b. Kill switches and revoked tokens, as for any exchange.
        stopped = self._lifecycle().check(identity=decision.sub, actor=None, issuer=issuer_name, client=client.client_id,
                                          grant=decision.grant, subject_jti=parent_jti, actor_jti=None, now=self._clock())
        if stopped is not None:
            raise InvalidRequest(stopped.text, reason=stopped.reason, detail=stopped.detail)

        # 7. Claims, signed with typ txntoken+jwt; never outliving the subject token.
        now = self._clock()
        try:
            key = self._signer.key_for(txn.algorithm)
        except KeyUnavailable as exc:
            raise ServerError(reason="signing_key_unavailable", detail=str(exc)) from None
        lifetime = issued_lifetime(granted=decision.lifetime, now=now, subject_expires_at=subject_exp, key_not_after=key.not_after)
        if lifetime < 1:
            raise InvalidRequest(_SUBJECT_TEXT["claims"], reason="subject_expires_too_soon")
        issued_at, jti = int(now), new_jti()
        claims = build_txn_claims(decision, issuer=rt.issuer, trust_domain=txn.trust_domain, issued_at=issued_at,
                                  expires_at=issued_at + lifetime, jti=jti)
        signed = await self._sign_and_spend(claims, key, TXN_TOKEN_TYP, one_time)
        event.outcome = "issued"
        event.requested_targets = list(request.targets)
        event.granted_target = txn.trust_domain
        event.granted_scopes = list(decision.scopes)
        event.lifetime = lifetime
        event.issued_jti = jti
        event.add_context("txn", {"txn": decision.txn, "replacement": decision.replacement, "req_wl": decision.req_wl,
                                  "req_wl_chain": list(decision.req_wl_chain),
                                  "tctx_keys": sorted(decision.tctx)[:32] if decision.tctx else [],
                                  "rctx_keys": sorted(decision.rctx)[:32] if decision.rctx else []})

        # 8. Durable audit + issued-token row, then answer (RFC 8693 §2.2.1 token_type N_A).
        await self._audit.record(event, IssuedTokenRecord(
            jti=jti, identity=decision.sub, issuer_name=issuer_name, audience=txn.trust_domain,
            scopes=" ".join(decision.scopes), issued_at=float(issued_at), expires_at=float(issued_at + lifetime),
            subject_token_sha256=event.subject_token_sha256 or "", client_id=client.client_id, actor_identity=None,
            signing_kid=signed.kid, parent_jti=parent_jti, status_idx=None,
        ))
        return TokenResponse(access_token=signed.token, issued_token_type=TXN_TOKEN_TYPE, expires_in=lifetime,
                             scope=" ".join(decision.scopes), token_type=TXN_TOKEN_TYPE_N_A)


_TXN_REJECTION_KIND = {
    "expired": "claims", "iat": "claims", "audience": "claims", "issuer": "claims", "malformed": "malformed",
    "too_large": "malformed", "typ_mismatch": "header", "alg_not_allowed": "header", "forbidden_header": "header",
    "crit_unsupported": "header", "b64_unsupported": "header",
}
_TXN_DENY_TEXT = {
    **_DENY_TEXT,
    "invalid_request": "The subject or client is not allowed a transaction token with these values.",
    "invalid_target": "The audience must be the trust domain.",
    "unauthorized_client": "The client is not allowed to request this transaction token.",
}
_TXN_DENY_CLASS: dict[str, type[OAuthError]] = {**_DENY_CLASS, "unauthorized_client": UnauthorizedClient}


def _granted_details(requested: tuple[dict[str, Any], ...], decision: Allow, identity: WorkloadIdentity,
                     claims: Any, event: AuditEvent) -> tuple[dict[str, Any], ...]:
    """Step 6a: the authorization details to grant, or ``invalid_authorization_details``. The
    audit record names the requested types, and what was granted or why it was refused."""
    types = decision.authorization_details
    asked = requested_types(requested)
    if types is None:
        event.add_context("authorization_details", {"requested_types": asked, "refused": "target declares no types"})
        raise InvalidAuthorizationDetails(reason="authorization_details_not_accepted")
    result = types.grant(requested, identity=identity.identity, issuer=identity.issuer_name, attributes=identity.attributes,
                         claims=claims, target=decision.target, scopes=decision.scopes)
    event.mode_notes.extend(result.notes)
    if isinstance(result, DetailsRefused):
        event.add_context("authorization_details", {"requested_types": asked, "refused": result.detail})
        raise InvalidAuthorizationDetails(reason=f"authorization_details_{result.reason}", detail=result.detail)
    event.add_context("authorization_details", {"granted": list(result.details), "narrowed": result.narrowed})
    return result.details
