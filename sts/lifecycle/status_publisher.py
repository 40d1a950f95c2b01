"""The signed Token Status List (draft-ietf-oauth-status-list-19 §5.1), rebuilt from the database
at most once per ``ttl`` seconds and otherwise served from memory (§13.7 caching). A revocation
therefore reaches an offline relying party within ``ttl`` (this cache) plus its own ``ttl`` cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from sts import jose
from sts.lifecycle.status_index import BLOCK_SIZE
from sts.lifecycle.statuslist import (
    STATUS_LIST_CAPACITY,
    STATUS_LIST_TYP,
    encode_status_list,
    status_list_claims,
)
from sts.store.status_list import StatusListRepository
from sts.tokens.signer import ActiveKey, check_own_signature

DEFAULT_TTL = 60


@dataclass(frozen=True, slots=True)
class PublishedList:
    token: str
    built_at: float


class StatusListPublisher:
    """Builds and caches the Status List Token. Invariant: the cached token is never older than
    ``ttl`` seconds when served."""

    def __init__(self, repo: StatusListRepository, *, key_for: Callable[[], ActiveKey], uri: Callable[[], str],
                 ttl: int = DEFAULT_TTL, clock: Callable[[], float] = time.time) -> None:
        self._repo = repo
        self._key_for = key_for
        self._uri = uri
        self.ttl = ttl
        self._clock = clock
        self._cached: PublishedList | None = None
        self._lock = asyncio.Lock()

    async def token_with_age(self) -> tuple[str, float]:
        """The current Status List Token and how many seconds ago it was built."""
        cached = self._cached
        now = self._clock()
        if cached is None or now - cached.built_at >= self.ttl:
            async with self._lock:
                cached = self._cached
                now = self._clock()
                if cached is None or now - cached.built_at >= self.ttl:
                    cached = PublishedList(await asyncio.to_thread(self._build, now), now)
                    self._cached = cached
        return cached.token, max(0.0, now - cached.built_at)

    def _build(self, now: float) -> str:
        # The list covers every index handed out so far, so a relying party never finds an
        # issued token's index out of bounds.
        handed_out = min(self._repo.blocks_reserved() * BLOCK_SIZE, STATUS_LIST_CAPACITY)
        status_list = encode_status_list(self._repo.revoked_indices(now), min_size=handed_out)
        claims = status_list_claims(uri=self._uri(), now=int(now), ttl=self.ttl, lifetime=10 * self.ttl,
                                    status_list=status_list)
        key = self._key_for()
        signed = jose.sign_parts(claims, key.private, typ=STATUS_LIST_TYP)
        check_own_signature(signed, key)
        return signed.token
