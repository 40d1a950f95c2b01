"""RFC 8705 §2 mutual-TLS client authentication rules (sts.client_tls), and their registration."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from spiffe_support import certificate, ec_key, pem

from sts.client_tls import SELF_SIGNED_TLS_CLIENT_AUTH, TlsClientRule, TlsRuleError, check
from sts.config.models import RegisteredClient

NOW = dt.datetime.now(dt.timezone.utc)
CA_KEY = ec_key()
CA = certificate(CA_KEY, cn="client CA", ca=True)
# Same subject name as CA, another key: a certificate it signs must not pass as CA's.
IMPOSTOR_KEY = ec_key()
IMPOSTOR = certificate(IMPOSTOR_KEY, cn="client CA", ca=True)
OLD_CA_KEY = ec_key()
OLD_CA = certificate(OLD_CA_KEY, cn="old CA", ca=True, not_before=NOW - dt.timedelta(days=3), not_after=NOW - dt.timedelta(days=1))


def _leaf(issuer: tuple[x509.Certificate, Any] = (CA, CA_KEY), *, cn: str = "agent-gateway", **kw: Any) -> x509.Certificate:
    return certificate(ec_key(), issuer=issuer, cn=cn, **kw)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _presented(cert: x509.Certificate, *, hash_only: bool = False) -> tuple[bytes, bytes | None]:
    der = _der(cert)
    return hashlib.sha256(der).digest(), None if hash_only else der


def _pki(**kw: Any) -> TlsClientRule:
    return TlsClientRule.pki(subject_dn=kw.get("dn"), san=kw.get("san"), authorities_pem=kw.get("cas", pem(CA)))


LEAF = _leaf(dns=["Gateway.Agents.example"], uris=["spiffe://example.org/gateway"], ips=["10.0.0.7"])
EXPIRED = _leaf(not_before=NOW - dt.timedelta(days=2), not_after=NOW - dt.timedelta(days=1))
FORGED = _leaf((IMPOSTOR, IMPOSTOR_KEY))
UNDER_OLD_CA = _leaf((OLD_CA, OLD_CA_KEY))
SELF_SIGNED_KEY = ec_key()
SELF_SIGNED = certificate(SELF_SIGNED_KEY, cn="self-signed client")


@pytest.mark.parametrize(("rule", "cert", "hash_only", "expected"), [
    pytest.param(_pki(dn="CN=agent-gateway"), LEAF, False, None, id="subject-dn"),
    pytest.param(_pki(dn="CN=someone-else"), LEAF, False, "tls_client_certificate_subject_mismatch", id="subject-dn-mismatch"),
    pytest.param(_pki(san=("dns", "gateway.agents.example")), LEAF, False, None, id="san-dns-ignores-case"),
    pytest.param(_pki(san=("dns", "GATEWAY.agents.example")), LEAF, False, None, id="registered-dns-ignores-case"),
    pytest.param(_pki(san=("dns", "other.agents.example")), LEAF, False, "tls_client_certificate_san_mismatch", id="san-dns-mismatch"),
    pytest.param(_pki(san=("uri", "spiffe://example.org/gateway")), LEAF, False, None, id="san-uri"),
    pytest.param(_pki(san=("uri", "spiffe://example.org/Gateway")), LEAF, False, "tls_client_certificate_san_mismatch", id="san-uri-exact"),
    pytest.param(_pki(san=("ip", "10.0.0.7")), LEAF, False, None, id="san-ip"),
    pytest.param(_pki(san=("ip", "::ffff:10.0.0.7")), LEAF, False, "tls_client_certificate_san_mismatch", id="san-ip-mapped-is-another-address"),
    pytest.param(_pki(san=("email", "gw@agents.example")), LEAF, False, "tls_client_certificate_san_mismatch", id="san-email-absent"),
    pytest.param(_pki(dn="CN=agent-gateway"), FORGED, False, "tls_client_certificate_untrusted_issuer", id="issuer-with-same-name-other-key"),
    pytest.param(_pki(dn="CN=agent-gateway"), EXPIRED, False, "tls_client_certificate_expired", id="expired-certificate"),
    pytest.param(_pki(dn="CN=agent-gateway", cas=pem(OLD_CA)), UNDER_OLD_CA, False, "tls_client_certificate_untrusted_issuer", id="expired-ca"),
    pytest.param(_pki(dn="CN=agent-gateway", cas=pem(IMPOSTOR) + pem(CA)), LEAF, False, None, id="second-ca-in-file"),
    pytest.param(_pki(dn="CN=agent-gateway"), LEAF, True, "tls_client_certificate_unavailable", id="forwarded-hash-only"),
    pytest.param(_pki(dn="CN=self-signed client"), SELF_SIGNED, False, "tls_client_certificate_untrusted_issuer", id="self-signed-under-pki"),
    pytest.param(TlsClientRule.self_signed([hashlib.sha256(_der(SELF_SIGNED)).hexdigest()]), SELF_SIGNED, True, None, id="self-signed-thumbprint"),
    pytest.param(TlsClientRule.self_signed([hashlib.sha256(_der(SELF_SIGNED)).hexdigest()]), LEAF, False, "tls_client_certificate_not_registered", id="self-signed-other-certificate"),
])
def test_certificate_rules(rule: TlsClientRule, cert: x509.Certificate, hash_only: bool, expected: str | None) -> None:
    digest, der = _presented(cert, hash_only=hash_only)
    assert check(rule, digest, der, NOW.timestamp()) == expected


@pytest.mark.parametrize("rule", [_pki(dn="CN=agent-gateway"), TlsClientRule.self_signed(["00" * 32])], ids=["pki", "self-signed"])
def test_no_certificate_is_refused(rule: TlsClientRule) -> None:
    assert check(rule, None, None, NOW.timestamp()) == "tls_client_certificate_missing"


def test_a_multi_attribute_dn_compares_as_a_name_not_as_text() -> None:
    leaf = certificate(ec_key(), issuer=(CA, CA_KEY), cn="gw")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw")])
    assert leaf.subject == name
    assert check(_pki(dn="CN=gw"), *_presented(leaf), NOW.timestamp()) is None
    assert check(_pki(dn="CN=gw,O=Agents"), *_presented(leaf), NOW.timestamp()) == "tls_client_certificate_subject_mismatch"


@pytest.mark.parametrize(("kw", "message"), [
    ({"dn": "CN=a", "san": ("dns", "a.example")}, "exactly one"),
    ({}, "exactly one"),
    ({"dn": "not a dn"}, "RFC 4514"),
    ({"san": ("ip", "10.0.0.300")}, "IP address"),
    ({"dn": "CN=a", "cas": b"no certificate here"}, "no PEM certificate"),
])
def test_bad_rules_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(TlsRuleError, match=message):
        _pki(**kw)
    assert SELF_SIGNED_TLS_CLIENT_AUTH == "self_signed_tls_client_auth"


@pytest.mark.parametrize(("registration", "message"), [
    ({"auth_method": "tls_client_auth", "tls_client_auth_ca_file": "ca.pem"}, "exactly one"),
    ({"auth_method": "tls_client_auth", "tls_client_auth_subject_dn": "CN=a"}, "needs tls_client_auth_ca_file"),
    ({"auth_method": "tls_client_auth", "tls_client_auth_subject_dn": "CN=a", "tls_client_auth_san_dns": "a.example",
      "tls_client_auth_ca_file": "ca.pem"}, "exactly one"),
    ({"auth_method": "tls_client_auth", "tls_client_auth_subject_dn": "=broken", "tls_client_auth_ca_file": "ca.pem"}, "RFC 4514"),
    ({"auth_method": "tls_client_auth", "tls_client_auth_san_ip": "nope", "tls_client_auth_ca_file": "ca.pem"}, "IP address"),
    ({"auth_method": "tls_client_auth", "tls_client_auth_subject_dn": "CN=a", "tls_client_auth_ca_file": "ca.pem",
      "secret_sha256": "ab" * 32}, "not secret_sha256"),
    ({"auth_method": "self_signed_tls_client_auth"}, "needs certificates_sha256"),
    ({"auth_method": "self_signed_tls_client_auth", "certificates_sha256": ["ab" * 32], "tls_client_auth_san_dns": "a.example"},
     "not tls_client_auth"),
    ({"auth_method": "client_secret_basic", "secret_sha256": "ab" * 32, "certificates_sha256": ["ab" * 32]}, "not certificates_sha256"),
])
def test_registrations_take_exactly_their_credential(registration: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RegisteredClient.model_validate({"client_id": "gw", **registration})


def test_good_registrations() -> None:
    pki = RegisteredClient.model_validate({"client_id": "gw", "auth_method": "tls_client_auth",
                                           "tls_client_auth_san_uri": "spiffe://example.org/gw", "tls_client_auth_ca_file": "ca.pem"})
    assert pki.tls_client_auth_san() == ("uri", "spiffe://example.org/gw")
    selfsigned = RegisteredClient.model_validate({"client_id": "gw", "auth_method": "self_signed_tls_client_auth",
                                                  "certificates_sha256": ["AB" * 32]})
    assert selfsigned.tls_client_auth_san() is None
