"""Verifying OIDC/JWT subject and actor tokens (RFC 7519 §7.2, RFC 8725 §3, OIDC Core §3.1.3.7).

The only step that reads a token before its signature is checked is ``jose.unsafe_decode``,
and it is used for two things: to pick the trusted issuer by the exact ``iss`` string and to
pick the key by ``kid`` among that issuer's keys. Keys are never located through ``jku``,
``x5u``, ``jwk`` or ``x5c``; a token naming an issuer we do not trust is refused before any key
is looked up, so nothing in a token can make the broker fetch anything.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from sts import jose
from sts.subject.claims import ClaimError, ClaimRules, validate_claims
from sts.subject.jwks import JWKSCache, KeysUnavailable, UnknownKey
from sts.subject.model import VerifiedIdJag, VerifiedSubject

# draft-ietf-oauth-identity-assertion-authz-grant-04 §3.1: "The typ of the JWT indicated in the
# JWT header MUST be oauth-id-jag+jwt".
ID_JAG_TYP = "oauth-id-jag+jwt"


class SubjectRejected(Exception):
    """The token is not acceptable. ``reason`` is a stable code for audit; ``kind`` is the kind
    of check that failed, which is all the caller is told."""

    def __init__(self, kind: str, reason: str, *, issuer_name: str | None = None, detail: str | None = None) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason
        self.issuer_name = issuer_name
        self.detail = detail


class IssuerKeysUnavailable(Exception):
    """The issuer is trusted but none of its keys could be loaded (HTTP 503 upstream)."""

    def __init__(self, issuer_name: str, *, retry_after: int = 5) -> None:
        super().__init__(issuer_name)
        self.issuer_name = issuer_name
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class IssuerTrust:
    """Everything needed to verify one issuer's tokens, compiled at configuration load."""

    name: str
    rules: ClaimRules
    algorithms: frozenset[str]
    expected_typ: str | None
    require_jti: bool
    # Trusted to issue ID-JAGs for this broker (IssuerConfig.id_jag).
    id_jag: bool = False
    # The JWKS cache entry holding this issuer's keys: the name plus a fingerprint of the key
    # source, so a configuration that changes an issuer's source never shares its cache entry
    # with the configuration still serving (see sts.runtime.build_runtime).
    keys_id: str = ""


# JWTs of kinds that are never a workload's credential: RFC 8725 §3.12 ("Use Mutually Exclusive
# Validation Rules for Different Kinds of JWTs") and §3.11 (explicit typing). A trusted issuer
# may sign these too (logout and security event tokens), so without an ``expected_typ`` of its
# own an issuer's token of one of these types is refused rather than taken for an identity.
OTHER_JWT_KINDS = frozenset({
    "application/dpop+jwt",  # RFC 9449 §4.2
    "application/logout+jwt",  # OpenID Connect Back-Channel Logout 1.0 §2.4
    "application/secevent+jwt",  # RFC 8417 §2.3
    "application/token-introspection+jwt",  # RFC 9701 §5
    "application/kb+jwt",  # the key binding JWT of SD-JWT
    "application/oauth-authz-req+jwt",  # RFC 9101 (JWT-secured authorization requests)
    # An ID-JAG is a grant for one authorization server, accepted only as a JWT-bearer
    # assertion from an issuer trusted for ID-JAGs (sts.assertion), never as a subject token.
    "application/" + ID_JAG_TYP,
})


def _other_kind(typ: object) -> bool:
    if not isinstance(typ, str):
        return False
    media = typ.lower()
    return (media if "/" in media else "application/" + media) in OTHER_JWT_KINDS


@dataclass(frozen=True, slots=True)
class AssertionTerms:
    """Where verifying a JWT presented as an RFC 7523 authorization grant differs from verifying
    a subject token. ``names`` are this broker's own names (its issuer identifier and token
    endpoint URL): RFC 7523 §3 item 3, "The JWT MUST contain an "aud" (audience) claim
    containing a value that identifies the authorization server as an intended audience", so
    they are accepted besides the issuer's configured ``audiences``. ``issuer`` is the broker's
    issuer identifier, the only audience of an ID-JAG (draft §4.4.1). A ``jti`` is required of
    every assertion (MCP SEP-1933 lists it among the claims a workload JWT MUST contain)."""

    names: frozenset[str]
    issuer: str


