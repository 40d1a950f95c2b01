"""Approval requests in the database (sts.store.approvals) and the view replicas hold
(sts.approvals.view), on every backend: idempotent recording, the per-identity bound, the
approve / deny / revoke transitions with who and when, races between replicas, and the view
following a change by polling and (PostgreSQL) by notification through the lifecycle listener."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from sts.approvals.decision import Ask
from sts.approvals.view import ApprovalView
from sts.lifecycle.view import LifecycleView
from sts.store.approvals import ApprovalNotFound, ApprovalRepository, ApprovalStateError
from sts.store.models import approvals

NOW = 50_000.0


def asked(repo: ApprovalRepository, *, identity: str = "wl:agent-1", scopes: tuple[str, ...] = ("admin",),
          now: float = NOW, max_pending: int = 5, request_ttl: float = 600, request_id: str = "req-1") -> Any:
    a = Ask.of(identity=identity, issuer="local", client="worker", actor="wl:gateway", target="https://db.example.com",
               scopes=scopes, grant="agents")
    return repo.request(fingerprint=a.fingerprint, identity=identity, issuer_name="local", client_id="worker",
                        actor_identity="wl:gateway", grant="agents", target=a.target, request=a.what(), elevated=["admin"],
                        request_id=request_id, now=now, request_ttl=request_ttl, max_window=7200, max_pending=max_pending)


def rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(approvals)).scalar_one())


def test_a_request_is_recorded_once_with_who_asked_for_what(engine: Engine) -> None:
    repo = ApprovalRepository(engine)
    before = repo.version()
    first = asked(repo)
    assert first.status == "pending" and first.created and first.id.startswith("apr_") and first.until == NOW + 600
    again = asked(repo, now=NOW + 5, request_id="req-2")
    assert (again.status, again.id, again.created) == ("pending", first.id, False)
    assert rows(engine) == 1 and repo.version() == before + 1  # asking again writes nothing
    record = repo.get(first.id)
    assert (record.identity, record.issuer_name, record.client_id, record.actor_identity, record.grant, record.target,
            record.request, record.elevated, record.request_id, record.requested_at, record.max_window) == (
        "wl:agent-1", "local", "worker", "wl:gateway", "agents", "https://db.example.com",
        {"target": "https://db.example.com", "scopes": ["admin"]}, ["admin"], "req-1", NOW, 7200)
    assert record.state(NOW) == "pending" and record.state(NOW + 600) == "expired"


def test_pending_requests_per_identity_are_bounded(engine: Engine) -> None:
    repo = ApprovalRepository(engine)
    made = [asked(repo, scopes=("admin", f"s{i}"), max_pending=3) for i in range(3)]
    assert all(m.created for m in made)
    assert asked(repo, scopes=("admin", "s9"), max_pending=3).status == "limit"
    assert asked(repo, scopes=("admin", "s0"), max_pending=3).id == made[0].id  # a known one is still answered
    assert asked(repo, identity="wl:agent-2", max_pending=3).created  # the bound is per identity
    repo.deny(made[0].id, by="alice", reason="", now=NOW + 1)
    assert asked(repo, scopes=("admin", "s9"), max_pending=3, now=NOW + 2).created  # room again
    assert rows(engine) == 5


def test_a_lapsed_request_is_replaced_by_a_new_one(engine: Engine) -> None:
    repo = ApprovalRepository(engine)
    old = asked(repo, request_ttl=60)
    new = asked(repo, request_ttl=60, now=NOW + 61)
    assert new.created and new.id != old.id
    assert repo.get(old.id).status == "expired"
    with pytest.raises(ApprovalStateError, match="expired"):
        repo.approve(old.id, by="alice", window=60, reason="", now=NOW + 62)


def test_approve_deny_revoke_record_who_and_when(engine: Engine) -> None:
    repo = ApprovalRepository(engine)
    a, d = asked(repo).id, asked(repo, scopes=("admin", "x")).id
    v = repo.version()
    approved = repo.approve(a, by="alice", window=3600, reason="change 7", now=NOW + 10)
    assert (approved.status, approved.expires_at, approved.decided_by, approved.decided_at, approved.decision_reason) == (
        "approved", NOW + 3610, "alice", NOW + 10, "change 7")
    assert asked(repo, now=NOW + 20).status == "approved"  # no new request beside an approval
    denied = repo.deny(d, by="bob", reason="no", now=NOW + 10)
    assert (denied.status, denied.decided_by, denied.expires_at) == ("denied", "bob", NOW + 10 + 600)
    held = asked(repo, scopes=("admin", "x"), now=NOW + 20)
    assert (held.status, held.id) == ("denied", d)  # the denial answers, nothing new is recorded
    revoked = repo.revoke(a, by="carol", reason="done", now=NOW + 30)
    assert (revoked.status, revoked.revoked_by, revoked.revoked_at, revoked.revoke_reason, revoked.decided_by) == (
        "revoked", "carol", NOW + 30, "done", "alice")
    assert repo.version() == v + 3
    again = asked(repo, now=NOW + 40)
    assert again.created and again.id != a  # after a revocation the same request waits again
    assert rows(engine) == 3


@pytest.mark.parametrize(("change", "message"), [
    pytest.param(lambda r, i: r.approve(i, by="x", window=7201, reason="", now=NOW), "between", id="window-too-long"),
    pytest.param(lambda r, i: r.revoke(i, by="x", reason="", now=NOW), "pending, not approved", id="revoke-pending"),
    pytest.param(lambda r, i: (r.deny(i, by="x", reason="", now=NOW), r.approve(i, by="x", window=60, reason="", now=NOW)),
                 "denied, not pending", id="approve-denied"),
    pytest.param(lambda r, i: (r.approve(i, by="x", window=60, reason="", now=NOW), r.deny(i, by="x", reason="", now=NOW)),
                 "approved, not pending", id="deny-approved"),
    pytest.param(lambda r, i: (r.approve(i, by="x", window=60, reason="", now=NOW),
                               r.revoke(i, by="x", reason="", now=NOW + 60)), "expired", id="revoke-expired"),
])
def test_changes_that_the_state_does_not_allow(engine: Engine, change: Callable[[ApprovalRepository, str], Any],
                                               message: str) -> None:
    repo = ApprovalRepository(engine)
    with pytest.raises(ApprovalStateError, match=message):
        change(repo, asked(repo).id)


def test_unknown_id(engine: Engine) -> None:
    repo = ApprovalRepository(engine)
    for call in (lambda: repo.get("apr_nope"), lambda: repo.approve("apr_nope", by="x", window=1, reason="", now=NOW),
                 lambda: repo.revoke("apr_nope", by="x", reason="", now=NOW)):
        with pytest.raises(ApprovalNotFound):
            call()


def test_list_what_counts_and_the_history(engine: Engine) -> None:
    repo = ApprovalRepository(engine)
    a = asked(repo, now=NOW).id
    b = asked(repo, scopes=("admin", "b"), now=NOW + 1).id
    c = asked(repo, identity="wl:agent-2", now=NOW + 2).id
    repo.approve(a, by="x", window=60, reason="", now=NOW + 3)
    repo.revoke(a, by="x", reason="", now=NOW + 4)
    assert [r.id for r in repo.list(now=NOW + 5)] == [c, b]
    assert [r.id for r in repo.list(now=NOW + 5, include_all=True)] == [c, b, a]
    assert [r.id for r in repo.list(now=NOW + 5, identity="wl:agent-2")] == [c]
    assert {r.id: r.state(NOW + 5) for r in repo.standing(NOW + 5)} == {b: "pending", c: "pending"}


def test_replicas_recording_the_same_request_at_once_make_one_row(engine: Engine,
                                                                 make_db_engine: Callable[[], Engine]) -> None:
    replicas = [ApprovalRepository(make_db_engine()) for _ in range(6)]
    results: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(replicas))

    def record(repo: ApprovalRepository) -> None:
        start.wait()
        try:
            results.append(asked(repo, scopes=("admin", "race")))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.id for r in results}) == 1 and sum(r.created for r in results) == 1
    assert rows(engine) == 1


def test_replicas_cannot_exceed_the_bound_together(engine: Engine, make_db_engine: Callable[[], Engine]) -> None:
    replicas = [ApprovalRepository(make_db_engine()) for _ in range(6)]
    results: list[Any] = []
    start = threading.Barrier(len(replicas))

    def record(i: int, repo: ApprovalRepository) -> None:
        start.wait()
        results.append(asked(repo, scopes=("admin", f"b{i}"), max_pending=2))

    threads = [threading.Thread(target=record, args=(i, r)) for i, r in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.created for r in results) == 2 and sum(r.status == "limit" for r in results) == 4


def test_view_follows_changes_and_keeps_old_snapshots_intact(engine: Engine) -> None:
    repo = ApprovalRepository(engine)
    view = ApprovalView(engine, poll_interval=0.05, clock=lambda: NOW + 1)
    assert view.refresh_now() is True
    assert view.refresh_now() is False  # nothing moved: no reload
    made = asked(repo)
    fingerprint = repo.get(made.id).fingerprint
    assert view.refresh_now() is True
    held = view.snapshot
    assert held.lookup(fingerprint, NOW + 1).status == "pending"  # type: ignore[union-attr]
    repo.approve(made.id, by="x", window=60, reason="", now=NOW)
    view.refresh_now()
    assert view.snapshot.lookup(fingerprint, NOW + 1).status == "approved"  # type: ignore[union-attr]
    assert view.snapshot.lookup(fingerprint, NOW + 60) is None  # over without a reload
    assert held.lookup(fingerprint, NOW + 1).status == "pending"  # type: ignore[union-attr]


def test_view_background_poll(engine: Engine) -> None:
    repo = ApprovalRepository(engine)

    async def go() -> bool:
        view = ApprovalView(engine, poll_interval=0.05, clock=lambda: NOW)
        await view.start()
        try:
            made = await asyncio.to_thread(asked, repo, identity="wl:bg")
            for _ in range(100):
                if any(s.id == made.id for s in view.snapshot.standing.values()):
                    return True
                await asyncio.sleep(0.02)
            return False
        finally:
            await view.stop()

    assert asyncio.run(go())


def test_view_follows_a_notification_through_the_lifecycle_listener(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL only")
    repo = ApprovalRepository(engine)

    async def go() -> bool:
        # Poll intervals far beyond the test: only the notification can bring the change in time.
        lifecycle = LifecycleView(engine, poll_interval=60.0, clock=lambda: NOW)
        view = ApprovalView(engine, poll_interval=60.0, clock=lambda: NOW)
        lifecycle.followers.append(view.wake)
        await lifecycle.start()
        await view.start()
        try:
            for _ in range(200):
                if lifecycle.listening:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            made = await asyncio.to_thread(asked, repo, identity="wl:notified")
            for _ in range(250):
                if any(s.id == made.id for s in view.snapshot.standing.values()):
                    return True
                await asyncio.sleep(0.02)
            return False
        finally:
            await view.stop()
            await lifecycle.stop()

    assert asyncio.run(go())


def test_an_unreachable_database_is_told_apart() -> None:
    from broker_harness import free_port
    from sts.store.db import make_engine
    from sts.store.errors import StoreUnavailable

    engine = make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    try:
        with pytest.raises(StoreUnavailable):  # the exchange answers temporarily_unavailable (sts.availability)
            asked(ApprovalRepository(engine))
    finally:
        engine.dispose()
