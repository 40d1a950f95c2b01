"""Stateless DPoP server nonces (RFC 9449 §8, §11.1), shared by every replica.

RFC 9449 §8: a server "MAY supply a nonce value"; it then "responds to requests that do not
include a nonce with an HTTP 400 (Bad Request) error response per Section 5.2 of [RFC6749]
using use_dpop_nonce as the error code value" and "includes a DPoP-Nonce HTTP header in the
response". "Nonce values MUST be unpredictable." "If the nonce claim in the DPoP proof does
not exactly match a nonce recently supplied by the authorization server to the client, the
authorization server MUST reject the request." There "MUST NOT be more than one DPoP-Nonce
header." §11.3: "A server MUST NOT accept any DPoP proofs without the nonce claim when a DPoP
nonce has been provided to the client" (with nonces on, every proof needs one). §11.1: "it is
acceptable for clients to use the same nonce multiple times and for the server to accept the
same nonce multiple times", as long as ``jti`` replay is tracked. The form is the server's.

Form chosen: ``base64url(window ‖ HMAC-SHA-256(key, "sts-dpop-nonce" ‖ window)[:16])`` where
``window`` is the 8-byte big-endian index of the current ``period``-second time window. Nothing
is stored, so any replica checks a nonce another replica issued; without the key the next
window's nonce cannot be predicted (HMAC), which is what "unpredictable" protects against
(§11.2: proofs pre-generated for the future); a nonce is accepted during its
own window and the next one (between ``period`` and ``2 * period`` seconds). The key is
per-deployment: ``STS_DPOP_NONCE_KEY`` when set, else derived from the key-encryption key
(HMAC-SHA-256(KEK, "sts-dpop-nonce-key")), which every replica already shares; rotating the
KEK therefore invalidates outstanding nonces, and clients simply retry once.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from typing import Final

from sts.jose import b64url_decode, b64url_encode

__all__ = ["NonceIssuer", "derive_nonce_key"]

DEFAULT_PERIOD: Final = 300
_LABEL: Final = b"sts-dpop-nonce"
_MAC_BYTES: Final = 16


def derive_nonce_key(kek: bytes) -> bytes:
    """The nonce key derived from the deployment's key-encryption key."""
    return hmac.new(kek, b"sts-dpop-nonce-key", hashlib.sha256).digest()


class NonceIssuer:
    """Issues and checks nonces for the window ``now // period``. Thread-safe (no state)."""

    def __init__(self, key: bytes, *, period: int = DEFAULT_PERIOD, clock: Callable[[], float]) -> None:
        if len(key) < 16:
            raise ValueError("the DPoP nonce key must have at least 16 bytes")
        self._key = key
        self._period = period
        self._clock = clock

    def _mac(self, window: int) -> bytes:
        return hmac.new(self._key, _LABEL + struct.pack(">Q", window), hashlib.sha256).digest()[:_MAC_BYTES]

    def current(self) -> str:
        window = int(self._clock() // self._period)
        return b64url_encode(struct.pack(">Q", window) + self._mac(window))

    def valid(self, nonce: str) -> bool:
        if len(nonce) > 64:
            return False
        try:
            raw = b64url_decode(nonce)
        except ValueError:
            return False
        if len(raw) != 8 + _MAC_BYTES:
            return False
        (window,) = struct.unpack(">Q", raw[:8])
        now_window = int(self._clock() // self._period)
        if window not in (now_window, now_window - 1):
            return False
        return hmac.compare_digest(raw[8:], self._mac(window))
