"""Strict compact JWS for JWTs (RFC 7515 §3.1, §5.2, §7.1; RFC 7518 §3; RFC 8037 §3.1;
RFC 7519 §7.2; RFC 8725 §2-3).

Verification is split into named steps so that none can be skipped silently:

1. :func:`unsafe_decode` parses the three segments. Nothing is verified; the name says so.
2. :func:`check_header` applies the algorithm allowlist and the header rules.
3. The caller selects a key by ``(kid, alg)`` from a configured :class:`~sts.jose.jwk.KeySet`
   (never from ``jku``/``jwk``/``x5u``/``x5c``, which are ignored for key selection).
4. :func:`verify_signature` checks the signature with that key, for that algorithm only.

Claims are validated separately (:mod:`sts.subject.claims`).

Strictness beyond the RFC minimum, and why: JSON objects with duplicate member names are refused
(RFC 7515 §5.2 allows refusing them, and two parsers could read different values); only UTF-8
JSON is accepted (RFC 7519 §7.2 step 8 / RFC 8259 §8.1); base64url must be canonical (see
:mod:`sts.jose.b64`); ECDSA signatures must be exactly ``R || S`` of the curve's size
(RFC 7518 §3.4) and RSA signatures exactly the modulus size, so one signature has one encoding.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from sts.jose.b64 import b64url_decode, b64url_encode
from sts.jose.jwk import (
    SUPPORTED_ALGORITHMS,
    AlgorithmNotAllowed,
    BadSignature,
    JOSEError,
    MalformedToken,
    PrivateKey,
    PublicKey,
    UnsupportedHeader,
)

__all__ = ["UnverifiedJWT", "SignedJWS", "unsafe_decode", "check_header", "verify_signature", "verify_detached", "sign", "sign_parts"]


@dataclass(frozen=True, slots=True)
class UnverifiedJWT:
    """The parts of a compact JWS whose signature has NOT been checked.

    Invariant: ``header`` and ``claims`` are JSON objects without duplicate names, ``header["alg"]``
    is a string, and ``signing_input`` is the ASCII ``BASE64URL(header) "." BASE64URL(payload)``
    exactly as received.
    """

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


# --------------------------------------------------------------------------- decoding


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("duplicate member name")
    return d


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
# An escaped UTF-16 surrogate: only then can a lone surrogate (not encodable as UTF-8) appear.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        text = b64url_decode(segment).decode("utf-8")
        obj = _DECODER.decode(text)
        if _SURROGATE_ESCAPE.search(text) is not None:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    except (ValueError, RecursionError) as exc:  # UnicodeError and JSONDecodeError are ValueErrors
        raise MalformedToken(f"{what} is not base64url JSON", reason="malformed") from exc
    if type(obj) is not dict:
        raise MalformedToken(f"{what} is not a JSON object", reason="malformed")
    return obj


def unsafe_decode(token: str, *, max_length: int = 16384) -> UnverifiedJWT:
    """Split and parse a compact JWS. NOTHING is verified: use only to pick the issuer and key.

    Raises :class:`MalformedToken` with reason ``too_large``, ``jwe_not_supported`` or
    ``malformed``.
    """
    if not isinstance(token, str):
        raise MalformedToken("token is not a string", reason="malformed")
    if len(token) > max_length:
        raise MalformedToken("token too large", reason="too_large")
    if not token.isascii():
        raise MalformedToken("token is not ASCII", reason="malformed")
    parts = token.split(".")
    if len(parts) != 3:
        if len(parts) == 5:  # RFC 7516 §7.1 compact JWE
            raise MalformedToken("encrypted tokens are not accepted", reason="jwe_not_supported")
        raise MalformedToken("not three dot-separated segments", reason="malformed")
    h, p, s = parts
    header = _json_object(h, "header")
    if type(header.get("alg")) is not str:
        raise MalformedToken('header "alg" missing or not a string', reason="malformed")
    claims = _json_object(p, "payload")
    try:
        signature = b64url_decode(s)
    except ValueError as exc:
        raise MalformedToken("signature is not base64url", reason="malformed") from exc
    return UnverifiedJWT(header, claims, f"{h}.{p}".encode("ascii"), signature)


# --------------------------------------------------------------------------- header rules

# RFC 7515 §4.1: names "crit" must not list (JWA defines none more for JWS).
_REGISTERED_HEADERS = frozenset(
    {"alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit"}
)
_EMBEDDED_KEY_HEADERS = ("jku", "jwk", "x5u", "x5c")


def _media_type(value: str) -> str:
    # RFC 7515 §4.1.9: "application/" is implied when the value has no "/"; media types
    # compare case-insensitively (RFC 2045 §5.1).
    value = value.lower()
    return value if "/" in value else "application/" + value


def check_header(
    header: Mapping[str, Any],
    *,
    allowed_algorithms: Collection[str],
    supported_crit: Collection[str] = (),
    expected_typ: str | None = None,
    forbid_embedded_keys: bool = False,
) -> str:
    """Apply the header rules and return the ``alg`` to verify with.

    Raises :class:`AlgorithmNotAllowed` (``alg_not_allowed``), :class:`UnsupportedHeader`
    (``crit_unsupported``, ``b64_unsupported``, ``forbidden_header``, ``typ_mismatch``) or
    :class:`MalformedToken` (``malformed``: ``alg``/``kid`` not strings).
    """
    alg = header.get("alg")
    if type(alg) is not str:
        raise MalformedToken('header "alg" missing or not a string', reason="malformed")
    # RFC 8725 §3.1: only allowlisted algorithms; "none" and HS* are never supported at all.
    if alg not in SUPPORTED_ALGORITHMS or alg not in allowed_algorithms:
        raise AlgorithmNotAllowed("algorithm not allowed", reason="alg_not_allowed")
    if "kid" in header and type(header["kid"]) is not str:
        raise MalformedToken('header "kid" is not a string', reason="malformed")
    if "crit" in header:
        _check_crit(header, supported_crit)
    # RFC 7797 §3: "b64": false means an unencoded payload, which this layer never accepts.
    if "b64" in header and header["b64"] is not True:
        raise UnsupportedHeader("unencoded payload", reason="b64_unsupported")
    if forbid_embedded_keys and any(name in header for name in _EMBEDDED_KEY_HEADERS):
        raise UnsupportedHeader("embedded key reference", reason="forbidden_header")
    if expected_typ is not None:
        typ = header.get("typ")
        if type(typ) is not str or _media_type(typ) != _media_type(expected_typ):
            raise UnsupportedHeader("unexpected typ", reason="typ_mismatch")
    return alg


def _check_crit(header: Mapping[str, Any], supported: Collection[str]) -> None:
    # RFC 7515 §4.1.11: a non-empty array of distinct names, each an extension this recipient
    # understands, none defined by RFC 7515/7518, each present in the header; otherwise the
    # JWS "is invalid".
    crit = header["crit"]
    if (
        type(crit) is not list
        or not crit
        or not all(type(name) is str for name in crit)
        or len(set(crit)) != len(crit)
    ):
        raise UnsupportedHeader('"crit" is not a non-empty array of distinct names', reason="crit_unsupported")
    for name in crit:
        if name in _REGISTERED_HEADERS or name not in supported or name not in header:
            raise UnsupportedHeader("critical header not understood", reason="crit_unsupported")


# --------------------------------------------------------------------------- algorithms

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}
_PKCS1 = padding.PKCS1v15()
_EC_SIZES = {"ES256": 32, "ES384": 48, "ES512": 66}

_Verifier = Callable[[Any, bytes, bytes], None]
_Signer = Callable[[Any, bytes], bytes]


def _pss(h: hashes.HashAlgorithm) -> padding.PSS:
    # RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash output.
    return padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)


def _rsa_verifier(pad: padding.AsymmetricPadding, h: hashes.HashAlgorithm) -> _Verifier:
    def verify(key: Any, data: bytes, sig: bytes) -> None:
        # RSASSA signatures are exactly k octets (RFC 8017 §8.1.2, §8.2.2 step 1).
        if len(sig) != (key.key_size + 7) >> 3:
            raise InvalidSignature
        key.verify(sig, data, pad, h)

    return verify


def _rsa_signer(pad: padding.AsymmetricPadding, h: hashes.HashAlgorithm) -> _Signer:
    return lambda key, data: key.sign(data, pad, h)


def _ec_verifier(size: int, h: hashes.HashAlgorithm) -> _Verifier:
    algorithm = ec.ECDSA(h)

    def verify(key: Any, data: bytes, sig: bytes) -> None:
        if len(sig) != size << 1:
            raise InvalidSignature
        r = int.from_bytes(sig[:size], "big")
        s = int.from_bytes(sig[size:], "big")
        key.verify(encode_dss_signature(r, s), data, algorithm)

    return verify


def _ec_signer(size: int, h: hashes.HashAlgorithm) -> _Signer:
    algorithm = ec.ECDSA(h)

    def sign_(key: Any, data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, algorithm))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    return sign_


def _ed_verify(key: Any, data: bytes, sig: bytes) -> None:
    if len(sig) != 64:
        raise InvalidSignature
    key.verify(sig, data)


# Built once: each entry closes over its hash, padding and size objects.
_VERIFIERS: dict[str, _Verifier] = {"EdDSA": _ed_verify}
_SIGNERS: dict[str, _Signer] = {"EdDSA": lambda key, data: key.sign(data)}
for _bits, _h in _HASHES.items():
    _VERIFIERS["RS" + _bits] = _rsa_verifier(_PKCS1, _h)
    _SIGNERS["RS" + _bits] = _rsa_signer(_PKCS1, _h)
    _VERIFIERS["PS" + _bits] = _rsa_verifier(_pss(_h), _h)
    _SIGNERS["PS" + _bits] = _rsa_signer(_pss(_h), _h)
    _VERIFIERS["ES" + _bits] = _ec_verifier(_EC_SIZES["ES" + _bits], _h)
    _SIGNERS["ES" + _bits] = _ec_signer(_EC_SIZES["ES" + _bits], _h)
del _bits, _h
assert frozenset(_VERIFIERS) == SUPPORTED_ALGORITHMS == frozenset(_SIGNERS)


def verify_signature(jwt: UnverifiedJWT, key: PublicKey, alg: str) -> None:
    """Verify ``jwt``'s signature with ``key`` under ``alg`` (the value :func:`check_header`
    returned). Raises :class:`JOSEError` (``key_alg_mismatch``) when the key may not verify
    ``alg``, :class:`AlgorithmNotAllowed` (``alg_mismatch``) when ``alg`` is not the header's,
    and :class:`BadSignature` otherwise."""
    if alg not in key.algorithms:
        raise JOSEError("key may not verify this algorithm", reason="key_alg_mismatch")
    if jwt.header.get("alg") != alg:
        raise AlgorithmNotAllowed("alg differs from the header", reason="alg_mismatch")
    try:
        _VERIFIERS[alg](key.key, jwt.signing_input, jwt.signature)
    except InvalidSignature:
        raise BadSignature("signature does not verify", reason="bad_signature") from None


# Compact, ASCII-only (the default ensure_ascii), refusing NaN and the infinities. Built once:
# json.dumps with non-default options constructs a new encoder on every call.
_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def verify_detached(signing_input: bytes, signature: bytes, key: PublicKey, alg: str) -> None:
    """Verify ``signature`` over ``signing_input`` with ``key`` under ``alg``, for bytes this
    process has just produced itself (no header to check). Raises :class:`JOSEError`
    (``key_alg_mismatch``) or :class:`BadSignature`."""
    if alg not in key.algorithms:
        raise JOSEError("key may not verify this algorithm", reason="key_alg_mismatch")
    try:
        _VERIFIERS[alg](key.key, signing_input, signature)
    except InvalidSignature:
        raise BadSignature("signature does not verify", reason="bad_signature") from None


@dataclass(frozen=True, slots=True)
class SignedJWS:
    """A compact JWS as :func:`sign_parts` produced it: ``token`` is
    ``signing_input.decode() + "." + BASE64URL(signature)``."""

    token: str
    signing_input: bytes
    signature: bytes


def _encode_header(alg: str, kid: str, typ: str | None, extra: Mapping[str, Any] | None) -> str:
    header: dict[str, Any] = {"alg": alg, "kid": kid}
    if typ is not None:
        header["typ"] = typ
    if extra:
        header.update(extra)
    return b64url_encode(_encode_json(header).encode("ascii"))


@functools.lru_cache(maxsize=64)
def _plain_header(alg: str, kid: str, typ: str | None) -> str:
    # A signing key signs thousands of tokens with the same header: encode it once per key.
    return _encode_header(alg, kid, typ, None)


def sign(
    claims: Mapping[str, Any],
    key: PrivateKey,
    *,
    typ: str | None = None,
    extra_header: Mapping[str, Any] | None = None,
) -> str:
    """Sign ``claims`` as a compact JWS with header ``{"alg", "kid"[, "typ"], **extra_header}``.

    ``extra_header`` may not set ``alg``, ``kid``, ``typ``, ``crit`` or ``b64`` (ValueError):
    those are fixed by the key and this function, and the verifier refuses ``crit``/``b64``.
    """
    return sign_parts(claims, key, typ=typ, extra_header=extra_header).token


def sign_parts(
    claims: Mapping[str, Any],
    key: PrivateKey,
    *,
    typ: str | None = None,
    extra_header: Mapping[str, Any] | None = None,
) -> SignedJWS:
    """:func:`sign`, also returning the signed bytes and the raw signature, so that the signer
    can check its own output without decoding it again."""
    if extra_header:
        clash = {"alg", "kid", "typ", "crit", "b64"}.intersection(extra_header)
        if clash:
            raise ValueError(f"extra_header may not set {sorted(clash)}")
        h = _encode_header(key.alg, key.kid, typ, extra_header)
    else:
        h = _plain_header(key.alg, key.kid, typ)
    p = b64url_encode(_encode_json(dict(claims)).encode("ascii"))
    signing_input = f"{h}.{p}"
    signed = signing_input.encode("ascii")
    signature = _SIGNERS[key.alg](key.key, signed)
    return SignedJWS(f"{signing_input}.{b64url_encode(signature)}", signed, signature)
