"""Verifying SVIDs presented as subject tokens: JWT-SVIDs and X.509-SVIDs over mTLS.

The trust domain that applies is chosen from the SVID's own SPIFFE ID, read before anything
is verified (a named, unsafe peek, as SPIRE's ``UnsafeClaimsWithoutVerification``), and then
only that trust domain's bundle is used (SPIFFE Federation §4.2, §7.3: bundles are never
merged). A trust domain that is not configured is refused before any key is looked up, so
nothing in an SVID can make the broker fetch anything. The rules themselves are in
:mod:`sts.spiffe.jwtsvid` and :mod:`sts.spiffe.x509svid`.

Refusals raise :class:`sts.subject.oidc.SubjectRejected` with a ``kind`` the pipeline maps to a
fixed ``invalid_request`` text (RFC 8693 §2.2.2); a trust domain without a usable bundle raises
:class:`sts.subject.oidc.IssuerKeysUnavailable` (503), as an issuer without keys does.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sts import jose
from sts.config.spiffe import TrustDomainConfig
from sts.spiffe.bundle import SpiffeBundle
from sts.spiffe.bundle_source import (
    BundleFile,
    BundleSourceSpec,
    BundleStore,
    HttpsSpiffeEndpoint,
    HttpsWebEndpoint,
)
from sts.spiffe.jwtsvid import (
    JwtSvidRejected,
    JwtSvidRules,
    check_jwt_svid_header,
    peek_spiffe_subject,
    validate_jwt_svid_claims,
)
from sts.spiffe.mapping import SpiffeMapping, VerifiedSvid
from sts.spiffe.mtls import ClientCertificate
from sts.spiffe.x509svid import (
    SvidRejected,
    certificate_der,
    leaf_spiffe_id,
    parse_chain,
    verify_chain,
)
from sts.subject.oidc import IssuerKeysUnavailable, SubjectRejected
from sts.trust.mapping import MappingResult

__all__ = ["SpiffeTrust", "TrustDomainTrust", "build_spiffe_trust", "bundle_source", "source_fingerprint"]


@dataclass(frozen=True)
class TrustDomainTrust:
    """Everything needed to accept one trust domain's SVIDs, compiled at configuration load.
    ``jwt`` is ``None`` when the trust domain's JWT-SVIDs are not accepted."""

    name: str
    jwt: JwtSvidRules | None
    x509: bool
    mapping: SpiffeMapping

    @classmethod
    def from_config(cls, cfg: TrustDomainConfig, *, location: str) -> TrustDomainTrust:
        jwt = None
        if cfg.accepts_jwt_svids:
            jwt = JwtSvidRules(
                audiences=frozenset(cfg.audiences),
                algorithms=frozenset(cfg.algorithms),
                leeway=cfg.clock_skew,
                max_lifetime=cfg.max_token_lifetime,
                require_jti=cfg.require_jti,
            )
        return cls(cfg.name, jwt, cfg.x509_svid, SpiffeMapping(cfg, location=location))


def bundle_source(cfg: TrustDomainConfig, resolve: Callable[[str], Path]) -> BundleSourceSpec:
    if cfg.bundle_file is not None:
        return BundleFile(resolve(cfg.bundle_file))
    endpoint = cfg.bundle_endpoint
    assert endpoint is not None
    if endpoint.profile == "https_web":
        return HttpsWebEndpoint(endpoint.url, resolve(endpoint.ca_file) if endpoint.ca_file else None)
    assert endpoint.spiffe_id is not None
    bootstrap = resolve(endpoint.bootstrap_bundle_file) if endpoint.bootstrap_bundle_file else None
    return HttpsSpiffeEndpoint(endpoint.url, endpoint.spiffe_id, bootstrap)


