"""Coalescing of unauthenticated refusals (sts.ops.coalesce): pure bookkeeping, frozen clock."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from sts.audit import AuditEvent
from sts.ops.coalesce import (
    COALESCED_NOTE,
    OVERFLOW_PEER,
    RefusalCoalescer,
    RefusalFlusher,
    carries_no_verified_identity,
)
from sts.ops.coalesce import peer_of
from sts.store.records import AuditRecord

PEER = ("203.0.113.9", 50000)
OTHER_PEER = ("203.0.113.10", 50000)


@dataclass
class Clock:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


def refusal(n: int = 0, *, error: str = "invalid_request", reason: str = "bad_content_type", **fields: Any) -> AuditEvent:
    event = AuditEvent(time=1_700_000_000.0 + n, request_id=f"req-{n}", config_version="v1")
    event.outcome = "denied"
    event.error = error
    event.reason = reason
    event.detail = f"detail-{n}"
    for name, value in fields.items():
        setattr(event, name, value)
    return event


# --- which refusals may be coalesced ---------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "coalescable"),
    [
        pytest.param({}, True, id="bad-form"),
        pytest.param({"issuer": "github"}, True, id="claimed-issuer-unverified-token"),
        pytest.param({"outcome": "error", "error": "temporarily_unavailable"}, True, id="server-side-refusal-before-verification"),
        pytest.param({"client_id": "ci-runner"}, False, id="authenticated-client"),
        pytest.param({"subject_token_sha256": "a" * 64}, False, id="verified-subject-token"),
        pytest.param({"identity": "github:acme/app"}, False, id="mapped-identity"),
        pytest.param({"actor_identity": "wl:gateway"}, False, id="verified-actor"),
        pytest.param({"outcome": "issued"}, False, id="issued"),
        pytest.param({"issued_jti": "jti-1"}, False, id="has-issued-jti"),
    ],
)
def test_only_refusals_without_a_verified_identity_coalesce(fields: dict[str, Any], coalescable: bool) -> None:
    assert carries_no_verified_identity(refusal(**fields)) is coalescable
    c = RefusalCoalescer(window=60, clock=Clock())
    assert c.absorb(refusal(1, **fields), PEER) is False  # the first is always written
    assert c.absorb(refusal(2, **fields), PEER) is coalescable


@pytest.mark.parametrize(
    ("client", "peer"),
    [
        pytest.param(("203.0.113.9", 1), "203.0.113.9", id="ipv4"),
        pytest.param(("2001:db8:1:2:aaaa::1", 1), "2001:db8:1:2::/64", id="ipv6-by-64"),
        pytest.param(("::ffff:198.51.100.7", 1), "198.51.100.7", id="ipv4-mapped"),
        pytest.param(("2001:db8:1:2:bbbb::2", 1), "2001:db8:1:2::/64", id="same-64-same-peer"),
        pytest.param(("fe80::1%eth0", 1), "fe80::1%eth0", id="scoped-ipv6-as-given"),
        pytest.param(("/run/sts.sock", None), "/run/sts.sock", id="unix-socket"),
        pytest.param(None, "unknown", id="no-client"),
    ],
)
def test_peer_of(client: Any, peer: str) -> None:
    assert peer_of(client) == peer


# --- windows, as a table of steps --------------------------------------------------------------
# Each step: (seconds since start, peer, reason, expected absorb result).
A, B = PEER, OTHER_PEER
STEPS = [
    pytest.param([(0, A, "r", False), (1, A, "r", True), (59.9, A, "r", True)], [2], id="repeats-within-window-count"),
    pytest.param([(0, A, "r", False), (60, A, "r", False)], [], id="window-closed-next-is-written-and-nothing-absorbed"),
    pytest.param([(0, A, "r", False), (1, A, "r", True), (61, A, "r", False), (62, A, "r", True)], [1, 1],
                 id="each-window-one-record"),
    pytest.param([(0, A, "r", False), (1, B, "r", False), (2, B, "r", True)], [1], id="peers-are-separate"),
    pytest.param([(0, A, "r", False), (1, A, "s", False), (2, A, "s", True), (3, A, "r", True)], [1, 1],
                 id="reasons-are-separate"),
]


@pytest.mark.parametrize(("steps", "counts"), STEPS)
def test_windows(steps: list[tuple[float, Any, str, bool]], counts: list[int]) -> None:
    clock = Clock()
    c = RefusalCoalescer(window=60, clock=clock)
    start = clock.now
    for n, (at, peer, reason, absorbed) in enumerate(steps):
        clock.now = start + at
        assert c.absorb(refusal(n, reason=reason), peer) is absorbed, f"step {n}"
    clock.now = start + 1_000
    assert sorted(r.count for r in c.due()) == sorted(counts)
    assert c.open_windows() == 0


def test_summary_record_stands_for_the_absorbed_refusals() -> None:
    clock = Clock()
    c = RefusalCoalescer(window=60, clock=clock)
    assert not c.absorb(refusal(0, issuer="github"), PEER)
    for n in range(1, 6):
        clock.now += 1
        assert c.absorb(refusal(n, issuer="github"), PEER)
    assert c.due() == []  # window still open
    clock.now += 60
    (record,) = c.due()
    assert isinstance(record, AuditRecord)
    assert record.count == 5
    assert (record.outcome, record.error, record.reason, record.issuer) == ("denied", "invalid_request", "bad_content_type", "github")
    assert record.time == 1_700_000_005.0  # the last absorbed refusal: pruned no earlier than any of them
    assert record.request_id == "req-1"
    assert COALESCED_NOTE in record.mode_notes
    assert record.detail is not None and "req-0" in record.detail and "req-5" in record.detail and "203.0.113.9" in record.detail
    assert c.due() == []  # returned once


def test_due_leaves_open_windows_and_drain_closes_all() -> None:
    clock = Clock()
    c = RefusalCoalescer(window=60, clock=clock)
    c.absorb(refusal(0), A)
    c.absorb(refusal(1), A)
    clock.now += 30
    assert c.due() == []
    assert [r.count for r in c.drain()] == [1]
    assert c.open_windows() == 0
    assert c.absorb(refusal(2), A) is False  # a new window after the drain


def test_disabled_never_absorbs() -> None:
    c = RefusalCoalescer(window=0, clock=Clock())
    assert not c.enabled
    assert [c.absorb(refusal(n), A) for n in range(3)] == [False, False, False]


def test_full_table_sends_new_peers_to_one_overflow_window_per_kind() -> None:
    clock = Clock()
    c = RefusalCoalescer(window=60, max_windows=2, clock=clock)
    assert not c.absorb(refusal(0), ("198.51.100.1", 1))
    assert not c.absorb(refusal(1), ("198.51.100.2", 1))
    # Full: the next new peer opens the overflow window (written), the ones after are counted.
    assert not c.absorb(refusal(2), ("198.51.100.3", 1))
    assert all(c.absorb(refusal(n), (f"198.51.100.{n}", 1)) for n in range(4, 50))
    # A different kind of refusal gets its own overflow window.
    assert not c.absorb(refusal(50, reason="other"), ("198.51.100.51", 1))
    # Peers that already have a window keep it.
    assert c.absorb(refusal(51), ("198.51.100.1", 1))
    assert c.open_windows() == 4
    clock.now += 60
    records = c.due()
    overflow = [r for r in records if f"from peer {OVERFLOW_PEER}," in (r.detail or "")]
    assert [r.count for r in overflow] == [46]
    assert sum(r.count for r in records) == 47
    # After the windows closed, real peers get windows again.
    assert not c.absorb(refusal(60), ("198.51.100.60", 1))
    assert c.absorb(refusal(61), ("198.51.100.60", 1))


def test_every_refusal_is_counted_exactly_once() -> None:
    """Written individually + sum of counts == refusals, over many windows and peers."""
    clock = Clock()
    c = RefusalCoalescer(window=10, max_windows=3, clock=clock)
    written = 0
    counted = 0
    for n in range(2_000):
        clock.now += 0.37
        peer = (f"198.51.100.{n % 5}", 1)
        if not c.absorb(refusal(n, reason=f"r{n % 3}"), peer):
            written += 1
        if n % 97 == 0:
            counted += sum(r.count for r in c.due())
    counted += sum(r.count for r in c.drain())
    assert written + counted == 2_000
    assert written < 2_000 // 4  # and far fewer rows than requests


# --- the flusher ---------------------------------------------------------------------------
@dataclass
class FakeSink:
    fail: int = 0
    batches: list[list[AuditRecord]] = field(default_factory=list)

    async def __call__(self, records: list[AuditRecord]) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("database down")
        self.batches.append(list(records))


async def test_flusher_writes_closed_windows_and_retries_failures() -> None:
    clock = Clock()
    c = RefusalCoalescer(window=60, clock=clock)
    sink = FakeSink(fail=1)
    flusher = RefusalFlusher(c, sink, interval=1)
    c.absorb(refusal(0), A)
    c.absorb(refusal(1), A)
    assert await flusher.flush() == 0  # still open
    clock.now += 60
    with pytest.raises(RuntimeError):
        await flusher.flush()
    assert await flusher.flush() == 1  # kept and written on the next try
    assert [r.count for r in sink.batches[0]] == [1]
    c.absorb(refusal(2), B)
    c.absorb(refusal(3), B)
    assert await flusher.flush(everything=True) == 1


async def test_flusher_bounds_what_waits_for_a_dead_database() -> None:
    clock = Clock()
    c = RefusalCoalescer(window=1, clock=clock)
    sink = FakeSink(fail=1_000)
    flusher = RefusalFlusher(c, sink, interval=1, max_pending=3)
    for round_ in range(5):
        c.absorb(refusal(2 * round_), A)
        c.absorb(refusal(2 * round_ + 1), A)
        clock.now += 2
        with pytest.raises(RuntimeError):
            await flusher.flush()
    sink.fail = 0
    assert await flusher.flush() == 3


async def test_flusher_task_runs_until_cancelled() -> None:
    clock = Clock()
    c = RefusalCoalescer(window=60, clock=clock)
    sink = FakeSink()
    flusher = RefusalFlusher(c, sink, interval=0.01)
    c.absorb(refusal(0), A)
    c.absorb(refusal(1), A)
    clock.now += 60
    task = asyncio.create_task(flusher.run_forever())
    for _ in range(200):
        if sink.batches:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [r.count for r in sink.batches[0]] == [1]


@pytest.mark.parametrize(("window", "interval"), [(0.5, 1.0), (20, 5.0), (60, 15.0), (3600, 15.0)])
def test_flush_interval(window: float, interval: float) -> None:
    assert RefusalFlusher.interval_for(window) == interval


async def test_cancelled_flush_writes_each_record_once() -> None:
    """Shutdown cancels the flush task mid-write; the final flush must not write it again."""
    clock = Clock()
    c = RefusalCoalescer(window=60, clock=clock)
    written: list[AuditRecord] = []
    started = asyncio.Event()

    async def slow_write(records: list[AuditRecord]) -> None:
        # Like the real write: a worker thread, which a cancellation does not stop.
        started.set()
        await asyncio.to_thread(lambda: (time.sleep(0.05), written.extend(records)))

    flusher = RefusalFlusher(c, slow_write, interval=1)
    c.absorb(refusal(0), A)
    c.absorb(refusal(1), A)
    clock.now += 60
    task = asyncio.create_task(flusher.flush())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await flusher.flush(everything=True) == 0
    assert [r.count for r in written] == [1]
