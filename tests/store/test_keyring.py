"""Signing keys at rest and their lifecycle (sealing, ensure, rotation, publication)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sts.store import migrate
from sts.store.db import make_engine
from sts.store.keys import KeyRepository
from sts.tokens.keyring import KeyEncryptor, KeyRing, KeyUnavailable

DAY = 86400.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def repo(tmp_path: Path) -> KeyRepository:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    migrate.upgrade(url)
    return KeyRepository(make_engine(url))


def ring(repo: KeyRepository, kek: bytes, clock: Clock) -> KeyRing:
    return KeyRing(repo, KeyEncryptor(kek), key_lifetime=30 * DAY, max_token_lifetime=3600, clock=clock)


def test_seal_binds_kid_and_kek() -> None:
    enc = KeyEncryptor(os.urandom(32))
    blob = enc.seal(b"private", "kid-1")
    assert enc.open(blob, "kid-1") == b"private"
    with pytest.raises(KeyUnavailable):
        enc.open(blob, "kid-2")  # a ciphertext moved to another row does not open
    with pytest.raises(KeyUnavailable):
        KeyEncryptor(os.urandom(32)).open(blob, "kid-1")


def test_ensure_creates_active_and_next_per_algorithm(repo: KeyRepository) -> None:
    clock = Clock()
    keys = ring(repo, os.urandom(32), clock)
    created = keys.ensure(["ES256", "RS256"])
    assert len(created) == 4
    assert keys.ensure(["ES256", "RS256"]) == []  # idempotent
    assert keys.active("ES256").private.alg == "ES256"
    assert keys.active("RS256").private.alg == "RS256"
    published = {k["kid"] for k in keys.jwks()["keys"]}
    assert {r.kid for r in keys.rows()} == published
    for jwk in keys.jwks()["keys"]:
        assert "d" not in jwk


def test_keys_sealed_under_another_kek_are_not_used(repo: KeyRepository) -> None:
    clock = Clock()
    ring(repo, os.urandom(32), clock).ensure(["ES256"])
    other = ring(repo, os.urandom(32), clock)
    other.refresh()
    assert not other.ready(["ES256"])
    with pytest.raises(KeyUnavailable):
        other.active("ES256")


def test_rotation_when_due_and_retired_publication(repo: KeyRepository) -> None:
    clock = Clock()
    keys = ring(repo, os.urandom(32), clock)
    keys.ensure(["ES256"])
    first = keys.active("ES256").private.kid
    clock.now += 20 * DAY
    assert keys.rotate_due() == []  # 10 of 30 days left: not yet
    clock.now += 3 * DAY
    rotated = keys.rotate_due()  # 7 days left, under a quarter
    assert len(rotated) == 1 and keys.active("ES256").private.kid == rotated[0] != first
    assert first in {k["kid"] for k in keys.jwks()["keys"]}  # retired but still published
    clock.now += 2 * 3600  # past max token lifetime + margin
    keys.rotate_due()
    assert first not in {k["kid"] for k in keys.jwks()["keys"]}


def test_expired_active_key_is_not_used(repo: KeyRepository) -> None:
    clock = Clock()
    keys = ring(repo, os.urandom(32), clock)
    keys.ensure(["ES256"])
    clock.now += 31 * DAY
    with pytest.raises(KeyUnavailable):
        keys.active("ES256")
    assert not keys.ready(["ES256"])
