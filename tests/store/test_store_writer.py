"""Group-commit writer: durability, grouping, isolation of a failing record, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from sts.store.errors import StoreError, StoreUnavailable
from sts.store.queries import recent_audit
from sts.store.records import AuditRecord
from sts.store.writer import GroupCommitWriter
from store_support import Backend, audit, count, issued


async def test_concurrent_writes_are_durable_and_grouped(engine: Engine, writer: GroupCommitWriter) -> None:
    # 100 issued-token + audit pairs and 100 audit-only writes, all awaiting at once.
    writes = [writer.write(issued(f"jti-{n}"), audit(n)) for n in range(100)]
    writes += [writer.write(audit(n, outcome="denied", issued_jti=None)) for n in range(100, 200)]
    await asyncio.gather(*writes)

    assert count(engine, "issued_tokens") == 100
    assert count(engine, "audit_events") == 200
    assert writer.stats.records == 300
    assert writer.stats.batches < 200  # requests shared commits
    assert writer.stats.max_batch_seen > 1
    assert writer.stats.failed_batches == 0


async def test_failing_record_fails_only_its_own_write(
    engine: Engine, make_writer: Callable[..., GroupCommitWriter]
) -> None:
    # max_wait holds the batch open so that every write below shares one transaction.
    writer = make_writer(engine, max_wait=0.3)
    await writer.write(issued("taken"))
    before = writer.stats.batches

    good = [writer.write(issued(f"ok-{n}"), audit(n)) for n in range(40)]
    bad = writer.write(issued("taken"), audit(999, request_id="bad"))  # duplicate primary key
    results = await asyncio.gather(*good[:20], bad, *good[20:], return_exceptions=True)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], StoreError)
    assert isinstance(results[20], StoreError)
    assert "b" * 64 not in str(errors[0])  # the driver's message, never the bound values
    assert count(engine, "issued_tokens") == 41
    assert count(engine, "audit_events") == 40
    # The failing call's audit record went down with it: one call is one unit.
    assert count(engine, "audit_events", "WHERE request_id = 'bad'") == 0
    assert writer.stats.failed_batches == 1
    assert writer.stats.batches - before == 40  # the group rolled back, then each call alone


async def test_audit_record_round_trip(engine: Engine, writer: GroupCommitWriter) -> None:
    full = audit(1, detail="policy said no", actor_identity="k8s:ai/agent", error="invalid_target", reason="no_target")
    sparse = AuditRecord(time=1_700_000_005.0, request_id="req-sparse", outcome="error")
    await writer.write(full, sparse)

    rows = {r["request_id"]: r for r in recent_audit(engine)}
    got = rows["req-1"]
    for name in ("outcome", "error", "reason", "client_id", "issuer", "external_subject", "identity", "grant",
                 "granted_target", "lifetime", "issued_jti", "subject_token_sha256", "actor_identity",
                 "config_version", "detail", "time"):
        assert got[name] == getattr(full, name), name
    assert got["mode_notes"] == ["audit-grant matched"]
    assert got["requested_targets"] == ["https://vector.example.com"]
    assert got["requested_scopes"] == ["read"]
    assert got["granted_scopes"] == ["read"]

    empty = rows["req-sparse"]
    assert empty["requested_scopes"] is None  # "no scope parameter" stays distinct from []
    assert empty["mode_notes"] == [] and empty["granted_scopes"] == [] and empty["requested_targets"] == []


async def test_stop_drains_the_queue(engine: Engine) -> None:
    writer = GroupCommitWriter(engine)
    writer.start()
    tasks = [asyncio.ensure_future(writer.write(audit(n))) for n in range(50)]
    await asyncio.sleep(0)  # every task has queued its write
    writer.stop()
    await asyncio.gather(*tasks)
    assert count(engine, "audit_events") == 50


async def test_write_when_stopped_raises(engine: Engine) -> None:
    writer = GroupCommitWriter(engine)
    with pytest.raises(StoreError):
        await writer.write(audit(1))
    writer.start()
    writer.stop()
    with pytest.raises(StoreError):
        await writer.claim_once("issuer:github", "j", 10.0)


async def test_database_failure_reaches_every_caller(engine: Engine, writer: GroupCommitWriter) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    try:
        results = await asyncio.gather(*(writer.write(audit(n)) for n in range(10)), return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results)
        # The writer survives and keeps serving the tables that still exist.
        await writer.write(issued("after"))
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    assert count(engine, "issued_tokens") == 1
    await writer.write(audit(11))
    assert count(engine, "audit_events") == 1


async def test_lost_connection_is_replaced_without_failing_writes(
    backend: Backend, engine: Engine, writer: GroupCommitWriter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sts.store.writer")
    await writer.write(audit(1))
    # Kill the writer's idle connection behind its back, as a server restart would.
    dbapi = writer._conn.connection.dbapi_connection  # type: ignore[union-attr]
    if backend.name == "postgres":
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dbapi.info.backend_pid})  # type: ignore[union-attr]
    else:
        dbapi.close()  # type: ignore[union-attr]
    await writer.write(audit(2))
    assert await writer.claim_once("issuer:github", "after-reconnect", 10.0, now=0.0) is True
    assert count(engine, "audit_events") == 2
    assert writer.stats.failed_batches == 0
    assert any("connection was lost" in r.getMessage() for r in caplog.records)


async def test_reset_socket_counts_as_lost_even_before_the_driver_flags_it(
    backend: Backend,
    engine: Engine,
    writer: GroupCommitWriter,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # psycopg can report a reset socket ("connection socket closed") while libpq still calls
    # the connection OK, so the dialect does not see a disconnect. The failed rollback must.
    if backend.name != "postgres":
        pytest.skip("the lagging disconnect state is a PostgreSQL driver behaviour")
    caplog.set_level(logging.INFO, logger="sts.store.writer")
    await writer.write(audit(1))
    monkeypatch.setattr(engine.dialect, "is_disconnect", lambda *args, **kwargs: False)
    dbapi = writer._conn.connection.dbapi_connection  # type: ignore[union-attr]
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dbapi.info.backend_pid})  # type: ignore[union-attr]
    await writer.write(audit(2))
    assert count(engine, "audit_events") == 2
    assert writer.stats.failed_batches == 0
    assert any("connection was lost" in r.getMessage() for r in caplog.records)


async def test_unreachable_database_is_store_unavailable() -> None:
    # Nothing listens on port 1: the connection is refused at once.
    from sts.store.db import make_engine

    engine = make_engine("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    writer = GroupCommitWriter(engine)
    writer.start()
    try:
        with pytest.raises(StoreUnavailable):
            await writer.write(audit(1))
        with pytest.raises(StoreUnavailable):
            await writer.claim_once("issuer:github", "j", 100.0, now=0.0)
    finally:
        writer.stop()
        engine.dispose()


async def test_refused_write_is_not_store_unavailable(engine: Engine, writer: GroupCommitWriter) -> None:
    await writer.write(issued("taken"))
    with pytest.raises(StoreError) as refused:
        await writer.write(issued("taken"))
    assert not isinstance(refused.value, StoreUnavailable)
