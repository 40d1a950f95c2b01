"""X.509-SVID verification (sts.spiffe.x509svid): X509-SVID.md §2, §3, §4 and §5, every
refusal with real certificates."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from spiffe_support import (
    NOW,
    TrustDomain,
    _usage,
    certificate,
    chain_token,
    der_b64,
    ec_key,
)

from sts.spiffe.x509svid import SvidRejected, parse_chain, verify_chain

TD = TrustDomain("example.org")
FOREIGN = TrustDomain("foreign.org")
T = time.time()


def _leaf(**kw: Any) -> x509.Certificate:
    return TD.svid("/ns/default/sa/app", **kw)[0]


def _verify(*chain: x509.Certificate, authorities: tuple[x509.Certificate, ...] = (TD.root,), now: float = T) -> Any:
    return verify_chain(list(chain), authorities, now=now)


def test_valid_svid_chains_to_the_root() -> None:
    leaf = _leaf()
    verified = _verify(leaf, TD.inter)
    assert str(verified.spiffe_id) == "spiffe://example.org/ns/default/sa/app"
    assert verified.chain == (leaf, TD.inter, TD.root)
    assert verified.not_after == pytest.approx(leaf.not_valid_after_utc.timestamp())


def test_intermediate_published_as_authority_is_a_trust_anchor() -> None:
    assert _verify(_leaf(), authorities=(TD.inter,)).chain[-1] == TD.inter


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"ca": None}, id="no-basic-constraints"),
        pytest.param({"eku": None}, id="no-extended-key-usage"),
        pytest.param({"eku": [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]}, id="any-extended-key-usage"),
        pytest.param({"key_usage": _usage(digital_signature=True, key_agreement=True)}, id="key-agreement-allowed"),
        pytest.param({"cn": "app", "san_critical": False}, id="subject-with-non-critical-san"),
    ],
)
def test_valid_variants(kw: dict[str, Any]) -> None:
    _verify(_leaf(**kw), TD.inter)


def _other_td_leaf() -> tuple[x509.Certificate, ...]:
    return (FOREIGN.svid("/x")[0], FOREIGN.inter)


def _self_signed() -> tuple[x509.Certificate, ...]:
    key = ec_key()
    return (certificate(key, uris=["spiffe://example.org/x"], eku=[ExtendedKeyUsageOID.CLIENT_AUTH]),)


def _intermediate_not_ca() -> tuple[x509.Certificate, ...]:
    key = ec_key()
    inter = certificate(key, issuer=(TD.root, TD.root_key), cn="fake", ca=False,
                        key_usage=_usage(digital_signature=True, cert_sign=True))
    leaf = certificate(ec_key(), issuer=(inter, key), uris=["spiffe://example.org/x"])
    return (leaf, inter)


def _intermediate_with_path() -> tuple[x509.Certificate, ...]:
    key = ec_key()
    inter = certificate(key, issuer=(TD.root, TD.root_key), cn="i", uris=["spiffe://example.org/not-a-ca-id"], ca=True)
    leaf = certificate(ec_key(), issuer=(inter, key), uris=["spiffe://example.org/x"])
    return (leaf, inter)


INVALID = [
    pytest.param(lambda: (_leaf(ca=True, key_usage=_usage(digital_signature=True)), TD.inter), "leaf_is_ca", id="leaf-is-ca"),
    pytest.param(lambda: (_leaf(key_usage=None), TD.inter), "key_usage_missing", id="no-key-usage"),
    pytest.param(lambda: (_leaf(key_usage=_usage(digital_signature=True, cert_sign=True)), TD.inter),
                 "leaf_can_sign_certificates", id="leaf-keyCertSign"),
    pytest.param(lambda: (_leaf(key_usage=_usage(digital_signature=True, crl_sign=True)), TD.inter),
                 "leaf_can_sign_certificates", id="leaf-cRLSign"),
    pytest.param(lambda: (_leaf(key_usage=_usage(key_agreement=True)), TD.inter), "digital_signature_missing",
                 id="no-digitalSignature"),
    pytest.param(lambda: (_leaf(uris=[]), TD.inter), "no_uri_san", id="no-san"),
    pytest.param(lambda: (_leaf(uris=[], dns=["app.example.org"]), TD.inter), "no_uri_san", id="dns-san-only"),
    pytest.param(lambda: (_leaf(uris=["spiffe://example.org/a", "spiffe://example.org/b"]), TD.inter),
                 "multiple_uri_sans", id="two-spiffe-ids"),
    pytest.param(lambda: (_leaf(uris=["spiffe://example.org/a", "https://example.org/b"]), TD.inter),
                 "multiple_uri_sans", id="spiffe-and-https-uri"),
    pytest.param(lambda: (_leaf(uris=["https://example.org/a"]), TD.inter), "invalid_spiffe_id", id="https-uri"),
    pytest.param(lambda: (_leaf(uris=["spiffe://Example.org/a"]), TD.inter), "invalid_spiffe_id", id="uppercase-td"),
    pytest.param(lambda: (_leaf(uris=["spiffe://example.org/a/../b"]), TD.inter), "invalid_spiffe_id", id="dot-segment"),
    pytest.param(lambda: (_leaf(uris=["spiffe://example.org"]), TD.inter), "spiffe_id_without_path", id="root-id"),
    pytest.param(lambda: (_leaf(san_critical=False), TD.inter), "san_not_critical", id="empty-subject-non-critical-san"),
    pytest.param(lambda: (_leaf(eku=[ExtendedKeyUsageOID.SERVER_AUTH]), TD.inter), "extended_key_usage",
                 id="eku-without-clientAuth"),
    pytest.param(lambda: (_leaf(not_after=NOW - dt.timedelta(minutes=1), not_before=NOW - dt.timedelta(hours=1)), TD.inter),
                 "path_validation_failed", id="expired"),
    pytest.param(lambda: (_leaf(not_before=NOW + dt.timedelta(hours=1), not_after=NOW + dt.timedelta(hours=3)), TD.inter),
                 "path_validation_failed", id="not-yet-valid"),
    pytest.param(lambda: (_leaf(),), "path_validation_failed", id="intermediate-missing"),
    pytest.param(_other_td_leaf, "path_validation_failed", id="signed-by-another-trust-domain"),
    pytest.param(_self_signed, "path_validation_failed", id="self-signed-leaf"),
    pytest.param(_intermediate_not_ca, "path_validation_failed", id="intermediate-not-ca"),
    pytest.param(_intermediate_with_path, "signing_certificate_id_has_path", id="intermediate-id-with-path"),
    pytest.param(lambda: (_leaf(extra=[(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"),
                                        True)]), TD.inter),
                 "path_validation_failed", id="unknown-critical-extension"),
]


@pytest.mark.parametrize(("make", "reason"), INVALID)
def test_invalid_svids_are_refused(make: Any, reason: str) -> None:
    with pytest.raises(SvidRejected) as info:
        _verify(*make())
    assert info.value.reason == reason


def test_no_authorities_means_no_x509_svid_is_trusted() -> None:
    with pytest.raises(SvidRejected) as info:
        _verify(_leaf(), TD.inter, authorities=())
    assert info.value.reason == "no_x509_authorities"


def test_time_is_passed_in() -> None:
    leaf = _leaf()
    with pytest.raises(SvidRejected):
        _verify(leaf, TD.inter, now=T + 3 * 3600)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param("not json", "chain_not_json", id="not-json"),
        pytest.param("{}", "chain_not_array", id="object"),
        pytest.param("[]", "chain_not_array", id="empty-array"),
        pytest.param(json.dumps([der_b64(TD.root)] * 9), "chain_too_long", id="nine-certificates"),
        pytest.param("[1]", "chain_item_malformed", id="number"),
        pytest.param('["***"]', "certificate_malformed", id="not-base64"),
        pytest.param('["' + der_b64(TD.root).replace("+", "-").replace("/", "_").rstrip("=") + 'x"]',
                     "certificate_malformed", id="base64url-not-accepted"),
        pytest.param('["aGVsbG8="]', "certificate_malformed", id="not-der"),
    ],
)
def test_malformed_chain_tokens(token: str, reason: str) -> None:
    with pytest.raises(SvidRejected) as info:
        parse_chain(token)
    assert info.value.reason == reason


def test_chain_token_round_trip() -> None:
    leaf = _leaf()
    assert parse_chain(chain_token(leaf, TD.inter)) == [leaf, TD.inter]
