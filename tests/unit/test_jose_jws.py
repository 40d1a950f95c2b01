"""Compact JWS: strict base64url, decoding, header rules, signatures (sts.jose.b64, sts.jose.jws).

joserfc appears here only as an independent implementation to cross-check against.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt as joserfc_jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey

from sts.jose import (
    SUPPORTED_ALGORITHMS,
    AlgorithmNotAllowed,
    BadSignature,
    JOSEError,
    MalformedToken,
    PrivateKey,
    UnsupportedHeader,
    b64url_decode,
    b64url_encode,
    check_header,
    generate_private_key,
    parse_jwk,
    parse_jwks,
    sign,
    unsafe_decode,
    verify_signature,
)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEYS: dict[str, PrivateKey] = {
    alg: PrivateKey(kid=f"rsa-{alg}", alg=alg, key=RSA_KEY)
    for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
}
KEYS.update({alg: generate_private_key(alg) for alg in ("ES256", "ES384", "ES512", "EdDSA")})
ALL_ALGS = sorted(SUPPORTED_ALGORITHMS)
CLAIMS = {"iss": "https://issuer.example", "sub": "repo:acme/app", "aud": "https://sts.example", "exp": 2_000_000_000}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def seg(obj: Any) -> str:
    return b64(obj if isinstance(obj, bytes) else json.dumps(obj).encode())


def decode_and_verify(token: str, key: PrivateKey, **rules: Any) -> dict[str, Any]:
    jwt = unsafe_decode(token)
    alg = check_header(jwt.header, allowed_algorithms=SUPPORTED_ALGORITHMS, **rules)
    found = parse_jwks({"keys": [key.public_jwk()]}).find(jwt.header.get("kid"), alg)
    assert found is not None
    verify_signature(jwt, found, alg)
    return jwt.claims


# --------------------------------------------------------------------------- b64

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", b"", id="empty"),
        pytest.param("YQ", b"a", id="one-octet"),
        pytest.param("YWI", b"ab", id="two-octets"),
        pytest.param("YWJj", b"abc", id="three-octets"),
        pytest.param("-_8", b"\xfb\xff", id="url-alphabet"),
        pytest.param(b"YWJj", b"abc", id="bytes-input"),
    ],
)
def test_b64url_decode_accepts(text: str | bytes, expected: bytes) -> None:
    assert b64url_decode(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("YQ==", id="padding"),
        pytest.param("YQ=", id="partial-padding"),
        pytest.param("YWJj=", id="padding-after-full-block"),
        pytest.param("+/8", id="standard-alphabet"),
        pytest.param("YW Jj", id="space"),
        pytest.param("YWJj\n", id="newline"),
        pytest.param("YWJjé", id="non-ascii"),
        pytest.param("YWJjZ", id="impossible-length"),
        pytest.param("YR", id="non-canonical-2"),
        pytest.param("YWK", id="non-canonical-3"),
        pytest.param(None, id="not-str"),
    ],
)
def test_b64url_decode_refuses(text: Any) -> None:
    with pytest.raises(ValueError):
        b64url_decode(text)


@pytest.mark.parametrize("data", [b"", b"a", b"ab", b"abc", bytes(range(256))], ids=lambda d: f"len{len(d)}")
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text) == data


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("alg", ALL_ALGS)
def test_sign_verify_round_trip(alg: str) -> None:
    token = sign(CLAIMS, KEYS[alg], typ="JWT")
    assert decode_and_verify(token, KEYS[alg], expected_typ="JWT") == CLAIMS
    jwt = unsafe_decode(token)
    assert jwt.header == {"alg": alg, "kid": KEYS[alg].kid, "typ": "JWT"}
    assert jwt.signing_input == token.rsplit(".", 1)[0].encode()


@pytest.mark.parametrize(("alg", "size"), [("ES256", 64), ("ES384", 96), ("ES512", 132), ("EdDSA", 64)])
def test_signature_sizes(alg: str, size: int) -> None:
    # RFC 7518 §3.4: ECDSA signatures are R || S, each the curve's full octet size.
    for _ in range(8):
        assert len(unsafe_decode(sign(CLAIMS, KEYS[alg])).signature) == size


def test_sign_header_is_compact_and_fixed() -> None:
    token = sign({"a": 1}, KEYS["ES256"], extra_header={"x5t#S256": "t"})
    header_json = base64.urlsafe_b64decode(token.split(".")[0] + "==")
    assert header_json == json.dumps(
        {"alg": "ES256", "kid": KEYS["ES256"].kid, "x5t#S256": "t"}, separators=(",", ":")
    ).encode()
    assert base64.urlsafe_b64decode(token.split(".")[1] + "==") == b'{"a":1}'


@pytest.mark.parametrize("name", ["alg", "kid", "typ", "crit", "b64"])
def test_sign_refuses_fixed_header_names(name: str) -> None:
    with pytest.raises(ValueError):
        sign(CLAIMS, KEYS["ES256"], extra_header={name: "x"})


def test_sign_refuses_non_json_numbers() -> None:
    with pytest.raises(ValueError):
        sign({"exp": float("nan")}, KEYS["ES256"])


# --------------------------------------------------------------------------- joserfc cross-check

CROSS_ALGS = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]


@contextlib.contextmanager
def joserfc_calls(alg: str) -> Iterator[None]:
    # joserfc flags "EdDSA" as superseded by RFC 9864's "Ed25519"; expect exactly that warning.
    if alg == "EdDSA":
        with pytest.warns(SecurityWarning, match="RFC 9864"):
            yield
    else:
        yield


def joserfc_private(key: PrivateKey) -> Any:
    pem = key.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}[key.public().kty].import_key(pem)


@pytest.mark.parametrize("alg", CROSS_ALGS)
def test_joserfc_signed_verifies_here(alg: str) -> None:
    key = KEYS[alg]
    with joserfc_calls(alg):
        token = joserfc_jwt.encode({"alg": alg, "kid": key.kid}, CLAIMS, joserfc_private(key), algorithms=[alg])
    assert decode_and_verify(token, key) == CLAIMS


@pytest.mark.parametrize("alg", CROSS_ALGS)
def test_signed_here_verifies_in_joserfc(alg: str) -> None:
    key = KEYS[alg]
    token = sign(CLAIMS, key, typ="JWT")
    public = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}[key.public().kty].import_key(key.public_jwk())
    with joserfc_calls(alg):
        decoded = joserfc_jwt.decode(token, public, algorithms=[alg])
    assert decoded.claims == CLAIMS and decoded.header["kid"] == key.kid


# --------------------------------------------------------------------------- tampering

def _tamper(token: str, part: str) -> str:
    h, p, s = token.split(".")
    if part == "signature":
        sig = bytearray(b64url_decode(s))
        sig[len(sig) // 2] ^= 0x01
        return f"{h}.{p}.{b64url_encode(bytes(sig))}"
    if part == "payload":
        return f"{h}.{seg({**CLAIMS, 'sub': 'repo:evil/app'})}.{s}"
    if part == "header":
        header = json.loads(b64url_decode(h))
        return f"{seg({**header, 'x': 1})}.{p}.{s}"
    raw = b64url_decode(s)
    if part == "signature-extended":
        return ".".join((h, p, b64url_encode(raw + bytes(1))))
    if part == "signature-zero-prefixed":
        return ".".join((h, p, b64url_encode(bytes(1) + raw)))
    if part == "signature-truncated":
        return ".".join((h, p, b64url_encode(raw[:-1])))
    if part == "signature-empty":
        return f"{h}.{p}."
    raise AssertionError(part)


TAMPER_PARTS = ["signature", "payload", "header", "signature-extended", "signature-zero-prefixed",
                "signature-truncated", "signature-empty"]


@pytest.mark.parametrize("part", TAMPER_PARTS)
@pytest.mark.parametrize("alg", ALL_ALGS)
def test_tampered_token_is_refused(alg: str, part: str) -> None:
    key = KEYS[alg]
    bad = _tamper(sign(CLAIMS, key), part)
    jwt = unsafe_decode(bad)
    with pytest.raises(BadSignature) as info:
        verify_signature(jwt, key.public(), check_header(jwt.header, allowed_algorithms=[alg]))
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_der_encoded_ecdsa_signature_is_refused(alg: str) -> None:
    key = KEYS[alg]
    h, p, _ = sign(CLAIMS, key).split(".")
    digest = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}[alg]
    der = key.key.sign(f"{h}.{p}".encode(), ec.ECDSA(digest))
    jwt = unsafe_decode(f"{h}.{p}.{b64url_encode(der)}")
    with pytest.raises(BadSignature):
        verify_signature(jwt, key.public(), alg)


def test_signature_from_another_key_is_refused() -> None:
    other = generate_private_key("ES256", kid=KEYS["ES256"].kid)
    jwt = unsafe_decode(sign(CLAIMS, other))
    with pytest.raises(BadSignature):
        verify_signature(jwt, KEYS["ES256"].public(), "ES256")


# --------------------------------------------------------------------------- algorithm confusion

def test_rsa_key_with_es256_header() -> None:
    # An attacker signs with their EC key and names the issuer's RSA kid.
    rsa_public = KEYS["RS256"].public_jwk()
    del rsa_public["alg"]
    keyset = parse_jwks({"keys": [rsa_public]})
    attacker = generate_private_key("ES256", kid=rsa_public["kid"])
    jwt = unsafe_decode(sign(CLAIMS, attacker))
    alg = check_header(jwt.header, allowed_algorithms={"RS256", "ES256"})
    assert alg == "ES256"
    assert keyset.find(jwt.header["kid"], alg) is None
    with pytest.raises(JOSEError) as info:
        verify_signature(jwt, keyset.keys[0], alg)
    assert info.value.reason == "key_alg_mismatch"


def test_hs256_signed_with_rsa_public_key_bytes() -> None:
    rsa_public = parse_jwk({k: v for k, v in KEYS["RS256"].public_jwk().items() if k != "alg"})
    secret = rsa_public.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    h, p = seg({"alg": "HS256", "kid": rsa_public.kid}), seg(CLAIMS)
    mac = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    jwt = unsafe_decode(f"{h}.{p}.{b64url_encode(mac)}")
    # Even a misconfigured allowlist naming HS256 cannot reach it.
    with pytest.raises(AlgorithmNotAllowed) as info:
        check_header(jwt.header, allowed_algorithms={"HS256", "RS256"})
    assert info.value.reason == "alg_not_allowed"
    with pytest.raises(JOSEError) as mismatch:
        verify_signature(jwt, rsa_public, "HS256")
    assert mismatch.value.reason == "key_alg_mismatch"
    # Verifying under another alg than the header's is refused before any crypto.
    with pytest.raises(AlgorithmNotAllowed) as other:
        verify_signature(jwt, rsa_public, "RS256")
    assert other.value.reason == "alg_mismatch"


def test_key_narrowed_by_jwk_alg() -> None:
    narrowed = parse_jwk(KEYS["RS256"].public_jwk())  # carries "alg": "RS256"
    jwt = unsafe_decode(sign(CLAIMS, KEYS["PS256"]))
    with pytest.raises(JOSEError) as info:
        verify_signature(jwt, narrowed, "PS256")
    assert info.value.reason == "key_alg_mismatch"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsecured_jwt_is_refused(alg: str) -> None:
    jwt = unsafe_decode(f"{seg({'alg': alg})}.{seg(CLAIMS)}.")
    assert jwt.signature == b""
    with pytest.raises(AlgorithmNotAllowed):
        check_header(jwt.header, allowed_algorithms=[alg, *SUPPORTED_ALGORITHMS])


# --------------------------------------------------------------------------- unsafe_decode

GOOD_H, GOOD_P = seg({"alg": "ES256"}), seg(CLAIMS)


def tok(h: str = GOOD_H, p: str = GOOD_P, s: str = "AAAA") -> str:
    return ".".join((h, p, s))


MALFORMED = [
    pytest.param(tok(s="A" * 20000), "too_large", id="too-large"),
    pytest.param(tok() + ".AAAA.AAAA", "jwe_not_supported", id="jwe"),
    pytest.param(f"{GOOD_H}.{GOOD_P}", "malformed", id="two-parts"),
    pytest.param(tok() + ".AA", "malformed", id="four-parts"),
    pytest.param("", "malformed", id="empty"),
    pytest.param("..", "malformed", id="empty-parts"),
    pytest.param(tok(s="AA\u00e9"), "malformed", id="non-ascii"),
    pytest.param(tok(h=GOOD_H + "=="), "malformed", id="header-padding"),
    pytest.param(tok(p=GOOD_P + "="), "malformed", id="payload-padding"),
    pytest.param(tok(s="AA=="), "malformed", id="signature-padding"),
    pytest.param(tok(s="A+/A"), "malformed", id="signature-std-alphabet"),
    pytest.param(" " + tok(), "malformed", id="leading-space"),
    pytest.param(tok(h=seg(["alg", "ES256"])), "malformed", id="header-array"),
    pytest.param(tok(p=seg("claims")), "malformed", id="payload-string"),
    pytest.param(tok(p=seg([CLAIMS])), "malformed", id="payload-array"),
    pytest.param(tok(h=seg(b'{"alg":"ES256","alg":"none"}')), "malformed", id="header-duplicate-key"),
    pytest.param(tok(p=seg(b'{"sub":"a","sub":"b"}')), "malformed", id="payload-duplicate-key"),
    pytest.param(tok(p=seg(b'{"x":{"a":1,"a":2}}')), "malformed", id="nested-duplicate-key"),
    pytest.param(tok(h=seg({"typ": "JWT"})), "malformed", id="alg-missing"),
    pytest.param(tok(h=seg({"alg": ["ES256"]})), "malformed", id="alg-not-string"),
    pytest.param(tok(p=seg(b'{"exp":NaN}')), "malformed", id="nan"),
    pytest.param(tok(p=seg(b'{"exp":-Infinity}')), "malformed", id="infinity"),
    pytest.param(tok(p=seg(b'{"sub":"\xff"}')), "malformed", id="invalid-utf8"),
    pytest.param(tok(p=seg(json.dumps(CLAIMS).encode("utf-16"))), "malformed", id="utf16"),
    pytest.param(tok(p=seg(b"\xef\xbb\xbf" + json.dumps(CLAIMS).encode())), "malformed", id="bom"),
    pytest.param(tok(p=seg(b'{"sub":"\\ud800"}')), "malformed", id="lone-surrogate"),
    pytest.param(tok(p=seg(b'{"\\udfff":1}')), "malformed", id="lone-surrogate-in-name"),
    pytest.param(tok(p=seg(b"[" * 5000 + b"]" * 5000)), "malformed", id="deep-nesting"),
    pytest.param(tok(p=seg(b'{"a":1} x')), "malformed", id="trailing-garbage"),
    pytest.param(tok(p=seg(b"")), "malformed", id="empty-payload"),
]


@pytest.mark.parametrize(("token", "reason"), MALFORMED)
def test_unsafe_decode_refuses(token: str, reason: str) -> None:
    with pytest.raises(MalformedToken) as info:
        unsafe_decode(token)
    assert info.value.reason == reason


@pytest.mark.parametrize("token", [None, b"a.b.c", 3], ids=["none", "bytes", "int"])
def test_unsafe_decode_refuses_non_strings(token: Any) -> None:
    with pytest.raises(MalformedToken):
        unsafe_decode(token)


def test_unsafe_decode_accepts() -> None:
    # UTF-8 text, an escaped surrogate pair, and a backslash that merely precedes "ud800".
    payload = '{"sub":"\u00e9\U0001f600","pair":"\\ud83d\\ude00","escaped":"\\\\ud800","n":1.5}'
    claims = {"sub": "\u00e9\U0001f600", "pair": "\U0001f600", "escaped": "\\ud800", "n": 1.5}
    token = tok(p=seg(payload.encode()))
    jwt = unsafe_decode(token)
    assert jwt.claims == claims and jwt.signature == b"\x00\x00\x00"
    assert jwt.signing_input == f"{GOOD_H}.{seg(payload.encode())}".encode()
    assert unsafe_decode(token, max_length=len(token)).claims == claims
    with pytest.raises(MalformedToken):
        unsafe_decode(token, max_length=len(token) - 1)


# --------------------------------------------------------------------------- check_header

ES = {"alg": "ES256", "kid": "k"}

HEADER_OK = [
    pytest.param(ES, {}, id="plain"),
    pytest.param({**ES, "typ": "at+jwt"}, {"expected_typ": "at+jwt"}, id="typ-equal"),
    pytest.param({**ES, "typ": "application/at+jwt"}, {"expected_typ": "at+jwt"}, id="typ-prefix-in-header"),
    pytest.param({**ES, "typ": "AT+JWT"}, {"expected_typ": "application/at+JWT"}, id="typ-case-and-prefix"),
    pytest.param({**ES, "typ": "JWT"}, {}, id="typ-ignored-when-not-expected"),
    pytest.param({**ES, "jku": "https://evil", "x5u": "https://evil", "jwk": {}, "x5c": []}, {},
                 id="embedded-keys-ignored"),
    pytest.param({**ES, "crit": ["exp"], "exp": 1}, {"supported_crit": {"exp"}}, id="crit-supported"),
    pytest.param({**ES, "b64": True}, {}, id="b64-true"),
    pytest.param({"alg": "ES256"}, {}, id="no-kid"),
]


@pytest.mark.parametrize(("header", "options"), HEADER_OK)
def test_check_header_accepts(header: dict[str, Any], options: dict[str, Any]) -> None:
    assert check_header(header, allowed_algorithms=["ES256"], **options) == "ES256"


HEADER_REFUSED = [
    pytest.param({"alg": "none"}, {}, AlgorithmNotAllowed, "alg_not_allowed", id="none"),
    pytest.param({"alg": "HS256"}, {}, AlgorithmNotAllowed, "alg_not_allowed", id="hs256"),
    pytest.param({"alg": "HS384"}, {}, AlgorithmNotAllowed, "alg_not_allowed", id="hs384"),
    pytest.param({"alg": "HS512"}, {}, AlgorithmNotAllowed, "alg_not_allowed", id="hs512"),
    pytest.param({"alg": "ES256K"}, {}, AlgorithmNotAllowed, "alg_not_allowed", id="unknown-alg"),
    pytest.param({"alg": "es256"}, {}, AlgorithmNotAllowed, "alg_not_allowed", id="alg-case"),
    pytest.param({"alg": "Ed25519"}, {}, AlgorithmNotAllowed, "alg_not_allowed", id="rfc9864-ed25519"),
    pytest.param({"alg": "RS256"}, {}, AlgorithmNotAllowed, "alg_not_allowed", id="supported-not-allowed"),
    pytest.param({"kid": "k"}, {}, MalformedToken, "malformed", id="alg-missing"),
    pytest.param({"alg": 1}, {}, MalformedToken, "malformed", id="alg-not-string"),
    pytest.param({**ES, "kid": 5}, {}, MalformedToken, "malformed", id="kid-not-string"),
    pytest.param({**ES, "crit": []}, {}, UnsupportedHeader, "crit_unsupported", id="crit-empty"),
    pytest.param({**ES, "crit": "exp", "exp": 1}, {"supported_crit": {"exp"}}, UnsupportedHeader,
                 "crit_unsupported", id="crit-not-array"),
    pytest.param({**ES, "crit": ["exp"], "exp": 1}, {}, UnsupportedHeader, "crit_unsupported",
                 id="crit-not-understood"),
    pytest.param({**ES, "crit": ["exp"]}, {"supported_crit": {"exp"}}, UnsupportedHeader, "crit_unsupported",
                 id="crit-absent-from-header"),
    pytest.param({**ES, "crit": ["kid"]}, {"supported_crit": {"kid"}}, UnsupportedHeader, "crit_unsupported",
                 id="crit-registered-name"),
    pytest.param({**ES, "crit": ["exp", "exp"], "exp": 1}, {"supported_crit": {"exp"}}, UnsupportedHeader,
                 "crit_unsupported", id="crit-duplicate"),
    pytest.param({**ES, "crit": [["exp"]], "exp": 1}, {"supported_crit": {"exp"}}, UnsupportedHeader,
                 "crit_unsupported", id="crit-non-string"),
    pytest.param({**ES, "b64": False, "crit": ["b64"]}, {"supported_crit": {"b64"}}, UnsupportedHeader,
                 "b64_unsupported", id="b64-false"),
    pytest.param({**ES, "b64": "false"}, {}, UnsupportedHeader, "b64_unsupported", id="b64-string"),
    *[pytest.param({**ES, name: "x"}, {"forbid_embedded_keys": True}, UnsupportedHeader, "forbidden_header",
                   id=f"forbidden-{name}") for name in ("jku", "x5u", "jwk", "x5c")],
    pytest.param(ES, {"expected_typ": "at+jwt"}, UnsupportedHeader, "typ_mismatch", id="typ-missing"),
    pytest.param({**ES, "typ": "JWT"}, {"expected_typ": "at+jwt"}, UnsupportedHeader, "typ_mismatch",
                 id="typ-different"),
    pytest.param({**ES, "typ": "text/at+jwt"}, {"expected_typ": "at+jwt"}, UnsupportedHeader, "typ_mismatch",
                 id="typ-other-media-type"),
    pytest.param({**ES, "typ": ["at+jwt"]}, {"expected_typ": "at+jwt"}, UnsupportedHeader, "typ_mismatch",
                 id="typ-not-string"),
]


@pytest.mark.parametrize(("header", "options", "error", "reason"), HEADER_REFUSED)
def test_check_header_refuses(
    header: dict[str, Any], options: dict[str, Any], error: type[JOSEError], reason: str
) -> None:
    # The allowlist deliberately lists the unsafe names too: they must stay unreachable.
    allowed = {"ES256", "none", "HS256", "HS384", "HS512", "ES256K", "es256", "Ed25519"}
    with pytest.raises(error) as info:
        check_header(header, allowed_algorithms=allowed, **options)
    assert info.value.reason == reason


def test_errors_share_a_base() -> None:
    for cls in (MalformedToken, AlgorithmNotAllowed, BadSignature, UnsupportedHeader):
        assert issubclass(cls, JOSEError)
    e = BadSignature("detail")
    assert e.reason == "bad_signature" and str(e) == "bad_signature: detail"
