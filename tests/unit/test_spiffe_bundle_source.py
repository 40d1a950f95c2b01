"""The per-trust-domain bundle store (sts.spiffe.bundle_source): refresh at the hint (bounded),
monotonic sequence, last good bundle kept, revocation by empty bundle, refetch cooldown and
single flight, isolation of trust domains. Sources are coroutines or files; the clock and the
sleep of the refresh loop are fake. HTTPS endpoints are exercised in
tests/integration/test_spiffe_bundle_endpoints.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from spiffe_support import TrustDomain, bundle_doc, ec_key

from sts.spiffe.bundle import SpiffeBundle
from sts.spiffe.bundle_source import (
    BundleFile,
    BundlePolicy,
    BundleStore,
    CustomSource,
    refresh_interval,
)

TD = TrustDomain("example.org")
KEY_A, KEY_B = ec_key(), ec_key()
POLICY = BundlePolicy(min_refresh=30, max_refresh=3600, default_refresh=300, max_stale=3600, unknown_key_cooldown=30,
                      retry_backoff_initial=5)


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        pytest.param(None, 300, id="no-hint-five-minutes"),
        pytest.param(600, 600, id="hint-used"),
        pytest.param(0, 30, id="zero-clamped-up"),
        pytest.param(5, 30, id="small-clamped-up"),
        pytest.param(2419200, 3600, id="28-days-clamped-down"),
    ],
)
def test_refresh_interval(hint: int | None, expected: float) -> None:
    assert refresh_interval(hint, POLICY) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Source:
    """A bundle endpoint as a coroutine: serves ``doc`` or raises; counts fetches."""

    def __init__(self, doc: Any) -> None:
        self.doc = doc
        self.fail: Exception | None = None
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.doc


def _doc(*keys: tuple[str, Any], sequence: int | None = 1, hint: int | None = 600) -> dict[str, Any]:
    return bundle_doc(jwt=keys, sequence=sequence, refresh_hint=hint)


def _kids(bundle: SpiffeBundle | None) -> list[str | None]:
    assert bundle is not None
    return [k.kid for k in bundle.jwt_keys.keys]


async def _store(source: Source, clock: Clock, **policy: Any) -> BundleStore:
    store = BundleStore(policy=BundlePolicy(**{**POLICY.__dict__, **policy}), clock=clock, sleep=clock.sleep)
    store.register("example.org", CustomSource(source))
    return store


async def _poll(store: BundleStore, clock: Clock, seconds: float) -> None:
    """Let the background refresh loop run for ``seconds`` of fake time."""
    end = clock.now + seconds
    for _ in range(100_000):
        if clock.now >= end:
            return
        await asyncio.sleep(0)
    raise AssertionError("the refresh loop does not advance")  # pragma: no cover


async def test_first_fetch_at_start_then_polls_at_the_hint() -> None:
    clock, source = Clock(), Source(_doc(("a", KEY_A), hint=600))
    store = await _store(source, clock)
    assert store.current("example.org") is None
    await store.start()
    assert _kids(store.current("example.org")) == ["a"]
    await _poll(store, clock, 1900)
    await store.stop()
    # the poll interval is the hint: fetches at 0, 600, 1200, 1800
    assert source.calls == 4
    assert max(clock.sleeps) <= POLICY.min_refresh  # the loop sleeps in slices


async def test_rotation_is_picked_up_and_listeners_hear_of_it() -> None:
    clock, source = Clock(), Source(_doc(("a", KEY_A)))
    store = await _store(source, clock)
    seen: list[list[str | None]] = []
    store.add_listener(lambda b: seen.append(_kids(b)))
    await store.start()
    source.doc = _doc(("b", KEY_B), ("a", KEY_A), sequence=2)
    await _poll(store, clock, 601)
    await store.stop()
    assert _kids(store.current("example.org")) == ["b", "a"]
    assert seen == [["a"], ["b", "a"]]
    assert store.current("example.org").sequence == 2  # type: ignore[union-attr]


async def test_failing_endpoint_keeps_last_good_bundle_until_max_stale() -> None:
    clock, source = Clock(), Source(_doc(("a", KEY_A), hint=600))
    store = await _store(source, clock, max_stale=3600)
    await store.start()
    source.fail = RuntimeError("connection refused")
    await _poll(store, clock, 1300)
    assert _kids(store.current("example.org")) == ["a"]
    status = store.status()["example.org"]
    assert status["last_error"] == "internal" and status["stale"] is True
    # Federation §6.2: failures are retried at the next polling interval, not aggressively.
    assert source.calls == 3
    await _poll(store, clock, 2400)
    await store.stop()
    assert store.current("example.org") is None


async def test_never_fetched_trust_domain_retries_with_short_backoff() -> None:
    clock, source = Clock(), Source(None)
    source.fail = RuntimeError("down")
    store = await _store(source, clock)
    await store.start()
    await _poll(store, clock, 40)
    await store.stop()
    assert store.current("example.org") is None
    assert source.calls >= 3  # 0, 5, 15, 35 ...
    assert store.retry_after("example.org") >= 1


@pytest.mark.parametrize(
    ("second", "kids", "error"),
    [
        pytest.param(_doc(("b", KEY_B), sequence=1), ["a"], "sequence_regressed", id="lower-sequence-refused"),
        pytest.param(_doc(("b", KEY_B), sequence=5), ["a"], "sequence_not_incremented", id="same-sequence-other-keys"),
        pytest.param(_doc(("a", KEY_A), sequence=5, hint=900), ["a"], None, id="same-sequence-same-keys"),
        pytest.param(_doc(("b", KEY_B), sequence=6), ["b"], None, id="higher-sequence"),
        pytest.param(_doc(("b", KEY_B), sequence=None), ["b"], None, id="no-sequence-is-the-latest"),
        pytest.param({"keys": []}, [], None, id="empty-bundle-revokes"),
        pytest.param({"nokeys": []}, ["a"], "bundle_malformed", id="not-a-bundle"),
    ],
)
async def test_sequence_and_revocation(second: dict[str, Any], kids: list[str], error: str | None) -> None:
    clock, source = Clock(), Source(_doc(("a", KEY_A), sequence=5))
    store = await _store(source, clock)
    await store.start()
    source.doc = second
    await store.refetch("example.org")
    assert _kids(store.current("example.org")) == kids
    assert store.status()["example.org"]["last_error"] == error
    await store.stop()


async def test_refetch_is_single_flight_and_cooled_down() -> None:
    clock, source = Clock(), Source(_doc(("a", KEY_A)))
    store = await _store(source, clock)  # not started: no background polls in this test
    await store.refetch("example.org")
    assert source.calls == 1 and store.current("example.org") is not None
    clock.now += POLICY.unknown_key_cooldown
    source.gate = asyncio.Event()
    waiters = [asyncio.create_task(store.refetch("example.org")) for _ in range(5)]
    await asyncio.sleep(0)
    source.gate.set()
    await asyncio.gather(*waiters)
    assert source.calls == 2
    await store.refetch("example.org")  # within the cooldown: no fetch
    assert source.calls == 2
    clock.now += POLICY.unknown_key_cooldown
    await store.refetch("example.org")
    assert source.calls == 3
    await store.stop()


async def test_refetch_waits_boundedly() -> None:
    clock, source = Clock(), Source(_doc(("a", KEY_A)))
    store = BundleStore(policy=BundlePolicy(lookup_wait=0.05), clock=clock, sleep=clock.sleep)
    store.register("example.org", CustomSource(source))
    source.gate = asyncio.Event()
    await asyncio.wait_for(store.refetch("example.org"), timeout=1)
    assert store.current("example.org") is None
    source.gate.set()
    await store.stop()


async def test_trust_domains_are_isolated() -> None:
    clock = Clock()
    good, bad = Source(_doc(("a", KEY_A))), Source(None)
    bad.fail = RuntimeError("down")
    store = BundleStore(policy=POLICY, clock=clock, sleep=clock.sleep)
    store.register("good.org", CustomSource(good))
    store.register("bad.org", CustomSource(bad))
    await store.start()
    assert store.current("good.org") is not None and store.current("bad.org") is None
    good_bundle = store.current("good.org")
    assert good_bundle is not None and good_bundle.trust_domain == "good.org"
    assert store.trust_domains() == {"good.org", "bad.org"}
    store.unregister("good.org")
    assert store.current("good.org") is None and not store.registered("good.org")
    await store.stop()


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


async def test_bundle_file_is_read_at_registration_and_on_refetch(tmp_path: Path) -> None:
    clock = Clock()
    path = _write(tmp_path / "b.json", TD.bundle())
    store = BundleStore(policy=POLICY, clock=clock, sleep=clock.sleep)
    authorities: list[int] = []
    store.add_listener(lambda b: authorities.append(len(b.x509_authorities)))
    store.register("example.org", BundleFile(path))
    assert store.current("example.org") is not None and authorities == [1]
    assert store.all_authorities() == [TD.root]
    kid = TD.rotate_jwt()
    _write(path, TD.bundle())
    await store.refetch("example.org")
    assert _kids(store.current("example.org"))[0] == kid
    path.write_text("{broken")
    clock.now += POLICY.unknown_key_cooldown
    await store.refetch("example.org")
    assert _kids(store.current("example.org"))[0] == kid  # the last good one
    assert store.status()["example.org"]["last_error"] == "bundle_not_json"
    await store.stop()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(None, "file_unreadable", id="missing"),
        pytest.param("[]", "bundle_malformed", id="not-a-bundle"),
    ],
)
def test_unusable_bundle_file_fails_registration(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    store = BundleStore()
    with pytest.raises(ValueError, match=fragment):
        store.register("example.org", BundleFile(path))
    assert not store.registered("example.org")
