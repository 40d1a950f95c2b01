"""DPoP proofs for tests (RFC 9449 §4.2), built with the broker's own JOSE signer so that
every field can be made wrong on purpose."""

from __future__ import annotations

import secrets
import time
from typing import Any

from sts.jose import PrivateKey, b64url_encode, generate_private_key
from sts.jose.jws import _SIGNERS, _encode_json  # raw signing, so any header can be signed

_KEYS: dict[str, PrivateKey] = {}


def dpop_key(alg: str = "ES256") -> PrivateKey:
    """One key per algorithm per session (RSA generation is slow)."""
    if alg not in _KEYS:
        _KEYS[alg] = generate_private_key(alg)
    return _KEYS[alg]


def make_proof(
    url: str,
    *,
    key: PrivateKey | None = None,
    method: str = "POST",
    iat: float | None = None,
    jti: str | None = None,
    nonce: str | None = None,
    header: dict[str, Any] | None = None,
    drop_header: tuple[str, ...] = (),
    claims: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    sign_with: PrivateKey | None = None,
) -> str:
    """A compact DPoP proof for ``method url``; ``header``/``claims`` override members,
    ``drop``/``drop_header`` remove them, ``sign_with`` signs with another key than the one in
    the ``jwk`` header (a forged proof)."""
    key = key or dpop_key()
    h: dict[str, Any] = {"typ": "dpop+jwt", "alg": key.alg, "jwk": key.public_jwk()}
    h["jwk"].pop("kid", None)
    h.update(header or {})
    for name in drop_header:
        h.pop(name, None)
    c: dict[str, Any] = {"jti": jti or secrets.token_urlsafe(12), "htm": method, "htu": url,
                         "iat": int(time.time() if iat is None else iat)}
    if nonce is not None:
        c["nonce"] = nonce
    c.update(claims or {})
    for name in drop:
        c.pop(name, None)
    signing_input = f"{b64url_encode(_encode_json(h).encode())}.{b64url_encode(_encode_json(c).encode())}"
    signer = sign_with or key
    signature = _SIGNERS[signer.alg](signer.key, signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"
