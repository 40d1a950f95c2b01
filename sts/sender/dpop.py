"""DPoP proof validation at the token endpoint (RFC 9449 §4.2, §4.3, §8, §11.1). Pure.

:func:`validate_proof` takes the ``DPoP`` header value, the request's method and the broker's own
token endpoint URL, the time (injected), the algorithm allowlist and the nonce check, and returns
a :class:`DpopProof` or raises :class:`ProofRejected` / :class:`NonceRequired`. Replay of the
proof's ``jti`` is checked afterwards by :mod:`sts.sender.guard`, which needs the database.

The MUST sentences implemented here, from RFC 9449 §4.3 ("To validate a DPoP proof, the
receiving server MUST ensure the following"):

1. "There is not more than one DPoP HTTP request header field." (the endpoint counts them)
2. "The DPoP HTTP request header field value is a single and well-formed JWT."
3. "All required claims per Section 4.2 are contained in the JWT." (§4.2: ``jti``, ``htm``,
   ``htu``, ``iat``; ``nonce`` when the server provided one)
4. "The typ JOSE Header Parameter has the value dpop+jwt."
5. "The alg JOSE Header Parameter indicates a registered asymmetric digital signature
   algorithm, is not none, is supported by the application, and is acceptable per local
   policy." (the allowlist :data:`DPOP_ALGORITHMS`, advertised as
   ``dpop_signing_alg_values_supported``, RFC 9449 §5.1)
6. "The JWT signature verifies with the public key contained in the jwk JOSE Header
   Parameter."
7. "The jwk JOSE Header Parameter does not contain a private key."
8. "The htm claim matches the HTTP method of the current request."
9. "The htu claim matches the HTTP URI value for the HTTP request in which the JWT was
   received, ignoring any query and fragment parts." And: "servers SHOULD employ syntax-based
   normalization (Section 6.2.2 of [RFC3986]) and scheme-based normalization (Section 6.2.3
   of [RFC3986]) before comparing the htu claim": done by :func:`normalize_htu`.
10. "If the server provided a nonce value to the client, the nonce claim matches the
    server-provided nonce value." (§8; the nonce check is injected, :mod:`sts.sender.nonce`)
11. "The creation time of the JWT, as determined by either the iat claim or a server managed
    timestamp via the nonce claim, is within an acceptable window (see Section 11.1)." We take
    ``iat`` within ``max_age`` seconds in the past and ``future_skew`` seconds in the future.

The checks may be performed in any order (§4.3); we run the cheap ones first and ask for a
nonce last, so that only an otherwise good proof is answered ``use_dpop_nonce``.

RFC 9449 §5: "The DPoP HTTP header field MUST contain a valid DPoP proof JWT. If the DPoP proof
is invalid, the authorization server issues an error response per Section 5.2 of [RFC6749]
with invalid_dpop_proof as the value of the error parameter." §11.1: "servers MUST only accept
DPoP proofs for a limited time after their creation"; servers "can store the jti value of each
DPoP proof for the time window in which the respective DPoP proof JWT would be accepted" and
"should reject DPoP proof JWTs with unnecessarily large jti values" (we cap them at 256
characters) — :func:`replay_expiry` gives that window. §11.5: servers "MUST verify that the typ
field is dpop+jwt". §11.6: "only asymmetric digital signature algorithms ... can be used for
signing DPoP proofs. In particular, the algorithm none MUST NOT be allowed."

The expected URL is the broker's own token endpoint built from the configured issuer, never
the ``Host`` header: a client proves the URL it meant to call, and a header the caller (or a
proxy) controls must not decide what the proof is compared with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from sts.jose import JOSEError, jwk_thumbprint, parse_jwk, unsafe_decode, verify_signature

__all__ = [
    "DPOP_ALGORITHMS",
    "DPOP_TYP",
    "DpopProof",
    "NonceRequired",
    "ProofRejected",
    "normalize_htu",
    "replay_expiry",
    "validate_proof",
]

DPOP_TYP: Final = "dpop+jwt"
#: Asymmetric algorithms accepted for proofs (RFC 9449 §4.3 step 5). ``none`` and HMAC are
#: unreachable: ``sts.jose`` supports neither.
DPOP_ALGORITHMS: Final = ("ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "RS256", "EdDSA")
MAX_PROOF_CHARS: Final = 8192
MAX_JTI_CHARS: Final = 256
DEFAULT_MAX_AGE: Final = 60
DEFAULT_FUTURE_SKEW: Final = 5
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class ProofRejected(Exception):
    """The proof fails a check of RFC 9449 §4.3. ``reason`` is a stable audit code."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason if detail is None else f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class NonceRequired(Exception):
    """The proof is otherwise valid but lacks a current server nonce (RFC 9449 §8)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DpopProof:
    """A validated proof. ``jkt`` is the RFC 7638 thumbprint of its public key (the value of
    ``cnf.jkt``, RFC 9449 §6.1); ``jti``/``iat`` feed the replay guard."""

    jkt: str
    jti: str
    iat: int
    alg: str


def normalize_htu(url: str) -> str:
    """``url`` without query and fragment, after RFC 3986 §6.2.2/§6.2.3 normalization: scheme
    and host in lower case, the scheme's default port dropped, an empty path as ``/``.
    ``ValueError`` when it is not an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an absolute http(s) URL")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port  # ValueError for a port that is not a number in range
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        raise ValueError("userinfo in URL")
    return urlunsplit((scheme, netloc, parts.path or "/", "", ""))


