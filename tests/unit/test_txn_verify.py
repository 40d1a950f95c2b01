"""Checking a transaction token of ours presented for replacement (draft-ietf-oauth-transaction-tokens-10)."""

from __future__ import annotations

from typing import Any

import pytest

from sts import jose
from sts.txn.verify import TxnTokenRejected, verify_txn_token

KEY = jose.generate_private_key("ES256", kid="k1")
OTHER = jose.generate_private_key("ES256", kid="k1")
JWKS = {"keys": [KEY.public_jwk()]}
ISS, TD, NOW = "https://sts.example.com", "trust-domain.example", 1_000_000
CLAIMS = {"iss": ISS, "aud": TD, "iat": NOW - 10, "exp": NOW + 290, "txn": "t", "sub": "s", "scope": "a", "req_wl": "c"}


def token(key: jose.PrivateKey = KEY, typ: str | None = "txntoken+jwt", **changes: Any) -> str:
    return jose.sign({**CLAIMS, **changes}, key, typ=typ)


def test_accepted() -> None:
    assert verify_txn_token(token(), issuer=ISS, trust_domain=TD, jwks=JWKS, now=NOW)["txn"] == "t"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda: token(typ="at+jwt"), "typ_mismatch", id="access-token-typ"),
        pytest.param(lambda: token(typ=None), "typ_mismatch", id="no-typ"),
        pytest.param(lambda: token(OTHER), "bad_signature", id="other-key-same-kid"),
        pytest.param(lambda: token(jose.generate_private_key("ES256", kid="k2")), "unknown_key", id="unknown-kid"),
        pytest.param(lambda: token(exp=NOW), "expired", id="expired-no-leeway"),
        pytest.param(lambda: token(aud="other.example"), "audience", id="other-trust-domain"),
        pytest.param(lambda: token(iss="https://evil.example"), "issuer", id="other-issuer"),
        pytest.param(lambda: token(iat=NOW + 3600), "iat", id="from-the-future"),
        pytest.param(lambda: "not.a.jwt", "malformed", id="garbage"),
    ],
)
def test_refused(make: Any, reason: str) -> None:
    with pytest.raises(TxnTokenRejected) as info:
        verify_txn_token(make(), issuer=ISS, trust_domain=TD, jwks=JWKS, now=NOW)
    assert info.value.reason == reason
