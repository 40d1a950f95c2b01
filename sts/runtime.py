"""One compiled configuration, ready to serve: verifier, client authenticator, mappings,
policy and the facts endpoints publish.

A ``BrokerRuntime`` is immutable and swapped whole on reload, so a request sees exactly one
configuration version from its first step to its audit record. Building one does everything
that can fail (key parsing, expression compilation happened in the loader) before the swap.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sts import jose
from sts.client_auth import ClientAuthenticator, RegisteredClient
from sts.config.loader import ConfigInvalid, ConfigProblem, LoadedConfig
from sts.client_tls import SELF_SIGNED_TLS_CLIENT_AUTH, TLS_CLIENT_AUTH, TlsClientRule
from sts.config.models import BrokerConfig, IssuerConfig
from sts.config.models import RegisteredClient as ClientRegistration
from sts.protocol import GRANT_TYPE_JWT_BEARER, GRANT_TYPE_NAMES, GRANT_TYPE_TOKEN_EXCHANGE, ExchangeRequest
from sts.subject.claims import ClaimRules
from sts.subject.jwks import JWKSURI, CACertificates, Discovery, JWKSCache, KeySourceSpec, StaticKeys
from sts.subject.model import VerifiedSubject, WorkloadIdentity
from sts.subject.oidc import AssertionTerms, IssuerTrust, OIDCVerifier
from sts.spiffe.bundle_source import BundleStore
from sts.spiffe.mapping import VerifiedSvid
from sts.spiffe.verifier import SpiffeTrust, build_spiffe_trust
from sts.trust import CompiledTrust
from sts.trust.explain import DecisionTrace, explain_decision
from sts.trust.delegation import ChainRules
from sts.trust.policy import Allow, Deny
from sts.txn.decision import CompiledTransactionTokens

ClaimOnce = Callable[[str, str, float], Awaitable[bool]]


def key_source(issuer: IssuerConfig, loaded: LoadedConfig) -> KeySourceSpec:
    keys = issuer.keys
    if keys.jwks is not None or keys.jwks_file is not None:
        return StaticKeys(loaded.static_jwks[issuer.name])
    pem = loaded.ca_certificates.get(issuer.name)
    ca = CACertificates(pem) if pem is not None else None
    if keys.jwks_uri is not None:
        return JWKSURI(keys.jwks_uri, ca)
    return Discovery(issuer.issuer, ca)


def _fingerprint(source: KeySourceSpec, insecure: bool) -> str:
    return hashlib.sha256(repr((source, insecure)).encode()).hexdigest()


@dataclass(frozen=True)
class BrokerRuntime:
    """Invariant: ``key_sources`` maps every issuer name to its registered JWKS cache entry."""

    version: str
    issuer: str
    path_prefix: str
    workload_claim: str
    verifier: OIDCVerifier
    clients: ClientAuthenticator
    trust: CompiledTrust
    issuer_names: frozenset[str]
    key_sources: Mapping[str, str]
    signing_algorithms: frozenset[str]
    scopes_supported: frozenset[str]
    client_auth_methods: tuple[str, ...]
    exchange_clients: frozenset[str] = field(default_factory=frozenset)
    introspection_clients: frozenset[str] = field(default_factory=frozenset)
    # SPIFFE trust domains (docs/spiffe.md): None when none is configured.
    spiffe: SpiffeTrust | None = None
    bundle_sources: Mapping[str, str] = field(default_factory=dict)
    # Bundle sources checked but not yet registered: see sts.spiffe.verifier.commit_bundles.
    pending_bundles: tuple[tuple[str, Any], ...] = ()
    # LoadedConfig.files_version: the files read with the configuration (CA and key files).
    files_version: str = ""
    # Transaction tokens (sts.txn; docs/transaction-tokens.md): None when not configured.
    txn: CompiledTransactionTokens | None = None
    # RFC 9396 types some target accepts (docs/authorization-details.md), for the metadata.
    authorization_details_types: frozenset[str] = frozenset()

    def grants_matching(self, identity: WorkloadIdentity, claims: Any) -> tuple[str, ...]:
        """The enforce grants whose issuer filter and matcher admit ``identity``, in file order."""
        return self.trust.policy.match_grants(identity, claims).grants
    # docs/providers: the configured upstream providers by name (sts.upstream).
    upstreams: Mapping[str, Any] = field(default_factory=dict)
    # Delegation chains of our own tokens (sts.trust.delegation): None unless a grant sets
    # delegation.chain, so the exchange pays one attribute check when they are off.
    chains: ChainRules | None = None
    # The RFC 7523 JWT-bearer grant (docs/jwt-bearer.md): the clients registered for it, the
    # broker's names an assertion's `aud` may hold, whether any grant answers it, and whether
    # any issuer is trusted for ID-JAGs (both for the metadata).
    jwt_bearer_clients: frozenset[str] = field(default_factory=frozenset)
    assertion_terms: AssertionTerms | None = None
    jwt_bearer_enabled: bool = False
    id_jag_enabled: bool = False

    def map_identity(self, subject: VerifiedSubject) -> tuple[WorkloadIdentity, tuple[str, ...]]:
        if self.spiffe is not None and isinstance(subject, VerifiedSvid) and self.spiffe.handles(subject.issuer_name):
            result = self.spiffe.map_identity(subject)
        else:
            result = self.trust.mapping_for(subject.issuer_name).map_identity(subject)
        return result.identity, tuple(result.audit_notes)

    def decide(self, *, identity: WorkloadIdentity, claims: Any, request: ExchangeRequest,
               actor: WorkloadIdentity | None, actor_claims: Any = None, own_subject: bool = False) -> Allow | Deny:
        return self.trust.policy.decide(
            identity=identity,
            claims=claims,
            request_audiences=request.audiences,
            request_resources=request.resources,
            requested_scopes=request.scopes,
            actor=actor,
            actor_claims=actor_claims,
            own_subject=own_subject,
            grant_type=GRANT_TYPE_NAMES.get(request.grant_type, "token_exchange"),
        )

    def explain_decision(self, *, identity: WorkloadIdentity, claims: Any, request: ExchangeRequest,
                         actor: WorkloadIdentity | None, actor_claims: Any = None,
                         own_subject: bool = False) -> DecisionTrace:
        """``decide`` with a per-grant trace (sts.trust.explain): for refusals and ``sts explain``."""
        return explain_decision(
            self.trust.policy,
            identity=identity,
            claims=claims,
            request_audiences=request.audiences,
            request_resources=request.resources,
            requested_scopes=request.scopes,
            actor=actor,
            actor_claims=actor_claims,
            own_subject=own_subject,
            grant_type=GRANT_TYPE_NAMES.get(request.grant_type, "token_exchange"),
        )

    def client_may_exchange(self, client_id: str) -> bool:
        return client_id in self.exchange_clients

    def client_may_use(self, grant_type: str, client_id: str) -> bool:
        """Step 1: a registered client uses only the grant types it is registered for
        (``token_exchange``, on by default; ``jwt_bearer``, off by default)."""
        if grant_type == GRANT_TYPE_TOKEN_EXCHANGE:
            return client_id in self.exchange_clients
        return grant_type == GRANT_TYPE_JWT_BEARER and client_id in self.jwt_bearer_clients

    def client_may_introspect(self, client_id: str) -> bool:
        return client_id in self.introspection_clients


def signing_algorithms(cfg: BrokerConfig) -> frozenset[str]:
    """Every algorithm the broker signs with: the default and any a grant's target names."""
    return frozenset({cfg.tokens.algorithm} | {t.algorithm for g in cfg.grants for t in g.targets if t.algorithm}
                     | {u.algorithm for u in cfg.upstreams})


