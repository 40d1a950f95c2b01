"""JWT-SVID validation rules (JWT-SVID.md §1-§4, §6.2, Appendix A), pure.

* §1: "JWS Compact Serialization in all cases" (:func:`sts.jose.unsafe_decode` accepts only
  that).
* §2: "Any header not described here, registered or private, MUST NOT be included": the
  header may hold ``alg``, ``kid`` and ``typ`` only (``header_not_allowed``).
* §2.1: ``alg`` is one of RS256/384/512, ES256/384/512, PS256/384/512; "Validators receiving a
  token with the ``alg`` parameter set to a different value MUST reject the token". The
  configured allowlist can only narrow that set.
* §2.2: "The ``kid`` header is optional": with no ``kid`` the trust domain's only key for the
  algorithm is used, never a guess among several (:meth:`sts.jose.KeySet.find`).
* §2.3: ``typ`` "If set, its value MUST be either ``JWT`` or ``JOSE``" (exact strings).
* §3.1: "The ``sub`` claim MUST be set to the SPIFFE ID of the workload": parsed strictly, and
  an ID without a path (the trust domain itself, SPIFFE-ID §3.1) is refused as a workload.
* §3.2: "Validators MUST reject tokens without an ``aud`` claim set, or if the value that the
  validator identifies with is not present as an ``aud`` element".
* §3.3: "The ``exp`` claim MUST be set, and validators MUST reject tokens without this claim";
  Appendix A: "Must not be in the past (a small amount of leeway is acceptable)".
* §4: "signing and validation semantics are the same as regular JWTs": ``nbf`` and ``iat``,
  when present, are RFC 7519 §4.1.5/§4.1.6 NumericDates and are honoured.
* §6.2: only ``jwt-svid`` keys of the SVID's own trust domain verify it (the bundle layer
  keeps them apart).

Beyond the spec, as for OIDC issuers: a lifetime cap (``exp - iat`` and ``exp - now``), and an
optional one-time ``jti`` (§7.1 allows it).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sts import jose
from sts.spiffe.id import InvalidSpiffeID, SpiffeID, parse_spiffe_id

__all__ = [
    "JWT_SVID_ALGORITHMS",
    "JwtSvidRejected",
    "JwtSvidRules",
    "check_jwt_svid_header",
    "peek_spiffe_subject",
    "validate_jwt_svid_claims",
]

JWT_SVID_ALGORITHMS: Final = (
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
)  # fmt: skip
_ALLOWED_HEADERS: Final = frozenset({"alg", "kid", "typ"})
_ALLOWED_TYP: Final = frozenset({"JWT", "JOSE"})


class JwtSvidRejected(Exception):
    """A JWT-SVID is not acceptable. ``kind`` is the kind of check (``malformed``, ``header``,
    ``claims``), ``reason`` a stable code; neither holds token contents."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True, slots=True)
class JwtSvidRules:
    """What one trust domain's JWT-SVIDs must satisfy. Invariant: ``audiences`` is non-empty,
    ``algorithms`` is a non-empty subset of :data:`JWT_SVID_ALGORITHMS`."""

    audiences: frozenset[str]
    algorithms: frozenset[str] = frozenset(JWT_SVID_ALGORITHMS)
    leeway: int = 60
    max_lifetime: int | None = 86400
    require_jti: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.audiences, str) or not self.audiences:
            raise ValueError("audiences must be a non-empty collection of strings")
        if not self.algorithms or not set(self.algorithms) <= set(JWT_SVID_ALGORITHMS):
            raise ValueError("algorithms must be JWT-SVID algorithms")


def peek_spiffe_subject(claims: Mapping[str, Any]) -> SpiffeID:
    """The ``sub`` of an UNVERIFIED token as a SPIFFE ID: used only to choose the trust domain
    whose keys apply (as SPIRE's ``UnsafeClaimsWithoutVerification``). Raises
    :class:`JwtSvidRejected` (``claims``) when it is missing or invalid."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise JwtSvidRejected("claims", "sub_missing")
    try:
        spiffe_id = parse_spiffe_id(sub)
    except InvalidSpiffeID as exc:
        raise JwtSvidRejected("claims", f"sub_invalid_{exc.reason}") from None
    if not spiffe_id.path:
        raise JwtSvidRejected("claims", "sub_without_path")
    return spiffe_id


def check_jwt_svid_header(header: Mapping[str, Any], algorithms: Collection[str]) -> str:
    """Apply §2 to a decoded header; return the ``alg`` to verify with."""
    extra = set(header) - _ALLOWED_HEADERS
    if extra:
        raise JwtSvidRejected("header", "header_not_allowed")
    allowed = frozenset(algorithms) & frozenset(JWT_SVID_ALGORITHMS)
    try:
        alg = jose.check_header(header, allowed_algorithms=allowed)
    except jose.JOSEError as exc:
        raise JwtSvidRejected("header", exc.reason) from None
    if "typ" in header and header["typ"] not in _ALLOWED_TYP:
        raise JwtSvidRejected("header", "typ_mismatch")
    return alg


def _numeric_date(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def validate_jwt_svid_claims(claims: Mapping[str, Any], rules: JwtSvidRules, now: float) -> None:
    """Apply §3 and RFC 7519 §4.1 to the claims of a token whose signature was verified."""
    if "exp" not in claims:
        raise JwtSvidRejected("claims", "exp_missing")
    exp = claims["exp"]
    if not _numeric_date(exp):
        raise JwtSvidRejected("claims", "exp_invalid")
    for name in ("nbf", "iat"):
        if name in claims and not _numeric_date(claims[name]):
            raise JwtSvidRejected("claims", "claim_type")
    nbf, iat = claims.get("nbf"), claims.get("iat")
    if exp <= now - rules.leeway:
        raise JwtSvidRejected("claims", "expired")
    if nbf is not None and nbf > now + rules.leeway:
        raise JwtSvidRejected("claims", "not_yet_valid")
    if iat is not None and iat > now + rules.leeway:
        raise JwtSvidRejected("claims", "iat_in_future")
    if rules.max_lifetime is not None:
        if iat is not None and exp - iat > rules.max_lifetime:
            raise JwtSvidRejected("claims", "lifetime_too_long")
        if exp - now > rules.max_lifetime + rules.leeway:
            raise JwtSvidRejected("claims", "lifetime_too_long")

    aud = claims.get("aud")
    if isinstance(aud, str):
        audiences: list[str] = [aud]
    elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        audiences = aud
    elif aud is None:
        raise JwtSvidRejected("claims", "aud_missing")
    else:
        raise JwtSvidRejected("claims", "claim_type")
    if rules.audiences.isdisjoint(audiences):
        raise JwtSvidRejected("claims", "aud_mismatch")

    jti = claims.get("jti")
    if jti is not None and not isinstance(jti, str):
        raise JwtSvidRejected("claims", "claim_type")
    if rules.require_jti and not jti:
        raise JwtSvidRejected("claims", "jti_missing")
