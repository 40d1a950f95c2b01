"""Pure key decisions: the KEK check, promotion, fallback signing, rewrap (sts/tokens/keyplan.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sts.store.records import ReplicaRecord, SigningKeyRow
from sts.tokens.keyplan import (
    PUBLICATION_MARGIN,
    fresh_replicas,
    kek_refusal,
    kek_verdict,
    plan_rewrap,
    plan_rotation,
    sealing_kek,
    signing_order,
)

NOW = 1_800_000_000.0
DAY = 86_400.0


def row(kid: str, state: str, *, kek: str = "A", alg: str = "ES256", created: float = NOW - 10 * DAY, **kw: object) -> SigningKeyRow:
    base = SigningKeyRow(
        kid=kid, alg=alg, state=state, public_jwk={"kid": kid}, private_key_ciphertext=b"sealed", kek_id=kek,
        created_at=created, activated_at=created if state != "next" else None, retired_at=None,
        not_after=created + 30 * DAY, publish_until=None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def replica(name: str, *keks: str, expires_at: float = NOW + 60) -> ReplicaRecord:
    return ReplicaRecord(replica_id=name, kek_ids=frozenset(keks), started_at=NOW - 600, last_seen=NOW - 5, expires_at=expires_at)


@pytest.mark.parametrize(
    ("held", "replicas", "expected"),
    [
        pytest.param(("NEW",), [], "NEW", id="one-kek"),
        pytest.param(("NEW", "OLD"), [replica("a", "NEW", "OLD")], "NEW", id="everyone-holds-the-new-kek"),
        pytest.param(("NEW", "OLD"), [replica("a", "NEW", "OLD"), replica("b", "OLD")], "OLD", id="roll-out-under-way"),
        pytest.param(("NEW", "OLD"), [replica("b", "OTHER")], "NEW", id="no-common-kek"),
    ],
)
def test_sealing_kek(held: tuple[str, ...], replicas: list[ReplicaRecord], expected: str) -> None:
    assert sealing_kek(held, replicas) == expected


# --- the KEK check -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "opened", "ok"),
    [
        pytest.param([], set(), True, id="empty-store-takes-any-kek"),
        pytest.param([row("a", "active"), row("n", "next")], set(), False, id="opens-none"),
        pytest.param([row("a", "active"), row("n", "next", kek="S")], {"a"}, True, id="opens-some"),
        pytest.param([row("r", "retired")], {"r"}, True, id="opens-a-retired-key"),
    ],
)
def test_kek_verdict(rows: list[SigningKeyRow], opened: set[str], ok: bool) -> None:
    verdict = kek_verdict(rows, opened)
    assert verdict.ok is ok
    assert verdict.total == len(rows) and verdict.opened == len(opened)


def test_kek_refusal_is_one_line_naming_source_and_stored_keks() -> None:
    verdict = kek_verdict([row("a", "active", kek="1111"), row("b", "next", kek="2222")], set())
    problem, fix = kek_refusal(verdict, origin="STS_KEK_FILE=deploy/kek", kek_id="9999")
    assert "\n" not in problem + fix
    for part in ("STS_KEK_FILE=deploy/kek", "9999", "1111, 2222", "2 stored", "nothing was changed"):
        assert part in problem
    assert "STS_KEK_FILE" in fix


# --- promotion ---------------------------------------------------------------------------------
def test_promotes_oldest_next_that_every_replica_can_open() -> None:
    rows = [row("a", "active"), row("n1", "next", created=NOW - 5 * DAY), row("n2", "next", created=NOW - DAY)]
    plan = plan_rotation("ES256", rows, usable={"n1", "n2"}, held_kek_ids={"A"}, replicas=[replica("r1", "A"), replica("r2", "A", "B")])
    assert (plan.promote, plan.expect_active, plan.withdraw, plan.new_next, plan.blocked) == ("n1", "a", (), True, ())


def test_issue_scenario_stray_next_is_never_promoted_but_withdrawn() -> None:
    """A command with a stray KEK sealed a next key under it; the next rotation, with the right
    KEK and every replica holding the right KEK, must not promote it."""
    rows = [row("a", "active"), row("stray", "next", kek="STRAY")]
    plan = plan_rotation("ES256", rows, usable=set(), held_kek_ids={"A"}, replicas=[replica("r1", "A"), replica("r2", "A")])
    assert plan.promote is None
    assert plan.withdraw == ("stray",)
    assert plan.new_next is True
    assert any("does not open" in b for b in plan.blocked)


def test_next_under_a_kek_a_replica_holds_is_kept_but_not_promoted_by_who_cannot_open_it() -> None:
    # During a KEK roll-out an old process (KEK A only) meets a next key sealed under B by a new one.
    rows = [row("a", "active"), row("nb", "next", kek="B")]
    plan = plan_rotation("ES256", rows, usable=set(), held_kek_ids={"A"}, replicas=[replica("new", "B", "A"), replica("old", "A")])
    assert plan.promote is None and plan.withdraw == () and plan.new_next is False
    assert len(plan.blocked) == 2  # cannot open it here, and replica "old" lacks B


def test_lagging_replica_blocks_promotion_without_piling_up_next_keys() -> None:
    rows = [row("a", "active"), row("nb", "next", kek="B")]
    plan = plan_rotation("ES256", rows, usable={"nb"}, held_kek_ids={"B", "A"}, replicas=[replica("new", "B", "A"), replica("old", "A")])
    assert plan.promote is None and plan.withdraw == () and plan.new_next is False
    assert plan.blocked == ("replica old does not hold KEK id B, which next key nb is sealed under",)


def test_expired_replica_reports_do_not_count() -> None:
    reports = [replica("gone", "A", expires_at=NOW - 1), replica("here", "B", expires_at=NOW + 1)]
    assert [r.replica_id for r in fresh_replicas(reports, NOW)] == ["here"]
    rows = [row("a", "active"), row("nb", "next", kek="B")]
    plan = plan_rotation("ES256", rows, usable={"nb"}, held_kek_ids={"B"}, replicas=fresh_replicas(reports, NOW))
    assert plan.promote == "nb"


def test_corrupt_next_under_our_own_kek_is_withdrawn_and_a_good_one_promoted() -> None:
    rows = [row("a", "active"), row("bad", "next", created=NOW - 5 * DAY), row("good", "next", created=NOW - DAY)]
    plan = plan_rotation("ES256", rows, usable={"good"}, held_kek_ids={"A"}, replicas=[replica("r1", "A")])
    assert (plan.promote, plan.withdraw, plan.new_next, plan.blocked) == ("good", ("bad",), True, ())


def test_no_next_key_asks_for_one() -> None:
    plan = plan_rotation("ES256", [row("a", "active")], usable=set(), held_kek_ids={"A"}, replicas=[])
    assert plan.promote is None and plan.new_next is True and plan.blocked == ("there is no next ES256 key to promote yet",)


def test_rotation_looks_at_its_own_algorithm_only() -> None:
    rows = [row("a", "active"), row("rsn", "next", alg="RS256", kek="STRAY"), row("n", "next")]
    plan = plan_rotation("ES256", rows, usable={"n"}, held_kek_ids={"A"}, replicas=[])
    assert plan.promote == "n" and plan.withdraw == ()


# --- signing with a fallback -------------------------------------------------------------------
def test_active_key_signs_when_usable() -> None:
    rows = [row("old", "retired", created=NOW - 40 * DAY, not_after=NOW + DAY, publish_until=NOW + 3600),
            row("a", "active"), row("n", "next")]
    order = signing_order("ES256", rows, usable={"old", "a", "n"}, now=NOW)
    assert order.degraded is None
    assert [(c.kid, c.fallback) for c in order.candidates] == [("a", False), ("old", True)]


def test_unusable_active_falls_back_to_newest_valid_retired_key() -> None:
    rows = [
        row("older", "retired", created=NOW - 50 * DAY, not_after=NOW + 2 * DAY, publish_until=NOW + 7200),
        row("old", "retired", created=NOW - 40 * DAY, not_after=NOW + DAY, publish_until=NOW + 3600),
        row("a", "active", kek="OTHER", created=NOW - 60),
        row("n", "next"),
    ]
    order = signing_order("ES256", rows, usable={"older", "old", "n"}, now=NOW)
    assert order.degraded is not None and "a" in order.degraded and "OTHER" in order.degraded
    assert [c.kid for c in order.candidates] == ["old", "older"]  # newest first; next never signs
    # A token it signs must expire before the key leaves the JWKS.
    assert order.candidates[0].not_after == NOW + 3600 - PUBLICATION_MARGIN
    assert all(c.fallback for c in order.candidates)


def test_no_usable_key_is_unavailable_with_a_reason() -> None:
    rows = [row("old", "retired", not_after=NOW + DAY, publish_until=NOW + PUBLICATION_MARGIN - 1), row("a", "active", kek="OTHER")]
    order = signing_order("ES256", rows, usable={"old"}, now=NOW)
    assert order.candidates == () and order.degraded is not None


def test_expired_active_key_without_fallback() -> None:
    order = signing_order("ES256", [row("a", "active", not_after=NOW - 1)], usable={"a"}, now=NOW)
    assert order.candidates == () and order.degraded == "no valid active ES256 key"


def test_duplicate_active_keys_newest_signs_other_is_fallback() -> None:
    rows = [row("a1", "active", not_after=NOW + DAY), row("a2", "active", not_after=NOW + 2 * DAY)]
    order = signing_order("ES256", rows, usable={"a1", "a2"}, now=NOW)
    assert order.degraded is None and [c.kid for c in order.candidates] == ["a2", "a1"]


# --- rewrap ------------------------------------------------------------------------------------
def test_rewrap_plan() -> None:
    rows = [row("a", "active", kek="OLD"), row("n", "next", kek="NEW"), row("r", "retired", kek="OLD")]
    plan = plan_rewrap(rows, current_kek_id="NEW", opened={"a", "r"}, replicas=[replica("r1", "NEW", "OLD")])
    assert (plan.reseal, plan.already_current, plan.unopenable, plan.lagging_replicas, plan.refused) == (("a", "r"), 1, (), (), False)


@pytest.mark.parametrize(
    ("opened", "replicas", "unopenable", "lagging"),
    [
        pytest.param({"a"}, [], ("r",), (), id="a-key-opens-with-no-kek-at-hand"),
        pytest.param({"a", "r"}, [replica("old", "OLD")], (), ("old",), id="a-replica-lacks-the-new-kek"),
    ],
)
def test_rewrap_refusals(opened: set[str], replicas: list[ReplicaRecord], unopenable: tuple[str, ...], lagging: tuple[str, ...]) -> None:
    rows = [row("a", "active", kek="OLD"), row("r", "retired", kek="OLDER")]
    plan = plan_rewrap(rows, current_kek_id="NEW", opened=opened, replicas=replicas)
    assert plan.refused and plan.unopenable == unopenable and plan.lagging_replicas == lagging
