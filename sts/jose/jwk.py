"""Public and private signing keys as JSON Web Keys (RFC 7517, RFC 7518 §6, RFC 8037 §2,
RFC 7638), and the JOSE error hierarchy shared with :mod:`sts.jose.jws`.

Incoming keys come from issuers' JWKS documents, so parsing is strict and each key is judged on
its own: a JWKS holding one bad key still yields its good keys (:func:`parse_jwks`). A key is
parsed once into a ``cryptography`` public key together with the set of JWS algorithms it may
verify; the verifier then checks ``alg in key.algorithms`` and never derives the algorithm from
the key or the key from the token header (RFC 8725 §3.1, algorithm confusion).

Checks and why:

* RFC 7517 §4.2: "use" "sig" marks a signing key; any other value (``enc``) is refused.
* RFC 7517 §4.4: an "alg" member names the one algorithm the key is intended for; it must agree
  with the key type and curve, and then it is the *only* algorithm the key verifies.
* RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these algorithms." RSA
  moduli under 2048 bits are refused (``weak_key``); over 16384 bits (a cheap denial of service
  on verification) too (``unsupported_key``).
* RFC 7518 §6.2.1.2: EC coordinates "MUST be the full size of a coordinate for the curve";
  points must lie on the curve (checked by ``cryptography``).
* A published key set must never carry private or symmetric key material: such a key is
  refused outright (``private_material``) rather than stripped, since its presence means the
  publisher leaked a secret.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sts.jose.b64 import b64url_decode, b64url_encode

__all__ = [
    "JOSEError",
    "MalformedToken",
    "AlgorithmNotAllowed",
    "BadSignature",
    "UnsupportedHeader",
    "JWKError",
    "SUPPORTED_ALGORITHMS",
    "PublicKey",
    "parse_jwk",
    "KeySet",
    "parse_jwks",
    "PrivateKey",
    "generate_private_key",
    "jwk_thumbprint",
    "private_key_to_pem",
    "private_key_from_pem",
]


# --------------------------------------------------------------------------- errors


class JOSEError(Exception):
    """Any refusal of the JOSE layer.

    Invariant: ``reason`` is a short, stable, machine-readable code (for audit records and
    metrics); the message never contains token or key material.
    """

    default_reason = "jose_error"

    def __init__(self, detail: str | None = None, *, reason: str | None = None) -> None:
        self.reason: str = reason or self.default_reason
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


class MalformedToken(JOSEError):
    """The token is not a well-formed compact JWS (RFC 7515 §7.1, RFC 7519 §7.2)."""

    default_reason = "malformed"


class AlgorithmNotAllowed(JOSEError):
    """The ``alg`` is unsupported, symmetric, ``none`` or outside the allowlist (RFC 8725 §3.1)."""

    default_reason = "alg_not_allowed"


class BadSignature(JOSEError):
    """The signature does not verify under the selected key (RFC 7515 §5.2 step 8)."""

    default_reason = "bad_signature"


class UnsupportedHeader(JOSEError):
    """A header parameter the broker does not accept: unknown ``crit``, ``b64``, ``typ``."""

    default_reason = "unsupported_header"


class JWKError(JOSEError):
    """A JWK or JWKS that cannot be used as a public verification key."""

    default_reason = "invalid_jwk"


# --------------------------------------------------------------------------- algorithms

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# crv -> (curve class, coordinate size in octets, the one JWS alg for it) (RFC 7518 §3.4)
_EC_CURVES: dict[str, tuple[type[ec.EllipticCurve], int, str]] = {
    "P-256": (ec.SECP256R1, 32, "ES256"),
    "P-384": (ec.SECP384R1, 48, "ES384"),
    "P-521": (ec.SECP521R1, 66, "ES512"),
}
_EC_BY_CURVE_NAME = {cls.name: crv for crv, (cls, _, _) in _EC_CURVES.items()}
_EC_BY_ALG = {alg: crv for crv, (_, _, alg) in _EC_CURVES.items()}

#: Every JWS algorithm the broker can verify or sign with. Asymmetric only: ``none`` and the
#: HMAC family are absent on purpose (RFC 8725 §3.1, §3.2), so no allowlist can reach them.
SUPPORTED_ALGORITHMS: frozenset[str] = _RSA_ALGS | frozenset(_EC_BY_ALG) | {"EdDSA"}

_MIN_RSA_BITS = 2048
_MAX_RSA_BITS = 16384
_MAX_RSA_EXPONENT_BITS = 256  # FIPS 186-5 §A.1.1 bound; a huge e makes verification slow
# RFC 7517 §9.2 / RFC 7518 §6.3.2, §6.4: members that only a private or symmetric key has.
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


# --------------------------------------------------------------------------- public keys


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A parsed public verification key.

    Invariant: ``key`` is a ``cryptography`` public key of type ``kty`` (and curve ``crv``) and
    ``algorithms`` is the non-empty subset of :data:`SUPPORTED_ALGORITHMS` it may verify,
    narrowed to the JWK's own ``alg`` when it names one.
    """

    kid: str | None
    kty: str
    alg: str | None
    use: str | None
    crv: str | None
    # Compared for equality but not hashed: cryptography key objects are unhashable, and equal
    # keys still hash alike through the other fields.
    key: Any = field(repr=False, hash=False)
    algorithms: frozenset[str]

    def to_jwk(self) -> dict[str, Any]:
        """The public JWK: key members only, plus ``kid``/``alg``/``use`` when set."""
        jwk: dict[str, Any]
        if self.kty == "RSA":
            numbers = self.key.public_numbers()
            jwk = {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
        elif self.kty == "EC":
            assert self.crv is not None
            size = _EC_CURVES[self.crv][1]
            numbers = self.key.public_numbers()
            jwk = {
                "kty": "EC",
                "crv": self.crv,
                "x": b64url_encode(numbers.x.to_bytes(size, "big")),
                "y": b64url_encode(numbers.y.to_bytes(size, "big")),
            }
        else:
            raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            jwk = {"kty": "OKP", "crv": self.crv, "x": b64url_encode(raw)}
        for name in ("kid", "alg", "use"):
            value = getattr(self, name)
            if value is not None:
                jwk[name] = value
        return jwk


def _int_b64(i: int) -> str:
    # RFC 7518 §6.3.1.1: the minimum number of octets (zero is one octet).
    return b64url_encode(i.to_bytes(max(1, (i.bit_length() + 7) // 8), "big"))


def _opt_str(d: Mapping[str, Any], name: str) -> str | None:
    value = d.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise JWKError(f'"{name}" is not a string', reason="malformed")
    return value


def _member_bytes(d: Mapping[str, Any], name: str) -> bytes:
    value = d.get(name)
    if not isinstance(value, str) or not value:
        raise JWKError(f'"{name}" missing or not a string', reason="malformed")
    try:
        return b64url_decode(value)
    except ValueError as exc:
        raise JWKError(f'"{name}" is not base64url', reason="malformed") from exc


def _narrow(possible: frozenset[str], alg: str | None) -> frozenset[str]:
    if alg is None:
        return possible
    if alg not in SUPPORTED_ALGORITHMS:
        raise JWKError("JWK alg is not a supported signature algorithm", reason="alg_not_allowed")
    if alg not in possible:
        raise JWKError("JWK alg does not fit the key type or curve", reason="key_alg_mismatch")
    return frozenset((alg,))


def _rsa_public(d: Mapping[str, Any]) -> rsa.RSAPublicKey:
    # Leading zero octets in "n" break RFC 7518 §6.3.1.1 but are seen in real JWKS and change
    # nothing about the key, so the integer value is what is judged.
    n = int.from_bytes(_member_bytes(d, "n"), "big")
    e = int.from_bytes(_member_bytes(d, "e"), "big")
    bits = n.bit_length()
    if bits < _MIN_RSA_BITS:
        raise JWKError(f"RSA modulus of {bits} bits", reason="weak_key")
    if bits > _MAX_RSA_BITS or e.bit_length() > _MAX_RSA_EXPONENT_BITS:
        raise JWKError("RSA key too large", reason="unsupported_key")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise JWKError("invalid RSA public key", reason="invalid_key") from exc


def _ec_public(d: Mapping[str, Any], crv: str) -> ec.EllipticCurvePublicKey:
    curve_cls, size, _ = _EC_CURVES[crv]
    x = _member_bytes(d, "x")
    y = _member_bytes(d, "y")
    if len(x) != size or len(y) != size:
        raise JWKError("EC coordinate is not the full size for the curve", reason="malformed")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve_cls(), b"\x04" + x + y)
    except ValueError as exc:
        raise JWKError("EC point is not on the curve", reason="invalid_key") from exc


def _okp_public(d: Mapping[str, Any]) -> Ed25519PublicKey:
    x = _member_bytes(d, "x")
    if len(x) != 32:
        raise JWKError("Ed25519 key is not 32 octets", reason="malformed")
    return Ed25519PublicKey.from_public_bytes(x)


def parse_jwk(d: Mapping[str, Any]) -> PublicKey:
    """Parse one public signing JWK. Raises :class:`JWKError` with a ``reason`` code."""
    if not isinstance(d, Mapping):
        raise JWKError("JWK is not an object", reason="malformed")
    kty = d.get("kty")
    if not isinstance(kty, str):
        raise JWKError('"kty" missing or not a string', reason="malformed")
    if any(m in d for m in _PRIVATE_MEMBERS):
        raise JWKError("JWK carries private or symmetric key material", reason="private_material")
    if kty == "oct":
        raise JWKError("symmetric key", reason="symmetric_key")
    kid = _opt_str(d, "kid")
    alg = _opt_str(d, "alg")
    use = _opt_str(d, "use")
    if use is not None and use != "sig":
        raise JWKError('"use" is not "sig"', reason="not_sig")
    key_ops = d.get("key_ops")
    if key_ops is not None:
        # RFC 7517 §4.3: a verification key lists "verify".
        if not isinstance(key_ops, list) or not all(isinstance(o, str) for o in key_ops):
            raise JWKError('"key_ops" is not an array of strings', reason="malformed")
        if "verify" not in key_ops:
            raise JWKError('"key_ops" lacks "verify"', reason="not_sig")

    key: Any
    crv: str | None = None
    if kty == "RSA":
        key = _rsa_public(d)
        possible = _RSA_ALGS
    elif kty == "EC":
        crv = _opt_str(d, "crv")
        if crv not in _EC_CURVES:
            raise JWKError("EC curve not supported", reason="unsupported_curve")
        key = _ec_public(d, crv)
        possible = frozenset((_EC_CURVES[crv][2],))
    elif kty == "OKP":
        crv = _opt_str(d, "crv")
        if crv != "Ed25519":
            raise JWKError("OKP curve not supported", reason="unsupported_curve")
        key = _okp_public(d)
        possible = frozenset(("EdDSA",))
    else:
        raise JWKError("unknown key type", reason="unknown_kty")
    return PublicKey(
        kid=kid, kty=kty, alg=alg, use=use, crv=crv, key=key, algorithms=_narrow(possible, alg)
    )


def _public_from_crypto(key: Any, *, kid: str | None, alg: str | None, use: str | None) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        kty, crv, possible = "RSA", None, _RSA_ALGS
    elif isinstance(key, ec.EllipticCurvePublicKey):
        crv = _EC_BY_CURVE_NAME.get(key.curve.name)
        if crv is None:
            raise JWKError("EC curve not supported", reason="unsupported_curve")
        kty, possible = "EC", frozenset((_EC_CURVES[crv][2],))
    elif isinstance(key, Ed25519PublicKey):
        kty, crv, possible = "OKP", "Ed25519", frozenset(("EdDSA",))
    else:
        raise JWKError("unsupported key type", reason="unknown_kty")
    return PublicKey(
        kid=kid, kty=kty, alg=alg, use=use, crv=crv, key=key, algorithms=_narrow(possible, alg)
    )


# --------------------------------------------------------------------------- key sets


@dataclass(frozen=True)
class KeySet:
    """An issuer's usable verification keys, indexed once for lookup.

    Invariant: at most one key answers a given ``(kid, alg)``; ``skipped`` explains, one line
    per key, why a published key is not in ``keys``. A set may be empty; callers decide what an
    empty set means (the JWKS cache never stores one).
    """

    keys: tuple[PublicKey, ...]
    skipped: tuple[str, ...] = ()
    _by_kid: dict[tuple[str, str], PublicKey] = field(init=False, repr=False, compare=False)
    _sole: dict[str, PublicKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_kid: dict[tuple[str, str], PublicKey] = {}
        per_alg: dict[str, list[PublicKey]] = {}
        for k in self.keys:
            for alg in k.algorithms:
                per_alg.setdefault(alg, []).append(k)
                if k.kid is not None:
                    by_kid.setdefault((k.kid, alg), k)  # first wins
        object.__setattr__(self, "_by_kid", by_kid)
        object.__setattr__(self, "_sole", {a: ks[0] for a, ks in per_alg.items() if len(ks) == 1})

    def find(self, kid: str | None, alg: str) -> PublicKey | None:
        """The key for ``kid`` that verifies ``alg``; with no ``kid``, the only key that can
        verify ``alg``, or ``None`` when there are several (guessing would let a token pick)."""
        if kid is None:
            return self._sole.get(alg)
        if type(kid) is not str:
            return None
        return self._by_kid.get((kid, alg))

    def __len__(self) -> int:
        return len(self.keys)


def _label(item: Any, index: int) -> str:
    kid = item.get("kid") if isinstance(item, Mapping) else None
    if isinstance(kid, str):
        # kid comes from a remote document and lands in logs: printable ASCII, bounded.
        safe = "".join(c if " " <= c <= "~" else "?" for c in kid[:64])
        return f"kid={safe}"
    return f"keys[{index}]"


def parse_jwks(doc: Mapping[str, Any], *, require_use_sig: bool = False) -> KeySet:
    """Parse a JWK Set (RFC 7517 §5), skipping each unusable key on its own.

    Raises :class:`JWKError` only when ``doc`` is not an object with a ``keys`` array. A key
    whose ``kid`` repeats an earlier key's ``kid`` for an overlapping algorithm is skipped as
    ``duplicate_kid`` (the first one is kept), so a lookup by ``(kid, alg)`` is never ambiguous.
    With ``require_use_sig``, keys without ``"use": "sig"`` are skipped as ``use_missing``.
    """
    if not isinstance(doc, Mapping):
        raise JWKError("JWKS is not an object", reason="malformed")
    raw = doc.get("keys")
    if not isinstance(raw, (list, tuple)):
        raise JWKError('JWKS has no "keys" array', reason="malformed")
    kept: list[PublicKey] = []
    skipped: list[str] = []
    seen: dict[str, frozenset[str]] = {}
    for i, item in enumerate(raw):
        try:
            k = parse_jwk(item)
        except JWKError as exc:
            skipped.append(f"{_label(item, i)}: {exc.reason}")
            continue
        if require_use_sig and k.use is None:
            skipped.append(f"{_label(item, i)}: use_missing")
            continue
        if k.kid is not None:
            taken = seen.get(k.kid, frozenset())
            if taken & k.algorithms:
                skipped.append(f"{_label(item, i)}: duplicate_kid")
                continue
            seen[k.kid] = taken | k.algorithms
        kept.append(k)
    return KeySet(keys=tuple(kept), skipped=tuple(skipped))


# --------------------------------------------------------------------------- private keys


def _check_private(key: Any, alg: str) -> None:
    if alg not in SUPPORTED_ALGORITHMS:
        raise AlgorithmNotAllowed("not a supported signing algorithm", reason="alg_not_allowed")
    if alg in _RSA_ALGS:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise JWKError("alg needs an RSA key", reason="key_alg_mismatch")
        if key.key_size < _MIN_RSA_BITS:
            raise JWKError(f"RSA key of {key.key_size} bits", reason="weak_key")
    elif alg == "EdDSA":
        if not isinstance(key, Ed25519PrivateKey):
            raise JWKError("alg needs an Ed25519 key", reason="key_alg_mismatch")
    else:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or (
            _EC_BY_CURVE_NAME.get(key.curve.name) != _EC_BY_ALG[alg]
        ):
            raise JWKError(f"alg needs a {_EC_BY_ALG[alg]} key", reason="key_alg_mismatch")


@dataclass(frozen=True)
class PrivateKey:
    """A signing key of the broker.

    Invariant: ``key`` is a ``cryptography`` private key that fits ``alg`` (type, curve, RSA of
    at least 2048 bits) and ``kid`` is a non-empty string. Its public half is computed once.
    """

    kid: str
    alg: str
    key: Any = field(repr=False, hash=False)
    _public: PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kid, str) or not self.kid:
            raise JWKError("kid must be a non-empty string", reason="malformed")
        _check_private(self.key, self.alg)
        public = _public_from_crypto(self.key.public_key(), kid=self.kid, alg=self.alg, use="sig")
        object.__setattr__(self, "_public", public)

    def public(self) -> PublicKey:
        return self._public

    def public_jwk(self) -> dict[str, Any]:
        """``{"kty", key members, "kid", "alg", "use": "sig"}``; never a private member."""
        return self._public.to_jwk()


def generate_private_key(alg: str, kid: str | None = None, *, rsa_bits: int = 2048) -> PrivateKey:
    """A fresh signing key for ``alg``; ``kid`` defaults to its RFC 7638 thumbprint."""
    key: Any
    if alg in _RSA_ALGS:
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    elif alg in _EC_BY_ALG:
        key = ec.generate_private_key(_EC_CURVES[_EC_BY_ALG[alg]][0]())
    elif alg == "EdDSA":
        key = Ed25519PrivateKey.generate()
    else:
        raise AlgorithmNotAllowed("not a supported signing algorithm", reason="alg_not_allowed")
    if kid is None:
        kid = jwk_thumbprint(_public_from_crypto(key.public_key(), kid=None, alg=None, use=None).to_jwk())
    return PrivateKey(kid=kid, alg=alg, key=key)


# RFC 7638 §3.2: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "oct": ("k", "kty"),
}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint with SHA-256, base64url-encoded."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise JWKError("unknown key type", reason="unknown_kty")
    subset = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise JWKError(f'"{name}" missing or not a string', reason="malformed")
        subset[name] = value
    text = json.dumps(subset, separators=(",", ":"), ensure_ascii=False)
    return b64url_encode(hashlib.sha256(text.encode("utf-8")).digest())


def private_key_to_pem(k: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM; the caller encrypts it before it is stored."""
    return k.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(pem: bytes, alg: str, kid: str) -> PrivateKey:
    """Load an unencrypted PKCS#8 PEM and bind it to ``alg`` and ``kid`` (checked to fit)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise JWKError("not an unencrypted PEM private key", reason="malformed") from exc
    return PrivateKey(kid=kid, alg=alg, key=key)
