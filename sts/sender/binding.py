"""The ``cnf`` (confirmation) claim of sender-constrained tokens (RFC 7800 §3.1).

* RFC 9449 §6.1: a DPoP-bound JWT access token carries ``cnf.jkt``, "the base64url encoding of
  the JWK SHA-256 Thumbprint (according to [RFC7638]) of the DPoP public key".
* RFC 8705 §3.1: "The value of the x5t#S256 member is a base64url-encoded SHA-256 hash (a.k.a.,
  thumbprint, fingerprint, or digest) of the DER encoding of the X.509 certificate. The
  base64url-encoded value MUST omit all trailing pad '=' characters and MUST NOT include any
  line breaks, whitespace, or other additional characters." (``b64url_encode`` does both.)
  RFC 8705 §3: the protected resource "MUST verify that the certificate matches the
  certificate associated with the access token".
* RFC 9449 §6.2 and RFC 8705 §3.2: introspection returns the same ``cnf`` as a top-level
  member; RFC 9449 §6.2: "If the token_type member is included in the introspection response,
  it MUST contain the value DPoP."

Both members may appear in one ``cnf`` object (each names its own confirmation method). The
``cnf`` object is part of the signed token, so an introspection endpoint reading a token it
has verified gets it back with :func:`confirmation_of`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sts.jose import b64url_encode, jwk_thumbprint

__all__ = ["CNF_JKT", "CNF_X5T", "confirmation", "confirmation_of", "jkt_of", "x5t_s256"]

CNF_JKT = "jkt"
CNF_X5T = "x5t#S256"


def jkt_of(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK (the ``cnf.jkt`` value)."""
    return jwk_thumbprint(jwk)


def x5t_s256(certificate_sha256: bytes) -> str:
    """The ``cnf.x5t#S256`` value from the SHA-256 digest of the DER certificate."""
    if len(certificate_sha256) != 32:
        raise ValueError("not a SHA-256 digest")
    return b64url_encode(certificate_sha256)


def confirmation(*, jkt: str | None = None, certificate_sha256: bytes | None = None) -> dict[str, str] | None:
    """The ``cnf`` object for the bindings given, or ``None`` for a bearer token."""
    cnf: dict[str, str] = {}
    if jkt is not None:
        cnf[CNF_JKT] = jkt
    if certificate_sha256 is not None:
        cnf[CNF_X5T] = x5t_s256(certificate_sha256)
    return cnf or None


def confirmation_of(claims: Mapping[str, Any]) -> dict[str, str] | None:
    """The ``cnf`` of a token this broker issued and the caller verified (for RFC 7662
    introspection), keeping only the members we set; ``None`` for a bearer token."""
    cnf = claims.get("cnf")
    if not isinstance(cnf, Mapping):
        return None
    kept = {k: v for k, v in cnf.items() if k in (CNF_JKT, CNF_X5T) and isinstance(v, str)}
    return kept or None
