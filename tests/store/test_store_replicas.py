"""Replica reports and the key repository's promotion, withdrawal and rewrap (every backend)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from sqlalchemy import text
from sqlalchemy.engine import Engine

from sts.store.keys import KeyRepository
from sts.store.records import ReplicaRecord
from sts.store.replicas import ReplicaRepository
from test_store_keys import key, states


def report(name: str, *keks: str, seen: float = 1_000.0, ttl: float = 90.0) -> ReplicaRecord:
    return ReplicaRecord(replica_id=name, kek_ids=frozenset(keks), started_at=500.0, last_seen=seen, expires_at=seen + ttl)


def test_report_renew_list_remove_prune(engine: Engine) -> None:
    repo = ReplicaRepository(engine)
    repo.report(report("host-a/1/aa", "k1"))
    repo.report(report("host-b/2/bb", "k1", "k2"))
    repo.report(report("host-a/1/aa", "k2", "k1", seen=1_030.0))  # renewed, KEKs replaced
    got = {r.replica_id: r for r in repo.list()}
    assert got["host-a/1/aa"] == ReplicaRecord("host-a/1/aa", frozenset({"k1", "k2"}), 500.0, 1_030.0, 1_120.0)
    assert got["host-b/2/bb"].kek_ids == frozenset({"k1", "k2"})
    repo.remove("host-b/2/bb")
    assert [r.replica_id for r in repo.list()] == ["host-a/1/aa"]
    assert repo.prune(expired_before=1_120.0) == 0
    assert repo.prune(expired_before=1_121.0) == 1
    assert repo.list() == []


def test_rotate_promotes_the_chosen_key_and_withdraws_others(engine: Engine) -> None:
    repo = KeyRepository(engine)
    for row in (key("a1", "active"), key("junk", "next", kek_id="stray"), key("n1", "next", created_at=1_500.0)):
        repo.insert(row)
    assert repo.rotate(alg="ES256", expect_active_kid="a1", new_next=key("n2", "next", created_at=2_000.0), now=2_000.0,
                       publish_until_for_retired=5_000.0, promote_kid="n1", withdraw=["junk"])
    rows = {r.kid: r for r in repo.list()}
    assert {k: r.state for k, r in rows.items()} == {"a1": "retired", "junk": "retired", "n1": "active", "n2": "next"}
    assert rows["junk"].publish_until == 2_000.0  # never signed: unpublished at once


def test_rotate_with_a_chosen_key_no_longer_next_changes_nothing(engine: Engine) -> None:
    repo = KeyRepository(engine)
    for row in (key("a1", "active"), key("n1", "next")):
        repo.insert(row)
    before = repo.list()
    assert not repo.rotate(alg="ES256", expect_active_kid="a1", new_next=key("n2", "next"), now=2_000.0,
                           publish_until_for_retired=5_000.0, promote_kid="gone")
    assert repo.list() == before


def test_replace_next_is_atomic(engine: Engine) -> None:
    repo = KeyRepository(engine)
    for row in (key("a1", "active"), key("junk", "next", kek_id="stray")):
        repo.insert(row)
    before = repo.list()
    # One of the keys to withdraw is not a next key (any more): nothing happens.
    assert not repo.replace_next(alg="ES256", withdraw=["junk", "a1"], new_next=key("n2", "next"), now=2_000.0)
    assert repo.list() == before
    assert repo.replace_next(alg="ES256", withdraw=["junk"], new_next=key("n2", "next"), now=2_000.0)
    assert states(repo) == {"a1": "active", "junk": "retired", "n2": "next"}


def test_rewrap_all_or_nothing(engine: Engine) -> None:
    repo = KeyRepository(engine)
    for row in (key("a1", "active"), key("n1", "next"), key("r1", "retired", kek_id="kek-0")):
        repo.insert(row)
    before = repo.list()
    changes = [("a1", "kek-1", b"new-a1", "kek-2"), ("r1", "kek-1", b"new-r1", "kek-2")]  # r1 is under kek-0
    assert not repo.rewrap(changes)
    assert repo.list() == before
    assert repo.rewrap([("a1", "kek-1", b"new-a1", "kek-2"), ("n1", "kek-1", b"new-n1", "kek-2")])
    after = {r.kid: r for r in repo.list()}
    assert after["a1"] == replace(before[0], private_key_ciphertext=b"new-a1", kek_id="kek-2")
    assert (after["n1"].kek_id, after["r1"].kek_id) == ("kek-2", "kek-0")


def test_insert_missing_stores_only_what_is_still_missing(engine: Engine, make_db_engine: Callable[[], Engine]) -> None:
    repo = KeyRepository(engine)
    repo.insert(key("a1", "active", not_after=5_000.0))
    stored = repo.insert_missing([key("a2", "active"), key("n1", "next"), key("r1", "active", alg="RS256")], now=2_000.0)
    assert stored == ["n1", "r1"]
    # An expired active key does not count as present.
    assert repo.insert_missing([key("a3", "active")], now=6_000.0) == ["a3"]

    # Replicas starting together on an empty database store one set of keys between them.
    fresh = KeyRepository(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM signing_keys"))
    replicas = [KeyRepository(make_db_engine()) for _ in range(4)]
    start = threading.Barrier(len(replicas))
    results: list[list[str]] = []

    def setup(i: int, replica: KeyRepository) -> None:
        start.wait()
        results.append(replica.insert_missing([key(f"a-{i}", "active"), key(f"n-{i}", "next")], now=500.0))

    threads = [threading.Thread(target=setup, args=(i, r)) for i, r in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(len(r) for r in results) == [0, 0, 0, 2]
    assert sorted(r.state for r in fresh.list()) == ["active", "next"]
