"""Replay guard: one-time jti claims, atomic across threads, writers and engines (replicas)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from sqlalchemy.engine import Engine

from sts.store.queries import purge_replay
from sts.store.writer import GroupCommitWriter
from store_support import count

# (namespace, jti, expires_at, now, claimed?) applied in order to one database.
SEQUENCE = [
    pytest.param([("issuer:github", "j1", 100.0, 10.0, True)], id="first-use-claims"),
    pytest.param([("issuer:github", "j1", 100.0, 10.0, True), ("issuer:github", "j1", 100.0, 20.0, False)],
                 id="second-use-is-replay"),
    pytest.param([("issuer:github", "j1", 100.0, 10.0, True), ("issuer:gitlab", "j1", 100.0, 20.0, True),
                  ("client:ci-runner", "j1", 100.0, 20.0, True)], id="namespaces-are-separate"),
    pytest.param([("issuer:github", "j1", 100.0, 10.0, True), ("issuer:github", "j1", 200.0, 100.0, False)],
                 id="still-used-at-expiry-instant"),
    pytest.param([("issuer:github", "j1", 100.0, 10.0, True), ("issuer:github", "j1", 200.0, 100.5, True),
                  ("issuer:github", "j1", 300.0, 150.0, False)], id="expired-is-reusable-then-guarded-again"),
]


@pytest.mark.parametrize("steps", SEQUENCE)
async def test_claim_sequence(writer: GroupCommitWriter, steps: list[tuple[str, str, float, float, bool]]) -> None:
    for namespace, jti, expires_at, now, expected in steps:
        assert await writer.claim_once(namespace, jti, expires_at, now=now) is expected


async def test_claims_and_writes_share_batches(writer: GroupCommitWriter) -> None:
    results = await asyncio.gather(*(writer.claim_once("client:a", f"j{n % 10}", 100.0, now=1.0) for n in range(100)))
    assert sum(results) == 10  # each of the ten jtis claimed exactly once, even within one batch


def _claim_from_threads(writers: list[GroupCommitWriter], jti: str, now: float, n: int = 50) -> list[bool]:
    """n threads, each with its own event loop, claiming through alternating writers."""
    start = threading.Barrier(n)
    results: list[bool] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        start.wait()
        ok = asyncio.run(writers[i % len(writers)].claim_once("issuer:github", jti, now + 600.0, now=now))
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.fixture
def two_replicas(engine: Engine, make_writer: Callable[..., GroupCommitWriter]) -> list[GroupCommitWriter]:
    """Two writers on two separate engines (pools): two replicas of the broker."""
    return [make_writer(), make_writer()]


def test_concurrent_claims_from_threads_one_winner(two_replicas: list[GroupCommitWriter]) -> None:
    results = _claim_from_threads(two_replicas, "jti-threads", now=1_000.0)
    assert len(results) == 50
    assert results.count(True) == 1


async def test_concurrent_claims_from_two_replicas_one_winner(two_replicas: list[GroupCommitWriter]) -> None:
    claims = [two_replicas[i % 2].claim_once("issuer:github", "jti-async", 2_000.0, now=1_000.0) for i in range(50)]
    results = await asyncio.gather(*claims)
    assert results.count(True) == 1
    assert all(w.stats.claims > 0 for w in two_replicas)


def test_concurrent_takeover_of_expired_jti_one_winner(two_replicas: list[GroupCommitWriter]) -> None:
    assert asyncio.run(two_replicas[0].claim_once("issuer:github", "jti-old", 500.0, now=100.0)) is True
    results = _claim_from_threads(two_replicas, "jti-old", now=1_000.0)
    assert results.count(True) == 1


async def test_purge_replay(engine: Engine, writer: GroupCommitWriter) -> None:
    for n, expires_at in enumerate((50.0, 99.0, 100.0, 500.0)):
        assert await writer.claim_once("issuer:github", f"j{n}", expires_at, now=0.0)
    assert purge_replay(engine, now=100.0) == 2
    assert count(engine, "replay_guard") == 2
