"""One broker process's in-memory view of kill switches and revocations, kept current.

Staleness bound (docs/operations.md#token-lifecycle): a change committed to the database is
enforced by every running replica within ``poll_interval`` plus one version read (default 1 s;
the documented bound is 2 s). Two paths lead there:

* PostgreSQL: a dedicated psycopg connection ``LISTEN``s on ``sts.store.lifecycle.NOTIFY_CHANNEL``;
  the change's transaction sends ``NOTIFY``, so the view reloads within milliseconds;
* every backend: a poll reads the version counters (one primary-key read) every
  ``poll_interval`` seconds and reloads when one moved. It alone keeps the bound when a
  notification is lost, e.g. while the listening connection was down: the listener reconnects
  with a backoff and the poll catches what it missed.

A reload builds a new snapshot and replaces the reference in one assignment; requests never see
a half-built one. A failed reload keeps the previous snapshot (a database outage must not lift
kills) and is retried at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from sts.lifecycle.decision import EMPTY, KillSwitch, LifecycleSnapshot
from sts.store.db import POSTGRES_CONNECT_DEFAULTS
from sts.store.lifecycle import KILLS, NOTIFY_CHANNEL, REVOCATIONS, LifecycleRepository

log = logging.getLogger("sts.lifecycle")

# Seconds the listener waits for a notification before it proves its connection alive.
_LISTEN_HEARTBEAT = 5.0
_RECONNECT_MAX_DELAY = 5.0


class LifecycleView:
    """Holds the current ``LifecycleSnapshot``. Invariant: ``snapshot`` is only ever replaced
    whole, by ``refresh``, with a state read from the database after the versions it records."""

    def __init__(self, engine: Engine, *, poll_interval: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._repo = LifecycleRepository(engine)
        self._poll_interval = poll_interval
        self._clock = clock
        self.snapshot: LifecycleSnapshot = EMPTY
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = False
        self._refresh_lock = asyncio.Lock()
        # Other in-memory views of state on the same channel (sts.approvals.view) are woken by
        # this one listener, so a process holds one listening connection, not one per view.
        self.followers: list[Callable[[], None]] = []

    def refresh_now(self) -> bool:
        """Read the versions and, when one moved, the state (blocking; run it in a thread).
        True when a new snapshot was installed."""
        versions = self._repo.versions()
        kills_version, revocations_version = versions.get(KILLS, 0), versions.get(REVOCATIONS, 0)
        old = self.snapshot
        if kills_version == old.kills_version and revocations_version == old.revocations_version:
            return False
        now = self._clock()
        # Versions are read before the state: a change that commits in between is picked up
        # again at the next poll, never missed.
        if kills_version != old.kills_version:
            kills = [KillSwitch(id=k.id, kind=k.kind, value=k.value, until=k.until, reason=k.reason)
                     for k in self._repo.active_kills(now)]
        else:
            kills = list(old.kills.values())
        revoked = self._repo.revoked_valid(now) if revocations_version != old.revocations_version else old.revoked
        self.snapshot = LifecycleSnapshot.build(kills=kills, revoked=revoked, kills_version=kills_version,
                                                revocations_version=revocations_version)
        log.info("lifecycle state loaded", extra={"kills": len(self.snapshot.kills), "revoked": len(self.snapshot.revoked),
                                                   "kills_version": kills_version, "revocations_version": revocations_version})
        return True

    async def refresh(self) -> bool:
        async with self._refresh_lock:
            return await asyncio.to_thread(self.refresh_now)

    async def start(self) -> None:
        """Load the state once (a replica must not serve before it knows the kills), then keep
        it current in the background."""
        await self.refresh()
        self._tasks = [asyncio.create_task(self._poll_loop(), name="sts-lifecycle-poll")]
        if self._engine.dialect.name == "postgresql":
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="sts-lifecycle-listen"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def _poll_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:
                log.warning("lifecycle state could not be read; the previous kills and revocations stay enforced",
                            exc_info=True)

    async def _listen_loop(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._listen_once()
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening = False
                log.warning("lifecycle listener lost its database connection; polling covers the gap",
                            extra={"error": type(exc).__name__})
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_DELAY)

    def _woken(self) -> None:
        self._wake.set()
        for follower in self.followers:
            follower()

    async def _listen_once(self) -> None:
        import psycopg

        url = self._engine.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        options = {k: v for k, v in POSTGRES_CONNECT_DEFAULTS.items() if k not in url.query}
        options["application_name"] = "sts-lifecycle"
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, **options)
        try:
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self.listening = True
            # What changed while nobody listened is read now, not at the next poll.
            self._woken()
            while True:
                woken = False
                async for _ in conn.notifies(timeout=_LISTEN_HEARTBEAT, stop_after=1):
                    woken = True
                if woken:
                    self._woken()
                else:
                    # A connection cut without a reset looks idle forever: prove it answers.
                    await asyncio.wait_for(conn.execute("SELECT 1"), timeout=_LISTEN_HEARTBEAT)
        finally:
            self.listening = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)

