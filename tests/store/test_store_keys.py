"""Signing-key repository: storage round trip, optimistic rotation, pruning."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import pytest
from sqlalchemy.engine import Engine

from sts.store.keys import KeyRepository
from sts.store.records import SigningKeyRow


def key(kid: str, state: str, *, alg: str = "ES256", created_at: float = 1_000.0, **kw: object) -> SigningKeyRow:
    row = SigningKeyRow(
        kid=kid,
        alg=alg,
        state=state,
        public_jwk={"kty": "EC", "crv": "P-256", "x": "x-" + kid, "y": "y-" + kid, "kid": kid},
        private_key_ciphertext=b"\x00sealed\xff" + kid.encode(),
        kek_id="kek-1",
        created_at=created_at,
        activated_at=created_at if state == "active" else None,
        retired_at=None,
        not_after=created_at + 86_400,
        publish_until=None,
    )
    return replace(row, **kw)  # type: ignore[arg-type]


def states(repo: KeyRepository) -> dict[str, str]:
    return {r.kid: r.state for r in repo.list()}


@pytest.fixture
def repo(engine: Engine) -> KeyRepository:
    repo = KeyRepository(engine)
    repo.insert(key("a1", "active"))
    repo.insert(key("a2", "next", created_at=1_001.0))
    repo.insert(key("r1", "active", alg="RS256"))
    repo.insert(key("r2", "next", alg="RS256"))
    return repo


def test_round_trip(engine: Engine) -> None:
    repo = KeyRepository(engine)
    row = key("k1", "retired", retired_at=5.0, publish_until=6.0)
    repo.insert(row)
    assert repo.list() == [row]


def test_rotate(repo: KeyRepository) -> None:
    ok = repo.rotate(alg="ES256", expect_active_kid="a1", new_next=key("a3", "next", created_at=2_000.0),
                     now=2_000.0, active_not_after=9_000.0, publish_until_for_retired=5_000.0)
    assert ok is True
    rows = {r.kid: r for r in repo.list()}
    assert (rows["a1"].state, rows["a1"].retired_at, rows["a1"].publish_until) == ("retired", 2_000.0, 5_000.0)
    assert (rows["a2"].state, rows["a2"].activated_at, rows["a2"].not_after) == ("active", 2_000.0, 9_000.0)
    assert rows["a3"].state == "next"
    assert (rows["r1"].state, rows["r2"].state) == ("active", "next")  # other algorithms untouched


@pytest.mark.parametrize(
    ("expect", "setup"),
    [
        pytest.param("gone", None, id="active-kid-changed"),
        pytest.param("r1", None, id="kid-of-another-algorithm"),
        pytest.param(None, None, id="expected-none-but-one-is-active"),
        pytest.param("a1", "drop-next", id="no-next-key-to-promote"),
    ],
)
def test_rotate_conflict_changes_nothing(repo: KeyRepository, engine: Engine, expect: str | None, setup: str | None) -> None:
    if setup == "drop-next":
        from sqlalchemy import text

        with engine.begin() as conn:
            conn.execute(text("DELETE FROM signing_keys WHERE kid = 'a2'"))
    before = repo.list()
    ok = repo.rotate(alg="ES256", expect_active_kid=expect, new_next=key("a3", "next"), now=2_000.0,
                     publish_until_for_retired=5_000.0)
    assert ok is False
    assert repo.list() == before


def test_rotate_first_activation(engine: Engine) -> None:
    repo = KeyRepository(engine)
    repo.insert(key("n1", "next"))
    assert repo.rotate(expect_active_kid=None, new_next=key("n2", "next", created_at=2_000.0), now=2_000.0,
                       publish_until_for_retired=0.0)
    assert states(repo) == {"n1": "active", "n2": "next"}


def test_rotate_retires_duplicate_actives(engine: Engine) -> None:
    repo = KeyRepository(engine)
    for row in (key("a1", "active"), key("a1b", "active", created_at=1_000.5), key("n1", "next")):
        repo.insert(row)
    assert repo.rotate(expect_active_kid="a1b", new_next=key("n2", "next"), now=2_000.0, publish_until_for_retired=5_000.0)
    assert states(repo) == {"a1": "retired", "a1b": "retired", "n1": "active", "n2": "next"}


def test_concurrent_rotation_rotates_once(repo: KeyRepository, make_db_engine: Callable[[], Engine]) -> None:
    replicas = [KeyRepository(make_db_engine()) for _ in range(4)]
    start = threading.Barrier(len(replicas))
    results: list[bool] = []

    def rotate(i: int, replica: KeyRepository) -> None:
        start.wait()
        results.append(replica.rotate(alg="ES256", expect_active_kid="a1", new_next=key(f"new{i}", "next"),
                                      now=2_000.0, publish_until_for_retired=5_000.0))

    threads = [threading.Thread(target=rotate, args=(i, r)) for i, r in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False, False, False, True]
    es = [r for r in repo.list() if r.alg == "ES256"]
    assert [r.state for r in es].count("active") == 1
    assert [r.state for r in es].count("next") == 1


def test_prune(engine: Engine) -> None:
    repo = KeyRepository(engine)
    repo.insert(key("old", "retired", retired_at=10.0, publish_until=99.0))
    repo.insert(key("edge", "retired", retired_at=10.0, publish_until=100.0))
    repo.insert(key("recent", "retired", retired_at=10.0, publish_until=500.0))
    repo.insert(key("live", "active", not_after=50.0))
    assert repo.prune(now=100.0) == 1
    assert set(states(repo)) == {"edge", "recent", "live"}
