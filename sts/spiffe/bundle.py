"""SPIFFE bundles: parsing and publishing (SPIFFE Trust Domain and Bundle §4, JWT-SVID §6,
X509-SVID §6).

A bundle is an RFC 7517 JWK Set with two optional members, ``spiffe_sequence`` (§4.1.1) and
``spiffe_refresh_hint`` (§4.1.2), and JWK entries whose ``use`` says which SVID type they are
authoritative for (§4.2.2). Parsing rules and why:

* §4.1.3: "The parameter ``keys`` MUST be present"; a document without it is refused whole.
  "Clients encountering unknown key types or uses MUST ignore the corresponding JWK element":
  such entries are skipped one by one (recorded in ``skipped``), as are entries missing ``use``
  (§4.2.2: "Clients encountering either a missing ``use`` parameter or an unknown ``use`` value
  MUST ignore the entire JWK element").
* §4.1.3: an empty ``keys`` array (or one that yields no usable key) "indicates that the trust
  domain has revoked any previously-published keys ... workloads MUST treat all SVIDs from the
  trust domain as invalid". An empty bundle is therefore a valid bundle, not an error.
* JWT-SVID §6.1: a ``jwt-svid`` entry's "``kid`` parameter ... MUST be set"; entries without one
  are skipped (keys are looked up by trust domain and ``kid``, as SPIRE does). The key itself is
  judged by :func:`sts.jose.parse_jwk` (no private material, RSA >= 2048 bits, curve checks).
* X509-SVID §6.2: an ``x509-svid`` entry without a non-empty ``x5c`` "MUST be ignored"; "all but
  the first [value] MUST be ignored"; the certificate is base64 (not base64url) DER
  (RFC 7517 §4.7). It must be a CA certificate (X509-SVID §3.2, §6.1 "exactly one CA
  certificate") and, RFC 7517 §4.7, "The key in the first certificate MUST match the public key
  represented by other members of the JWK"; entries failing either are skipped.
* ``spiffe_sequence`` and ``spiffe_refresh_hint`` "MUST be an integer" when present; a bundle
  where they are not is refused whole, since its ordering could not be trusted.

The trust domain name is never read from the document (§3: "it is important to independently
record the name of the trust domain that the bundle represents"): the caller passes it in.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sts.jose import JWKError, KeySet, PublicKey, parse_jwk, parse_jwks
from sts.jose.jwk import (
    _public_from_crypto,  # the one place that turns a key into a JWK
)

__all__ = [
    "USE_JWT_SVID",
    "USE_X509_SVID",
    "BundleError",
    "SpiffeBundle",
    "bundle_document",
    "parse_bundle",
    "parse_bundle_bytes",
    "x509_bundle_from_pem",
]

USE_JWT_SVID: Final = "jwt-svid"
USE_X509_SVID: Final = "x509-svid"
MAX_BUNDLE_BYTES: Final = 1024 * 1024
# JSON integers are unbounded; §4.1.1 asks for "at least 64 bits of precision".
_MAX_INT: Final = 2**63 - 1


class BundleError(Exception):
    """The document is not a SPIFFE bundle. ``reason`` is a stable code; the message never
    holds key material or document contents."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SpiffeBundle:
    """The usable keys of one trust domain's bundle.

    Invariant: ``jwt_keys`` holds only ``jwt-svid`` keys (each with a ``kid``) and
    ``x509_authorities`` only CA certificates from ``x509-svid`` entries, all taken from one
    document of the trust domain ``trust_domain``; ``skipped`` says, one line per entry, why a
    published entry is not usable. Either may be empty (no SVID of that kind is trusted).
    """

    trust_domain: str
    jwt_keys: KeySet
    x509_authorities: tuple[x509.Certificate, ...]
    sequence: int | None = None
    refresh_hint: int | None = None
    skipped: tuple[str, ...] = ()
    _fingerprint: bytes = field(default=b"", repr=False, compare=False)

    @property
    def empty(self) -> bool:
        return len(self.jwt_keys) == 0 and not self.x509_authorities

    def same_keys(self, other: SpiffeBundle) -> bool:
        """True when both bundles carry exactly the same usable keys and authorities."""
        return self._fingerprint == other._fingerprint


def _optional_int(doc: Mapping[str, Any], name: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= _MAX_INT:
        raise BundleError("malformed", f'"{name}" is not a non-negative integer')
    return value


def _label(entry: Any, index: int) -> str:
    kid = entry.get("kid") if isinstance(entry, Mapping) else None
    if isinstance(kid, str):
        return "kid=" + "".join(c if " " <= c <= "~" else "?" for c in kid[:64])
    return f"keys[{index}]"


def _without_use(entry: Mapping[str, Any]) -> dict[str, Any]:
    # parse_jwk accepts only "use": "sig"; the SVID type was already read from "use".
    return {k: v for k, v in entry.items() if k != "use"}


def _same_public_key(a: Any, b: Any) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(a.public_bytes(serialization.Encoding.DER, fmt) == b.public_bytes(serialization.Encoding.DER, fmt))


def _x509_authority(entry: Mapping[str, Any]) -> x509.Certificate:
    """The CA certificate of an ``x509-svid`` entry; ``BundleError`` names why it is unusable."""
    chain = entry.get("x5c")
    if not isinstance(chain, list) or not chain:
        raise BundleError("x5c_missing")
    first = chain[0]
    if not isinstance(first, str):
        raise BundleError("x5c_malformed")
    try:
        der = base64.b64decode(first, validate=True)
        cert = x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError):
        raise BundleError("x5c_malformed") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise BundleError("not_ca") from None
    except ValueError:  # a malformed extension inside an otherwise parseable certificate
        raise BundleError("x5c_malformed") from None
    if not constraints.ca:
        raise BundleError("not_ca")
    try:
        jwk_key = parse_jwk(_without_use(entry))
    except JWKError as exc:
        raise BundleError(exc.reason) from None
    if not _same_public_key(jwk_key.key, cert.public_key()):
        raise BundleError("x5c_key_mismatch")
    return cert


