"""Checking a transaction token this broker issued, presented for replacement (pure).

draft-ietf-oauth-transaction-tokens-10 §"Txn-Token Validation": a recipient MUST "Validate
the Txn-Token JWS signature", "Verify the aud claim identifies the Trust Domain" and "Verify
the Txn-Token is not expired"; §"Txn-Token as a subject_token": the TTS "MUST NOT issue a new
Txn-Token when the Txn-Token being replaced has expired" — so no leeway on ``exp``. The header
must say ``typ: txntoken+jwt`` (§"JWT Header"), so that no other kind of token of ours (an
access token) can pass for a transaction token, and the key must be one the broker publishes:
no network I/O, the key ring is in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sts import jose
from sts.txn.decision import TXN_TOKEN_TYP

_ALGORITHMS: Final = ("ES256", "RS256", "EdDSA")
# Replicas' clocks differ a little: a token another replica just issued is not "from the future".
_IAT_LEEWAY: Final = 30


class TxnTokenRejected(Exception):
    """``reason`` is a stable code for the audit record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def verify_txn_token(token: str, *, issuer: str, trust_domain: str, jwks: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The claims of ``token`` if this broker signed it as a transaction token for
    ``trust_domain`` and it has not expired; else :class:`TxnTokenRejected`."""
    try:
        unverified = jose.unsafe_decode(token)
        alg = jose.check_header(unverified.header, allowed_algorithms=_ALGORITHMS, expected_typ=TXN_TOKEN_TYP,
                                forbid_embedded_keys=True)
        kid = unverified.header.get("kid")
        key = jose.parse_jwks(jwks).find(kid if isinstance(kid, str) else None, alg)
        if key is None:
            raise TxnTokenRejected("unknown_key")
        jose.verify_signature(unverified, key, alg)
    except jose.JOSEError as exc:
        raise TxnTokenRejected(getattr(exc, "reason", "malformed") or "malformed") from None
    claims = dict(unverified.claims)
    if claims.get("iss") != issuer:
        raise TxnTokenRejected("issuer")
    if claims.get("aud") != trust_domain:
        raise TxnTokenRejected("audience")
    exp, iat = claims.get("exp"), claims.get("iat")
    if type(exp) not in (int, float) or now >= exp:
        raise TxnTokenRejected("expired")
    if type(iat) not in (int, float) or iat > now + _IAT_LEEWAY:
        raise TxnTokenRejected("iat")
    return claims
