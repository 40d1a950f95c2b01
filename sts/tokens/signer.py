"""Signing issued tokens (RFC 7515 §5.1, RFC 9068 §2.1).

The key itself is checked once, when the key ring loads it (``keyring.key_pair_problem``: a
token it signs must verify under the JWK we publish). Tokens are not re-verified one by one:
the claims come from a tested, deterministic builder and encoder, and re-verifying an ECDSA
signature would cost as much as checking the subject token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sts import jose
from sts.tokens.claims import ACCESS_TOKEN_TYP
from sts.tokens.keyring import ActiveKey, KeyRing


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
        return SignedToken(token=token, kid=key.private.kid, alg=key.private.alg)
