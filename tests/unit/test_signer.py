"""The signer verifies every token it signs before it leaves (RFC 9068 §2.1 via RFC 7515)."""

from __future__ import annotations

import pytest

from sts import jose
from sts.tokens.claims import ACCESS_TOKEN_TYP
from sts.tokens.keyring import ActiveKey
from sts.tokens.signer import SelfCheckFailed, check_own_token

CLAIMS = {"iss": "https://sts.example.com", "sub": "gh:acme/app", "aud": "https://api.example.com", "exp": 2_000_000_000}


def active(alg: str) -> ActiveKey:
    private = jose.generate_private_key(alg)
    return ActiveKey(private=private, public=private.public(), not_after=2e9)


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_own_token_passes(alg: str) -> None:
    key = active(alg)
    check_own_token(jose.sign(CLAIMS, key.private, typ=ACCESS_TOKEN_TYP), CLAIMS, key)


def test_token_signed_by_another_key_fails() -> None:
    key = active("ES256")
    other = jose.generate_private_key("ES256", kid=key.private.kid)  # same kid, another key
    token = jose.sign(CLAIMS, other, typ=ACCESS_TOKEN_TYP)
    with pytest.raises(SelfCheckFailed, match="does not verify"):
        check_own_token(token, CLAIMS, key)


def test_claims_that_do_not_round_trip_fail() -> None:
    key = active("ES256")
    token = jose.sign(CLAIMS, key.private, typ=ACCESS_TOKEN_TYP)
    with pytest.raises(SelfCheckFailed, match="differ"):
        check_own_token(token, {**CLAIMS, "scope": "read"}, key)


def test_wrong_typ_fails() -> None:
    key = active("ES256")
    with pytest.raises(SelfCheckFailed):
        check_own_token(jose.sign(CLAIMS, key.private, typ="JWT"), CLAIMS, key)
