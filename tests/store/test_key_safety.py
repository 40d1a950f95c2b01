"""Keys that cannot take the fleet down: wrong KEK, promotion only of keys every replica can
open, fallback signing, KEK rewrap while replicas serve. Every backend; each ``KeyRing`` on
its own engine stands for one replica (or one ``sts keys`` command)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace

import pytest
from sqlalchemy.engine import Engine

from sts.store.keys import KeyRepository
from sts.store.replicas import ReplicaRepository
from sts.tokens.keyring import KekMismatch, KeyEncryptor, KeyRing, KeyUnavailable

DAY = 86_400.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def replica(engine: Engine, make_db_engine: Callable[[], Engine], clock: Clock) -> Callable[..., KeyRing]:
    """``replica(kek, previous=(), name=None)``: a key ring on its own engine; with a name it
    reports itself like a running broker."""
    del engine  # migrated and emptied first

    def make(kek: bytes, previous: tuple[bytes, ...] = (), name: str | None = None) -> KeyRing:
        eng = make_db_engine()
        ring = KeyRing(KeyRepository(eng), KeyEncryptor(kek, previous), key_lifetime=30 * DAY, max_token_lifetime=3600,
                       clock=clock, replicas=ReplicaRepository(eng), replica_id=name, replica_ttl=95.0)
        if name is not None:
            ring.report_replica()
        return ring

    return make


def kids(ring: KeyRing, state: str) -> set[str]:
    return {r.kid for r in ring._repo.list() if r.alg == "ES256" and r.state == state}


# --- the KEK check -----------------------------------------------------------------------------
def test_wrong_kek_is_refused_and_a_right_one_accepted(replica: Callable[..., KeyRing]) -> None:
    right, wrong = os.urandom(32), os.urandom(32)
    assert replica(wrong).check_kek().ok  # an empty store takes any KEK
    replica(right).ensure(["ES256"])
    with pytest.raises(KekMismatch, match="opens none of the 2 stored signing keys"):
        replica(wrong).require_kek("STS_KEK")
    replica(right).require_kek("STS_KEK")
    replica(wrong, previous=(right,)).require_kek("STS_KEK")  # the previous KEK opens them


# --- promotion -----------------------------------------------------------------------------------
def test_issue_scenario_a_key_sealed_under_a_stray_kek_is_never_promoted(replica: Callable[..., KeyRing], clock: Clock) -> None:
    right, stray = os.urandom(32), os.urandom(32)
    web1, web2 = replica(right, name="web-1"), replica(right, name="web-2")
    web1.ensure(["ES256"])
    # What the stray-KEK command used to leave behind: the next key sealed under its own KEK.
    (good_next,) = kids(web1, "next")
    stray_ring = replica(stray)
    web1._repo.replace_next(alg="ES256", withdraw=[good_next], new_next=stray_ring._new_row("ES256", "next", clock.now), now=clock.now)
    web1._repo.prune(clock.now + 1)
    (stray_next,) = kids(web1, "next")
    active_before = kids(web1, "active")

    cli = replica(right)  # the next rotation, with the right KEK
    outcome = cli.rotate_alg("ES256")
    assert outcome.promoted is None and outcome.withdrawn == (stray_next,) and outcome.new_next
    assert kids(cli, "active") == active_before
    for ring in (web1, web2):
        ring.refresh()
        assert ring.ready(["ES256"]) and not ring.degraded()
        assert ring.active("ES256").private.kid in active_before

    clock.now += 60
    promoted = cli.rotate("ES256")  # the fresh next key, sealed under the right KEK
    assert promoted == outcome.new_next
    for ring in (web1, web2):
        ring.refresh()
        assert ring.active("ES256").private.kid == promoted and not ring.degraded()


def test_promotion_waits_for_every_replica_to_hold_the_kek(replica: Callable[..., KeyRing], clock: Clock) -> None:
    old, new = os.urandom(32), os.urandom(32)
    replica(old).ensure(["ES256"])
    upgraded = replica(new, previous=(old,), name="web-new")
    # Alone, the upgraded replica seals the new next key under the new KEK ...
    assert upgraded.rotate("ES256") is not None
    sealed_new = kids(upgraded, "next")
    assert {r.kek_id for r in upgraded._repo.list() if r.kid in sealed_new} == {upgraded.current_kek_id}
    # ... which a replica that then starts with only the old KEK cannot open: no promotion.
    lagging = replica(old, name="web-old")
    blocked = upgraded.rotate_alg("ES256")
    assert blocked.promoted is None and blocked.withdrawn == () and blocked.new_next is None
    assert blocked.blocked and "web-old" in blocked.blocked[0]
    assert kids(upgraded, "next") == sealed_new  # nothing piled up
    lagging.refresh()
    assert lagging.ready(["ES256"]) and not lagging.degraded()

    clock.now += 100  # web-old stopped reporting (replaced): its report expires
    upgraded.report_replica()
    assert upgraded.rotate("ES256") in sealed_new


def test_during_a_kek_roll_out_new_keys_are_sealed_under_the_kek_every_replica_holds(
    replica: Callable[..., KeyRing],
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    replica(old).ensure(["ES256"])
    lagging = replica(old, name="web-old")
    upgraded = replica(new, previous=(old,), name="web-new")
    promoted = upgraded.rotate("ES256")
    assert promoted is not None
    (new_next,) = kids(upgraded, "next")
    assert next(r for r in upgraded._repo.list() if r.kid == new_next).kek_id == lagging.current_kek_id
    assert lagging.rotate("ES256") == new_next  # the old replica can open and promote it
    upgraded.ensure(["RS256"])  # a new algorithm too
    lagging.refresh()
    assert lagging.ready(["ES256", "RS256"]) and not lagging.degraded()


def test_a_replica_that_cannot_open_the_next_key_does_not_withdraw_it_while_others_hold_its_kek(
    replica: Callable[..., KeyRing],
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    replica(old).ensure(["ES256"])
    upgraded = replica(new, previous=(old,), name="web-new")
    upgraded.rotate("ES256")
    sealed_new = kids(upgraded, "next")
    lagging = replica(old, name="web-old")
    outcome = lagging.rotate_alg("ES256")
    assert outcome.promoted is None and outcome.withdrawn == ()
    assert kids(lagging, "next") == sealed_new


# --- fallback signing ----------------------------------------------------------------------------
def test_unusable_active_key_falls_back_to_a_valid_retired_key(
    replica: Callable[..., KeyRing], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    right, other = os.urandom(32), os.urandom(32)
    web = replica(right, name="web-1")
    web.ensure(["ES256"])
    first = web.active("ES256").private.kid
    # An active key this replica cannot open, as an unchecked promotion would leave it: the
    # next key re-sealed under another KEK, then promoted behind the plan's back.
    (nxt,) = kids(web, "next")
    other_ring = replica(other)
    row = next(r for r in web._repo.list() if r.kid == nxt)
    pem = web._enc.open(row.private_key_ciphertext, row.kid, row.kek_id)
    assert web._repo.rewrap([(nxt, row.kek_id, other_ring._enc.seal(pem, nxt), other_ring._enc.kek_id)])
    assert web._repo.rotate(alg="ES256", expect_active_kid=first, new_next=web._new_row("ES256", "next", clock.now),
                            now=clock.now, active_not_after=clock.now + 30 * DAY, publish_until_for_retired=clock.now + 3900)

    with caplog.at_level(logging.ERROR, logger="sts.keys"):
        web.refresh()
    key = web.active("ES256")
    assert key.private.kid == first and key.fallback
    assert key.not_after == clock.now + 3900 - 300  # its tokens expire before it leaves the JWKS
    assert web.ready(["ES256"])
    assert nxt in web.degraded(["ES256"])["ES256"]
    assert web.fallback_signatures == 1
    assert any(r.getMessage().startswith("signing with a fallback key") for r in caplog.records)

    clock.now += 3900 - 300  # the retired key's publication is about to end: nothing left
    web.refresh()
    assert not web.ready(["ES256"])
    with pytest.raises(KeyUnavailable):
        web.active("ES256")


# --- KEK rotation --------------------------------------------------------------------------------
def test_rewrap_while_replicas_serve(replica: Callable[..., KeyRing], clock: Clock) -> None:
    old, new = os.urandom(32), os.urandom(32)
    seed = replica(old)
    seed.ensure(["ES256", "RS256"])
    seed.rotate("ES256")  # a retired key too
    stored = {r.kid for r in seed._repo.list()}

    # Step 1: replicas restart with the new KEK current and the old one previous.
    still_old = replica(old, name="web-0")
    web1, web2 = replica(new, previous=(old,), name="web-1"), replica(new, previous=(old,), name="web-2")
    for ring in (web1, web2):
        ring.refresh()
    signing = {ring: ring.active("ES256").private.kid for ring in (web1, web2)}

    cli = replica(new, previous=(old,))
    refused = cli.rewrap()
    assert not refused.applied and refused.plan.lagging_replicas == ("web-0",)
    assert {r.kek_id for r in cli._repo.list()} == {seed._enc.kek_id}  # nothing changed
    still_old.leave()

    # Step 2: rewrap, in one transaction; the replicas keep signing with the same keys.
    assert cli.rewrap(dry_run=True).plan.reseal and {r.kek_id for r in cli._repo.list()} == {seed._enc.kek_id}
    done = cli.rewrap()
    assert done.applied and set(done.plan.reseal) == stored
    assert {r.kek_id for r in cli._repo.list()} == {cli._enc.kek_id}
    for ring in (web1, web2):
        assert ring.active("ES256").private.kid == signing[ring]  # before its refresh
        ring.refresh()
        assert ring.active("ES256").private.kid == signing[ring] and ring.ready(["ES256", "RS256"]) and not ring.degraded()

    # Step 3: the old KEK can go; a process holding only it is now refused.
    fresh = replica(new)
    fresh.require_kek("STS_KEK")
    fresh.refresh()
    assert fresh.ready(["ES256", "RS256"]) and not fresh.degraded()
    with pytest.raises(KekMismatch):
        replica(old).require_kek("STS_KEK")
    assert cli.rewrap().plan.reseal == ()  # nothing left to do


def test_rewrap_refuses_a_key_no_kek_at_hand_opens(replica: Callable[..., KeyRing], clock: Clock) -> None:
    old, new, lost = os.urandom(32), os.urandom(32), os.urandom(32)
    seed = replica(old)
    seed.ensure(["ES256"])
    orphan = replace(replica(lost)._new_row("ES256", "retired", clock.now), publish_until=clock.now + 3600)
    seed._repo.insert(orphan)
    before = seed._repo.list()
    outcome = replica(new, previous=(old,)).rewrap()
    assert not outcome.applied and outcome.plan.unopenable == (orphan.kid,)
    assert seed._repo.list() == before
