"""One broker process's in-memory view of the approvals, kept current like the kill switches.

Staleness bound (docs/approvals.md#replicas): an approval, denial or revocation committed to
the database is enforced by every running replica within ``poll_interval`` plus one read
(default 1 s; the documented bound is 2 s). As for ``sts.lifecycle.view``, two paths lead there:

* PostgreSQL: every change notifies the lifecycle channel in its transaction; the lifecycle
  view's listener (one connection per process, shared) wakes this view through ``wake``;
* every backend: a poll reads the ``approvals`` version (one primary-key read) every
  ``poll_interval`` seconds and reloads when it moved.

A reload replaces the snapshot in one assignment. A failed reload keeps the previous snapshot
and is retried at the next poll. An approval's window ends on time whatever happens (the
snapshot holds its end); a revocation made while a replica cannot read the database is enforced
by that replica once it reads it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from sts.approvals.decision import EMPTY, ApprovalSnapshot, Standing
from sts.store.approvals import ApprovalRepository

log = logging.getLogger("sts.approvals")


class ApprovalView:
    """Holds the current ``ApprovalSnapshot``. Invariant: ``snapshot`` is only ever replaced
    whole, by ``refresh``, with records read after the version it records."""

    def __init__(self, engine: Engine, *, poll_interval: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.repository = ApprovalRepository(engine)
        self._poll_interval = poll_interval
        self._clock = clock
        self.snapshot: ApprovalSnapshot = EMPTY
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def refresh_now(self) -> bool:
        """Read the version and, when it moved, the records (blocking; run it in a thread).
        True when a new snapshot was installed."""
        version = self.repository.version()
        if version == self.snapshot.version:
            return False
        records = self.repository.standing(self._clock())
        self.snapshot = ApprovalSnapshot.build(
            ((r.fingerprint, Standing(r.id, r.status, r.expires_at)) for r in records), version)  # type: ignore[arg-type]
        log.info("approvals loaded", extra={"approvals": len(self.snapshot.standing), "approvals_version": version})
        return True

    async def refresh(self) -> bool:
        async with self._lock:
            return await asyncio.to_thread(self.refresh_now)

    def wake(self) -> None:
        """Reload soon (a notification arrived, or this process recorded a request)."""
        self._wake.set()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll_loop(), name="sts-approvals-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _poll_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:
                log.warning("approvals could not be read; the previous ones stay in force", exc_info=True)
