"""Kill switches and revocations in the database, and the view that replicas hold (every backend)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from sts.lifecycle.view import LifecycleView
from sts.store.lifecycle import KILLS, REVOCATIONS, LifecycleRepository, jti_selector, selector
from sts.store.records import IssuedTokenRecord
from sts.store.writer import GroupCommitWriter

NOW = 10_000.0


def issued(jti: str, *, identity: str = "wl:a", issuer: str = "local", client: str | None = "worker",
           sha: str = "a" * 64, expires_at: float = NOW + 600, parent: str | None = None) -> IssuedTokenRecord:
    return IssuedTokenRecord(jti=jti, identity=identity, issuer_name=issuer, audience="https://api", scopes="read",
                             issued_at=NOW - 10, expires_at=expires_at, subject_token_sha256=sha, client_id=client,
                             signing_kid="k1", parent_jti=parent)


def write(engine: Engine, *records: IssuedTokenRecord) -> None:
    writer = GroupCommitWriter(engine)
    writer.start()
    try:
        async def go() -> None:
            await writer.write(*records)
        asyncio.run(go())
    finally:
        writer.stop()


def test_kill_lift_and_history(engine: Engine) -> None:
    repo = LifecycleRepository(engine)
    before = repo.versions().get(KILLS, 0)
    k1 = repo.kill(kind="identity", value="wl:a", now=NOW, until=None, reason="leak", actor="alice")
    repo.kill(kind="grant", value="agents", now=NOW, until=NOW + 60, reason="", actor="bob")
    assert repo.versions().get(KILLS, 0) == before + 2
    assert [(k.kind, k.value) for k in repo.active_kills(NOW)] == [("identity", "wl:a"), ("grant", "agents")]
    assert [k.kind for k in repo.active_kills(NOW + 60)] == ["identity"]  # the timed one ended by itself
    lifted = repo.lift(kind="identity", value="wl:a", now=NOW + 1, reason="rotated", actor="carol")
    assert [k.id for k in lifted] == [k1.id] and lifted[0].lifted_by == "carol"
    assert repo.lift(kind="identity", value="wl:a", now=NOW + 2, reason="", actor="carol") == []
    assert repo.versions().get(KILLS, 0) == before + 3  # a lift of nothing moves nothing
    history = {k.id: k for k in repo.all_kills()}
    assert (history[k1.id].actor, history[k1.id].reason, history[k1.id].lift_reason, history[k1.id].lifted_at) == (
        "alice", "leak", "rotated", NOW + 1)
    with pytest.raises(ValueError):
        repo.kill(kind="everything", value="x", now=NOW, until=None, reason="", actor="x")


@pytest.mark.parametrize(("kind", "value", "expected"), [
    pytest.param("jti", "t1", {"t1"}, id="jti"),
    pytest.param("identity", "wl:b", {"t2"}, id="identity"),
    pytest.param("issuer", "other", {"t3"}, id="issuer"),
    pytest.param("trust_domain", "example.org", {"t4"}, id="trust-domain"),
    pytest.param("client", "worker", {"t1", "t2", "t3"}, id="client"),
    pytest.param("subject_sha256", "B" * 64, {"t2"}, id="subject-sha256"),
])
def test_selectors_pick_valid_unrevoked_tokens(engine: Engine, kind: str, value: str, expected: set[str]) -> None:
    tag = f"{kind}-"
    write(engine,
          issued(tag + "t1"), issued(tag + "t2", identity="wl:b", sha="b" * 64), issued(tag + "t3", issuer="other"),
          issued(tag + "t4", identity="spiffe://example.org/agent", issuer="example.org", client=None),
          issued(tag + "old", expires_at=NOW - 1))
    repo = LifecycleRepository(engine)
    if kind == "jti":
        value = tag + value
    rows = {r["jti"] for r in repo.revocable(selector(kind, value), NOW) if r["jti"].startswith(tag)}
    assert rows == {tag + e for e in expected}


def test_grant_selector_follows_the_issuing_audit_record(engine: Engine) -> None:
    from store_support import audit

    write(engine, issued("g1"), issued("g2"), audit(1, outcome="issued", grant="agents", issued_jti="g1"),
          audit(2, outcome="issued", grant="other", issued_jti="g2"), audit(3, outcome="denied", grant="agents", issued_jti=None))
    rows = LifecycleRepository(engine).revocable(selector("grant", "agents"), NOW)
    assert [r["jti"] for r in rows] == ["g1"]


def test_revoke_lineage_and_the_revoked_set(engine: Engine) -> None:
    write(engine, issued("root"), issued("child", parent="root"), issued("grandchild", parent="child"),
          issued("other", parent="unrelated"))
    repo = LifecycleRepository(engine)
    assert set(repo.lineage("root", NOW)) == {"root", "child", "grandchild"}
    before = repo.versions().get(REVOCATIONS, 0)
    assert repo.revoke(repo.lineage("root", NOW), now=NOW, reason="alice: leak") == 3
    assert repo.revoke(["root"], now=NOW, reason="again") == 0  # already revoked: unchanged
    assert repo.versions().get(REVOCATIONS, 0) == before + 1
    revoked = repo.revoked_valid(NOW)
    assert {"root", "child", "grandchild"} <= set(revoked) and "other" not in revoked
    assert repo.revocable(jti_selector(["root", "other"]), NOW)[0]["jti"] == "other"
    assert repo.token("root")["revoked_reason"] == "alice: leak"  # type: ignore[index]


def test_view_follows_changes_by_polling_and_keeps_state_on_errors(engine: Engine) -> None:
    repo = LifecycleRepository(engine)
    view = LifecycleView(engine, poll_interval=0.05, clock=lambda: NOW)
    assert view.refresh_now() is True
    assert view.refresh_now() is False  # nothing moved: no reload
    kill = repo.kill(kind="client", value="view-client", now=NOW, until=None, reason="", actor="t")
    assert view.refresh_now() is True
    held = view.snapshot
    assert held.is_killed(None, None, "view-client", None, NOW) is not None
    repo.lift(kind="client", value="view-client", now=NOW, reason="", actor="t")
    view.refresh_now()
    assert view.snapshot.is_killed(None, None, "view-client", None, NOW) is None
    assert held.kills[("client", "view-client")].id == kill.id  # the old snapshot was not changed


def test_view_background_poll(engine: Engine) -> None:
    repo = LifecycleRepository(engine)

    async def go() -> bool:
        view = LifecycleView(engine, poll_interval=0.05, clock=lambda: NOW)
        await view.start()
        try:
            await asyncio.to_thread(repo.kill, kind="grant", value="bg", now=NOW, until=None, reason="", actor="t")
            for _ in range(100):
                if view.snapshot.is_killed(None, None, None, "bg", NOW) is not None:
                    return True
                await asyncio.sleep(0.02)
            return False
        finally:
            await view.stop()

    assert asyncio.run(go())


def test_concurrent_kills_each_move_the_version(engine: Engine) -> None:
    repo = LifecycleRepository(engine)
    before = repo.versions().get(KILLS, 0)
    threads = [threading.Thread(target=repo.kill, kwargs={"kind": "identity", "value": f"c{i}", "now": NOW, "until": None,
                                                         "reason": "", "actor": "t"}) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert repo.versions().get(KILLS, 0) == before + 6


def test_notify_is_sent_with_the_change(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL only")
    with engine.connect() as listener:
        listener.execute(text("LISTEN sts_lifecycle"))
        listener.commit()
        LifecycleRepository(engine).kill(kind="identity", value="notified", now=NOW, until=None, reason="", actor="t")
        raw = listener.connection.dbapi_connection
        notes = list(raw.notifies(timeout=5, stop_after=1))  # type: ignore[union-attr]
    assert notes and notes[0].channel == "sts_lifecycle" and notes[0].payload == KILLS


def test_view_follows_a_notification_before_its_next_poll(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL only")
    repo = LifecycleRepository(engine)

    async def go() -> bool:
        # A poll interval far beyond the test: only the notification can bring the kill in time.
        view = LifecycleView(engine, poll_interval=60.0, clock=lambda: NOW)
        await view.start()
        try:
            for _ in range(200):
                if view.listening:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)  # the wake-up after LISTEN has been consumed
            await asyncio.to_thread(repo.kill, kind="identity", value="by-notify", now=NOW, until=None, reason="", actor="t")
            for _ in range(250):
                if view.snapshot.is_killed("by-notify", None, None, None, NOW) is not None:
                    return True
                await asyncio.sleep(0.02)
            return False
        finally:
            await view.stop()

    assert asyncio.run(go())
