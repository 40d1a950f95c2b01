"""sts.sender: DPoP proof validation (RFC 9449 §4.3), nonces (§8), cnf (RFC 7638, RFC 8705 §3.1)
and the sender-constraint decision, with an injected clock."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from dpop_support import dpop_key, make_proof

from sts.jose import b64url_encode, jwk_thumbprint
from sts.sender.binding import confirmation, confirmation_of, jkt_of, x5t_s256
from sts.sender.constraint import ConstraintUnmet, bind
from sts.sender.dpop import (
    DPOP_ALGORITHMS,
    DpopProof,
    NonceRequired,
    ProofRejected,
    normalize_htu,
    replay_expiry,
    validate_proof,
)
from sts.sender.nonce import NonceIssuer, derive_nonce_key

NOW = 1_800_000_000
URL = "https://sts.example.com/token"


def check(proof: str, **kw: Any) -> DpopProof:
    return validate_proof(proof, **{"method": "POST", "url": URL, "now": NOW, **kw})


@pytest.mark.parametrize("alg", ["ES256", "ES384", "PS256", "RS256", "EdDSA"])
def test_good_proof_gives_the_key_thumbprint(alg: str) -> None:
    key = dpop_key(alg)
    proof = check(make_proof(URL, key=key, iat=NOW, jti="j-1"))
    public = key.public_jwk()
    assert proof.jkt == jwk_thumbprint(public) == jkt_of(public)
    assert (proof.jti, proof.iat, proof.alg) == ("j-1", NOW, alg)


@pytest.mark.parametrize("htu", [
    "https://sts.example.com/token", "HTTPS://STS.Example.COM/token", "https://sts.example.com:443/token",
    "https://sts.example.com/token?x=1", "https://sts.example.com/token#frag",
], ids=["exact", "case", "default_port", "query", "fragment"])
def test_htu_is_compared_after_normalization(htu: str) -> None:
    assert check(make_proof(URL, iat=NOW, claims={"htu": htu})).iat == NOW


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("not_a_jwt", {"raw": "abc.def"}, "malformed"),
    ("five_parts", {"raw": "a.b.c.d.e"}, "malformed"),
    ("too_large", {"raw": "a" * 9000}, "too_large"),
    ("typ_missing", {"drop_header": ("typ",)}, "typ"),
    ("typ_jwt", {"header": {"typ": "JWT"}}, "typ"),
    ("typ_media_type_form", {"header": {"typ": "application/dpop+jwt"}}, "typ"),
    ("alg_none", {"header": {"alg": "none"}}, "alg_not_allowed"),
    ("alg_hs256", {"header": {"alg": "HS256"}}, "alg_not_allowed"),
    ("crit", {"header": {"crit": ["exp"]}}, "header"),
    ("jwk_missing", {"drop_header": ("jwk",)}, "jwk_missing"),
    ("jwk_not_object", {"header": {"jwk": "abc"}}, "jwk_missing"),
    ("jwk_private", {"private": True}, "jwk_private"),
    ("jwk_symmetric", {"header": {"jwk": {"kty": "oct", "k": "c2VjcmV0"}}}, "jwk_private"),
    ("jwk_bad_curve_point", {"header": {"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}}, "jwk_invalid"),
    ("signature_other_key", {"forged": True}, "signature"),
    ("alg_differs_from_key", {"header": {"alg": "ES384"}}, "signature"),
    ("jti_missing", {"drop": ("jti",)}, "jti"),
    ("jti_empty", {"claims": {"jti": ""}}, "jti"),
    ("jti_not_string", {"claims": {"jti": 5}}, "jti"),
    ("jti_too_long", {"claims": {"jti": "x" * 257}}, "jti"),
    ("iat_missing", {"drop": ("iat",)}, "iat"),
    ("iat_string", {"claims": {"iat": "1800000000"}}, "iat"),
    ("iat_bool", {"claims": {"iat": True}}, "iat"),
    ("htm_missing", {"drop": ("htm",)}, "htm_htu_missing"),
    ("htu_missing", {"drop": ("htu",)}, "htm_htu_missing"),
    ("htm_get", {"method": "GET"}, "htm"),
    ("htm_lowercase", {"method": "post"}, "htm"),
    ("htu_other_path", {"claims": {"htu": "https://sts.example.com/other"}}, "htu"),
    ("htu_other_host", {"claims": {"htu": "https://evil.example.com/token"}}, "htu"),
    ("htu_http", {"claims": {"htu": "http://sts.example.com/token"}}, "htu"),
    ("htu_other_port", {"claims": {"htu": "https://sts.example.com:8443/token"}}, "htu"),
    ("htu_trailing_slash", {"claims": {"htu": "https://sts.example.com/token/"}}, "htu"),
    ("htu_relative", {"claims": {"htu": "/token"}}, "htu"),
    ("htu_userinfo", {"claims": {"htu": "https://u@sts.example.com/token"}}, "htu"),
    ("iat_too_old", {"iat": NOW - 61}, "iat_window"),
    ("iat_in_future", {"iat": NOW + 6}, "iat_window"),
]


@pytest.mark.parametrize(("kind", "build", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_proofs_are_rejected_by_kind(kind: str, build: dict[str, Any], reason: str) -> None:
    build = dict(build)
    if "raw" in build:
        proof = build["raw"]
    else:
        if build.pop("private", False):
            key = dpop_key("ES256")
            jwk = key.public_jwk()
            jwk.pop("kid", None)
            jwk["d"] = b64url_encode(key.key.private_numbers().private_value.to_bytes(32, "big"))
            build["header"] = {"jwk": jwk}
        if build.pop("forged", False):
            build["sign_with"] = generate_other()
        build.setdefault("iat", NOW)
        proof = make_proof(URL, **build)
    with pytest.raises(ProofRejected) as info:
        check(proof)
    assert info.value.reason == reason


def generate_other() -> Any:
    from sts.jose import generate_private_key

    return generate_private_key("ES256")


def test_the_window_edges_are_accepted() -> None:
    assert check(make_proof(URL, iat=NOW - 60)).iat == NOW - 60
    assert check(make_proof(URL, iat=NOW + 5)).iat == NOW + 5
    assert check(make_proof(URL, iat=NOW - 100), max_age=120).iat == NOW - 100


def test_an_algorithm_outside_the_configured_allowlist_is_rejected() -> None:
    with pytest.raises(ProofRejected) as info:
        check(make_proof(URL, key=dpop_key("RS256"), iat=NOW), algorithms=("ES256",))
    assert info.value.reason == "alg_not_allowed"
    assert "none" not in DPOP_ALGORITHMS and not any(a.startswith("HS") for a in DPOP_ALGORITHMS)


def test_nonce_required_missing_invalid_and_good() -> None:
    clock = [float(NOW)]
    nonces = NonceIssuer(b"k" * 32, period=300, clock=lambda: clock[0])
    with pytest.raises(NonceRequired) as info:
        check(make_proof(URL, iat=NOW), nonce_valid=nonces.valid)
    assert info.value.reason == "nonce_missing"
    with pytest.raises(NonceRequired) as info:
        check(make_proof(URL, iat=NOW, nonce="made-up"), nonce_valid=nonces.valid)
    assert info.value.reason == "nonce_invalid"
    good = nonces.current()
    assert check(make_proof(URL, iat=NOW, nonce=good), nonce_valid=nonces.valid).iat == NOW
    # a bad proof is refused as bad, not asked for a nonce
    with pytest.raises(ProofRejected):
        check(make_proof(URL, iat=NOW, method="GET"), nonce_valid=nonces.valid)


def test_nonces_are_stateless_shared_and_expire() -> None:
    clock = [float(NOW)]
    a = NonceIssuer(b"k" * 32, period=300, clock=lambda: clock[0])
    b = NonceIssuer(b"k" * 32, period=300, clock=lambda: clock[0])  # another replica
    other = NonceIssuer(b"x" * 32, period=300, clock=lambda: clock[0])  # another deployment
    nonce = a.current()
    assert b.valid(nonce) and not other.valid(nonce)
    clock[0] += 300  # the next window still accepts it
    assert b.valid(nonce)
    clock[0] += 300
    assert not b.valid(nonce)
    tampered = nonce[:-2] + ("AA" if nonce[-2:] != "AA" else "BB")
    assert not a.valid(tampered)
    assert not a.valid("!!!") and not a.valid("") and not a.valid("A" * 100)
    with pytest.raises(ValueError):
        NonceIssuer(b"short", clock=lambda: 0.0)
    assert derive_nonce_key(b"1" * 32) != derive_nonce_key(b"2" * 32)


def test_replay_expiry_covers_the_acceptance_window() -> None:
    proof = DpopProof(jkt="t", jti="j", iat=NOW, alg="ES256")
    assert replay_expiry(proof, now=NOW, max_age=60, future_skew=5) >= NOW + 60
    future = DpopProof(jkt="t", jti="j", iat=NOW + 5, alg="ES256")
    assert replay_expiry(future, now=NOW, max_age=60, future_skew=5) >= NOW + 65


@pytest.mark.parametrize(("url", "expected"), [
    ("https://A.example/token", "https://a.example/token"),
    ("http://a.example:80", "http://a.example/"),
    ("https://[::1]:8443/t?q#f", "https://[::1]:8443/t"),
])
def test_normalize_htu(url: str, expected: str) -> None:
    assert normalize_htu(url) == expected


@pytest.mark.parametrize("url", ["ftp://a/", "/token", "https:///x", "https://a:99999/"])
def test_normalize_htu_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_htu(url)


CERT_SHA = hashlib.sha256(b"certificate").digest()
PROOF = DpopProof(jkt="thumb", jti="j", iat=NOW, alg="ES256")
X5T = b64url_encode(CERT_SHA)

BINDINGS: list[tuple[str, DpopProof | None, bytes | None, dict[str, str] | None, str]] = [
    ("none", None, None, None, "Bearer"),
    ("none", PROOF, None, {"jkt": "thumb"}, "DPoP"),
    ("none", None, CERT_SHA, None, "Bearer"),
    ("none", PROOF, CERT_SHA, {"jkt": "thumb"}, "DPoP"),
    ("dpop", PROOF, None, {"jkt": "thumb"}, "DPoP"),
    ("dpop", PROOF, CERT_SHA, {"jkt": "thumb"}, "DPoP"),
    ("mtls", None, CERT_SHA, {"x5t#S256": X5T}, "Bearer"),
    ("mtls", PROOF, CERT_SHA, {"jkt": "thumb", "x5t#S256": X5T}, "DPoP"),
    ("required", PROOF, None, {"jkt": "thumb"}, "DPoP"),
    ("required", None, CERT_SHA, {"x5t#S256": X5T}, "Bearer"),
    ("required", PROOF, CERT_SHA, {"jkt": "thumb", "x5t#S256": X5T}, "DPoP"),
]


@pytest.mark.parametrize(("constraint", "proof", "cert", "cnf", "token_type"), BINDINGS,
                         ids=[f"{b[0]}-{'p' if b[1] else ''}{'c' if b[2] else ''}" for b in BINDINGS])
def test_binding_per_constraint(constraint: str, proof: DpopProof | None, cert: bytes | None,
                                cnf: dict[str, str] | None, token_type: str) -> None:
    binding = bind(constraint, proof, cert)
    assert (binding.cnf, binding.token_type) == (cnf, token_type)


@pytest.mark.parametrize(("constraint", "proof", "cert", "reason"), [
    ("dpop", None, None, "dpop_required"),
    ("dpop", None, CERT_SHA, "dpop_required"),
    ("mtls", None, None, "mtls_required"),
    ("mtls", PROOF, None, "mtls_required"),
    ("required", None, None, "sender_constraint_required"),
])
def test_unmet_constraints(constraint: str, proof: DpopProof | None, cert: bytes | None, reason: str) -> None:
    with pytest.raises(ConstraintUnmet) as info:
        bind(constraint, proof, cert)
    assert info.value.reason == reason
    with pytest.raises(ValueError):
        bind("sometimes", None, None)


def test_confirmation_round_trip() -> None:
    assert confirmation() is None
    cnf = confirmation(jkt="t", certificate_sha256=CERT_SHA)
    assert cnf == {"jkt": "t", "x5t#S256": x5t_s256(CERT_SHA)}
    assert confirmation_of({"cnf": {**cnf, "other": "x", "jwk": {}}}) == cnf
    assert confirmation_of({"cnf": "x"}) is None and confirmation_of({}) is None
    with pytest.raises(ValueError):
        x5t_s256(b"short")


def _settings(**values: Any) -> Any:
    from sts.settings import Settings

    return Settings(**values)


def test_guard_from_settings() -> None:
    from sts.sender.guard import dpop_guard

    async def claim(namespace: str, jti: str, expires: float) -> bool:
        return True

    assert dpop_guard(_settings(), b"k" * 32, claim, lambda: NOW).fresh_nonce() is None
    derived = dpop_guard(_settings(dpop_require_nonce=True), b"k" * 32, claim, lambda: NOW).fresh_nonce()
    keyed = dpop_guard(_settings(dpop_require_nonce=True, dpop_nonce_key=b64url_encode(b"n" * 16)), b"k" * 32, claim,
                       lambda: NOW).fresh_nonce()
    assert derived and keyed and derived != keyed
    for bad in ("!!", b64url_encode(b"short")):
        with pytest.raises(ValueError):
            dpop_guard(_settings(dpop_require_nonce=True, dpop_nonce_key=bad), b"k" * 32, claim, lambda: NOW)


async def test_guard_claims_each_jti_once_per_key_and_maps_errors() -> None:
    from sts.errors import InvalidDpopProof, InvalidRequest, UseDpopNonce
    from sts.sender.guard import DpopGuard, sender_binding

    seen: dict[tuple[str, str], float] = {}

    async def claim(namespace: str, jti: str, expires: float) -> bool:
        if (namespace, jti) in seen:
            return False
        seen[(namespace, jti)] = expires
        return True

    guard = DpopGuard(claim_once=claim, clock=lambda: float(NOW))
    key = dpop_key("ES256")
    proof = make_proof(URL, key=key, iat=NOW, jti="same").encode()
    assert await guard.check(None, repeated=False, method="POST", issuer="https://sts.example.com/") is None
    got = await guard.check(proof, repeated=False, method="POST", issuer="https://sts.example.com/")
    assert got is not None and seen == {(f"dpop:{got.jkt}", "same"): pytest.approx(NOW + 61, abs=1)}
    with pytest.raises(InvalidDpopProof) as info:
        await guard.check(proof, repeated=False, method="POST", issuer="https://sts.example.com")
    assert info.value.reason == "dpop_replayed"
    # the same jti under another key is another proof
    assert await guard.check(make_proof(URL, key=dpop_key("EdDSA"), iat=NOW, jti="same").encode(), repeated=False,
                             method="POST", issuer="https://sts.example.com") is not None
    with pytest.raises(InvalidDpopProof) as info:
        await guard.check(proof, repeated=True, method="POST", issuer="https://sts.example.com")
    assert info.value.reason == "dpop_multiple_headers"
    with pytest.raises(InvalidDpopProof) as info:
        await guard.check(make_proof(URL, iat=NOW).encode(), repeated=False, method="POST", issuer="https://other.example")
    assert info.value.reason == "dpop_htu"
    nonced = DpopGuard(claim_once=claim, clock=lambda: float(NOW), nonces=NonceIssuer(b"k" * 32, clock=lambda: float(NOW)))
    with pytest.raises(UseDpopNonce) as nonce_info:
        await nonced.check(make_proof(URL, iat=NOW).encode(), repeated=False, method="POST", issuer="https://sts.example.com")
    assert nonce_info.value.headers["DPoP-Nonce"] == nonced.fresh_nonce() and nonce_info.value.status == 400
    with pytest.raises(InvalidDpopProof):
        sender_binding("dpop", None, None)
    with pytest.raises(InvalidRequest):
        sender_binding("required", None, None)
    assert sender_binding("none", None, None).token_type == "Bearer"
