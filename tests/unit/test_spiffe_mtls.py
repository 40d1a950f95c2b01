"""The TLS client certificate of a request (sts.spiffe.mtls): the ASGI TLS extension, Envoy's
x-forwarded-client-cert from trusted proxies only, and X.509-SVID binding to the connection."""

from __future__ import annotations

import hashlib
import ssl
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from spiffe_support import TrustDomain, chain_token, pem

from sts.spiffe.mtls import (
    ClientCertificate,
    ForwardedCertificateRefused,
    client_certificate,
    parse_proxies,
    parse_xfcc,
)

TD = TrustDomain("example.org")
LEAF, _ = TD.svid("/ns/a/sa/b")
OTHER, _ = TD.svid("/ns/a/sa/c")
DER = LEAF.public_bytes(serialization.Encoding.DER)
HASH = hashlib.sha256(DER).hexdigest()
CERT = quote(pem(LEAF).decode(), safe="")
PROXIES = parse_proxies(["10.0.0.0/8", "127.0.0.1", "::1"])


def _scope(host: str = "127.0.0.1", cert: Any = None) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "client": (host, 5555)}
    if cert is not None:
        scope["extensions"] = {"tls": {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(cert)]}}
    return scope


def test_tls_peer_certificate_from_the_asgi_extension() -> None:
    got = client_certificate(_scope(cert=DER), None, ())
    assert got == ClientCertificate(sha256=hashlib.sha256(DER).digest(), der=DER, source="tls")
    assert got.matches(DER) and not got.matches(OTHER.public_bytes(serialization.Encoding.DER))


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param({"type": "http", "client": ("127.0.0.1", 1)}, id="plain-http"),
        pytest.param({"type": "http", "extensions": {"tls": {"client_cert_chain": []}}}, id="tls-without-client-cert"),
        pytest.param({"type": "http", "extensions": {"tls": {"client_cert_chain": ["garbage"]}}}, id="unparseable"),
    ],
)
def test_no_client_certificate(scope: dict[str, Any]) -> None:
    assert client_certificate(scope, None, PROXIES) is None


@pytest.mark.parametrize(
    ("header", "host"),
    [
        pytest.param(f'By=spiffe://example.org/envoy;Hash={HASH};Cert="{CERT}";Subject="";URI=spiffe://example.org/ns/a/sa/b',
                     "10.1.2.3", id="envoy-full"),
        pytest.param(f"Hash={HASH}", "127.0.0.1", id="hash-only"),
        pytest.param(f"Cert={CERT}", "::1", id="cert-only-unquoted"),
        pytest.param(f'cert="{CERT}";hash={HASH.upper()}', "::ffff:10.0.0.1", id="lowercase-keys-mapped-ipv4"),
    ],
)
def test_forwarded_certificate_from_trusted_proxy(header: str, host: str) -> None:
    got = client_certificate(_scope(host), header, PROXIES)
    assert got is not None and got.source == "forwarded" and got.matches(DER)


def test_forwarded_certificate_wins_over_the_proxy_own_tls_certificate() -> None:
    proxy_cert = OTHER.public_bytes(serialization.Encoding.DER)
    got = client_certificate(_scope("10.0.0.9", cert=proxy_cert), f"Hash={HASH}", PROXIES)
    assert got is not None and got.matches(DER) and not got.matches(proxy_cert)


@pytest.mark.parametrize(
    ("header", "host", "proxies", "reason"),
    [
        pytest.param(f"Hash={HASH}", "192.168.1.1", PROXIES, "xfcc_from_untrusted_peer", id="untrusted-peer"),
        pytest.param(f"Hash={HASH}", "127.0.0.1", (), "xfcc_from_untrusted_peer", id="no-trusted-proxies"),
        pytest.param(f"Hash={HASH}", "not-an-ip", PROXIES, "xfcc_from_untrusted_peer", id="unix-socket-peer"),
        pytest.param(f"Hash={HASH},Hash={HASH}", "127.0.0.1", PROXIES, "xfcc_multiple_elements", id="two-elements"),
        pytest.param("By=spiffe://example.org/envoy", "127.0.0.1", PROXIES, "xfcc_no_certificate", id="no-cert-no-hash"),
        pytest.param("Hash=zz", "127.0.0.1", PROXIES, "xfcc_hash_malformed", id="hash-not-hex"),
        pytest.param("Hash=abcd", "127.0.0.1", PROXIES, "xfcc_hash_malformed", id="hash-short"),
        pytest.param(f'Cert="{CERT}";Hash={"0" * 64}', "127.0.0.1", PROXIES, "xfcc_hash_mismatch", id="hash-mismatch"),
        pytest.param('Cert="not-a-pem"', "127.0.0.1", PROXIES, "xfcc_cert_malformed", id="cert-not-pem"),
        pytest.param(f"Hash={HASH};Hash={HASH}", "127.0.0.1", PROXIES, "xfcc_malformed", id="duplicate-key"),
        pytest.param('Hash="unterminated', "127.0.0.1", PROXIES, "xfcc_malformed", id="unbalanced-quote"),
        pytest.param("garbage", "127.0.0.1", PROXIES, "xfcc_malformed", id="no-key-value"),
        pytest.param("Hash=" + "a" * 40000, "127.0.0.1", PROXIES, "xfcc_too_large", id="too-large"),
    ],
)
def test_forwarded_certificate_refused(header: str, host: str, proxies: Any, reason: str) -> None:
    with pytest.raises(ForwardedCertificateRefused) as info:
        client_certificate(_scope(host), header, proxies)
    assert info.value.reason == reason


def test_xfcc_quoted_values_may_hold_separators() -> None:
    elements = parse_xfcc('By=spiffe://a/b;Subject="CN=x,O=y;z";URI=spiffe://c/d')
    assert elements == [{"by": ["spiffe://a/b"], "subject": ["CN=x,O=y;z"], "uri": ["spiffe://c/d"]}]


def test_proxies_are_addresses_or_networks() -> None:
    assert [str(n) for n in parse_proxies([" 10.0.0.0/8", "::1"])] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError):
        parse_proxies(["proxy.internal"])


def test_chain_token_shape() -> None:
    assert chain_token(LEAF, TD.inter).startswith('["MII')
