"""Group-commit writer: positional rows, multi-row statements and driver-level transactions.

The writer binds rows as tuples in a fixed column order and runs its transaction on the driver
connection; these tests pin what that must not change: every column is written, batches larger
than one statement stay one transaction, claims and writes share it, and a driver error still
reaches the caller as a ``StoreError`` while the writer keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from sts.store.errors import StoreError
from sts.store.models import audit_events, issued_tokens
from sts.store.queries import recent_audit
from sts.store.writer import AUDIT_COLUMNS, ISSUED_COLUMNS, ROWS_PER_STATEMENT, GroupCommitWriter
from store_support import audit, count, issued


@pytest.mark.parametrize(
    ("columns", "table", "generated"),
    [
        # id: autoincrement; count: server default 1 (only coalesced refusals, written by
        # sts.store.retention.insert_audit_records outside the group commit, set it).
        pytest.param(AUDIT_COLUMNS, audit_events, {"id", "count"}, id="audit_events"),
        # revoked_*: set later by a revocation (sts.store.lifecycle), never at issue time.
        pytest.param(ISSUED_COLUMNS, issued_tokens, {"revoked_at", "revoked_reason"}, id="issued_tokens"),
    ],
)
def test_row_columns_cover_the_table(columns: tuple[str, ...], table: object, generated: set[str]) -> None:
    names = [c.name for c in table.columns]  # type: ignore[attr-defined]
    assert len(set(columns)) == len(columns)
    assert set(columns) == set(names) - generated


@pytest.mark.parametrize("pairs", [pytest.param(1, id="one"), pytest.param(ROWS_PER_STATEMENT + 9, id="two-statements")])
async def test_one_batch_of_many_rows_is_one_transaction(
    engine: Engine, make_writer: Callable[..., GroupCommitWriter], pairs: int
) -> None:
    # max_wait holds the batch open so every write below shares one transaction.
    writer = make_writer(engine, max_wait=0.3)
    await asyncio.gather(*(writer.write(issued(f"jti-{n}"), audit(n)) for n in range(pairs)))

    assert writer.stats.batches == 1
    assert count(engine, "issued_tokens") == pairs
    assert count(engine, "audit_events") == pairs
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM issued_tokens WHERE jti = 'jti-0'")).mappings().one()
    expected = issued("jti-0")
    for name in ISSUED_COLUMNS:
        assert row[name] == getattr(expected, name), name
    got = {r["request_id"]: r for r in recent_audit(engine)}["req-0"]
    assert got["grant"] == "deploy-bot"  # a reserved word in PostgreSQL: the column is quoted
    assert got["mode_notes"] == ["audit-grant matched"]


async def test_claims_and_rows_commit_together(engine: Engine, make_writer: Callable[..., GroupCommitWriter]) -> None:
    writer = make_writer(engine, max_wait=0.3)
    assert await writer.claim_once("issuer:github", "used", 100.0, now=0.0) is True
    before = writer.stats.batches

    results = await asyncio.gather(
        writer.write(issued("a"), audit(1)),
        writer.claim_once("issuer:github", "fresh", 100.0, now=0.0),
        writer.claim_once("issuer:github", "used", 100.0, now=0.0),
        writer.write(audit(2)),
    )

    assert results == [None, True, False, None]
    assert writer.stats.batches - before == 1
    assert count(engine, "audit_events") == 2


async def test_failed_batch_rolls_back_and_the_writer_continues(
    engine: Engine, make_writer: Callable[..., GroupCommitWriter]
) -> None:
    writer = make_writer(engine, max_wait=0.3)
    await writer.write(issued("taken"))
    # The duplicate fails inside the multi-row statement; the claim in the same transaction
    # must be rolled back with it and then succeed on the retry of its own unit.
    results = await asyncio.gather(
        writer.write(issued("taken"), audit(1)),
        writer.claim_once("issuer:github", "j1", 100.0, now=0.0),
        return_exceptions=True,
    )
    assert isinstance(results[0], StoreError)
    assert results[1] is True
    assert count(engine, "audit_events") == 0
    assert await writer.claim_once("issuer:github", "j1", 100.0, now=0.0) is False
    await writer.write(issued("next"), audit(3))
    assert count(engine, "issued_tokens") == 2


async def test_writes_of_one_loop_turn_share_a_commit(engine: Engine, writer: GroupCommitWriter) -> None:
    # Handed over once per event-loop turn: twenty requests that reach the writer in the same
    # turn are one transaction (two at most, should the thread take the first before the rest).
    await writer.write(audit(0))
    before = writer.stats.batches
    await asyncio.gather(*(writer.write(issued(f"jti-{n}"), audit(n + 1)) for n in range(20)))
    assert writer.stats.batches - before <= 2
    assert count(engine, "audit_events") == 21


async def test_stop_commits_writes_not_yet_handed_over(engine: Engine) -> None:
    writer = GroupCommitWriter(engine)
    writer.start()
    tasks = [asyncio.ensure_future(writer.write(audit(n))) for n in range(5)]
    await asyncio.sleep(0)  # every task has submitted; the hand-over has not run yet
    writer.stop()
    await asyncio.gather(*tasks)
    assert count(engine, "audit_events") == 5
    with pytest.raises(StoreError):
        await writer.write(audit(99))
