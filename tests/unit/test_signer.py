"""The signer verifies every token it signs before it leaves (RFC 9068 §2.1 via RFC 7515)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sts import jose
from sts.tokens.claims import ACCESS_TOKEN_TYP
from sts.tokens.keyring import ActiveKey
from sts.tokens.signer import LocalSigner, SelfCheckFailed, check_own_signature

CLAIMS = {"iss": "https://sts.example.com", "sub": "gh:acme/app", "aud": "https://api.example.com", "exp": 2_000_000_000}


def active(alg: str) -> ActiveKey:
    private = jose.generate_private_key(alg)
    return ActiveKey(private=private, public=private.public(), not_after=2e9)


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_own_token_passes(alg: str) -> None:
    key = active(alg)
    signed = jose.sign_parts(CLAIMS, key.private, typ=ACCESS_TOKEN_TYP)
    check_own_signature(signed, key)
    # The checked bytes are the token's: a relying party verifies the same thing.
    decoded = jose.unsafe_decode(signed.token)
    assert decoded.signing_input == signed.signing_input and decoded.signature == signed.signature
    jose.verify_signature(decoded, key.public, alg)
    assert decoded.claims == CLAIMS


def test_token_signed_by_another_key_fails() -> None:
    key = active("ES256")
    other = jose.generate_private_key("ES256", kid=key.private.kid)  # same kid, another key
    with pytest.raises(SelfCheckFailed, match="does not verify"):
        check_own_signature(jose.sign_parts(CLAIMS, other, typ=ACCESS_TOKEN_TYP), key)


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_corrupted_signature_fails(alg: str) -> None:
    key = active(alg)
    signed = jose.sign_parts(CLAIMS, key.private, typ=ACCESS_TOKEN_TYP)
    flipped = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    with pytest.raises(SelfCheckFailed):
        check_own_signature(replace(signed, signature=flipped), key)


def test_signature_over_other_bytes_fails() -> None:
    key = active("ES256")
    signed = jose.sign_parts(CLAIMS, key.private, typ=ACCESS_TOKEN_TYP)
    with pytest.raises(SelfCheckFailed):
        check_own_signature(replace(signed, signing_input=signed.signing_input + b"x"), key)


class _OneKey:
    """The part of the key ring the signer uses."""

    def __init__(self, key: ActiveKey) -> None:
        self.key = key

    def active(self, alg: str) -> ActiveKey:
        return self.key


def test_signer_refuses_a_key_whose_public_half_is_not_its_own() -> None:
    key = active("ES256")
    mismatched = replace(key, public=jose.generate_private_key("ES256", kid=key.private.kid).public())
    signer = LocalSigner(_OneKey(mismatched))  # type: ignore[arg-type]
    with pytest.raises(SelfCheckFailed):
        signer.sign(CLAIMS, mismatched)
    good = LocalSigner(_OneKey(key))  # type: ignore[arg-type]
    token = good.sign(CLAIMS, key)
    assert token.kid == key.private.kid and token.alg == "ES256"
