"""Two broker processes on one PostgreSQL database: what one replica (or an operator on it)
changes, the other follows within the documented bounds (docs/operations.md, "Several
replicas"): signing-key rotation, the one-time jti guard, configuration reloads.

(The retention pruner running on one replica at a time: test_pruner_once.py.)
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from broker_harness import postgres_base_url, postgres_schema_url
from conformance.issuer import LocalIssuer
from replica_support import STS, AUDIENCE, BrokerProcess, broker_config, new_kek, wait_until, write_config
from sts import jose
from sts.store import migrate

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

# Small intervals keep the test fast; the bounds they stand for are the documented defaults.
KEY_REFRESH_INTERVAL = 1.0
CONFIG_RELOAD_INTERVAL = 0.5
# Generous: the machine running the tests may be busy. A replica that never follows fails.
FOLLOW_DEADLINE = 20.0


@dataclass
class Pair:
    a: BrokerProcess
    b: BrokerProcess
    config: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def pair(issuer: LocalIssuer, replay_issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = postgres_base_url()
    if not base:
        pytest.skip("STS_TEST_POSTGRES_URL is not set")
    work = tmp_path_factory.mktemp("pair")
    config = work / "sts.yaml"
    write_config(config, broker_config(issuer, replay_issuer))
    with postgres_schema_url(base) as url:
        migrate.upgrade(url)
        kek = new_kek()
        env = {"STS_KEY_REFRESH_INTERVAL": str(KEY_REFRESH_INTERVAL), "STS_CONFIG_RELOAD_INTERVAL": str(CONFIG_RELOAD_INTERVAL)}
        # One after the other, as a rolling deployment starts them: the first creates the keys.
        a = BrokerProcess(config=config, database_url=url, kek=kek, log_path=work / "a.log", env=env).start()
        try:
            b = BrokerProcess(config=config, database_url=url, kek=kek, log_path=work / "b.log", env=env).start()
            try:
                yield Pair(a, b, config, {**a.env})
            finally:
                b.stop()
        finally:
            a.stop()


def signing_kid(replica: BrokerProcess, subject: str) -> str:
    response = replica.exchange(subject)
    assert response.status_code == 200, response.text
    return str(jose.unsafe_decode(response.json()["access_token"]).header["kid"])


def published(replica: BrokerProcess) -> set[str]:
    return {k["kid"] for k in httpx.get(replica.url + "/jwks", timeout=10).json()["keys"]}


def test_key_rotated_through_one_replica_is_published_and_used_by_the_other(pair: Pair, issuer: LocalIssuer) -> None:
    subject = issuer.mint({"sub": "agent-1", "aud": AUDIENCE}, alg="ES256", lifetime=600)
    old = signing_kid(pair.a, subject)
    assert signing_kid(pair.b, subject) == old

    # The operator rotates from replica a's environment (same database, same KEK).
    done = subprocess.run([STS, "keys", "rotate", "--alg", "ES256", "--json"], env=pair.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    new = json.loads(done.stdout)["ES256"]["promoted"]
    assert new and new != old
    listed = subprocess.run([STS, "keys", "list", "--json"], env=pair.env, capture_output=True, text=True, timeout=60)
    rows = json.loads(listed.stdout)
    new_next = {r["kid"] for r in rows if r["alg"] == "ES256" and r["state"] == "next"}
    assert new_next

    for replica in (pair.a, pair.b):
        # Within the refresh interval each replica signs with the new key and publishes the
        # new next key; the retired key stays published for the tokens it signed.
        assert wait_until(lambda r=replica: signing_kid(r, subject) == new, FOLLOW_DEADLINE, KEY_REFRESH_INTERVAL / 4)
        assert wait_until(lambda r=replica: new_next <= published(r), FOLLOW_DEADLINE, KEY_REFRESH_INTERVAL / 4)
        assert {old, new} <= published(replica)


def test_replay_guard_is_shared(pair: Pair, replay_issuer: LocalIssuer) -> None:
    # Used at one replica, refused at the other.
    once = replay_issuer.mint({"sub": "agent-1", "aud": AUDIENCE}, alg="ES256", lifetime=600)
    assert pair.a.exchange(once).status_code == 200
    refused = pair.b.exchange(once)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"

    # Sent to both at the same moment: exactly one of them issues a token.
    tokens = [replay_issuer.mint({"sub": "agent-1", "aud": AUDIENCE}, alg="ES256", lifetime=600) for _ in range(8)]
    codes = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for token in tokens:
            both = [pool.submit(pair.a.exchange, token), pool.submit(pair.b.exchange, token)]
            codes.append(sorted(f.result().status_code for f in both))
    assert codes == [[200, 400]] * len(tokens)


def test_configuration_reload_reaches_both(pair: Pair, issuer: LocalIssuer, replay_issuer: LocalIssuer) -> None:
    subject = issuer.mint({"sub": "agent-1", "aud": AUDIENCE}, alg="ES256", lifetime=600)
    audience = "https://reloaded.example.com"
    for replica in (pair.a, pair.b):
        assert replica.exchange(subject, audience=audience).json()["error"] == "invalid_target"
    write_config(pair.config, broker_config(issuer, replay_issuer, extra_audiences=(audience,)))
    for replica in (pair.a, pair.b):
        assert wait_until(lambda r=replica: r.exchange(subject, audience=audience).status_code == 200,
                          FOLLOW_DEADLINE, CONFIG_RELOAD_INTERVAL / 2)
