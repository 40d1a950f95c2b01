"""Signing keys at rest and their lifecycle (sealing, ensure, rotation, publication)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import update

from sts import jose

from sts.store import migrate
from sts.store.db import make_engine
from sts.store.keys import KeyRepository
from sts.store.models import signing_keys
from sts.tokens.keyring import KeyEncryptor, KeyRing, KeyUnavailable, key_pair_problem

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


def test_key_that_does_not_match_its_published_jwk_never_signs(
    repo: KeyRepository, caplog: pytest.LogCaptureFixture
) -> None:
    # The published row is what relying parties verify with: a sealed key that does not sign
    # tokens verifying under it (a row edited or restored from elsewhere) must not become active.
    clock = Clock()
    keys = ring(repo, os.urandom(32), clock)
    keys.ensure(["ES256"])
    active_kid = keys.active("ES256").private.kid
    stranger = jose.generate_private_key("ES256", kid=active_kid).public_jwk()
    with repo._engine.begin() as conn:
        conn.execute(
            update(signing_keys).where(signing_keys.c.kid == active_kid).values(public_jwk=json.dumps(stranger))
        )
    fresh = KeyRing(repo, keys._enc, key_lifetime=30 * DAY, max_token_lifetime=3600, clock=clock)
    fresh.refresh()
    assert not fresh.ready(["ES256"])
    with pytest.raises(KeyUnavailable):
        fresh.active("ES256")
    assert any(r.getMessage() == "signing key does not match its published key" for r in caplog.records)


def test_key_pair_problem_accepts_a_matching_pair_and_names_a_mismatch() -> None:
    for alg in ("ES256", "RS256", "EdDSA"):
        private = jose.generate_private_key(alg)
        assert key_pair_problem(private, private.public_jwk()) is None
        other = jose.generate_private_key(alg, kid=private.kid)
        assert key_pair_problem(private, other.public_jwk()) == "bad_signature"
        renamed = dict(private.public_jwk(), kid="another-kid")
        assert key_pair_problem(private, renamed) == "kid or alg differ"