def is_id_jag(typ: object) -> bool:
    """Whether a ``typ`` header names an ID-JAG (media types compare case-insensitively, and
    "application/" is implied when absent: RFC 7515 §4.1.9)."""
    if not isinstance(typ, str):
        return False
    media = typ.lower()
    return (media if "/" in media else "application/" + media) == "application/" + ID_JAG_TYP


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class OIDCVerifier:
    """Verifies JWTs from the configured issuers. Invariant: a returned ``VerifiedSubject``
    passed signature, algorithm, header and registered-claim checks for exactly one trusted
    issuer."""

    def __init__(
        self,
        issuers: Mapping[str, IssuerTrust],
        keys: JWKSCache,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuers = dict(issuers)  # keyed by the exact `iss` string
        self._by_name = {t.name: t for t in self._issuers.values()}
        self._keys = keys
        self._clock = clock

    def trusts(self, iss: str) -> bool:
        return iss in self._issuers

    def trust_for(self, iss: object) -> IssuerTrust | None:
        """The configuration that applies to tokens whose ``iss`` is exactly ``iss`` (for
        ``sts explain``, which shows what each check compared)."""
        return self._issuers.get(iss) if isinstance(iss, str) else None

    async def verify(self, token: str, *, assertion: AssertionTerms | None = None) -> VerifiedSubject:
        """Verify a subject token, or with ``assertion`` a JWT-bearer assertion (an ID-JAG when
        its ``typ`` says so; then only from an issuer trusted for ID-JAGs)."""
        try:
            unverified = jose.unsafe_decode(token)
        except jose.JOSEError as exc:
            raise SubjectRejected("malformed", exc.reason) from None

        # Named unsafe peek: `iss` selects which trust configuration applies, nothing more.
        iss = unverified.claims.get("iss")
        trust = self._issuers.get(iss) if isinstance(iss, str) else None
        if trust is None:
            raise SubjectRejected("untrusted_issuer", "issuer_not_trusted", detail=str(iss)[:200] if iss else None)

        # Named unsafe peek: the header's `typ` says which profile's rules apply (RFC 8725 §3.11).
        id_jag = assertion is not None and is_id_jag(unverified.header.get("typ"))
        if id_jag and not trust.id_jag:
            raise SubjectRejected("untrusted_issuer", "idjag_issuer_not_trusted", issuer_name=trust.name)
        expected_typ = ID_JAG_TYP if id_jag else trust.expected_typ
        try:
            alg = jose.check_header(
                unverified.header,
                allowed_algorithms=trust.algorithms,
                expected_typ=expected_typ,
            )
        except jose.JOSEError as exc:
            raise SubjectRejected("header", exc.reason, issuer_name=trust.name) from None
        if expected_typ is None and _other_kind(unverified.header.get("typ")):
            raise SubjectRejected("header", "typ_other_kind", issuer_name=trust.name)

        kid = unverified.header.get("kid")  # check_header refused a non-string kid
        try:
            key = await self._keys.lookup(trust.keys_id or trust.name, kid, alg)
        except KeysUnavailable as exc:
            raise IssuerKeysUnavailable(trust.name, retry_after=max(1, min(exc.retry_after, 300))) from None
        except UnknownKey:
            raise SubjectRejected("signature", "unknown_kid", issuer_name=trust.name) from None

        try:
            jose.verify_signature(unverified, key, alg)
        except jose.JOSEError as exc:
            raise SubjectRejected("signature", exc.reason, issuer_name=trust.name) from None

        claims = unverified.claims
        rules = trust.rules
        if assertion is not None:
            audiences = frozenset({assertion.issuer}) if id_jag else rules.audiences | assertion.names
            rules = replace(rules, audiences=audiences, require_jti=True)
        try:
            validate_claims(claims, rules, self._clock())
        except ClaimError as exc:
            raise SubjectRejected("claims", exc.reason, issuer_name=trust.name) from None

        return (VerifiedIdJag if id_jag else VerifiedSubject)(
            issuer_name=trust.name,
            issuer=iss,
            subject=str(claims.get("sub", "")),
            claims=claims,
            expires_at=float(claims["exp"]),
            token_sha256=token_sha256(token),
        )

    def replay_window(self, issuer_name: str) -> int | None:
        """The clock skew to add to ``exp`` when remembering a one-time ``jti`` (tokens are
        accepted until exp + skew, so the guard must outlive that), or ``None`` when the issuer
        does not ask for one-time tokens."""
        trust = self._by_name.get(issuer_name)
        return trust.rules.leeway if trust is not None and trust.require_jti else None
