"""Just enough JOSE for a conformance kit: compact JWS signing and verification.

Implements the compact serialization of RFC 7515 §3.1 / §7.1, the JWK members of RFC 7517 §4 and
RFC 7518 §6 for RSA, EC (P-256, P-384, P-521) and OKP (Ed25519, RFC 8037), and the signature
algorithms of RFC 7518 §3 (RS*, PS*, ES*, HS*) plus EdDSA.

The kit needs two things a JOSE library is built to *prevent*: minting deliberately broken
tokens (``alg: none``, HMAC keyed with a public key, foreign ``crit`` headers) and verifying the
target's tokens without trusting anything in their headers. Both are small enough to write
against ``cryptography`` directly, which keeps the kit free of a JOSE dependency whose own
defaults could hide what the target does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_CURVES: dict[str, tuple[type[ec.EllipticCurve], int, str]] = {
    # alg -> (curve, coordinate size in bytes, JWK "crv")
    "ES256": (ec.SECP256R1, 32, "P-256"),
    "ES384": (ec.SECP384R1, 48, "P-384"),
    "ES512": (ec.SECP521R1, 66, "P-521"),
}
_CRV_TO_ALG = {crv: alg for alg, (_, _, crv) in _CURVES.items()}

#: Asymmetric algorithms the kit can mint with and verify.
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)


class JoseError(ValueError):
    """A token or key that cannot be parsed, or a signature that does not verify."""


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or any(c in text for c in "=+/ \t\r\n"):
        raise JoseError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JoseError("not base64url") from exc


def _json_b64(value: Mapping[str, Any] | bytes) -> str:
    if isinstance(value, bytes):
        return b64url_encode(value)
    return b64url_encode(json.dumps(dict(value), separators=(",", ":")).encode("utf-8"))


def family(alg: str) -> str:
    """The JWK ``kty`` an algorithm needs ("RSA", "EC", "OKP", "oct"), or "" for none/unknown."""
    if alg[:2] in ("RS", "PS") and alg[2:] in _HASHES:
        return "RSA"
    if alg in _CURVES:
        return "EC"
    if alg == "EdDSA":
        return "OKP"
    if alg[:2] == "HS" and alg[2:] in _HASHES:
        return "oct"
    return ""


def family_of_key(key: PrivateKey | PublicKey) -> str:
    """The JWK ``kty`` of a ``cryptography`` key."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RSA"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "EC"
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "OKP"
    raise JoseError("unsupported key type")


def generate_key(alg: str) -> PrivateKey:
    """A fresh private key suited to ``alg``."""
    kind = family(alg)
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "EC":
        return ec.generate_private_key(_CURVES[alg][0]())
    if kind == "OKP":
        return ed25519.Ed25519PrivateKey.generate()
    raise JoseError(f"cannot generate a key for {alg!r}")


def _int_b64(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(length, "big"))


def _b64_int(text: str) -> int:
    return int.from_bytes(b64url_decode(text), "big")