def replay_expiry(proof: DpopProof, *, now: float, max_age: int = DEFAULT_MAX_AGE,
                  future_skew: int = DEFAULT_FUTURE_SKEW) -> float:
    """Until when the ``jti`` must be remembered: as long as a proof with this ``iat`` would be
    accepted (RFC 9449 §11.1), and never less than the window from ``now``."""
    return max(proof.iat + max_age, now + future_skew) + 1.0


def validate_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: float,
    algorithms: tuple[str, ...] | frozenset[str] = DPOP_ALGORITHMS,
    nonce_valid: Callable[[str], bool] | None = None,
    max_age: int = DEFAULT_MAX_AGE,
    future_skew: int = DEFAULT_FUTURE_SKEW,
) -> DpopProof:
    """Check ``proof`` against the request (RFC 9449 §4.3). ``url`` is the expected target,
    already normalized by :func:`normalize_htu`. ``nonce_valid`` is given when server nonces
    are required: a proof without a nonce it accepts raises :class:`NonceRequired` (checked
    last, so a client is only asked for a nonce by a proof that is otherwise good)."""
    # 2. a single well-formed JWT
    if len(proof) > MAX_PROOF_CHARS:
        raise ProofRejected("too_large")
    try:
        jwt = unsafe_decode(proof, max_length=MAX_PROOF_CHARS)
    except JOSEError as exc:
        raise ProofRejected("malformed", exc.reason) from None
    header, claims = jwt.header, jwt.claims
    # 4. typ, exactly (no media-type shortening: RFC 9449 names the one value)
    if header.get("typ") != DPOP_TYP:
        raise ProofRejected("typ")
    # 5. an allowlisted asymmetric alg
    alg = header["alg"]
    if alg not in algorithms:
        raise ProofRejected("alg_not_allowed", alg[:32])
    if "crit" in header or "b64" in header:
        raise ProofRejected("header", "crit or b64")
    # 7. and 6. a public jwk, which verifies the signature
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise ProofRejected("jwk_missing")
    try:
        key = parse_jwk(jwk)
    except JOSEError as exc:
        # parse_jwk refuses private and symmetric members outright (reason private_material)
        raise ProofRejected("jwk_private" if exc.reason in ("private_material", "symmetric_key") else "jwk_invalid",
                            exc.reason) from None
    try:
        verify_signature(jwt, key, alg)
    except JOSEError as exc:
        raise ProofRejected("signature", exc.reason) from None
    # 3. the required claims, each of the right type
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        raise ProofRejected("jti")
    iat = claims.get("iat")
    if not _is_number(iat):
        raise ProofRejected("iat")
    htm = claims.get("htm")
    htu = claims.get("htu")
    if not isinstance(htm, str) or not isinstance(htu, str):
        raise ProofRejected("htm_htu_missing")
    # 8. htm, exactly (HTTP methods are case-sensitive, RFC 9110 §9.1)
    if htm != method:
        raise ProofRejected("htm")
    # 9. htu, normalized, without query and fragment
    try:
        if normalize_htu(htu) != url:
            raise ProofRejected("htu")
    except ValueError:
        raise ProofRejected("htu", "not an absolute http(s) URL") from None
    # 11. iat within the window
    if iat < now - max_age or iat > now + future_skew:
        raise ProofRejected("iat_window", f"iat {int(iat)} now {int(now)}")
    # 10. the server nonce, when required
    if nonce_valid is not None:
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise NonceRequired("nonce_missing")
        if not nonce_valid(nonce):
            raise NonceRequired("nonce_invalid")
    return DpopProof(jkt=jwk_thumbprint(jwk), jti=jti, iat=int(iat), alg=alg)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value == value
                                                                           and abs(value) != float("inf"))
