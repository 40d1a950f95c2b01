"""Strict JOSE for the broker: compact JWS over asymmetric keys only (RFC 7515, RFC 7517,
RFC 7518, RFC 8037, RFC 7638, RFC 8725).

Built directly on ``cryptography``. The public API is re-exported here; see :mod:`.jws` for
the verification steps and :mod:`.jwk` for key parsing and the error hierarchy.
"""

from __future__ import annotations

from sts.jose.b64 import b64url_decode, b64url_encode
from sts.jose.jwk import (
    SUPPORTED_ALGORITHMS,
    AlgorithmNotAllowed,
    BadSignature,
    JOSEError,
    JWKError,
    KeySet,
    MalformedToken,
    PrivateKey,
    PublicKey,
    UnsupportedHeader,
    generate_private_key,
    jwk_thumbprint,
    parse_jwk,
    parse_jwks,
    private_key_from_pem,
    private_key_to_pem,
)
from sts.jose.jws import (
    SignedJWS,
    UnverifiedJWT,
    check_header,
    sign,
    sign_parts,
    unsafe_decode,
    verify_detached,
    verify_signature,
)

__all__ = [
    "SignedJWS",
    "sign_parts",
    "verify_detached",
    "JOSEError",
    "MalformedToken",
    "AlgorithmNotAllowed",
    "BadSignature",
    "UnsupportedHeader",
    "JWKError",
    "SUPPORTED_ALGORITHMS",
    "b64url_decode",
    "b64url_encode",
    "PublicKey",
    "parse_jwk",
    "KeySet",
    "parse_jwks",
    "PrivateKey",
    "generate_private_key",
    "jwk_thumbprint",
    "private_key_to_pem",
    "private_key_from_pem",
    "UnverifiedJWT",
    "unsafe_decode",
    "check_header",
    "verify_signature",
    "sign",
]
