"""Registered-claim validation of a verified JWT (RFC 7519 §4.1, RFC 8725 §3.8-3.10).

Pure: the current time is passed in. Run only after the signature has been verified.

* §4.1.1 ``iss``: "The processing of this claim is generally application specific"; here it
  must equal the configured issuer exactly (RFC 8725 §3.8), with no normalisation.
* §4.1.3 ``aud``: "If the principal processing the claim does not identify itself with a value
  in the "aud" claim when this claim is present, then the JWT MUST be rejected." Required here
  (RFC 8725 §3.9), as a string or a non-empty array of strings.
* §4.1.4 ``exp``: "the current date/time MUST be before the expiration date/time"; required
  here, a NumericDate, with ``leeway`` seconds for clock skew.
* §4.1.5 ``nbf`` and §4.1.6 ``iat``: NumericDates when present; ``nbf`` in the future and
  ``iat`` in the future (beyond the leeway) are refused.
* Lifetime cap: a token valid for very long is a bearer secret that outlives its purpose, so
  ``exp - iat`` and the remaining ``exp - now`` are bounded by ``max_lifetime``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ClaimError", "ClaimRules", "validate_claims"]


class ClaimError(Exception):
    """A registered claim is missing, mistyped or outside its window.

    Invariant: ``reason`` is one of ``iss_mismatch``, ``aud_mismatch``, ``expired``,
    ``not_yet_valid``, ``iat_in_future``, ``exp_missing``, ``exp_invalid``,
    ``lifetime_too_long``, ``sub_missing``, ``claim_type``, ``jti_missing``; the message names
    at most the claim, never its value.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """What one trusted issuer's tokens must satisfy.

    Invariant: ``issuer`` is non-empty, ``audiences`` is a non-empty frozenset of strings,
    ``leeway >= 0`` and ``max_lifetime`` is ``None`` or positive.
    """

    issuer: str
    audiences: frozenset[str]
    leeway: int = 60
    max_lifetime: int | None = 86400
    require_sub: bool = True
    require_jti: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("issuer must be a non-empty string")
        if isinstance(self.audiences, str):
            # frozenset("https://a") would silently become a set of characters.
            raise ValueError("audiences must be a collection of strings, not a string")
        audiences = frozenset(self.audiences)
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ValueError("audiences must be a non-empty collection of non-empty strings")
        object.__setattr__(self, "audiences", audiences)
        if self.leeway < 0:
            raise ValueError("leeway must be >= 0")
        if self.max_lifetime is not None and self.max_lifetime <= 0:
            raise ValueError("max_lifetime must be positive or None")


def _numeric_date(value: Any) -> bool:
    # RFC 7519 §2 NumericDate: a JSON number. bool is an int subclass in Python; NaN and the
    # infinities cannot come from strict JSON but can from other callers.
    return type(value) in (int, float) and math.isfinite(value)


def validate_claims(claims: Mapping[str, Any], rules: ClaimRules, now: float) -> None:
    """Raise :class:`ClaimError` unless ``claims`` satisfy ``rules`` at time ``now``."""
    # iss: exact string equality (RFC 8725 §3.8).
    iss = claims.get("iss")
    if iss is not None and not isinstance(iss, str):
        raise ClaimError("claim_type", "iss")
    if iss != rules.issuer:
        raise ClaimError("iss_mismatch")

    # exp, nbf, iat: types first, then the windows.
    if "exp" not in claims:
        raise ClaimError("exp_missing")
    exp = claims["exp"]
    if not _numeric_date(exp):
        raise ClaimError("exp_invalid")
    nbf = claims.get("nbf")
    if "nbf" in claims and not _numeric_date(nbf):
        raise ClaimError("claim_type", "nbf")
    iat = claims.get("iat")
    if "iat" in claims and not _numeric_date(iat):
        raise ClaimError("claim_type", "iat")

    leeway = rules.leeway
    if exp <= now - leeway:
        raise ClaimError("expired")
    if nbf is not None and nbf > now + leeway:
        raise ClaimError("not_yet_valid")
    if iat is not None and iat > now + leeway:
        raise ClaimError("iat_in_future")
    max_lifetime = rules.max_lifetime
    if max_lifetime is not None:
        if iat is not None and exp - iat > max_lifetime:
            raise ClaimError("lifetime_too_long", "exp - iat")
        if exp - now > max_lifetime + leeway:
            raise ClaimError("lifetime_too_long", "exp - now")

    # aud: a string or a non-empty array of strings, one of which is ours.
    aud = claims.get("aud")
    if isinstance(aud, str):
        if aud not in rules.audiences:
            raise ClaimError("aud_mismatch")
    elif isinstance(aud, list):
        if not aud or not all(isinstance(a, str) for a in aud):
            raise ClaimError("claim_type", "aud")
        if rules.audiences.isdisjoint(aud):
            raise ClaimError("aud_mismatch")
    elif aud is None:
        raise ClaimError("aud_mismatch", "aud missing")
    else:
        raise ClaimError("claim_type", "aud")

    # sub, jti: strings when present (RFC 7519 §4.1.2, §4.1.7); non-empty when required.
    for name, required, missing in (
        ("sub", rules.require_sub, "sub_missing"),
        ("jti", rules.require_jti, "jti_missing"),
    ):
        value = claims.get(name)
        if value is not None and not isinstance(value, str):
            raise ClaimError("claim_type", name)
        if required and not value:
            raise ClaimError(missing)
