"""X.509-SVID verification (X509-SVID.md §2, §3, §4.1, §4.3, §4.4, §5).

Verification runs in a fixed order; every refusal raises :class:`SvidRejected` with a stable
reason code and never echoes the certificate:

1. The leaf's SPIFFE ID, read before any signature is checked (a named, unsafe peek, used only
   to choose the trust domain whose authorities apply, as go-spiffe does). §2: "An X.509 SVID
   MUST contain exactly one URI SAN"; "Validators encountering an SVID containing more than one
   URI SAN MUST reject the SVID". §3.1: "Leaf certificate SPIFFE IDs MUST have a non-root path
   component" and, when the Subject is empty, "the URI SAN extension MUST be marked as
   critical" (RFC 5280 §4.1.2.6). The ID is parsed strictly (:mod:`sts.spiffe.id`).
2. Leaf checks, §5.2: "the validator MUST ensure that the ``CA`` field in the basic constraints
   extension is set to ``false``, and that ``keyCertSign`` and ``cRLSign`` are not set in the
   key usage extension". §4.3: "The key usage extension MUST be set on all SVIDs" and "Leaf
   SVIDs MUST set ``digitalSignature``". §4.4: when the leaf has an extended key usage
   extension, the purpose we authenticate it for (``clientAuth`` for a workload,
   ``serverAuth`` for a bundle endpoint) must be in it; OpenSSL applies the same rule at the
   TLS layer.
3. Path validation, §5.1: "MUST follow RFC 5280 path validation semantics", against the
   ``x509-svid`` authorities of the leaf's own trust domain only (Federation §4.2: bundles of
   different trust domains are never merged). ``cryptography``'s RFC 5280 verifier does the
   chain building, signatures, validity periods at ``now``, CA basic constraints, path length
   and unknown critical extensions; bundle authorities are trust anchors whether self-signed
   or not. Intermediates in the chain that carry a SPIFFE ID must not have a path (§3.2).

Pure apart from the signature checks: the time is passed in.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from sts.spiffe.id import InvalidSpiffeID, SpiffeID, parse_spiffe_id

__all__ = [
    "MAX_CHAIN_LENGTH",
    "SvidRejected",
    "VerifiedX509Svid",
    "check_leaf",
    "leaf_spiffe_id",
    "parse_chain",
    "verify_chain",
]

MAX_CHAIN_LENGTH: Final = 8
Purpose = Literal["client", "server"]
_EKU: Final = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}


class SvidRejected(Exception):
    """An X.509-SVID (or the chain around it) is not acceptable.

    Invariant: ``reason`` is a stable code; the message never holds certificate contents.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class VerifiedX509Svid:
    """A leaf that passed every check of X509-SVID §5. Invariant: ``chain`` runs from the leaf
    to a trust anchor of ``spiffe_id.trust_domain``."""

    spiffe_id: SpiffeID
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]

    @property
    def not_before(self) -> float:
        return self.leaf.not_valid_before_utc.timestamp()

    @property
    def not_after(self) -> float:
        return self.leaf.not_valid_after_utc.timestamp()


def parse_chain(token: str) -> list[x509.Certificate]:
    """A JSON array of standard-base64 DER certificates, leaf first (the ``mtls`` token type)."""
    try:
        items = json.loads(token)
    except (ValueError, RecursionError):
        raise SvidRejected("chain_not_json") from None
    if not isinstance(items, list) or not items:
        raise SvidRejected("chain_not_array")
    if len(items) > MAX_CHAIN_LENGTH:
        raise SvidRejected("chain_too_long")
    certs: list[x509.Certificate] = []
    for item in items:
        if not isinstance(item, str):
            raise SvidRejected("chain_item_malformed")
        try:
            certs.append(x509.load_der_x509_certificate(base64.b64decode(item, validate=True)))
        except (binascii.Error, ValueError):
            raise SvidRejected("certificate_malformed") from None
    return certs


def _extension(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType] | None:
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # duplicate or undecodable extensions
        raise SvidRejected("extension_malformed") from None