def source_fingerprint(source: BundleSourceSpec) -> str:
    return hashlib.sha256(repr(source).encode()).hexdigest()


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class SpiffeTrust:
    """Verifies SVIDs of the configured trust domains and maps them to workload identities.

    Invariant: a returned :class:`VerifiedSvid` names a configured trust domain equal to its
    SPIFFE ID's trust domain, and was verified with that trust domain's current bundle only.
    """

    def __init__(
        self,
        domains: Mapping[str, TrustDomainTrust],
        bundles: BundleStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._domains = dict(domains)
        self._bundles = bundles
        self._clock = clock

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._domains)

    def handles(self, issuer_name: str) -> bool:
        return issuer_name in self._domains

    @staticmethod
    def looks_like_jwt_svid(token: str, oidc_trusts: Callable[[str], bool]) -> bool:
        """Named unsafe peek for dispatch: a JWT whose ``iss`` is not a configured OIDC issuer
        and whose ``sub`` is (or pretends to be) a SPIFFE ID goes to the JWT-SVID verifier.
        A JWT-SVID from SPIRE's OIDC discovery provider names that provider in ``iss`` and is
        verified as an OIDC token of that configured issuer."""
        try:
            claims = jose.unsafe_decode(token).claims
        except jose.JOSEError:
            return False
        iss = claims.get("iss")
        if isinstance(iss, str) and oidc_trusts(iss):
            return False
        sub = claims.get("sub")
        return isinstance(sub, str) and sub[:7].lower() == "spiffe:"

    async def _bundle(self, trust_domain: str) -> SpiffeBundle:
        bundle = self._bundles.current(trust_domain)
        if bundle is None:
            await self._bundles.refetch(trust_domain)
            bundle = self._bundles.current(trust_domain)
        if bundle is None:
            raise IssuerKeysUnavailable(trust_domain, retry_after=self._bundles.retry_after(trust_domain))
        return bundle

    async def verify_jwt(self, token: str) -> VerifiedSvid:
        """Verify a JWT-SVID (JWT-SVID §2-§4)."""
        try:
            unverified = jose.unsafe_decode(token)
        except jose.JOSEError as exc:
            raise SubjectRejected("malformed", exc.reason) from None
        try:
            spiffe_id = peek_spiffe_subject(unverified.claims)
        except JwtSvidRejected as exc:
            raise SubjectRejected(exc.kind, exc.reason) from None
        td = spiffe_id.trust_domain
        trust = self._domains.get(td)
        if trust is None or trust.jwt is None:
            raise SubjectRejected("untrusted_issuer", "trust_domain_not_trusted" if trust is None else "jwt_svid_not_accepted",
                                  detail=td[:200])
        try:
            alg = check_jwt_svid_header(unverified.header, trust.jwt.algorithms)
        except JwtSvidRejected as exc:
            raise SubjectRejected(exc.kind, exc.reason, issuer_name=td) from None

        kid = unverified.header.get("kid")
        bundle = await self._bundle(td)
        key = bundle.jwt_keys.find(kid, alg)
        if key is None:
            # A key published just before its first use: one permitted refetch.
            await self._bundles.refetch(td)
            bundle = self._bundles.current(td) or bundle
            key = bundle.jwt_keys.find(kid, alg)
        if key is None:
            raise SubjectRejected("signature", "unknown_kid", issuer_name=td)
        try:
            jose.verify_signature(unverified, key, alg)
        except jose.JOSEError as exc:
            raise SubjectRejected("signature", exc.reason, issuer_name=td) from None

        claims = unverified.claims
        try:
            validate_jwt_svid_claims(claims, trust.jwt, self._clock())
        except JwtSvidRejected as exc:
            raise SubjectRejected(exc.kind, exc.reason, issuer_name=td) from None
        iss = claims.get("iss")
        return VerifiedSvid(
            issuer_name=td,
            issuer=iss if isinstance(iss, str) and iss else f"spiffe://{td}",
            subject=str(spiffe_id),
            claims=claims,
            expires_at=float(claims["exp"]),
            token_sha256=_sha256(token),
            spiffe_id=spiffe_id,
            svid="jwt",
        )

    async def verify_x509(self, token: str, peer: ClientCertificate | None) -> VerifiedSvid:
        """Verify an ``mtls`` subject token: a chain whose leaf authenticated the connection."""
        try:
            chain = parse_chain(token)
        except SvidRejected as exc:
            raise SubjectRejected("malformed", exc.reason) from None
        leaf = chain[0]
        if peer is None:
            raise SubjectRejected("binding", "no_client_certificate")
        if not peer.matches(certificate_der(leaf)):
            raise SubjectRejected("binding", "leaf_not_client_certificate", detail=peer.source)
        try:
            spiffe_id = leaf_spiffe_id(leaf)  # unsafe peek: picks the trust domain only
        except SvidRejected as exc:
            raise SubjectRejected("certificate", exc.reason) from None
        td = spiffe_id.trust_domain
        trust = self._domains.get(td)
        if trust is None or not trust.x509:
            raise SubjectRejected("untrusted_issuer", "trust_domain_not_trusted" if trust is None else "x509_svid_not_accepted",
                                  detail=td[:200])
        bundle = await self._bundle(td)
        try:
            verified = verify_chain(chain, bundle.x509_authorities, now=self._clock())
        except SvidRejected as exc:
            if exc.reason not in ("path_validation_failed", "no_x509_authorities"):
                raise SubjectRejected("certificate", exc.reason, issuer_name=td, detail=exc.detail) from None
            # Possibly signed by an authority published after our last poll: one permitted
            # refetch, then the verdict stands.
            await self._bundles.refetch(td)
            fresh = self._bundles.current(td)
            if fresh is None or fresh.same_keys(bundle):
                raise SubjectRejected("certificate", exc.reason, issuer_name=td, detail=exc.detail) from None
            try:
                verified = verify_chain(chain, fresh.x509_authorities, now=self._clock())
            except SvidRejected as again:
                raise SubjectRejected("certificate", again.reason, issuer_name=td, detail=again.detail) from None
        claims: dict[str, Any] = {
            "sub": str(spiffe_id),
            "iss": f"spiffe://{td}",
            "nbf": int(verified.not_before),
            "exp": int(verified.not_after),
            "x5t#S256": jose.b64url_encode(hashlib.sha256(certificate_der(leaf)).digest()),
        }
        return VerifiedSvid(
            issuer_name=td,
            issuer=f"spiffe://{td}",
            subject=str(spiffe_id),
            claims=claims,
            expires_at=verified.not_after,
            token_sha256=_sha256(token),
            spiffe_id=spiffe_id,
            svid="x509",
        )

    def replay_window(self, subject: VerifiedSvid) -> int | None:
        """The clock skew to add to ``exp`` when remembering a one-time ``jti`` of a JWT-SVID
        (JWT-SVID §7.1), or ``None`` when the trust domain does not ask for one-time tokens.
        X.509-SVIDs are proven by the TLS handshake and have no ``jti``."""
        trust = self._domains.get(subject.issuer_name)
        if subject.svid != "jwt" or trust is None or trust.jwt is None or not trust.jwt.require_jti:
            return None
        return trust.jwt.leeway

    def map_identity(self, subject: VerifiedSvid) -> MappingResult:
        return self._domains[subject.issuer_name].mapping.map_identity(subject)