def parse_bundle(doc: Any, trust_domain: str) -> SpiffeBundle:
    """Parse a bundle document of ``trust_domain``; raise :class:`BundleError` only when the
    document as a whole is unusable (not an object, no ``keys`` array, bad sequence or hint)."""
    if not isinstance(doc, Mapping):
        raise BundleError("malformed", "bundle is not a JSON object")
    raw = doc.get("keys")
    if not isinstance(raw, list):
        raise BundleError("malformed", 'bundle has no "keys" array')
    sequence = _optional_int(doc, "spiffe_sequence")
    refresh_hint = _optional_int(doc, "spiffe_refresh_hint")

    skipped: list[str] = []
    jwt_entries: list[dict[str, Any]] = []
    authorities: list[x509.Certificate] = []
    seen_authorities: set[bytes] = set()
    for i, entry in enumerate(raw):
        label = _label(entry, i)
        if not isinstance(entry, Mapping):
            skipped.append(f"{label}: malformed")
            continue
        if not isinstance(entry.get("kty"), str):
            skipped.append(f"{label}: kty_missing")
            continue
        use = entry.get("use")
        if use == USE_JWT_SVID:
            if not isinstance(entry.get("kid"), str) or not entry["kid"]:
                skipped.append(f"{label}: kid_missing")
                continue
            jwt_entries.append(_without_use(entry))
        elif use == USE_X509_SVID:
            try:
                cert = _x509_authority(entry)
            except BundleError as exc:
                skipped.append(f"{label}: {exc.reason}")
                continue
            der = cert.public_bytes(serialization.Encoding.DER)
            if der not in seen_authorities:
                seen_authorities.add(der)
                authorities.append(cert)
        else:
            skipped.append(f"{label}: {'use_missing' if use is None else 'unknown_use'}")
    # parse_jwks judges each key on its own (unknown kty, weak or private keys, duplicate kid)
    # and never raises for a well-formed list.
    jwt_keys = parse_jwks({"keys": jwt_entries})
    skipped.extend(jwt_keys.skipped)
    fingerprint = json.dumps(
        [sorted(json.dumps(k.to_jwk(), sort_keys=True) for k in jwt_keys.keys), sorted(d.hex() for d in seen_authorities)]
    ).encode()
    return SpiffeBundle(
        trust_domain=trust_domain,
        jwt_keys=jwt_keys,
        x509_authorities=tuple(authorities),
        sequence=sequence,
        refresh_hint=refresh_hint,
        skipped=tuple(skipped),
        _fingerprint=fingerprint,
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_bundle_bytes(data: bytes, trust_domain: str) -> SpiffeBundle:
    """Parse a bundle read from a file (UTF-8 JSON, at most ``MAX_BUNDLE_BYTES``)."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError("too_large")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleError("not_json") from None
    return parse_bundle(doc, trust_domain)


def bundle_document(
    jwt_keys: Iterable[PublicKey],
    *,
    sequence: int | None = None,
    refresh_hint: int | None = None,
) -> dict[str, Any]:
    """A SPIFFE bundle publishing ``jwt_keys`` as ``jwt-svid`` entries (JWT-SVID §6.1: ``use``
    set to ``jwt-svid``, ``kid`` set), for relying parties that federate with the broker."""
    keys = []
    for key in jwt_keys:
        if key.kid is None:
            continue  # JWT-SVID §6.1: "the kid parameter of each JWK entry MUST be set"
        jwk = key.to_jwk()
        jwk["use"] = USE_JWT_SVID
        keys.append(jwk)
    doc: dict[str, Any] = {"keys": keys}
    return _with_metadata(doc, sequence, refresh_hint)


def _with_metadata(doc: dict[str, Any], sequence: int | None, refresh_hint: int | None) -> dict[str, Any]:
    if sequence is not None:
        doc["spiffe_sequence"] = sequence
    if refresh_hint is not None:
        doc["spiffe_refresh_hint"] = refresh_hint
    return doc


def x509_bundle_from_pem(data: bytes, *, sequence: int | None = None, refresh_hint: int | None = None) -> dict[str, Any]:
    """A SPIFFE bundle with one ``x509-svid`` entry per PEM CA certificate in ``data`` (X509-SVID
    §6.1: ``use`` ``x509-svid``, no ``kid``, ``x5c`` holding exactly that certificate). For trust
    domains that publish only a PEM root, such as Istio's ``istio-ca-root-cert`` ConfigMap.
    Raises ``ValueError`` when ``data`` holds no certificate or one that is not a CA."""
    certs = x509.load_pem_x509_certificates(data)
    keys = []
    for cert in certs:
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca:
            raise ValueError("a certificate in the PEM data is not a CA certificate")
        jwk = _public_from_crypto(cert.public_key(), kid=None, alg=None, use=None).to_jwk()
        jwk["use"] = USE_X509_SVID
        jwk["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")]
        keys.append(jwk)
    return _with_metadata({"keys": keys}, sequence, refresh_hint)
