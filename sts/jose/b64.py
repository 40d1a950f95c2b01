"""Strict base64url without padding (RFC 7515 §2, RFC 4648 §5).

RFC 7515 §2 defines Base64url Encoding "with all trailing '=' characters omitted ... and without
the inclusion of any line breaks, whitespace, or other additional characters". The decoder here
accepts exactly that and nothing else: no padding, no standard-alphabet ``+``/``/``, no
whitespace, no non-ASCII, and no non-canonical final character (unused low bits must be zero),
so that one byte string has exactly one accepted encoding. Without that last rule a token could
be re-encoded into many distinct strings that all verify, which defeats hashing a token to
recognise it (audit records and replay checks use the SHA-256 of the token text).

This is a codec, not a JOSE layer: it raises :class:`ValueError`; the JWS and JWK parsers turn
that into their own errors.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["b64url_decode", "b64url_encode"]

_INDEX = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def b64url_decode(s: str | bytes) -> bytes:
    """Decode unpadded base64url, rejecting anything but the canonical encoding.

    Raises :class:`ValueError` on any deviation.
    """
    if isinstance(s, str):
        if not s.isascii():
            raise ValueError("base64url: non-ASCII input")
        data = s.encode("ascii")
    elif isinstance(s, (bytes, bytearray, memoryview)):
        data = bytes(s)
    else:
        raise ValueError("base64url: input must be str or bytes")
    # The standard alphabet's own characters and padding are not base64url; after they are
    # ruled out, translating "-_" to "+/" leaves strict standard base64 to check the rest.
    if b"+" in data or b"/" in data or b"=" in data:
        raise ValueError("base64url: character outside the url-safe alphabet (or padding)")
    rem = len(data) % 4
    if rem == 1:
        raise ValueError("base64url: impossible length")
    if rem:
        last = _INDEX.get(data[-1])
        if last is None:
            raise ValueError("base64url: character outside the url-safe alphabet (or padding)")
        # The last character carries 4 (rem == 2) or 2 (rem == 3) unused bits, which must be
        # zero in the canonical encoding (RFC 4648 §3.5).
        if last & (0x0F if rem == 2 else 0x03):
            raise ValueError("base64url: non-canonical final character")
        data += b"=" * (4 - rem)
    try:
        # strict_mode refuses every character outside the alphabet, whitespace included.
        return binascii.a2b_base64(data.translate(_TO_STANDARD), strict_mode=True)
    except binascii.Error:
        raise ValueError("base64url: character outside the url-safe alphabet (or padding)") from None


def b64url_encode(b: bytes) -> str:
    """Encode ``b`` as base64url without padding."""
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")
