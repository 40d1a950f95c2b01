"""The kit's JWS helpers: what verify_compact refuses, table by table."""

from __future__ import annotations

from typing import Any

import pytest

from conformance import jose

KEYS = {alg: jose.generate_key(alg) for alg in ("RS256", "ES256", "ES384", "EdDSA")}


def _jwks(**overrides: Any) -> dict[str, Any]:
    keys = []
    for alg, key in KEYS.items():
        jwk = jose.public_jwk(key, kid=alg, alg=alg)
        jwk.update(overrides.get(alg, {}))
        keys.append(jwk)
    return {"keys": keys}


@pytest.mark.parametrize("alg,key_alg", [
    ("RS256", "RS256"), ("RS384", "RS256"), ("PS256", "RS256"), ("ES256", "ES256"),
    ("ES384", "ES384"), ("EdDSA", "EdDSA"),
], ids=lambda v: str(v))
def test_sign_verify_roundtrip(alg: str, key_alg: str) -> None:
    jwk = jose.public_jwk(KEYS[key_alg], kid="k", alg=alg)
    token = jose.sign_compact({"alg": alg, "kid": "k"}, {"sub": "s"}, KEYS[key_alg])
    assert jose.verify_compact(token, {"keys": [jwk]})[1] == {"sub": "s"}


REFUSALS = [
    ("alg none", {"alg": "none", "kid": "RS256"}, b"", _jwks()),
    ("alg not allowlisted", {"alg": "HS256", "kid": "RS256"}, b"secret", _jwks()),
    ("key bound to another alg", {"alg": "RS512", "kid": "RS256"}, KEYS["RS256"], _jwks()),
    ("unknown kid", {"alg": "RS256", "kid": "nope"}, KEYS["RS256"], _jwks()),
    ("crit present", {"alg": "RS256", "kid": "RS256", "crit": ["x"], "x": 1}, KEYS["RS256"], _jwks()),
    ("jwk use enc", {"alg": "RS256", "kid": "RS256"}, KEYS["RS256"], _jwks(RS256={"use": "enc"})),
    ("EC curve mismatch", {"alg": "ES256", "kid": "ES384"}, KEYS["ES384"], _jwks(ES384={"alg": "ES256"})),
    ("embedded jwk ignored", {"alg": "RS256", "kid": "RS256", "jwk": jose.public_jwk(KEYS["ES256"])},
     jose.generate_key("RS256"), _jwks()),
]


@pytest.mark.parametrize("label,header,key,jwks", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_verify_refuses(label: str, header: dict[str, Any], key: Any, jwks: dict[str, Any]) -> None:
    token = jose.sign_compact(header, {"sub": "s"}, key)
    with pytest.raises(jose.JoseError):
        jose.verify_compact(token, jwks)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.e30.", "W10.e30.", "e30.bm90anNvbg."],
                         ids=["empty", "two parts", "four parts", "bad b64", "array header", "payload not json"])
def test_decode_unverified_rejects_malformed(token: str) -> None:
    with pytest.raises(jose.JoseError):
        jose.decode_unverified(token)


def test_private_jwk_roundtrip() -> None:
    for alg, key in KEYS.items():
        restored = jose.key_from_jwk(jose.private_jwk(key, kid="k", alg=alg))
        token = jose.sign_compact({"alg": alg, "kid": "k"}, {"a": 1}, restored)
        assert jose.verify_compact(token, {"keys": [jose.public_jwk(key, kid="k", alg=alg)]})[1] == {"a": 1}
