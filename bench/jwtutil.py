"""Just enough JWS for the benchmark's own issuer and floor (RFC 7515 §3.1, RFC 7518 §3.3-3.4).

This is bench code, not the broker's JOSE layer: it mints subject tokens and gives the floor a
direct ``cryptography`` path. RS256 is RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 §3.3); ES256 is
ECDSA P-256 with SHA-256 whose signature is the fixed-width ``R || S`` (RFC 7518 §3.4), not DER.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

_SHA256 = hashes.SHA256()
_PKCS1 = padding.PKCS1v15()
_ECDSA = ec.ECDSA(hashes.SHA256())


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str | bytes) -> bytes:
    raw = text.encode("ascii") if isinstance(text, str) else text
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64e(value.to_bytes(size, "big"))


def generate_key(alg: str) -> PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unsupported algorithm {alg}")


def public_jwk(key: PrivateKey | PublicKey, kid: str, alg: str) -> dict[str, str]:
    """The public JWK (RFC 7517 §4, RFC 7518 §6.2-6.3) of ``key``."""
    public = key.public_key() if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) else key
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": "RSA", "kid": kid, "alg": alg, "use": "sig", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
    point = public.public_numbers()
    return {
        "kty": "EC",
        "kid": kid,
        "alg": alg,
        "use": "sig",
        "crv": "P-256",
        "x": _int_b64(point.x, 32),
        "y": _int_b64(point.y, 32),
    }


def key_from_jwk(jwk: dict[str, Any]) -> PublicKey:
    if jwk["kty"] == "RSA":
        n = int.from_bytes(b64d(jwk["n"]), "big")
        e = int.from_bytes(b64d(jwk["e"]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if jwk["kty"] == "EC" and jwk.get("crv") == "P-256":
        x = int.from_bytes(b64d(jwk["x"]), "big")
        y = int.from_bytes(b64d(jwk["y"]), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    raise ValueError("unsupported JWK")


def sign(signing_input: bytes, key: PrivateKey) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(signing_input, _PKCS1, _SHA256)
    r, s = decode_dss_signature(key.sign(signing_input, _ECDSA))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(signing_input: bytes, signature: bytes, key: PublicKey, alg: str) -> None:
    """Raise ``cryptography.exceptions.InvalidSignature`` (or ``ValueError``) unless it verifies."""
    if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, signing_input, _PKCS1, _SHA256)
        return
    if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
        if len(signature) != 64:
            raise ValueError("ES256 signature must be 64 bytes")
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        key.verify(der, signing_input, _ECDSA)
        return
    raise ValueError(f"algorithm {alg} does not fit the key")


def encode_jwt(claims: dict[str, Any], key: PrivateKey, *, alg: str, kid: str, typ: str = "JWT") -> str:
    header = {"alg": alg, "kid": kid, "typ": typ}
    signing_input = (
        b64e(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64e(json.dumps(claims, separators=(",", ":")).encode())
    )
    return signing_input + "." + b64e(sign(signing_input.encode("ascii"), key))
