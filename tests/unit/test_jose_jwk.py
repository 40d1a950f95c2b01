"""JWK / JWKS parsing, private signing keys and thumbprints (sts.jose.jwk)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc.jwk import ECKey, OKPKey, RSAKey

from sts.jose import (
    SUPPORTED_ALGORITHMS,
    AlgorithmNotAllowed,
    JWKError,
    KeySet,
    PrivateKey,
    check_header,
    generate_private_key,
    jwk_thumbprint,
    parse_jwk,
    parse_jwks,
    private_key_from_pem,
    private_key_to_pem,
    sign,
    unsafe_decode,
    verify_signature,
)

RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64int(i: int, size: int | None = None) -> str:
    return b64(i.to_bytes(size or (i.bit_length() + 7) // 8, "big"))


# Keys are made once per module: RSA generation is slow.
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_WEAK = rsa.generate_private_key(public_exponent=65537, key_size=1024)
EC_KEYS = {crv: ec.generate_private_key(cls()) for crv, cls in
           (("P-256", ec.SECP256R1), ("P-384", ec.SECP384R1), ("P-521", ec.SECP521R1))}
ED_KEY = Ed25519PrivateKey.generate()


def rsa_jwk(key: Any = RSA_KEY, **extra: Any) -> dict[str, Any]:
    n = key.public_key().public_numbers()
    return {"kty": "RSA", "n": b64int(n.n), "e": b64int(n.e), **extra}


def ec_jwk(crv: str = "P-256", **extra: Any) -> dict[str, Any]:
    size = {"P-256": 32, "P-384": 48, "P-521": 66}[crv]
    n = EC_KEYS[crv].public_key().public_numbers()
    return {"kty": "EC", "crv": crv, "x": b64int(n.x, size), "y": b64int(n.y, size), **extra}


def okp_jwk(**extra: Any) -> dict[str, Any]:
    raw = ED_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw), **extra}


# --------------------------------------------------------------------------- parse_jwk: accepted

@pytest.mark.parametrize(
    ("jwk", "kty", "crv", "algorithms"),
    [
        pytest.param(rsa_jwk(), "RSA", None, RSA_ALGS, id="rsa-any-alg"),
        pytest.param(rsa_jwk(alg="PS384"), "RSA", None, {"PS384"}, id="rsa-alg-narrows"),
        pytest.param(rsa_jwk(use="sig", kid="r1"), "RSA", None, RSA_ALGS, id="rsa-use-sig"),
        pytest.param(rsa_jwk(key_ops=["verify"]), "RSA", None, RSA_ALGS, id="rsa-key-ops-verify"),
        pytest.param(ec_jwk("P-256"), "EC", "P-256", {"ES256"}, id="ec-p256"),
        pytest.param(ec_jwk("P-384"), "EC", "P-384", {"ES384"}, id="ec-p384"),
        pytest.param(ec_jwk("P-521", alg="ES512"), "EC", "P-521", {"ES512"}, id="ec-p521-alg"),
        pytest.param(okp_jwk(), "OKP", "Ed25519", {"EdDSA"}, id="okp-ed25519"),
        pytest.param(okp_jwk(alg="EdDSA"), "OKP", "Ed25519", {"EdDSA"}, id="okp-ed25519-alg"),
        pytest.param(
            {**rsa_jwk(), "n": b64(b"\x00" + base64.urlsafe_b64decode(rsa_jwk()["n"] + "=="))},
            "RSA", None, RSA_ALGS, id="rsa-leading-zero-tolerated",
        ),
        pytest.param(RSAKey.import_key(rsa_jwk()).as_dict(private=False), "RSA", None, RSA_ALGS,
                     id="joserfc-rsa"),
        pytest.param(OKPKey.generate_key("Ed25519").as_dict(private=False), "OKP", "Ed25519", {"EdDSA"},
                     id="joserfc-okp"),
        pytest.param(ECKey.generate_key("P-384").as_dict(private=False), "EC", "P-384", {"ES384"},
                     id="joserfc-ec"),
    ],
)
def test_parse_jwk_accepts(jwk: dict[str, Any], kty: str, crv: str | None, algorithms: set[str]) -> None:
    key = parse_jwk(jwk)
    assert (key.kty, key.crv, key.algorithms) == (kty, crv, frozenset(algorithms))
    assert key.kid == jwk.get("kid") and key.alg == jwk.get("alg") and key.use == jwk.get("use")
    assert key.algorithms <= SUPPORTED_ALGORITHMS
    # to_jwk reproduces the public members exactly (minimal n, full-size EC coordinates).
    out = key.to_jwk()
    expected = {m: v for m, v in jwk.items() if m in {"kty", "crv", "n", "e", "x", "y", "kid", "alg", "use"}}
    if kty == "RSA":  # every RSA case uses RSA_KEY; a tolerated leading zero is not echoed
        expected["n"] = rsa_jwk()["n"]
    assert out == expected
    assert parse_jwk(out) == key


# --------------------------------------------------------------------------- parse_jwk: refused

def _not_on_curve() -> dict[str, Any]:
    jwk = ec_jwk()
    y = bytearray(base64.urlsafe_b64decode(jwk["y"] + "=="))
    y[-1] ^= 1
    return {**jwk, "y": b64(bytes(y))}


HUGE_N = (1 << 16400) | 1

REFUSED = [
    pytest.param("not a mapping", "malformed", id="not-mapping"),
    pytest.param({"n": "AQAB", "e": "AQAB"}, "malformed", id="kty-missing"),
    pytest.param({"kty": 1}, "malformed", id="kty-not-string"),
    pytest.param({**rsa_jwk(), "kty": "DSA"}, "unknown_kty", id="unknown-kty"),
    pytest.param({"kty": "oct", "k": b64(b"s" * 32)}, "private_material", id="oct-with-k"),
    pytest.param({"kty": "oct"}, "symmetric_key", id="oct-without-k"),
    *[pytest.param(rsa_jwk(**{m: "AQAB"}), "private_material", id=f"private-member-{m}")
      for m in PRIVATE_MEMBERS],
    pytest.param(ec_jwk(d="AQAB"), "private_material", id="ec-private-d"),
    pytest.param(okp_jwk(d="AQAB"), "private_material", id="okp-private-d"),
    pytest.param(rsa_jwk(use="enc"), "not_sig", id="use-enc"),
    pytest.param(rsa_jwk(key_ops=["encrypt"]), "not_sig", id="key-ops-without-verify"),
    pytest.param(rsa_jwk(key_ops="verify"), "malformed", id="key-ops-not-array"),
    pytest.param(rsa_jwk(RSA_WEAK), "weak_key", id="rsa-1024-weak"),
    pytest.param({"kty": "RSA", "n": b64int(HUGE_N), "e": "AQAB"}, "unsupported_key", id="rsa-huge-modulus"),
    pytest.param(rsa_jwk(e=b64int((1 << 300) + 1)), "unsupported_key", id="rsa-huge-exponent"),
    pytest.param(rsa_jwk(e=b64int(65536)), "invalid_key", id="rsa-even-exponent"),
    pytest.param({"kty": "RSA", "e": "AQAB"}, "malformed", id="rsa-n-missing"),
    pytest.param(rsa_jwk(n=rsa_jwk()["n"] + "=="), "malformed", id="rsa-n-padded"),
    pytest.param(rsa_jwk(n=rsa_jwk()["n"].replace("-", "+").replace("_", "/")), "malformed",
                 id="rsa-n-std-alphabet"),
    pytest.param(rsa_jwk(kid=7), "malformed", id="kid-not-string"),
    pytest.param(rsa_jwk(alg="ES256"), "key_alg_mismatch", id="rsa-with-es256"),
    pytest.param(ec_jwk("P-256", alg="ES384"), "key_alg_mismatch", id="p256-with-es384"),
    pytest.param(okp_jwk(alg="RS256"), "key_alg_mismatch", id="okp-with-rs256"),
    pytest.param(rsa_jwk(alg="HS256"), "alg_not_allowed", id="rsa-with-hs256"),
    pytest.param(rsa_jwk(alg="none"), "alg_not_allowed", id="rsa-with-none"),
    pytest.param(rsa_jwk(alg="RSA-OAEP"), "alg_not_allowed", id="rsa-with-enc-alg"),
    pytest.param({**ec_jwk(), "crv": "secp256k1"}, "unsupported_curve", id="ec-secp256k1"),
    pytest.param({**ec_jwk(), "crv": None}, "unsupported_curve", id="ec-no-crv"),
    pytest.param({**ec_jwk(), "x": ec_jwk()["x"][:-2]}, "malformed", id="ec-short-coordinate"),
    pytest.param({k: v for k, v in ec_jwk().items() if k != "y"}, "malformed", id="ec-y-missing"),
    pytest.param(_not_on_curve(), "invalid_key", id="ec-point-not-on-curve"),
    pytest.param({"kty": "OKP", "crv": "Ed448",
                  "x": b64(Ed448PrivateKey.generate().public_key().public_bytes_raw())},
                 "unsupported_curve", id="okp-ed448"),
    pytest.param({"kty": "OKP", "crv": "X25519",
                  "x": b64(X25519PrivateKey.generate().public_key().public_bytes_raw())},
                 "unsupported_curve", id="okp-x25519"),
    pytest.param({**okp_jwk(), "x": b64(b"\x01" * 31)}, "malformed", id="okp-short"),
]


@pytest.mark.parametrize(("jwk", "reason"), REFUSED)
def test_parse_jwk_refuses(jwk: Any, reason: str) -> None:
    with pytest.raises(JWKError) as info:
        parse_jwk(jwk)
    assert info.value.reason == reason


# --------------------------------------------------------------------------- parse_jwks / KeySet

def test_jwks_skips_bad_keys_on_their_own() -> None:
    doc = {
        "keys": [
            rsa_jwk(kid="rsa"),
            rsa_jwk(RSA_WEAK, kid="weak"),
            ec_jwk(kid="ec"),
            rsa_jwk(kid="leak", d="AQAB"),
            "not an object",
            {"kty": "oct", "k": "c2VjcmV0"},
            okp_jwk(kid="ed", use="enc"),
            okp_jwk(kid="ed2"),
        ]
    }
    ks = parse_jwks(doc)
    assert [k.kid for k in ks.keys] == ["rsa", "ec", "ed2"]
    assert len(ks) == 3
    assert ks.skipped == (
        "kid=weak: weak_key",
        "kid=leak: private_material",
        "keys[4]: malformed",
        "keys[5]: private_material",
        "kid=ed: not_sig",
    )
    assert ks.find("rsa", "RS256") is ks.keys[0]
    assert ks.find("rsa", "PS512") is ks.keys[0]
    assert ks.find("weak", "RS256") is None
    assert ks.find("ec", "ES256") is ks.keys[1]
    assert ks.find("ed2", "EdDSA") is ks.keys[2]


FIND = [
    # (kid, alg) -> index of the key in KEYS, or None
    pytest.param("a", "RS256", 0, id="kid-and-alg"),
    pytest.param("a", "PS256", 0, id="kid-any-rsa-alg"),
    pytest.param("a", "ES256", 2, id="same-kid-other-family"),
    pytest.param("a", "ES384", None, id="kid-alg-unknown"),
    pytest.param("zzz", "RS256", None, id="kid-unknown"),
    pytest.param("n1", "RS512", 1, id="narrowed-alg-ok"),
    pytest.param("n1", "RS256", None, id="narrowed-alg-other"),
    pytest.param(None, "ES256", 2, id="no-kid-sole-key"),
    pytest.param(None, "EdDSA", 3, id="no-kid-sole-key-without-kid"),
    pytest.param(None, "RS256", 0, id="no-kid-sole-key-after-narrowing"),
    pytest.param(None, "RS512", None, id="no-kid-ambiguous"),
    pytest.param(None, "HS256", None, id="no-kid-unsupported-alg"),
    pytest.param(["a"], "RS256", None, id="kid-unhashable"),
]


@pytest.mark.parametrize(("kid", "alg", "index"), FIND)
def test_keyset_find(kid: Any, alg: str, index: int | None) -> None:
    ks = parse_jwks({"keys": [rsa_jwk(kid="a"), rsa_jwk(kid="n1", alg="RS512"), ec_jwk(kid="a"), okp_jwk()]})
    assert ks.skipped == ()
    found = ks.find(kid, alg)
    assert found is (None if index is None else ks.keys[index])


@pytest.mark.parametrize(
    ("keys", "kept", "skipped"),
    [
        pytest.param([rsa_jwk(kid="a"), rsa_jwk(RSA_KEY, kid="a")], 1, ("kid=a: duplicate_kid",),
                     id="same-kid-same-family"),
        pytest.param([rsa_jwk(kid="a", alg="RS256"), rsa_jwk(kid="a")], 1, ("kid=a: duplicate_kid",),
                     id="same-kid-overlapping-algs"),
        pytest.param([rsa_jwk(kid="a", alg="RS256"), rsa_jwk(kid="a", alg="PS256")], 2, (),
                     id="same-kid-disjoint-algs"),
        pytest.param([rsa_jwk(kid="a"), ec_jwk(kid="a")], 2, (), id="same-kid-other-family"),
        pytest.param([ec_jwk("P-256", kid="a"), ec_jwk("P-384", kid="a")], 2, (), id="same-kid-other-curve"),
        pytest.param([rsa_jwk(), rsa_jwk()], 2, (), id="no-kid-never-duplicate"),
        pytest.param([], 0, (), id="empty"),
    ],
)
def test_jwks_duplicate_kids(keys: list[dict[str, Any]], kept: int, skipped: tuple[str, ...]) -> None:
    ks = parse_jwks({"keys": keys})
    assert (len(ks), ks.skipped) == (kept, skipped)
    if keys and skipped:
        assert ks.find("a", "RS256") is ks.keys[0]


def test_jwks_require_use_sig() -> None:
    ks = parse_jwks({"keys": [rsa_jwk(kid="a"), ec_jwk(kid="b", use="sig")]}, require_use_sig=True)
    assert [k.kid for k in ks.keys] == ["b"]
    assert ks.skipped == ("kid=a: use_missing",)


def test_jwks_skipped_label_is_sanitised() -> None:
    ks = parse_jwks({"keys": [rsa_jwk(RSA_WEAK, kid="x\n\x1b" + "k" * 100)]})
    assert ks.skipped == ("kid=x??" + "k" * 61 + ": weak_key",)


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param([], id="array"),
        pytest.param({}, id="no-keys"),
        pytest.param({"keys": {}}, id="keys-object"),
        pytest.param({"keys": "x"}, id="keys-string"),
        pytest.param(None, id="null"),
    ],
)
def test_jwks_document_shape(doc: Any) -> None:
    with pytest.raises(JWKError) as info:
        parse_jwks(doc)
    assert info.value.reason == "malformed"


def test_keyset_direct_construction_indexes() -> None:
    a, b = parse_jwk(ec_jwk(kid="a")), parse_jwk(rsa_jwk(kid="b"))
    ks = KeySet(keys=(a, b))
    assert ks.find("a", "ES256") is a and ks.find(None, "RS256") is b and ks.skipped == ()
    assert len(KeySet(keys=())) == 0


# --------------------------------------------------------------------------- private keys

SIGNING_ALGS = sorted(SUPPORTED_ALGORITHMS)


@pytest.fixture(scope="module")
def private_keys() -> dict[str, PrivateKey]:
    keys = {}
    for alg in SIGNING_ALGS:
        if alg[:2] in ("RS", "PS"):
            keys[alg] = PrivateKey(kid=f"k-{alg}", alg=alg, key=RSA_KEY)
        else:
            keys[alg] = generate_private_key(alg)
    return keys


@pytest.mark.parametrize("alg", SIGNING_ALGS)
def test_private_key_public_jwk(private_keys: dict[str, PrivateKey], alg: str) -> None:
    k = private_keys[alg]
    jwk = k.public_jwk()
    assert jwk["kid"] == k.kid and jwk["alg"] == alg and jwk["use"] == "sig"
    assert not set(PRIVATE_MEMBERS) & set(jwk)
    pub = parse_jwk(jwk)
    assert pub == k.public() and pub.algorithms == {alg}
    assert hash(pub) == hash(k.public()) and len({pub, k.public()}) == 1
    assert "key=" not in repr(k)


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512", "EdDSA"])
def test_generated_kid_is_rfc7638_thumbprint(alg: str) -> None:
    k = generate_private_key(alg)
    jwk = k.public_jwk()
    assert k.kid == jwk_thumbprint(jwk)
    # Independent implementation of the same RFC.
    imported = {"EC": ECKey, "OKP": OKPKey}[jwk["kty"]].import_key(jwk)
    assert imported.thumbprint() == k.kid
    assert generate_private_key(alg, kid="fixed").kid == "fixed"


def test_generate_rsa_key() -> None:
    k = generate_private_key("RS256")
    assert k.key.key_size == 2048 and k.kid == RSAKey.import_key(k.public_jwk()).thumbprint()


def test_thumbprint_rfc7638_example() -> None:
    # RFC 7638 §3.1: optional members do not change the thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRX"
             "jBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqz"
             "s8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-"
             "G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    ("jwk", "reason"),
    [
        pytest.param({"kty": "XYZ"}, "unknown_kty", id="unknown-kty"),
        pytest.param({"kty": ["RSA"]}, "unknown_kty", id="kty-unhashable"),
        pytest.param({"kty": "EC", "crv": "P-256", "x": "AA"}, "malformed", id="member-missing"),
    ],
)
def test_thumbprint_refuses(jwk: dict[str, Any], reason: str) -> None:
    with pytest.raises(JWKError) as info:
        jwk_thumbprint(jwk)
    assert info.value.reason == reason


@pytest.mark.parametrize("alg", SIGNING_ALGS)
def test_pem_round_trip(private_keys: dict[str, PrivateKey], alg: str) -> None:
    k = private_keys[alg]
    pem = private_key_to_pem(k)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    loaded = private_key_from_pem(pem, alg, k.kid)
    assert loaded.public() == k.public()
    token = sign({"sub": "x"}, loaded)
    jwt = unsafe_decode(token)
    verify_signature(jwt, k.public(), check_header(jwt.header, allowed_algorithms={alg}))


def _pem(key: Any, password: bytes | None = None) -> bytes:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


@pytest.mark.parametrize(
    ("key", "alg", "kid", "error", "reason"),
    [
        pytest.param(EC_KEYS["P-256"], "RS256", "k", JWKError, "key_alg_mismatch", id="ec-key-rs256"),
        pytest.param(EC_KEYS["P-256"], "ES384", "k", JWKError, "key_alg_mismatch", id="p256-key-es384"),
        pytest.param(RSA_KEY, "ES256", "k", JWKError, "key_alg_mismatch", id="rsa-key-es256"),
        pytest.param(RSA_KEY, "EdDSA", "k", JWKError, "key_alg_mismatch", id="rsa-key-eddsa"),
        pytest.param(ED_KEY, "ES256", "k", JWKError, "key_alg_mismatch", id="ed-key-es256"),
        pytest.param(RSA_WEAK, "RS256", "k", JWKError, "weak_key", id="rsa-1024"),
        pytest.param(RSA_KEY, "HS256", "k", AlgorithmNotAllowed, "alg_not_allowed", id="hs256"),
        pytest.param(RSA_KEY, "none", "k", AlgorithmNotAllowed, "alg_not_allowed", id="none"),
        pytest.param(RSA_KEY, "RS256", "", JWKError, "malformed", id="empty-kid"),
    ],
)
def test_private_key_refuses(key: Any, alg: str, kid: str, error: type[Exception], reason: str) -> None:
    with pytest.raises(error) as info:
        PrivateKey(kid=kid, alg=alg, key=key)
    assert info.value.reason == reason  # type: ignore[attr-defined]
    with pytest.raises(error):
        private_key_from_pem(_pem(key), alg, kid)


@pytest.mark.parametrize(
    "pem",
    [
        pytest.param(b"not a pem", id="garbage"),
        pytest.param(_pem(EC_KEYS["P-256"], b"pw"), id="encrypted"),
    ],
)
def test_private_key_from_pem_refuses(pem: bytes) -> None:
    with pytest.raises(JWKError) as info:
        private_key_from_pem(pem, "ES256", "k")
    assert info.value.reason == "malformed"


def test_generate_refuses_unsupported_alg() -> None:
    with pytest.raises(AlgorithmNotAllowed):
        generate_private_key("HS256")
