"""Retention: how long audit records and issued-token rows are kept, and the pruner that
enforces it (docs/operations.md#retention).

Audit records are kept ``audit_retention_days`` after their ``time``; issued-token rows
``issued_token_retention_days`` after their ``expires_at`` (the token is useless by then, the
row is kept for investigations that start from a leaked token). The pruner runs in the
background of every replica, but only the one holding the pruning lock deletes; it deletes in
small batches, each its own short transaction, pausing between them so that the group-commit
writer is never kept from the database for more than one batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection, Engine

from sts.store.retention import (
    LockHeld,
    count_audit_before,
    count_issued_expired_before,
    delete_audit_batch,
    delete_issued_batch,
    pruning_connection,
)
from sts.store.usage import count_usage_before, delete_usage_batch

if TYPE_CHECKING:
    from sts.settings import Settings

log = logging.getLogger("sts.ops.retention")

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Rows strictly older than these may go; None keeps that table's rows forever."""

    audit_before: float | None
    issued_expired_before: float | None


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Retention windows in days. Invariant: a cutoff is never later than ``now`` minus its
    window, so a record younger than its window is never selected; a window of 0 keeps rows
    forever."""

    audit_days: float
    issued_token_days: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        return cls(audit_days=settings.audit_retention_days, issued_token_days=settings.issued_token_retention_days)

    def cutoffs(self, now: float) -> Cutoffs:
        return Cutoffs(
            audit_before=now - self.audit_days * DAY if self.audit_days > 0 else None,
            issued_expired_before=now - self.issued_token_days * DAY if self.issued_token_days > 0 else None,
        )


@dataclass(slots=True)
class PruneReport:
    """What one run deleted (or, with ``dry_run``, would delete)."""

    dry_run: bool
    audit_before: float | None
    issued_expired_before: float | None
    audit_records: int = 0
    issued_tokens: int = 0
    usage_counters: int = 0  # sts inventory's per-day counters of days past the audit retention
    batches: int = 0
    longest_batch_seconds: float = 0.0  # the longest a batch held the database (delete + commit)
    seconds: float = 0.0
    skipped: bool = False  # another replica or command holds the pruning lock
    interrupted: bool = False  # stopped between batches (the broker is shutting down)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Pruner:
    """Deletes what the policy lets go, at most ``batch_size`` rows per transaction with
    ``pause`` seconds between transactions. Invariant: deletes only while holding the pruning
    lock, and only rows older than the cutoffs taken at the start of the run (time only moves
    them further from the rows it may touch)."""

    def __init__(
        self,
        engine: Engine,
        policy: RetentionPolicy,
        *,
        batch_size: int = 500,
        pause: float = 0.05,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._engine = engine
        self.policy = policy
        self._batch_size = batch_size
        self._pause = pause
        self._clock = clock
        self._stopping = threading.Event()

    @classmethod
    def from_settings(cls, engine: Engine, settings: Settings, *, clock: Callable[[], float] = time.time) -> Pruner:
        return cls(engine, RetentionPolicy.from_settings(settings), batch_size=settings.prune_batch_size,
                   pause=settings.prune_batch_pause, clock=clock)

    def run_once(self, *, dry_run: bool = False) -> PruneReport:
        """One pass over both tables (blocking; the broker runs it in a worker thread)."""
        started = time.perf_counter()
        cut = self.policy.cutoffs(self._clock())
        report = PruneReport(dry_run=dry_run, audit_before=cut.audit_before, issued_expired_before=cut.issued_expired_before)
        if dry_run:
            # Counting takes no lock and writes nothing (no lock file either).
            with self._engine.connect() as conn:
                if cut.audit_before is not None:
                    report.audit_records = count_audit_before(conn, cut.audit_before)
                    report.usage_counters = count_usage_before(conn, cut.audit_before)
                if cut.issued_expired_before is not None:
                    report.issued_tokens = count_issued_expired_before(conn, cut.issued_expired_before)
        elif cut.audit_before is not None or cut.issued_expired_before is not None:
            try:
                with pruning_connection(self._engine) as conn:
                    if cut.audit_before is not None:
                        report.audit_records = self._drain(conn, delete_audit_batch, cut.audit_before, report)
                    if cut.audit_before is not None and not report.interrupted:
                        report.usage_counters = self._drain(conn, delete_usage_batch, cut.audit_before, report)
                    if cut.issued_expired_before is not None and not report.interrupted:
                        report.issued_tokens = self._drain(conn, delete_issued_batch, cut.issued_expired_before, report)
            except LockHeld:
                report.skipped = True
        report.seconds = time.perf_counter() - started
        return report

    def _drain(self, conn: Connection, delete_batch: Callable[[Connection, float, int], int], cutoff: float,
               report: PruneReport) -> int:
        deleted = 0
        while True:
            if self._stopping.is_set():
                report.interrupted = True
                return deleted
            with conn.begin():
                # Timed from BEGIN's return (the SQLite write lock is held from here) to the
                # end of COMMIT: how long the group-commit writer may have to wait for us.
                began = time.perf_counter()
                n = delete_batch(conn, cutoff, self._batch_size)
            report.longest_batch_seconds = max(report.longest_batch_seconds, time.perf_counter() - began)
            report.batches += 1
            deleted += n
            if n < self._batch_size:
                return deleted
            # Between batches the writer takes the database; waiting on the event lets a
            # shutdown end the run here instead of after the pause.
            if self._pause and self._stopping.wait(self._pause):
                report.interrupted = True
                return deleted

    def stop(self) -> None:
        """Make a running ``run_once`` end after its current batch."""
        self._stopping.set()

    async def run_forever(self, interval: float) -> None:
        """Prune every ``interval`` seconds until cancelled. On cancellation the current batch
        finishes (a worker thread cannot be interrupted) before this returns, so the caller
        may dispose of the engine afterwards."""
        self._stopping.clear()
        while True:
            await asyncio.sleep(interval)
            run = asyncio.ensure_future(asyncio.to_thread(self.run_once))
            try:
                report = await asyncio.shield(run)
            except asyncio.CancelledError:
                self.stop()
                await asyncio.wait([run], timeout=30)
                raise
            except Exception:
                log.exception("pruning failed; it is tried again at the next interval")
                continue
            if report.audit_records or report.issued_tokens or report.usage_counters:
                log.info("pruned expired records", extra={"prune": report.as_dict()})
            elif report.skipped:
                log.debug("another replica is pruning")
