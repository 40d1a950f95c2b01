"""JWT-SVID verification (sts.spiffe.jwtsvid rules, sts.spiffe.verifier): JWT-SVID.md §2-§4
and §6.2, every refusal with real keys and bundles."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from spiffe_support import (
    INVALID_SPIFFE_IDS,
    TrustDomain,
    bundle_doc,
    ec_key,
    jwt_svid,
    sign_jws,
)

from sts.config.spiffe import TrustDomainConfig
from sts.spiffe.bundle_source import BundleFile, BundleStore, HttpsWebEndpoint
from sts.spiffe.jwtsvid import (
    JwtSvidRejected,
    JwtSvidRules,
    check_jwt_svid_header,
    validate_jwt_svid_claims,
)
from sts.spiffe.verifier import SpiffeTrust, TrustDomainTrust
from sts.subject.oidc import IssuerKeysUnavailable, SubjectRejected

AUD = "https://sts.example.com"
TD = TrustDomain("example.org")
FOREIGN = TrustDomain("foreign.org")
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
T = time.time()  # for the pure rules only: tokens are minted with the real clock


def _now() -> int:
    return int(time.time())


def _trust(tmp_path: Path, *configs: dict[str, Any], docs: dict[str, dict[str, Any]] | None = None) -> SpiffeTrust:
    store = BundleStore(clock=time.time)
    domains = {}
    for i, raw in enumerate(configs):
        name = raw["name"]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps((docs or {}).get(name) or {"keys": []}))
        cfg = TrustDomainConfig.model_validate({"bundle_file": str(path), **raw})
        domains[name] = TrustDomainTrust.from_config(cfg, location=f"trust_domains[{i}]")
        store.register(name, BundleFile(path))
    return SpiffeTrust(domains, store, clock=time.time)


@pytest.fixture()
def trust(tmp_path: Path) -> SpiffeTrust:
    two_keys = bundle_doc(jwt=[*TD.jwt_keys, ("ec-2", ec_key()), ("rsa-1", RSA_KEY)], authorities=[(TD.root, TD.root_key)])
    return _trust(
        tmp_path,
        {"name": "example.org", "audiences": [AUD]},
        {"name": "foreign.org", "audiences": [AUD]},
        {"name": "x509only.org"},
        {"name": "rsaonly.org", "audiences": [AUD], "algorithms": ["RS256"]},
        {"name": "jti.org", "audiences": [AUD], "require_jti": True, "max_token_lifetime": 600},
        docs={"example.org": two_keys, "foreign.org": FOREIGN.bundle(), "x509only.org": TD.bundle(),
              "rsaonly.org": TD.bundle(), "jti.org": TD.bundle()},
    )


async def test_valid_jwt_svid(trust: SpiffeTrust) -> None:
    subject = await trust.verify_jwt(TD.mint("/ns/a/sa/b", AUD))
    assert (subject.issuer_name, subject.issuer, subject.subject, subject.svid) == (
        "example.org", "spiffe://example.org", "spiffe://example.org/ns/a/sa/b", "jwt")
    assert subject.spiffe_id.path == "/ns/a/sa/b"
    assert len(subject.token_sha256) == 64


@pytest.mark.parametrize(
    ("kw", "path"),
    [
        pytest.param({"header": {"typ": "JOSE"}}, "/a", id="typ-JOSE"),
        pytest.param({"header": {"typ": None}}, "/a", id="no-typ"),
        pytest.param({"aud": ["other", AUD]}, "/a", id="aud-list-containing-ours"),
        pytest.param({"iss": "https://spire.example.org"}, "/a", id="with-iss"),
        pytest.param({"nbf": _now() - 10, "jti": "j1"}, "/a", id="with-nbf-and-jti"),
    ],
)
async def test_valid_variants(trust: SpiffeTrust, kw: dict[str, Any], path: str) -> None:
    aud = kw.pop("aud", AUD)
    subject = await trust.verify_jwt(TD.mint(path, aud, **kw))
    if "iss" in kw:
        assert subject.issuer == kw["iss"]


async def test_rsa_key_found_by_kid(trust: SpiffeTrust) -> None:
    token = jwt_svid(RSA_KEY, "rsa-1", "spiffe://example.org/a", AUD, header={"alg": "PS256"})
    assert (await trust.verify_jwt(token)).subject == "spiffe://example.org/a"


async def test_kid_is_optional_when_one_key_fits(tmp_path: Path) -> None:
    trust = _trust(tmp_path, {"name": "example.org", "audiences": [AUD]}, docs={"example.org": TD.bundle()})
    await trust.verify_jwt(TD.mint("/a", AUD, kid=None))


def _case(kind: str, reason: str, make: Any, name: str) -> Any:
    return pytest.param(make, kind, reason, id=name)


OTHER = ec_key()
CASES = [
    _case("malformed", "malformed", lambda: "a.b.c", "not-a-jws"),
    _case("malformed", "jwe_not_supported", lambda: "a.b.c.d.e", "jwe"),
    _case("header", "alg_not_allowed", lambda: TD.mint("/a", AUD, header={"alg": "none"}), "alg-none"),
    _case("header", "alg_not_allowed", lambda: TD.mint("/a", AUD, header={"alg": "HS256"}), "alg-HS256"),
    _case("header", "alg_not_allowed", lambda: TD.mint("/a", AUD, header={"alg": "EdDSA"}), "alg-EdDSA-not-jwt-svid"),
    _case("header", "alg_not_allowed", lambda: TD.mint("/a", AUD, header={"alg": "ES256K"}), "alg-unknown"),
    _case("header", "alg_not_allowed", lambda: jwt_svid(TD.jwt_keys[0][1], TD.jwt_keys[0][0], "spiffe://rsaonly.org/a", AUD),
          "alg-outside-configured-allowlist"),
    _case("header", "typ_mismatch", lambda: TD.mint("/a", AUD, header={"typ": "at+jwt"}), "typ-at+jwt"),
    _case("header", "typ_mismatch", lambda: TD.mint("/a", AUD, header={"typ": "jwt"}), "typ-lowercase"),
    _case("header", "header_not_allowed", lambda: TD.mint("/a", AUD, header={"x5c": ["AAAA"]}), "header-x5c"),
    _case("header", "header_not_allowed", lambda: TD.mint("/a", AUD, header={"jku": "https://evil"}), "header-jku"),
    _case("header", "header_not_allowed", lambda: TD.mint("/a", AUD, header={"jwk": {"kty": "EC"}}), "header-jwk"),
    _case("header", "header_not_allowed", lambda: TD.mint("/a", AUD, header={"crit": ["exp"]}), "header-crit"),
    _case("header", "header_not_allowed", lambda: TD.mint("/a", AUD, header={"cty": "JWT"}), "header-cty"),
    _case("header", "header_not_allowed", lambda: TD.mint("/a", AUD, header={"x-private": 1}), "header-private"),
    _case("header", "malformed", lambda: TD.mint("/a", AUD, kid=None, header={"kid": 7}), "kid-not-string"),
    _case("claims", "sub_missing", lambda: TD.mint("/a", AUD, drop=["sub"]), "sub-missing"),
    _case("claims", "sub_missing", lambda: jwt_svid(TD.jwt_keys[0][1], TD.jwt_keys[0][0], "", AUD), "sub-empty"),
    _case("claims", "sub_without_path", lambda: jwt_svid(TD.jwt_keys[0][1], TD.jwt_keys[0][0], "spiffe://example.org", AUD),
          "sub-trust-domain-only"),
    _case("untrusted_issuer", "trust_domain_not_trusted",
          lambda: jwt_svid(OTHER, "k", "spiffe://unknown.org/a", AUD), "trust-domain-not-configured"),
    _case("untrusted_issuer", "jwt_svid_not_accepted",
          lambda: jwt_svid(TD.jwt_keys[0][1], TD.jwt_keys[0][0], "spiffe://x509only.org/a", AUD), "no-audiences-configured"),
    _case("signature", "unknown_kid", lambda: TD.mint("/a", AUD, kid="nope"), "unknown-kid"),
    _case("signature", "unknown_kid", lambda: TD.mint("/a", AUD, kid=None), "no-kid-two-keys"),
    _case("signature", "unknown_kid",
          lambda: jwt_svid(FOREIGN.jwt_keys[0][1], FOREIGN.jwt_keys[0][0], "spiffe://example.org/a", AUD),
          "key-of-another-trust-domain-never-merged"),
    _case("signature", "unknown_kid", lambda: jwt_svid(TD.root_key, None, "spiffe://example.org/a", AUD),
          "x509-authority-key-is-not-a-jwt-key"),
    _case("signature", "bad_signature", lambda: TD.mint("/a", AUD, key=OTHER), "signed-by-another-key"),
    _case("claims", "exp_missing", lambda: TD.mint("/a", AUD, drop=["exp"]), "exp-missing"),
    _case("claims", "exp_invalid", lambda: TD.mint("/a", AUD, exp="soon"), "exp-string"),
    _case("claims", "expired", lambda: TD.mint("/a", AUD, exp=_now() - 120, iat=_now() - 400), "expired"),
    _case("claims", "not_yet_valid", lambda: TD.mint("/a", AUD, nbf=_now() + 600), "nbf-future"),
    _case("claims", "iat_in_future", lambda: TD.mint("/a", AUD, iat=_now() + 600, exp=_now() + 900), "iat-future"),
    _case("claims", "claim_type", lambda: TD.mint("/a", AUD, iat="now"), "iat-string"),
    _case("claims", "lifetime_too_long", lambda: TD.mint("/a", AUD, lifetime=2 * 86400), "lifetime-over-cap"),
    _case("claims", "aud_missing", lambda: TD.mint("/a", AUD, drop=["aud"]), "aud-missing"),
    _case("claims", "aud_mismatch", lambda: TD.mint("/a", "spiffe://example.org/other"), "aud-other"),
    _case("claims", "aud_mismatch", lambda: TD.mint("/a", ["a", "b"]), "aud-list-without-ours"),
    _case("claims", "claim_type", lambda: TD.mint("/a", []), "aud-empty-list"),
    _case("claims", "claim_type", lambda: TD.mint("/a", 5), "aud-number"),
    _case("claims", "claim_type", lambda: TD.mint("/a", AUD, jti=5), "jti-number"),
    _case("claims", "jti_missing", lambda: jwt_svid(TD.jwt_keys[0][1], TD.jwt_keys[0][0], "spiffe://jti.org/a", AUD),
          "jti-required"),
]


@pytest.mark.parametrize(("make", "kind", "reason"), CASES)
async def test_invalid_jwt_svids_are_refused(trust: SpiffeTrust, make: Any, kind: str, reason: str) -> None:
    with pytest.raises(SubjectRejected) as info:
        await trust.verify_jwt(make())
    assert (info.value.kind, info.value.reason) == (kind, reason)


@pytest.mark.parametrize(("value", "reason"), [pytest.param(v, r, id=n) for v, r, n in INVALID_SPIFFE_IDS])
async def test_every_invalid_spiffe_id_as_subject_is_refused(trust: SpiffeTrust, value: str, reason: str) -> None:
    with pytest.raises(SubjectRejected) as info:
        await trust.verify_jwt(jwt_svid(TD.jwt_keys[0][1], TD.jwt_keys[0][0], value, AUD))
    assert info.value.kind == "claims"
    assert info.value.reason in ("sub_missing", f"sub_invalid_{reason}")


async def test_trust_domain_without_bundle_is_unavailable_not_refused() -> None:
    store = BundleStore(clock=time.time)
    store.register("example.org", HttpsWebEndpoint("https://127.0.0.1:9/bundle"))
    cfg = TrustDomainConfig.model_validate({"name": "example.org", "bundle_endpoint": {"url": "https://127.0.0.1:9/bundle",
                                                                                       "profile": "https_web"}, "audiences": [AUD]})
    trust = SpiffeTrust({"example.org": TrustDomainTrust.from_config(cfg, location="x")}, store, clock=time.time)
    with pytest.raises(IssuerKeysUnavailable) as info:
        await trust.verify_jwt(TD.mint("/a", AUD))
    assert info.value.issuer_name == "example.org"
    await store.stop()


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        pytest.param({"sub": "spiffe://td/a"}, True, id="spiffe-sub-no-iss"),
        pytest.param({"sub": "SPIFFE://td/a"}, True, id="bad-spiffe-sub-still-goes-to-spiffe"),
        pytest.param({"sub": "spiffe://td/a", "iss": "https://oidc.example"}, False, id="trusted-oidc-iss-wins"),
        pytest.param({"sub": "spiffe://td/a", "iss": "https://unknown"}, True, id="untrusted-iss"),
        pytest.param({"sub": "repo:acme/app", "iss": "https://unknown"}, False, id="not-spiffe"),
    ],
)
def test_dispatch_peek(claims: dict[str, Any], expected: bool) -> None:
    token = sign_jws({"alg": "ES256"}, claims, OTHER)
    assert SpiffeTrust.looks_like_jwt_svid(token, lambda iss: iss == "https://oidc.example") is expected
    assert SpiffeTrust.looks_like_jwt_svid("garbage", lambda iss: False) is False


# -- the pure rules -----------------------------------------------------------------------------

RULES = JwtSvidRules(audiences=frozenset({AUD}))


def test_rules_invariants() -> None:
    with pytest.raises(ValueError):
        JwtSvidRules(audiences=frozenset())
    with pytest.raises(ValueError):
        JwtSvidRules(audiences=frozenset({AUD}), algorithms=frozenset({"EdDSA"}))


def test_header_rules_return_the_alg() -> None:
    assert check_jwt_svid_header({"alg": "PS384", "kid": "k", "typ": "JWT"}, RULES.algorithms) == "PS384"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        pytest.param({"aud": AUD, "exp": T + 60, "nbf": "x"}, "claim_type", id="nbf-string"),
        pytest.param({"aud": AUD, "exp": float("nan")}, "exp_invalid", id="exp-nan"),
        pytest.param({"aud": AUD, "exp": True}, "exp_invalid", id="exp-bool"),
        pytest.param({"aud": AUD, "exp": T - 61}, "expired", id="expired-past-leeway"),
    ],
)
def test_claim_rules(claims: dict[str, Any], reason: str) -> None:
    with pytest.raises(JwtSvidRejected) as info:
        validate_jwt_svid_claims(claims, RULES, T)
    assert info.value.reason == reason


def test_leeway_accepts_recently_expired() -> None:
    validate_jwt_svid_claims({"aud": AUD, "exp": T - 30}, RULES, T)
