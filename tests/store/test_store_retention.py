"""Retention on every backend: the pruner's cutoffs, batches and lock; coalesced inserts; export."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from sts.ops.archive import EXPORT_FIELDS, export_line
from sts.ops.retention import DAY, Pruner, RetentionPolicy
from sts.store.retention import LockHeld, audit_between, delete_audit_batch, insert_audit_records, pruning_connection
from sts.store.writer import GroupCommitWriter
from store_support import Backend, audit, count, issued

NOW = 1_800_000_000.0
POLICY = RetentionPolicy(audit_days=30, issued_token_days=7)


def pruner(engine: Engine, *, now: float = NOW, batch_size: int = 500, pause: float = 0.0,
           policy: RetentionPolicy = POLICY) -> Pruner:
    return Pruner(engine, policy, batch_size=batch_size, pause=pause, clock=lambda: now)


async def fill(writer: GroupCommitWriter, audit_times: list[float], expiries: list[float]) -> None:
    records = [audit(n, time=t) for n, t in enumerate(audit_times)]
    records += [issued(f"jti-{n}", expires_at=e, issued_at=e - 900) for n, e in enumerate(expiries)]
    await writer.write(*records)


def times(engine: Engine, sql: str) -> list[float]:
    with engine.connect() as conn:
        return sorted(float(r[0]) for r in conn.execute(text(sql)))


async def test_never_deletes_a_record_younger_than_its_window(engine: Engine, writer: GroupCommitWriter) -> None:
    audit_cut, issued_cut = NOW - 30 * DAY, NOW - 7 * DAY
    audit_times = [audit_cut - 86_400, audit_cut - 1, audit_cut - 0.001, audit_cut, audit_cut + 0.001, NOW, NOW + 60]
    expiries = [issued_cut - 1, issued_cut, issued_cut + 1, NOW - 1, NOW + 900]
    await fill(writer, audit_times, expiries)

    report = pruner(engine).run_once()

    assert (report.audit_records, report.issued_tokens) == (3, 1)
    assert not report.skipped and not report.dry_run
    assert times(engine, "SELECT time FROM audit_events") == [audit_cut, audit_cut + 0.001, NOW, NOW + 60]
    assert times(engine, "SELECT expires_at FROM issued_tokens") == [issued_cut, issued_cut + 1, NOW - 1, NOW + 900]
    # A second run right after finds nothing more.
    again = pruner(engine).run_once()
    assert (again.audit_records, again.issued_tokens) == (0, 0)


async def test_clock_moving_on_lets_records_go_only_when_their_window_ends(engine: Engine, writer: GroupCommitWriter) -> None:
    await fill(writer, [NOW], [NOW])
    for elapsed, audit_left, issued_left in [(0, 1, 1), (7 * DAY, 1, 1), (7 * DAY + 1, 1, 0), (30 * DAY, 1, 0), (30 * DAY + 1, 0, 0)]:
        pruner(engine, now=NOW + elapsed).run_once()
        assert (count(engine, "audit_events"), count(engine, "issued_tokens")) == (audit_left, issued_left), elapsed


async def test_zero_days_keeps_rows_forever(engine: Engine, writer: GroupCommitWriter) -> None:
    await fill(writer, [0.0], [0.0])
    report = pruner(engine, policy=RetentionPolicy(audit_days=0, issued_token_days=0)).run_once()
    assert report.audit_before is None and report.issued_expired_before is None and report.batches == 0
    assert (count(engine, "audit_events"), count(engine, "issued_tokens")) == (1, 1)


async def test_deletes_in_batches_of_at_most_batch_size(engine: Engine, writer: GroupCommitWriter) -> None:
    await fill(writer, [NOW - 40 * DAY + n for n in range(10)] + [NOW], [NOW - 8 * DAY + n for n in range(4)])
    report = pruner(engine, batch_size=3).run_once()
    assert (report.audit_records, report.issued_tokens) == (10, 4)
    assert report.batches == 4 + 1 + 2  # 3+3+3+1 audit, the usage counter of their day, 3+1 issued
    assert (count(engine, "audit_events"), count(engine, "issued_tokens")) == (1, 0)
    assert report.longest_batch_seconds > 0


async def test_one_batch_deletes_the_oldest_first_and_never_more_than_asked(engine: Engine, writer: GroupCommitWriter) -> None:
    # Ids out of time order (a record of an older request committed later): the batch still
    # takes the oldest by time, and exactly `limit` of them.
    await fill(writer, [NOW - 50 * DAY, NOW - 40 * DAY, NOW - 60 * DAY, NOW - 45 * DAY], [])
    with pruning_connection(engine) as conn, conn.begin():
        assert delete_audit_batch(conn, NOW - 30 * DAY, 2) == 2
    assert times(engine, "SELECT time FROM audit_events") == [NOW - 45 * DAY, NOW - 40 * DAY]


async def test_dry_run_counts_and_changes_nothing(backend: Backend, engine: Engine, writer: GroupCommitWriter) -> None:
    await fill(writer, [NOW - 31 * DAY, NOW - 31 * DAY, NOW], [NOW - 8 * DAY, NOW])
    report = pruner(engine).run_once(dry_run=True)
    assert report.dry_run and (report.audit_records, report.issued_tokens) == (2, 1) and report.batches == 0
    assert (count(engine, "audit_events"), count(engine, "issued_tokens")) == (3, 2)
    if backend.name == "sqlite":  # not even the lock file
        database = Path(engine.url.database or "")
        assert not database.with_name(database.name + ".prune-lock").exists()


async def test_the_lock_keeps_a_second_pruner_out(engine: Engine, writer: GroupCommitWriter,
                                                  make_db_engine: Callable[[], Engine]) -> None:
    await fill(writer, [NOW - 31 * DAY], [NOW - 8 * DAY])
    other_replica = make_db_engine()
    with pruning_connection(engine):
        report = pruner(other_replica).run_once()
        assert report.skipped and (report.audit_records, report.issued_tokens) == (0, 0)
        with pytest.raises(LockHeld), pruning_connection(other_replica):
            pass
        assert (count(engine, "audit_events"), count(engine, "issued_tokens")) == (1, 1)
    report = pruner(other_replica).run_once()
    assert not report.skipped and (report.audit_records, report.issued_tokens) == (1, 1)


async def test_two_pruners_at_once_delete_each_row_once(engine: Engine, writer: GroupCommitWriter,
                                                        make_db_engine: Callable[[], Engine]) -> None:
    await fill(writer, [NOW - 31 * DAY - n for n in range(40)], [])
    replicas = [pruner(make_db_engine(), batch_size=2, pause=0.002) for _ in range(2)]
    reports = await asyncio.gather(*(asyncio.to_thread(p.run_once) for p in replicas))
    # Usually the second finds the lock taken (test_the_lock_keeps_a_second_pruner_out pins
    # that); either way no row is deleted twice or left behind.
    assert sum(r.audit_records for r in reports) == 40
    assert count(engine, "audit_events") == 0


@pytest.mark.slow
async def test_the_group_commit_keeps_writing_during_a_prune(engine: Engine, writer: GroupCommitWriter) -> None:
    """Writes made while a prune runs all commit, none of them is pruned, and every old row goes.
    (How long writes waited is measured in docs/operations.md, not asserted here.)"""
    old = [audit(n, time=NOW - 31 * DAY, request_id=f"old-{n}") for n in range(2_000)]
    for start in range(0, len(old), 500):
        await writer.write(*old[start : start + 500])
    p = pruner(engine, batch_size=100, pause=0.001)
    run = asyncio.ensure_future(asyncio.to_thread(p.run_once))
    written = 0
    while not run.done():
        await writer.write(audit(10_000 + written, time=NOW, request_id=f"new-{written}"))
        written += 1
    report = await run
    assert report.audit_records == 2_000
    assert report.batches == 20 + 1 + 1 + 1  # full audit batches, the short one that ends it, usage counters, issued tokens
    assert written > 0
    assert count(engine, "audit_events") == written
    assert count(engine, "audit_events", "WHERE request_id LIKE 'old-%'") == 0


async def test_stop_ends_a_run_between_batches(engine: Engine, writer: GroupCommitWriter) -> None:
    await fill(writer, [NOW - 31 * DAY - n for n in range(20)], [NOW - 8 * DAY])
    p = pruner(engine, batch_size=5, pause=30)  # would sleep 30 s after the first batch
    run = asyncio.ensure_future(asyncio.to_thread(p.run_once))
    for _ in range(500):
        if count(engine, "audit_events") < 20:
            break
        await asyncio.sleep(0.01)
    started = time.monotonic()
    p.stop()
    report = await run
    assert time.monotonic() - started < 10
    assert report.interrupted and report.audit_records == 5 and report.issued_tokens == 0


async def test_background_task_prunes_and_finishes_its_batch_on_cancel(engine: Engine, writer: GroupCommitWriter) -> None:
    await fill(writer, [NOW - 31 * DAY], [])
    p = pruner(engine)
    task = asyncio.create_task(p.run_forever(0.01))
    for _ in range(500):
        if count(engine, "audit_events") == 0:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert count(engine, "audit_events") == 0


# --- coalesced records and export ---------------------------------------------------------
async def test_count_defaults_to_one_and_coalesced_records_keep_theirs(engine: Engine, writer: GroupCommitWriter) -> None:
    await writer.write(audit(1, request_id="single"))
    insert_audit_records(engine, [audit(2, request_id="summary", count=41, outcome="denied", issued_jti=None)])
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT request_id, count FROM audit_events")).all())
    assert rows == {"single": 1, "summary": 41}


async def test_export_round_trip(engine: Engine, writer: GroupCommitWriter) -> None:
    records = [audit(n, time=NOW + n, request_id=f"r-{n}") for n in range(5)]
    records[2] = audit(2, time=NOW + 2, request_id="r-2", requested_scopes=None, detail="ünïcode\u2028line", mode_notes=())
    await writer.write(*records[:4])
    insert_audit_records(engine, [audit(4, time=NOW + 4, request_id="r-4", count=7, outcome="denied")])
    records[4] = audit(4, time=NOW + 4, request_id="r-4", count=7, outcome="denied")

    with engine.connect() as conn:
        lines = [export_line(r) for r in audit_between(conn, NOW + 1, NOW + 4, chunk=2)]
        everything = [export_line(r) for r in audit_between(conn, None, None)]
    assert len(everything) == 5
    docs = [json.loads(line) for line in lines]
    assert [d["request_id"] for d in docs] == ["r-1", "r-2", "r-3"]  # since inclusive, until exclusive
    for doc, record in zip([json.loads(line) for line in everything], records, strict=True):
        assert tuple(doc) == EXPORT_FIELDS
        for name in EXPORT_FIELDS:
            if name in ("id", "time_utc"):
                continue
            value = getattr(record, name)
            assert doc[name] == (list(value) if isinstance(value, tuple) else value), name