def build_runtime(
    loaded: LoadedConfig,
    jwks: JWKSCache,
    claim_once: ClaimOnce,
    *,
    dev_mode: bool,
    clock: Callable[[], float] = time.time,
    previous: BrokerRuntime | None = None,
    bundles: BundleStore | None = None,
) -> BrokerRuntime:
    """Compile ``loaded`` into a runtime, registering cache entries for key sources not yet
    cached. Raises ``ConfigInvalid`` for problems only visible here (static keys unusable)."""
    cfg = loaded.config
    trusts: dict[str, IssuerTrust] = {}
    sources: dict[str, tuple[KeySourceSpec, bool]] = {}
    for issuer in cfg.issuers:
        source = key_source(issuer, loaded)
        insecure = issuer.allow_insecure_http and dev_mode
        sources[issuer.name] = (source, insecure)
        trusts[issuer.issuer] = IssuerTrust(
            name=issuer.name,
            rules=ClaimRules(
                issuer=issuer.issuer,
                audiences=frozenset(issuer.audiences),
                leeway=issuer.clock_skew,
                max_lifetime=issuer.max_token_lifetime,
                require_sub=True,
                require_jti=issuer.require_jti,
            ),
            algorithms=frozenset(issuer.algorithms),
            expected_typ=issuer.expected_typ,
            require_jti=issuer.require_jti,
            id_jag=issuer.id_jag,
            keys_id=f"{issuer.name}@{_fingerprint(source, insecure)[:16]}",
        )

    # Cache entries are keyed by name and source fingerprint: an unchanged issuer keeps its
    # cached keys across reloads, and a changed one gets a fresh entry that the configuration
    # still serving never reads. Entries this build adds are removed again if it fails.
    key_ids = {t.name: t.keys_id for t in trusts.values()}
    added: list[str] = []
    problems: list[ConfigProblem] = []
    for index, issuer in enumerate(cfg.issuers):
        keys_id = key_ids[issuer.name]
        if jwks.registered(keys_id):
            continue
        source, insecure = sources[issuer.name]
        try:
            jwks.register(keys_id, source, allow_insecure_loopback=insecure)
            added.append(keys_id)
        except ValueError:
            problems.append(ConfigProblem(f"issuers[{index}].keys", "the static key set has no usable key"))
    spiffe: SpiffeTrust | None = None
    bundle_sources: dict[str, str] = {}
    pending_bundles: list[tuple[str, Any]] = []
    if cfg.trust_domains:
        spiffe, bundle_sources, td_problems, pending_bundles = build_spiffe_trust(
            cfg.trust_domains, bundles if bundles is not None else BundleStore(clock=clock), loaded.resolve,
            clock=clock, previous=previous.bundle_sources if previous is not None else None,
        )
        problems.extend(ConfigProblem(f"trust_domains[{i}]", msg) for i, msg in td_problems)
    if problems:
        for keys_id in added:
            jwks.unregister(keys_id)
        raise ConfigInvalid(problems)

    clients = {
        c.client_id: RegisteredClient(
            client_id=c.client_id,
            auth_method=c.auth_method,
            secret_sha256=bytes.fromhex(c.secret_sha256) if c.secret_sha256 else None,
            keys=jose.parse_jwks(dict(c.jwks)) if c.jwks is not None else None,
            token_exchange=c.token_exchange,
            tls=_tls_rule(c, loaded),
        )
        for c in cfg.clients.registered
    }
    issuer_url = cfg.issuer.rstrip("/")
    authenticator = ClientAuthenticator(
        clients,
        allow_public=cfg.clients.allow_public,
        # RFC 7523 §3: the issuer or the endpoint the assertion is sent to.
        assertion_audiences=frozenset({cfg.issuer, issuer_url, issuer_url + "/token", issuer_url + "/introspect",
                                       issuer_url + "/revoke"}),
        claim_once=claim_once,
        clock=clock,
    )
    methods = (["none"] if cfg.clients.allow_public else []) + sorted({c.auth_method for c in cfg.clients.registered})
    algorithms = signing_algorithms(cfg)
    scopes = {s for g in cfg.grants for t in g.targets for s in t.scopes}

    return BrokerRuntime(
        version=loaded.version,
        issuer=cfg.issuer,
        path_prefix=urlsplit(cfg.issuer).path.rstrip("/"),
        workload_claim=cfg.tokens.workload_claim,
        verifier=OIDCVerifier(trusts, jwks, clock=clock),
        clients=authenticator,
        trust=loaded.compiled,
        issuer_names=frozenset(sources),
        key_sources=key_ids,
        signing_algorithms=algorithms,
        scopes_supported=frozenset(scopes),
        client_auth_methods=tuple(methods),
        exchange_clients=frozenset(c.client_id for c in cfg.clients.registered if c.token_exchange),
        introspection_clients=frozenset(c.client_id for c in cfg.clients.registered if c.introspection),
        spiffe=spiffe,
        bundle_sources=bundle_sources,
        pending_bundles=tuple(pending_bundles),
        files_version=loaded.files_version,
        txn=CompiledTransactionTokens.from_config(cfg),
        authorization_details_types=frozenset(d.type for g in cfg.grants for t in g.targets for d in t.authorization_details),
        upstreams={u.name: u for u in cfg.upstreams},
        chains=ChainRules.from_config(cfg.chains) if any(g.delegation and g.delegation.chain for g in cfg.grants) else None,
        jwt_bearer_clients=frozenset(c.client_id for c in cfg.clients.registered if c.jwt_bearer),
        # RFC 7523 §3 item 3: the issuer identifier, or the token endpoint URL.
        assertion_terms=AssertionTerms(names=frozenset({cfg.issuer, issuer_url, issuer_url + "/token"}), issuer=cfg.issuer),
        jwt_bearer_enabled=any("jwt_bearer" in g.grant_types for g in cfg.grants),
        id_jag_enabled=any(i.id_jag for i in cfg.issuers),
    )


def _tls_rule(client: ClientRegistration, loaded: LoadedConfig) -> TlsClientRule | None:
    """The RFC 8705 §2 rule of a client registered for mutual-TLS authentication."""
    if client.auth_method == SELF_SIGNED_TLS_CLIENT_AUTH:
        return TlsClientRule.self_signed(client.certificates_sha256)
    if client.auth_method == TLS_CLIENT_AUTH:
        return TlsClientRule.pki(
            subject_dn=client.tls_client_auth_subject_dn,
            san=client.tls_client_auth_san(),
            authorities_pem=loaded.client_ca_certificates[client.client_id].encode("ascii"),
        )
    return None