def leaf_spiffe_id(cert: x509.Certificate) -> SpiffeID:
    """The one SPIFFE ID of an SVID (§2, §3.1). Nothing about the certificate is verified."""
    san = _extension(cert, x509.SubjectAlternativeName)
    uris = [] if san is None else san.value.get_values_for_type(x509.UniformResourceIdentifier)  # type: ignore[attr-defined]
    if not uris:
        raise SvidRejected("no_uri_san")
    if len(uris) > 1:
        raise SvidRejected("multiple_uri_sans")
    try:
        spiffe_id = parse_spiffe_id(uris[0])
    except InvalidSpiffeID as exc:
        raise SvidRejected("invalid_spiffe_id", exc.reason) from None
    if not spiffe_id.path:
        raise SvidRejected("spiffe_id_without_path")
    assert san is not None
    if len(cert.subject) == 0 and not san.critical:
        raise SvidRejected("san_not_critical")
    return spiffe_id


def check_leaf(cert: x509.Certificate, *, purpose: Purpose = "client") -> SpiffeID:
    """Steps 1 and 2: the SPIFFE ID and the leaf rules of §4.1, §4.3, §4.4 and §5.2."""
    spiffe_id = leaf_spiffe_id(cert)
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.value.ca:  # type: ignore[attr-defined]
        raise SvidRejected("leaf_is_ca")
    usage = _extension(cert, x509.KeyUsage)
    if usage is None:
        raise SvidRejected("key_usage_missing")
    ku = usage.value
    if ku.key_cert_sign or ku.crl_sign:  # type: ignore[attr-defined]
        raise SvidRejected("leaf_can_sign_certificates")
    if not ku.digital_signature:  # type: ignore[attr-defined]
        raise SvidRejected("digital_signature_missing")
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is not None:
        purposes = set(eku.value)  # type: ignore[call-overload]
        if _EKU[purpose] not in purposes and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in purposes:
            raise SvidRejected("extended_key_usage")
    return spiffe_id


def _check_intermediates(chain: Sequence[x509.Certificate]) -> None:
    for cert in chain:
        san = _extension(cert, x509.SubjectAlternativeName)
        if san is None:
            continue
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):  # type: ignore[attr-defined]
            if not uri.startswith("spiffe:"):
                continue
            try:
                signer_id = parse_spiffe_id(uri)
            except InvalidSpiffeID:
                raise SvidRejected("signing_certificate_id_invalid") from None
            if signer_id.path:
                raise SvidRejected("signing_certificate_id_has_path")


def verify_chain(
    chain: Sequence[x509.Certificate],
    authorities: Sequence[x509.Certificate],
    *,
    now: float,
    purpose: Purpose = "client",
) -> VerifiedX509Svid:
    """Verify ``chain`` (leaf first) against ``authorities`` (the x509-svid authorities of the
    leaf's trust domain) at time ``now``; raise :class:`SvidRejected`."""
    if not chain:
        raise SvidRejected("chain_not_array")
    leaf = chain[0]
    spiffe_id = check_leaf(leaf, purpose=purpose)
    if not authorities:
        # Trust Domain and Bundle §4.1.3 / X509-SVID §6.2: no x509-svid entry means the trust
        # domain does not support (or has revoked) X.509-SVIDs.
        raise SvidRejected("no_x509_authorities")
    when = datetime.datetime.fromtimestamp(now, datetime.UTC)
    verifier = (
        PolicyBuilder()
        .store(Store(list(authorities)))
        .time(when)
        .max_chain_depth(MAX_CHAIN_LENGTH)
        # CA certificates get RFC 5280 / CABF CA rules (cA asserted, keyCertSign, AKI, name
        # constraints); the leaf's SPIFFE rules were applied above, so the Web PKI leaf
        # profile (which wants DNS names) is replaced by one that permits any extension.
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all())
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, list(chain[1:]))
    except VerificationError as exc:
        raise SvidRejected("path_validation_failed", _short(str(exc))) from None
    built = tuple(verified.chain)
    _check_intermediates(built[1:-1])
    return VerifiedX509Svid(spiffe_id=spiffe_id, leaf=leaf, chain=built)


def certificate_sha256(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def certificate_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _short(message: str) -> str:
    # cryptography's messages name the failing check and the certificate's subject; keep them
    # for the private audit detail, bounded.
    return message[:300]
