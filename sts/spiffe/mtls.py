"""The ``mtls`` subject token type: an X.509-SVID proven by the TLS connection.

Wire format, following the precedent of Google's Security Token Service for mTLS workload
identity federation: ``subject_token_type=urn:ietf:params:oauth:token-type:mtls`` and
``subject_token`` a JSON array of standard-base64 DER certificates, leaf first, then
intermediates (RFC 7517 §4.7 ``x5c`` encoding). The chain travels in the request because the
TLS layer only hands the application the leaf; the leaf in the token MUST be the certificate
the client authenticated the TLS connection with, so the token proves nothing on its own: a
chain copied from elsewhere is useless without the private key of its leaf.

Where the TLS client certificate comes from:

* the broker terminated TLS itself: the ASGI TLS extension (``scope["extensions"]["tls"]``,
  ``client_cert_chain``), filled in by :mod:`sts.spiffe.tls`;
* a proxy terminated mTLS and forwarded the certificate in Envoy's ``x-forwarded-client-cert``
  header: accepted only when the connection comes from a configured trusted proxy address
  (``STS_TRUSTED_PROXIES``, addresses or CIDR networks). The header from any other peer is
  refused, whatever the token type: it means a proxy is misconfigured or someone tries to
  speak for a certificate they do not hold. The header must carry exactly one element (the
  proxy's ``forward_client_cert_details: SANITIZE_SET``), with ``Cert`` (URL-encoded PEM) or
  ``Hash`` (hex SHA-256 of the DER certificate); when both are present both must match.
"""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

__all__ = [
    "TOKEN_TYPE_MTLS",
    "XFCC_HEADER",
    "ClientCertificate",
    "ForwardedCertificateRefused",
    "client_certificate",
    "parse_proxies",
    "parse_xfcc",
]

TOKEN_TYPE_MTLS: Final = "urn:ietf:params:oauth:token-type:mtls"
XFCC_HEADER: Final = "x-forwarded-client-cert"
_MAX_XFCC_CHARS: Final = 32 * 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForwardedCertificateRefused(Exception):
    """The forwarded client certificate header cannot be used. ``reason`` is a stable code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The certificate that authenticated the client. Invariant: ``sha256`` is the SHA-256 of
    the DER certificate; ``der`` is that certificate when known (a forwarded ``Hash`` alone
    gives only the digest)."""

    sha256: bytes
    der: bytes | None
    source: str  # "tls" | "forwarded"

    def matches(self, leaf_der: bytes) -> bool:
        if self.der is not None:
            return self.der == leaf_der
        return hashlib.sha256(leaf_der).digest() == self.sha256


def parse_proxies(values: Iterable[str]) -> tuple[Network, ...]:
    """Trusted proxy addresses or networks; ``ValueError`` for an entry that is neither."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values)


def _trusted(host: str | None, proxies: Sequence[Network]) -> bool:
    if not host or not proxies:
        return False
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in proxies)


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes (Envoy quotes values holding , ; or =)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise ForwardedCertificateRefused("xfcc_malformed")
    parts.append("".join(current))
    return parts


def parse_xfcc(value: str) -> list[dict[str, list[str]]]:
    """Envoy's ``x-forwarded-client-cert``: comma-separated elements of ``;``-separated
    ``Key=Value`` pairs (keys By, Hash, Cert, Chain, Subject, URI, DNS; values may be quoted)."""
    if len(value) > _MAX_XFCC_CHARS:
        raise ForwardedCertificateRefused("xfcc_too_large")
    elements: list[dict[str, list[str]]] = []
    for raw_element in _split(value, ","):
        element: dict[str, list[str]] = {}
        for pair in _split(raw_element, ";"):
            pair = pair.strip()
            if not pair:
                continue
            key, eq, val = pair.partition("=")
            if not eq:
                raise ForwardedCertificateRefused("xfcc_malformed")
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = val[1:-1]
            element.setdefault(key.strip().lower(), []).append(val)
        elements.append(element)
    return elements


def _forwarded(value: str) -> ClientCertificate:
    elements = parse_xfcc(value)
    if len(elements) != 1:
        raise ForwardedCertificateRefused("xfcc_multiple_elements")
    element = elements[0]
    der: bytes | None = None
    digest: bytes | None = None
    certs = element.get("cert", [])
    hashes = element.get("hash", [])
    if len(certs) > 1 or len(hashes) > 1:
        raise ForwardedCertificateRefused("xfcc_malformed")
    if certs:
        try:
            der = ssl.PEM_cert_to_DER_cert(unquote(certs[0], errors="strict"))
        except (ValueError, UnicodeDecodeError):
            raise ForwardedCertificateRefused("xfcc_cert_malformed") from None
    if hashes:
        try:
            digest = bytes.fromhex(hashes[0])
        except ValueError:
            raise ForwardedCertificateRefused("xfcc_hash_malformed") from None
        if len(digest) != 32:
            raise ForwardedCertificateRefused("xfcc_hash_malformed")
    if der is None and digest is None:
        raise ForwardedCertificateRefused("xfcc_no_certificate")
    computed = hashlib.sha256(der).digest() if der is not None else None
    if computed is not None and digest is not None and computed != digest:
        raise ForwardedCertificateRefused("xfcc_hash_mismatch")
    return ClientCertificate(sha256=computed or digest or b"", der=der, source="forwarded")


def _from_tls(scope: Mapping[str, Any]) -> ClientCertificate | None:
    tls = (scope.get("extensions") or {}).get("tls")
    if not isinstance(tls, Mapping):
        return None
    chain = tls.get("client_cert_chain") or ()
    if not chain:
        return None
    try:
        der = ssl.PEM_cert_to_DER_cert(chain[0])
    except ValueError:
        return None
    return ClientCertificate(sha256=hashlib.sha256(der).digest(), der=der, source="tls")


def client_certificate(
    scope: Mapping[str, Any],
    forwarded: str | None,
    proxies: Sequence[Network],
) -> ClientCertificate | None:
    """The certificate that authenticated this request's client, or ``None``.

    ``forwarded`` is the value of the ``x-forwarded-client-cert`` header (``None`` when absent).
    Raises :class:`ForwardedCertificateRefused` when the header is present but the peer is not
    a trusted proxy, or the header is unusable.
    """
    if forwarded is not None:
        client = scope.get("client")
        host = client[0] if isinstance(client, (tuple, list)) and client else None
        if not _trusted(host, proxies):
            raise ForwardedCertificateRefused("xfcc_from_untrusted_peer")
        # The proxy's own TLS certificate (if it presented one) speaks for the proxy, not
        # for the workload: the forwarded one wins.
        return _forwarded(forwarded)
    return _from_tls(scope)
