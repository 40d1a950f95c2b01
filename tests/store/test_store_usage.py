"""Usage counters (sts/store/usage.py) on every backend: folded into the group commit, exact
under concurrent replicas, rolled back with the audit rows they count."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable

from sqlalchemy.engine import Engine

from sts.ops.retention import Pruner, RetentionPolicy
from sts.store.usage import AUDIT_ALLOW, UsageCounter, read_usage
from sts.store.writer import AUDIT_COLUMNS, GroupCommitWriter, audit_row
from store_support import audit, count, issued

DAY = 86400
T0 = 1_700_006_400.0  # a UTC midnight


def _usage(engine: Engine, **kwargs: object) -> dict[tuple[str, ...], tuple[int, float, float]]:
    with engine.connect() as conn:
        return {(r.identity, r.grant, r.target, " ".join(r.scopes), r.outcome, r.reason): (r.count, r.first_seen, r.last_seen)
                for r in read_usage(conn, **kwargs)}  # type: ignore[arg-type]


async def test_the_writer_counts_what_it_writes(engine: Engine, writer: GroupCommitWriter) -> None:
    await asyncio.gather(*(writer.write(audit(n, time=T0 + n)) for n in range(5)))
    await writer.write(audit(10, time=T0 + DAY + 10, granted_scopes=("read", "write")))
    await writer.write(audit(11, time=T0 + 11, outcome="denied", reason="scope_not_allowed", granted_target=None, granted_scopes=()))
    await writer.write(audit(12, time=T0 + 12, outcome="denied", reason="no_grant", grant=None, granted_target=None, granted_scopes=()))
    # Verification failed: no identity, so nothing to count in an inventory of identities.
    await writer.write(audit(13, time=T0 + 13, outcome="denied", reason="signature_invalid", identity=None, grant=None))

    got = _usage(engine)
    assert got == {
        ("github:acme/app", "deploy-bot", "https://vector.example.com", "read", "issued", ""): (5, T0, T0 + 4),
        ("github:acme/app", "deploy-bot", "https://vector.example.com", "read write", "issued", ""): (1, T0 + DAY + 10, T0 + DAY + 10),
        ("github:acme/app", "deploy-bot", "", "", "denied", "scope_not_allowed"): (1, T0 + 11, T0 + 11),
        ("github:acme/app", "", "", "", "denied", "no_grant"): (1, T0 + 12, T0 + 12),
    }
    # One row per key and UTC day: the five issued on day one share a row.
    assert count(engine, "usage_counts") == 4
    # The window: only counters whose last event is inside it.
    assert set(_usage(engine, since=T0 + DAY)) == {
        ("github:acme/app", "deploy-bot", "https://vector.example.com", "read write", "issued", "")}


async def test_counters_roll_back_with_their_audit_rows(engine: Engine, make_writer: Callable[..., GroupCommitWriter]) -> None:
    writer = make_writer(engine, max_wait=0.3)  # one group transaction for everything below
    await writer.write(issued("taken"))
    good = [writer.write(issued(f"ok-{n}"), audit(n, time=T0 + n)) for n in range(10)]
    bad = writer.write(issued("taken"), audit(99, time=T0 + 99, identity="github:acme/bad"))  # duplicate jti
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert sum(isinstance(r, BaseException) for r in results) == 1
    got = _usage(engine)
    assert got[("github:acme/app", "deploy-bot", "https://vector.example.com", "read", "issued", "")][0] == 10
    assert not any(key[0] == "github:acme/bad" for key in got)


def test_replicas_writing_the_same_counters_at_once_lose_nothing(make_db_engine: Callable[[], Engine], engine: Engine) -> None:
    # Four replicas (own engine and writer thread each) upsert overlapping keys concurrently;
    # ON CONFLICT DO UPDATE adds each batch exactly once, and sorted keys avoid deadlocks.
    per_replica, replicas = 60, 4
    start = threading.Barrier(replicas)
    failures: list[BaseException] = []

    def replica(r: int) -> None:
        writer = GroupCommitWriter(make_db_engine())
        writer.start()
        try:
            start.wait()

            async def run() -> None:
                for n in range(0, per_replica, 6):
                    await asyncio.gather(*(
                        writer.write(audit(r * 1000 + n + k, time=T0 + n + k, identity=f"wl:agent-{(n + k) % 3}",
                                           granted_target=("a", "b")[k % 2]))
                        for k in range(6)))  # fmt: skip

            asyncio.run(run())
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            writer.stop()

    threads = [threading.Thread(target=replica, args=(r,)) for r in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    got = _usage(engine)
    assert sum(c for c, _, _ in got.values()) == per_replica * replicas
    assert len(got) == 6  # 3 identities x 2 targets
    assert count(engine, "audit_events") == per_replica * replicas
    first = min(f for _, f, _ in got.values())
    last = max(last for _, _, last in got.values())
    assert (first, last) == (T0, T0 + per_replica - 1)


async def test_audit_mode_grants_count_what_they_would_have_allowed(engine: Engine, writer: GroupCommitWriter) -> None:
    notes = ("audit grant 'shadow' would allow target 'https://billing.example.com' with scopes 'charge refund'",
             "audit grant 'other' would deny: target_not_allowed")
    await writer.write(audit(1, time=T0 + 1, outcome="denied", reason="target_not_allowed", grant=None, granted_target=None,
                             granted_scopes=(), mode_notes=notes))
    got = _usage(engine)
    assert got[("github:acme/app", "shadow", "https://billing.example.com", "charge refund", AUDIT_ALLOW, "")] == (1, T0 + 1, T0 + 1)
    assert not any(key[1] == "other" for key in got)


def test_the_counter_sums_a_batch_per_key_sorted() -> None:
    counter = UsageCounter(AUDIT_COLUMNS)
    rows = counter.rows([audit_row(audit(n, time=T0 + n, identity=f"wl:{n % 2}")) for n in range(7)] +
                        [audit_row(audit(9, identity=None))])
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    by_identity = {r[2]: (r[10], r[11], r[12]) for r in rows}
    assert by_identity == {"wl:0": (4, T0, T0 + 6), "wl:1": (3, T0 + 1, T0 + 5)}
    assert json.loads(rows[0][7]) == ["read"]
    # The same key hashes the same in a later batch (the cache) and across processes (sha256).
    again = counter.rows([audit_row(audit(1, time=T0 + 1, identity="wl:1"))])
    assert again[0][0] == next(r[0] for r in rows if r[2] == "wl:1")


async def test_the_pruner_drops_counters_of_days_past_the_audit_retention(engine: Engine, writer: GroupCommitWriter) -> None:
    now = T0 + 40 * DAY + 3600
    await writer.write(audit(1, time=T0 + 5), audit(2, time=T0 + 9 * DAY), audit(3, time=T0 + 30 * DAY + 7200), audit(4, time=now))
    pruner = Pruner(engine, RetentionPolicy(audit_days=10, issued_token_days=0), batch_size=1, pause=0, clock=lambda: now)
    assert pruner.run_once(dry_run=True).usage_counters == 2
    report = pruner.run_once()
    # The cutoff (T0 + 30 days + 3600) falls inside day 30: its counter stays, with its record.
    assert (report.audit_records, report.usage_counters) == (2, 2)
    assert sorted(first for _, first, _ in _usage(engine).values()) == [T0 + 30 * DAY + 7200]
