"""Allocation of Token Status List indices (draft-ietf-oauth-status-list-19 §6.1 ``idx``) without
a database read per token: each process reserves a block of ``BLOCK_SIZE`` consecutive indices
with one insert and hands them out from memory; the next block is reserved when this one is
used up (one write per ``BLOCK_SIZE`` tokens). A restart abandons the rest of its block; the
indices wrap around at ``STATUS_LIST_CAPACITY`` (docs/operations.md explains when that is safe).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sts.lifecycle.statuslist import STATUS_LIST_CAPACITY
from sts.store.status_list import StatusListRepository

BLOCK_SIZE = 1024


def block_range(block: int, size: int = BLOCK_SIZE) -> range:
    """The indices of block number ``block`` (pure): consecutive, wrapping at the capacity."""
    start = (block * size) % STATUS_LIST_CAPACITY
    return range(start, start + size)


class StatusIndexAllocator:
    """Hands out status indices. Invariant: an index is handed out once per pass over the list
    by all replicas together (blocks are numbered by the database)."""

    def __init__(self, repo: StatusListRepository, *, block_size: int = BLOCK_SIZE,
                 clock: Callable[[], float] = time.time) -> None:
        assert STATUS_LIST_CAPACITY % block_size == 0
        self._repo = repo
        self._block_size = block_size
        self._clock = clock
        self._next = 0
        self._end = 0
        self._lock = asyncio.Lock()

    async def allocate(self) -> int:
        if self._next < self._end:
            idx = self._next
            self._next += 1
            return idx
        async with self._lock:
            if self._next >= self._end:
                block = await asyncio.to_thread(self._repo.reserve_block, size=self._block_size, now=self._clock())
                r = block_range(block, self._block_size)
                self._next, self._end = r.start, r.stop
            idx = self._next
            self._next += 1
            return idx
