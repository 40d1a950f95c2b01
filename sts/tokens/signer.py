"""Signing issued tokens and checking our own output (RFC 7515 §5.1, RFC 9068 §2.1).

Like SPIRE's CA, the signer verifies every token it has just signed before it is returned: a
faulty key, signing primitive or corrupted signature must fail the request, not produce a token
that relying parties reject. The check verifies the signature over exactly the bytes that were
signed and that the token carries (``jose.sign_parts`` returns both), with the public half of
the key; decoding the token again and comparing its claims would re-check only the standard
library's JSON encoder, at the price of a second decode per token. The key itself is checked
once, when the key ring loads it, against the JWK we publish for it
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
    """A token we signed does not verify under the key that signed it."""


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

    def jwks(self) -> dict[str, Any]:
        """The published key set: what verifies a token we issued (sts.txn.verify)."""
        return self._keyring.jwks()

    def sign(self, claims: Mapping[str, Any], key: ActiveKey, typ: str = ACCESS_TOKEN_TYP) -> SignedToken:
        signed = jose.sign_parts(claims, key.private, typ=typ)
        check_own_signature(signed, key)
        return SignedToken(token=signed.token, kid=key.private.kid, alg=key.private.alg)


def check_own_signature(signed: jose.SignedJWS, key: ActiveKey) -> None:
    """Raise ``SelfCheckFailed`` unless ``signed`` verifies under ``key``'s public half."""
    try:
        jose.verify_detached(signed.signing_input, signed.signature, key.public, key.private.alg)
    except jose.JOSEError as exc:
        raise SelfCheckFailed(f"issued token does not verify: {exc.reason}") from exc