def build_spiffe_trust(
    trust_domains: Sequence[TrustDomainConfig],
    bundles: BundleStore,
    resolve: Callable[[str], Path],
    *,
    clock: Callable[[], float] = time.time,
    previous: Mapping[str, str] | None = None,
) -> tuple[SpiffeTrust, dict[str, str], list[tuple[int, str]], list[tuple[str, BundleSourceSpec]]]:
    """Compile the ``trust_domains`` section. Returns the trust, the source fingerprints by
    trust domain, ``(index, message)`` problems only visible here (a bundle file that became
    unreadable, a CA file OpenSSL refuses), and the bundle sources that changed.

    Changed sources are only *checked* here, in a scratch store: the shared store serves the
    configuration that is still running, so the caller registers them (``commit_bundles``)
    in the same event-loop step as it swaps the new configuration in, and never for a
    configuration that is refused."""
    domains: dict[str, TrustDomainTrust] = {}
    fingerprints: dict[str, str] = {}
    problems: list[tuple[int, str]] = []
    pending: list[tuple[str, BundleSourceSpec]] = []
    scratch = BundleStore(clock=clock)
    for index, cfg in enumerate(trust_domains):
        domains[cfg.name] = TrustDomainTrust.from_config(cfg, location=f"trust_domains[{index}]")
        source = bundle_source(cfg, resolve)
        fingerprints[cfg.name] = source_fingerprint(source)
        if previous is not None and previous.get(cfg.name) == fingerprints[cfg.name] and bundles.registered(cfg.name):
            continue
        try:
            scratch.register(cfg.name, source)
            pending.append((cfg.name, source))
        except ValueError as exc:
            problems.append((index, str(exc)))
        finally:
            scratch.unregister(cfg.name)
    return SpiffeTrust(domains, bundles, clock=clock), fingerprints, problems, pending


def commit_bundles(bundles: BundleStore, pending: Sequence[tuple[str, BundleSourceSpec]]) -> None:
    """Register checked bundle sources. Call with no ``await`` between this and the swap of
    the configuration that needs them, so no request sees one without the other."""
    for name, source in pending:
        bundles.register(name, source)
