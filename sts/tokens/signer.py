"""Signing issued tokens and checking our own output (RFC 7515 §5.1, RFC 9068 §2.1).

Like SPIRE's CA, the signer verifies every token it has just signed before it is returned: a
faulty key, encoder or claim builder must fail the request, not produce a token that relying
parties reject or, worse, misread. It costs one signature verification and one decode per
token (about as much as checking the subject token; docs/performance.md). The key itself is
also checked once, when the key ring loads it, against the JWK we publish for it
(``keyring.key_pair_problem``), which the per-token check cannot see: it verifies with the
public half of the private key in hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sts import jose
from sts.tokens.claims import ACCESS_TOKEN_TYP
from sts.tokens.keyring import ActiveKey, KeyRing


class SelfCheckFailed(Exception):
    """A token we signed did not verify, or its claims did not survive the round trip."""


@dataclass(frozen=True, slots=True)
class SignedToken:
    token: str
    kid: str
    alg: str


class LocalSigner:
    """Signs with the key ring's active key for the requested algorithm."""

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    def key_for(self, alg: str) -> ActiveKey:
        return self._keyring.active(alg)

    def sign(self, claims: Mapping[str, Any], key: ActiveKey) -> SignedToken:
        token = jose.sign(claims, key.private, typ=ACCESS_TOKEN_TYP)
        check_own_token(token, claims, key)
        return SignedToken(token=token, kid=key.private.kid, alg=key.private.alg)


def check_own_token(token: str, claims: Mapping[str, Any], key: ActiveKey) -> None:
    try:
        decoded = jose.unsafe_decode(token, max_length=1 << 20)
        alg = jose.check_header(decoded.header, allowed_algorithms=(key.private.alg,), expected_typ=ACCESS_TOKEN_TYP)
        jose.verify_signature(decoded, key.public, alg)
    except jose.JOSEError as exc:
        raise SelfCheckFailed(f"issued token does not verify: {exc.reason}") from exc
    if decoded.header.get("kid") != key.private.kid or decoded.claims != dict(claims):
        raise SelfCheckFailed("issued token claims or kid differ from what was signed")
