"""The in-memory cache of provider tokens: bounded, single-flight, refreshed ahead of expiry.

Keys are ``(upstream name, provider identity, scope)``. The provider identity is everything
that decides which identity the provider grants (endpoint, our assertion's ``sub`` and
``aud``, the provider's ids), so a reload that points an upstream elsewhere never serves the
old token. Values live only here: never in the database, never in a log.

Refresh follows the providers' own SDKs (google-auth, MSAL, the OpenAI SDK): a token inside
its *advisory* window (expiry minus 120 s) is refreshed, but still served if the refresh
fails; inside its *mandatory* window (expiry minus 30 s) it is never served. For tokens that
live shorter than those windows make sense, the windows shrink to half and a quarter of the
token's lifetime. One fetch runs at a time per key; concurrent requests await it. The cache
holds at most ``max_entries`` keys and drops the least recently used.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

ADVISORY_SECONDS: Final = 120.0
MANDATORY_SECONDS: Final = 30.0
MAX_ENTRIES: Final = 1024

T = TypeVar("T")
CacheOutcome = Literal["hit", "miss", "refresh", "stale"]


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    """A cached value. Invariant: ``advisory_at <= mandatory_at <= expires_at``."""

    value: T
    fetched_at: float
    expires_at: float

    @property
    def advisory_at(self) -> float:
        life = self.expires_at - self.fetched_at
        return self.expires_at - min(ADVISORY_SECONDS, life / 2)

    @property
    def mandatory_at(self) -> float:
        life = self.expires_at - self.fetched_at
        return self.expires_at - min(MANDATORY_SECONDS, life / 4)


Fetch = Callable[[], Awaitable[tuple[T, float]]]


class TokenCache(Generic[T]):
    """Invariant: at most ``max_entries`` entries; at most one fetch in flight per key."""

    def __init__(self, *, clock: Callable[[], float], max_entries: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self._max = max_entries
        self._entries: OrderedDict[Hashable, Entry[T]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Future[Entry[T]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: Hashable) -> Entry[T] | None:
        return self._entries.get(key)

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[tuple[T, float]]]) -> tuple[Entry[T], CacheOutcome]:
        """The entry for ``key``: cached, or fetched (``fetch`` returns the value and its
        absolute expiry). Raises what ``fetch`` raises when nothing servable is cached."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now < entry.advisory_at:
            self._entries.move_to_end(key)
            return entry, "hit"
        if entry is not None and now < entry.mandatory_at:
            try:
                return await self._fetch(key, fetch), "refresh"
            except Exception:
                # Advisory refresh failed: the cached token is still good for a while.
                if self._clock() < entry.mandatory_at:
                    return entry, "stale"
                raise
        return await self._fetch(key, fetch), "miss" if entry is None else "refresh"

    async def _fetch(self, key: Hashable, fetch: Callable[[], Awaitable[tuple[T, float]]]) -> Entry[T]:
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Entry[T]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value, expires_at = await fetch()
            entry = Entry(value, self._clock(), expires_at)
            self._store(key, entry)
            future.set_result(entry)
            return entry
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            # Waiters receive the exception; mark it retrieved so an unawaited future does
            # not log "exception was never retrieved".
            future.exception()
            raise
        finally:
            del self._inflight[key]

    def _store(self, key: Hashable, entry: Entry[T]) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