def public_jwk(key: PrivateKey | PublicKey, *, kid: str | None = None, alg: str | None = None,
               use: str | None = "sig") -> dict[str, Any]:
    """The public JWK of ``key`` (RFC 7517 §4, RFC 7518 §6, RFC 8037 §2)."""
    pub = key.public_key() if hasattr(key, "public_key") else key
    jwk: dict[str, Any]
    if isinstance(pub, rsa.RSAPublicKey):
        numbers = pub.public_numbers()
        jwk = {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        crv_alg = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[pub.curve.name]
        _, size, crv = _CURVES[crv_alg]
        point = pub.public_numbers()
        jwk = {"kty": "EC", "crv": crv, "x": _int_b64(point.x, size), "y": _int_b64(point.y, size)}
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    else:
        raise JoseError("unsupported key type")
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    if use is not None:
        jwk["use"] = use
    return jwk


def private_jwk(key: PrivateKey, *, kid: str | None = None, alg: str | None = None) -> dict[str, Any]:
    """The private JWK of ``key``; used only to persist the kit's own issuer keys."""
    jwk = public_jwk(key, kid=kid, alg=alg)
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        jwk.update(d=_int_b64(n.d), p=_int_b64(n.p), q=_int_b64(n.q), dp=_int_b64(n.dmp1),
                   dq=_int_b64(n.dmq1), qi=_int_b64(n.iqmp))
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        size = _CURVES[_CRV_TO_ALG[jwk["crv"]]][1]
        jwk["d"] = _int_b64(key.private_numbers().private_value, size)
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        jwk["d"] = b64url_encode(raw)
    return jwk


def key_from_jwk(jwk: Mapping[str, Any]) -> PrivateKey | PublicKey:
    """A ``cryptography`` key from a JWK; private when the JWK carries ``d``."""
    try:
        kty = jwk["kty"]
        if kty == "RSA":
            public = rsa.RSAPublicNumbers(_b64_int(jwk["e"]), _b64_int(jwk["n"]))
            if "d" not in jwk:
                return public.public_key()
            return rsa.RSAPrivateNumbers(
                p=_b64_int(jwk["p"]), q=_b64_int(jwk["q"]), d=_b64_int(jwk["d"]),
                dmp1=_b64_int(jwk["dp"]), dmq1=_b64_int(jwk["dq"]), iqmp=_b64_int(jwk["qi"]),
                public_numbers=public,
            ).private_key()
        if kty == "EC":
            curve = _CURVES[_CRV_TO_ALG[jwk["crv"]]][0]()
            ec_public = ec.EllipticCurvePublicNumbers(_b64_int(jwk["x"]), _b64_int(jwk["y"]), curve)
            if "d" not in jwk:
                return ec_public.public_key()
            return ec.EllipticCurvePrivateNumbers(_b64_int(jwk["d"]), ec_public).private_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            if "d" in jwk:
                return ed25519.Ed25519PrivateKey.from_private_bytes(b64url_decode(jwk["d"]))
            return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise JoseError("malformed JWK") from exc
    raise JoseError(f"unsupported JWK kty {jwk.get('kty')!r}")


def public_pem(key: PrivateKey | PublicKey, *, pkcs1: bool = False) -> bytes:
    """PEM of the public key: SubjectPublicKeyInfo, or PKCS#1 for RSA when asked."""
    pub = key.public_key() if hasattr(key, "public_key") else key
    if pkcs1 and isinstance(pub, rsa.RSAPublicKey):
        return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint (SHA-256), used to derive stable key ids."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
    members = {k: jwk[k] for k in required[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return b64url_encode(digest)


def raw_sign(alg: str, key: Any, data: bytes) -> bytes:
    """The JWS signature of ``data`` (RFC 7518 §3). ``key`` is bytes for HS*, ignored for none."""
    if alg.lower() == "none":
        # Any spelling: the kit forges "None"/"NONE" tokens to probe case-insensitive parsers.
        return b""
    kind = family(alg)
    if kind == "oct":
        return hmac.new(bytes(key), data, getattr(hashlib, "sha" + alg[2:])).digest()
    if kind == "RSA":
        digest = _HASHES[alg[2:]]()
        if alg.startswith("PS"):
            pad: padding.AsymmetricPadding = padding.PSS(
                mgf=padding.MGF1(_HASHES[alg[2:]]()), salt_length=digest.digest_size)
        else:
            pad = padding.PKCS1v15()
        return key.sign(data, pad, digest)
    if kind == "EC":
        # Sized by the key's curve, so a deliberately mismatched alg/curve still yields a token.
        size = (key.curve.key_size + 7) // 8
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(_HASHES[alg[2:]]())))
        # JWS wants the fixed-width concatenation R || S, not DER (RFC 7518 §3.4).
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if kind == "OKP":
        return key.sign(data)
    raise JoseError(f"cannot sign with {alg!r}")


def raw_verify(alg: str, key: Any, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid ``alg`` signature of ``data`` under ``key``."""
    kind = family(alg)
    try:
        if kind == "oct":
            return hmac.compare_digest(raw_sign(alg, key, data), signature)
        if kind == "RSA" and isinstance(key, rsa.RSAPublicKey):
            digest = _HASHES[alg[2:]]()
            if alg.startswith("PS"):
                pad: padding.AsymmetricPadding = padding.PSS(
                    mgf=padding.MGF1(_HASHES[alg[2:]]()), salt_length=digest.digest_size)
            else:
                pad = padding.PKCS1v15()
            key.verify(signature, data, pad, digest)
            return True
        if kind == "EC" and isinstance(key, ec.EllipticCurvePublicKey):
            curve, size, _ = _CURVES[alg]
            if key.curve.name != curve().name or len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(_HASHES[alg[2:]]()))
            return True
        if kind == "OKP" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return True
    except InvalidSignature:
        return False
    return False


def sign_compact(header: Mapping[str, Any], payload: Mapping[str, Any] | bytes, key: Any) -> str:
    """A compact JWS whose header is exactly ``header``, signed per its own ``alg``."""
    signing_input = f"{_json_b64(header)}.{_json_b64(payload)}"
    signature = raw_sign(str(header.get("alg", "none")), key, signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, claims, signing input and signature of a compact JWS, *without* verifying it.

    Unsafe by name: callers use it to look at a token they are about to verify, or to build a
    forged variant of one.
    """
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        raise JoseError("not a compact JWS")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JoseError("header or payload is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JoseError("header or payload is not a JSON object")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), b64url_decode(parts[2])


def verify_compact(token: str, jwks: Mapping[str, Any], *,
                   algorithms: tuple[str, ...] | list[str] = ASYMMETRIC_ALGORITHMS,
                   use: str = "sig") -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a compact JWS against a JWK Set and return ``(header, claims)``.

    Keys are chosen by ``kid`` only from ``jwks``; ``jwk``/``jku``/``x5u``/``x5c`` headers are
    never consulted (RFC 8725 §3.10). The header ``alg`` must be allowlisted, match the key's
    type, and match the JWK's own ``alg`` when it declares one (RFC 8725 §3.1). A JWK that
    declares a ``use`` other than ``use`` (``"jwt-svid"`` for SPIFFE bundles) is skipped.
    """
    header, claims, signing_input, signature = decode_unverified(token)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms or alg == "none":
        raise JoseError(f"algorithm {alg!r} is not allowed")
    if "crit" in header:
        raise JoseError("unsupported critical header parameters")
    keys = [k for k in jwks.get("keys", []) if isinstance(k, Mapping)]
    kid = header.get("kid")
    candidates = [k for k in keys if k.get("kid") == kid] if kid is not None else keys
    if not candidates:
        raise JoseError("no key with that kid")
    for jwk in candidates:
        if jwk.get("kty") != family(alg) or jwk.get("alg", alg) != alg or jwk.get("use", use) != use:
            continue
        if jwk.get("kty") == "EC" and _CRV_TO_ALG.get(jwk.get("crv", "")) != alg:
            continue
        try:
            key = key_from_jwk({k: v for k, v in jwk.items() if k != "d"})
        except JoseError:
            continue
        if raw_verify(alg, key, signing_input, signature):
            return header, claims
    raise JoseError("signature does not verify")
