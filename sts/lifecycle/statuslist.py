"""Token Status List (draft-ietf-oauth-status-list-19): offline revocation for resource servers.

The broker follows revision -19 of the draft (IESG evaluation). What it implements:

- §6.1 the ``status`` claim of a Referenced Token (an issued access token):
  ``{"status": {"status_list": {"idx": N, "uri": "<issuer>/statuslists/1"}}}``.
- §4.1 the Status List: one bit per token (``bits`` 1; §7.1 status ``0x00`` VALID, ``0x01``
  INVALID), a byte array whose bits are counted from the least significant bit of each byte
  to its most significant: index 0 is bit 0 (value 1) of byte 0, index 7 bit 7 (value 128) of
  byte 0, index 8 bit 0 of byte 1. The array is compressed with DEFLATE in the ZLIB format
  (RFC 1950/1951) at the highest level and base64url-encoded without padding in ``lst``.
- §5.1 the Status List Token as a JWT: header ``typ`` ``statuslist+jwt``; claims ``sub`` (the
  list URI, equal to the ``uri`` in the referenced tokens), ``iat``, ``exp``, ``ttl``,
  ``status_list``.
- §8.1 served with HTTP GET as ``application/statuslist+jwt``; §13.7 caching by ``ttl`` and
  ``Cache-Control: max-age``.

Not implemented: the CWT form (§5.2), other bit sizes, historical resolution (§8.4), aggregation
(§9). This module is pure: allocation of indices lives in ``sts.lifecycle.status_index`` and
the cached, signed list in ``sts.lifecycle.status_publisher``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

from sts.jose.b64 import b64url_encode

STATUS_LIST_TYP = "statuslist+jwt"
STATUS_LIST_MEDIA_TYPE = "application/statuslist+jwt"
STATUS_LIST_PATH = "/statuslists/1"

#: One list holds this many indices (2 MiB of bits before compression); allocation wraps
#: around after it (docs/operations.md#offline-revocation-the-status-list).
STATUS_LIST_CAPACITY = 1 << 24


def status_list_uri(issuer: str) -> str:
    return issuer + STATUS_LIST_PATH


def status_claim(uri: str, idx: int) -> dict[str, Any]:
    """The §6.1 ``status`` claim value for the token at ``idx``."""
    return {"status_list": {"idx": idx, "uri": uri}}


def encode_status_list(invalid: Iterable[int], *, min_size: int = 0) -> dict[str, Any]:
    """The §4.1 ``status_list`` object (``bits`` 1) with the bits of ``invalid`` set.

    The array is as long as the highest index needs (at least ``min_size`` bits, at least one
    byte), so its length reveals no more than how many indices have been handed out."""
    indices = sorted(set(invalid))
    if indices and (indices[0] < 0 or indices[-1] >= STATUS_LIST_CAPACITY):
        raise ValueError("status index out of range")
    size_bits = max(min_size, (indices[-1] + 1) if indices else 0, 8)
    array = bytearray((size_bits + 7) // 8)
    for i in indices:
        array[i >> 3] |= 1 << (i & 7)
    return {"bits": 1, "lst": b64url_encode(zlib.compress(bytes(array), 9))}


def status_list_claims(*, uri: str, now: int, ttl: int, lifetime: int, status_list: dict[str, Any]) -> dict[str, Any]:
    """The §5.1 claims of the Status List Token. ``exp`` leaves room for several ``ttl``
    periods so that a relying party whose refresh fails keeps a valid list for a while."""
    return {"sub": uri, "iat": now, "exp": now + lifetime, "ttl": ttl, "status_list": status_list}
