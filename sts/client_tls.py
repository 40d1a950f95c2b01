"""Mutual-TLS client authentication (RFC 8705 §2), pure.

Two methods, both needing a TLS client certificate (from the broker's own TLS, or forwarded by a
trusted proxy: :mod:`sts.spiffe.mtls`) and the ``client_id`` request parameter, which RFC 8705 §2
requires because the certificate alone does not name the client:

* ``tls_client_auth`` (§2.1, PKI): the certificate was issued by one of the client's registered
  certificate authorities (checked here, on top of whatever the TLS layer accepted, so that an
  authority trusted for another purpose, such as a SPIFFE trust domain, cannot mint a client),
  is within its validity period, and carries exactly the registered subject distinguished name
  or subject alternative name (§2.1.2: "exactly one" of the ``tls_client_auth_*`` values is used
  per client). The DN is compared as a parsed name (RFC 4514), never as text, so the order of
  attributes is the certificate's.
* ``self_signed_tls_client_auth`` (§2.2): the certificate is one the client registered, matched
  by the SHA-256 of its DER encoding (its ``x5t#S256``); nothing else about it is checked, as
  the registration is the trust.

``check`` returns None when the certificate authenticates the client, else a stable reason code
for the audit record (the caller only learns that client authentication failed).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID

TLS_CLIENT_AUTH = "tls_client_auth"
SELF_SIGNED_TLS_CLIENT_AUTH = "self_signed_tls_client_auth"
TLS_METHODS = frozenset({TLS_CLIENT_AUTH, SELF_SIGNED_TLS_CLIENT_AUTH})

SanKind = Literal["dns", "uri", "ip", "email"]


class TlsRuleError(ValueError):
    """A registration that cannot be turned into a rule (bad DN, IP or CA file)."""


@dataclass(frozen=True, slots=True)
class TlsClientRule:
    """What a client's certificate must satisfy. Invariant: for ``tls_client_auth`` exactly one
    of ``subject_dn`` and ``san`` is set and ``authorities`` is not empty; for
    ``self_signed_tls_client_auth`` ``thumbprints`` is not empty."""

    method: str
    subject_dn: x509.Name | None = None
    san: tuple[SanKind, str] | None = None
    authorities: tuple[x509.Certificate, ...] = ()
    thumbprints: frozenset[bytes] = frozenset()

    @classmethod
    def pki(cls, *, subject_dn: str | None, san: tuple[SanKind, str] | None, authorities_pem: bytes) -> TlsClientRule:
        if (subject_dn is None) == (san is None):
            raise TlsRuleError("tls_client_auth takes exactly one subject DN or subject alternative name")
        name = None
        if subject_dn is not None:
            try:
                name = x509.Name.from_rfc4514_string(subject_dn)
            except ValueError:
                raise TlsRuleError("tls_client_auth_subject_dn is not an RFC 4514 distinguished name") from None
        if san is not None and san[0] == "ip":
            try:
                san = ("ip", str(ipaddress.ip_address(san[1])))
            except ValueError:
                raise TlsRuleError("tls_client_auth_san_ip is not an IP address") from None
        if san is not None and san[0] == "dns":
            san = ("dns", san[1].lower())
        try:
            authorities = tuple(x509.load_pem_x509_certificates(authorities_pem))
        except ValueError:
            raise TlsRuleError("the client CA file holds no PEM certificate") from None
        return cls(TLS_CLIENT_AUTH, subject_dn=name, san=san, authorities=authorities)

    @classmethod
    def self_signed(cls, thumbprints_hex: Sequence[str]) -> TlsClientRule:
        if not thumbprints_hex:
            raise TlsRuleError("self_signed_tls_client_auth needs at least one certificate thumbprint")
        return cls(SELF_SIGNED_TLS_CLIENT_AUTH, thumbprints=frozenset(bytes.fromhex(t) for t in thumbprints_hex))


def check(rule: TlsClientRule, cert_sha256: bytes | None, cert_der: bytes | None, now: float) -> str | None:
    """None if the presented certificate authenticates the client under ``rule``, else why not."""
    if cert_sha256 is None:
        return "tls_client_certificate_missing"
    if rule.method == SELF_SIGNED_TLS_CLIENT_AUTH:
        return None if cert_sha256 in rule.thumbprints else "tls_client_certificate_not_registered"
    if cert_der is None:
        # A proxy that forwards only the certificate's hash gives nothing to check the issuer,
        # the name or the validity of.
        return "tls_client_certificate_unavailable"
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError:
        return "tls_client_certificate_malformed"
    moment = datetime.fromtimestamp(now, tz=timezone.utc)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        return "tls_client_certificate_expired"
    if not any(_issued_by(cert, ca, moment) for ca in rule.authorities):
        return "tls_client_certificate_untrusted_issuer"
    if rule.subject_dn is not None:
        return None if cert.subject == rule.subject_dn else "tls_client_certificate_subject_mismatch"
    assert rule.san is not None
    return None if rule.san in _sans(cert) else "tls_client_certificate_san_mismatch"


def _issued_by(cert: x509.Certificate, ca: x509.Certificate, moment: datetime) -> bool:
    if not ca.not_valid_before_utc <= moment <= ca.not_valid_after_utc:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _sans(cert: x509.Certificate) -> set[tuple[str, str]]:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return set()
    found: set[tuple[str, str]] = set()
    # DNS names compare without case (RFC 4343); URIs and e-mail addresses exactly.
    found.update(("dns", v.lower()) for v in ext.get_values_for_type(x509.DNSName))
    found.update(("uri", v) for v in ext.get_values_for_type(x509.UniformResourceIdentifier))
    found.update(("ip", str(v)) for v in ext.get_values_for_type(x509.IPAddress))
    found.update(("email", v) for v in ext.get_values_for_type(x509.RFC822Name))
    return found
