"""SPIFFE bundle parsing and publishing (sts.spiffe.bundle), per Trust Domain and Bundle §4,
JWT-SVID §6 and X509-SVID §6."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from spiffe_support import (
    TrustDomain,
    bundle_doc,
    certificate,
    ec_key,
    jwt_entry,
    public_jwk,
    x509_entry,
)

from sts import jose
from sts.spiffe.bundle import (
    BundleError,
    bundle_document,
    parse_bundle,
    parse_bundle_bytes,
)

TD = TrustDomain("example.org")
OTHER_KEY = ec_key()
LEAF_KEY = ec_key()
LEAF = certificate(LEAF_KEY, issuer=(TD.root, TD.root_key), uris=["spiffe://example.org/x"])


def test_jwt_keys_and_authorities_are_separated() -> None:
    bundle = parse_bundle(TD.bundle(), "example.org")
    assert bundle.trust_domain == "example.org"
    assert [k.kid for k in bundle.jwt_keys.keys] == ["example.org-jwt-1"]
    assert bundle.x509_authorities == (TD.root,)
    assert (bundle.sequence, bundle.refresh_hint, bundle.skipped) == (1, 300, ())
    assert not bundle.empty


def test_trust_domain_comes_from_the_caller_not_the_document() -> None:
    doc = TD.bundle()
    doc["trust_domain"] = "evil.org"
    assert parse_bundle(doc, "example.org").trust_domain == "example.org"


SKIPPED = [
    pytest.param({"kty": "EC", "kid": "k", "crv": "P-256"}, "use_missing", id="use-missing"),
    pytest.param({**jwt_entry(OTHER_KEY, "k"), "use": "sig"}, "unknown_use", id="use-sig"),
    pytest.param({**jwt_entry(OTHER_KEY, "k"), "use": "JWT-SVID"}, "unknown_use", id="use-case-sensitive"),
    pytest.param({**jwt_entry(OTHER_KEY, "k"), "use": "wit-svid"}, "unknown_use", id="use-unknown-svid-type"),
    pytest.param({"use": "jwt-svid", "kid": "k", "x": "y"}, "kty_missing", id="kty-missing"),
    pytest.param({"use": "jwt-svid", "kid": "k", "kty": "XYZ"}, "unknown_kty", id="kty-unknown"),
    pytest.param({k: v for k, v in jwt_entry(OTHER_KEY, "k").items() if k != "kid"}, "kid_missing", id="jwt-kid-missing"),
    pytest.param({**jwt_entry(OTHER_KEY, "k"), "d": "AAAA"}, "private_material", id="jwt-private-material"),
    pytest.param({**jwt_entry(OTHER_KEY, "k"), "x": "AAAA"}, "malformed", id="jwt-bad-coordinates"),
    pytest.param(public_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024), use="jwt-svid", kid="weak"),
                 "weak_key", id="jwt-rsa-1024"),
    pytest.param({k: v for k, v in x509_entry(TD.root, TD.root_key).items() if k != "x5c"}, "x5c_missing", id="x509-no-x5c"),
    pytest.param({**x509_entry(TD.root, TD.root_key), "x5c": []}, "x5c_missing", id="x509-empty-x5c"),
    pytest.param({**x509_entry(TD.root, TD.root_key), "x5c": ["!!notbase64"]}, "x5c_malformed", id="x509-bad-base64"),
    pytest.param({**x509_entry(TD.root, TD.root_key), "x5c": [base64.b64encode(b"junk").decode()]}, "x5c_malformed",
                 id="x509-not-der"),
    pytest.param(x509_entry(LEAF, LEAF_KEY), "not_ca", id="x509-leaf-not-ca"),
    pytest.param(x509_entry(TD.root, OTHER_KEY), "x5c_key_mismatch", id="x509-jwk-key-differs-from-cert"),
    pytest.param("not an object", "malformed", id="entry-not-object"),
]


@pytest.mark.parametrize(("entry", "reason"), SKIPPED)
def test_unusable_entries_are_skipped_one_by_one(entry: Any, reason: str) -> None:
    doc = TD.bundle(extra_keys=[entry])
    bundle = parse_bundle(doc, "example.org")
    assert len(bundle.skipped) == 1 and bundle.skipped[0].endswith(reason), bundle.skipped
    # the good entries survive
    assert len(bundle.jwt_keys) == 1 and bundle.x509_authorities == (TD.root,)


def test_x509_entry_only_first_certificate_counts() -> None:
    entry = x509_entry(TD.root, TD.root_key)
    entry["x5c"].append("ignored-anything")
    assert parse_bundle(bundle_doc(authorities=(), extra_keys=[entry]), "td").x509_authorities == (TD.root,)


def test_duplicate_jwt_kid_keeps_the_first() -> None:
    doc = bundle_doc(jwt=[("same", OTHER_KEY), ("same", LEAF_KEY)])
    bundle = parse_bundle(doc, "td")
    assert len(bundle.jwt_keys) == 1 and bundle.skipped == ("kid=same: duplicate_kid",)


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param({"keys": []}, id="empty-keys"),
        pytest.param({"keys": [{"kty": "EC", "use": "future-svid"}]}, id="only-unknown-uses"),
    ],
)
def test_empty_bundles_are_valid_and_trust_nothing(doc: dict[str, Any]) -> None:
    bundle = parse_bundle(doc, "td")
    assert bundle.empty and len(bundle.jwt_keys) == 0 and bundle.x509_authorities == ()


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        pytest.param([], "malformed", id="not-object"),
        pytest.param({}, "malformed", id="no-keys"),
        pytest.param({"keys": {}}, "malformed", id="keys-not-array"),
        pytest.param({"keys": [], "spiffe_sequence": "1"}, "malformed", id="sequence-string"),
        pytest.param({"keys": [], "spiffe_sequence": -1}, "malformed", id="sequence-negative"),
        pytest.param({"keys": [], "spiffe_sequence": 1.5}, "malformed", id="sequence-float"),
        pytest.param({"keys": [], "spiffe_sequence": True}, "malformed", id="sequence-bool"),
        pytest.param({"keys": [], "spiffe_sequence": 2**64}, "malformed", id="sequence-over-63-bits"),
        pytest.param({"keys": [], "spiffe_refresh_hint": "300"}, "malformed", id="hint-string"),
    ],
)
def test_unusable_documents(doc: Any, reason: str) -> None:
    with pytest.raises(BundleError) as info:
        parse_bundle(doc, "td")
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"\xff\xfe", "not_json", id="not-utf8"),
        pytest.param(b"{", "not_json", id="truncated"),
        pytest.param(b'{"keys": [], "spiffe_sequence": NaN}', "not_json", id="nan"),
        pytest.param(b" " * (1024 * 1024 + 1), "too_large", id="too-large"),
    ],
)
def test_unusable_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(BundleError) as info:
        parse_bundle_bytes(data, "td")
    assert info.value.reason == reason


def test_same_keys_ignores_order_and_metadata() -> None:
    a = parse_bundle(bundle_doc(jwt=[("a", OTHER_KEY), ("b", LEAF_KEY)], sequence=1), "td")
    b = parse_bundle(bundle_doc(jwt=[("b", LEAF_KEY), ("a", OTHER_KEY)], sequence=2, refresh_hint=60), "td")
    c = parse_bundle(bundle_doc(jwt=[("a", OTHER_KEY)], sequence=2), "td")
    assert a.same_keys(b) and not a.same_keys(c)


def test_published_bundle_round_trips_through_the_parser() -> None:
    keys = [jose.generate_private_key("ES256", kid="es").public(), jose.generate_private_key("RS256", kid="rs").public()]
    doc = bundle_document(keys, refresh_hint=300)
    assert {k["use"] for k in doc["keys"]} == {"jwt-svid"}
    assert "spiffe_sequence" not in doc and doc["spiffe_refresh_hint"] == 300
    assert all("d" not in k for k in doc["keys"])
    bundle = parse_bundle(json.loads(json.dumps(doc)), "sts.example.com")
    assert sorted(k.kid or "" for k in bundle.jwt_keys.keys) == ["es", "rs"] and bundle.skipped == ()


def test_bundle_from_pem_roots() -> None:
    from spiffe_support import pem

    from sts.spiffe.bundle import x509_bundle_from_pem

    other = TrustDomain("cluster.local")
    doc = x509_bundle_from_pem(pem(TD.root) + pem(other.root), refresh_hint=3600)
    assert all(k["use"] == "x509-svid" and "kid" not in k for k in doc["keys"])
    bundle = parse_bundle(doc, "cluster.local")
    assert bundle.x509_authorities == (TD.root, other.root) and bundle.skipped == ()
    with pytest.raises(ValueError):
        x509_bundle_from_pem(pem(LEAF))
    with pytest.raises(ValueError):
        x509_bundle_from_pem(b"not pem")
