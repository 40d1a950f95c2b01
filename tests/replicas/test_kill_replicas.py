"""A kill switch reaches every replica (docs/operations.md#token-lifecycle): two broker
processes on one PostgreSQL database, a kill made through the command line, enforced by both,
also by a replica whose database connections were cut and restored in between."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conformance.issuer import LocalIssuer
from replica_support import STS, AUDIENCE, BrokerProcess, TcpProxy, broker_config, through, wait_until, write_config

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

# The documented bound is 2 s (1 s poll plus one read; NOTIFY is faster). The deadline is
# generous because the test machine may be busy; the measured times are printed.
FOLLOW_DEADLINE = 15.0


def sts(env: dict[str, str], *args: str) -> dict[str, object]:
    done = subprocess.run([STS, *args, "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def refused(replica: BrokerProcess, subject: str) -> bool:
    response = replica.exchange(subject)
    return response.status_code == 400 and response.json()["error"] == "invalid_request"


def allowed(replica: BrokerProcess, subject: str) -> bool:
    return replica.exchange(subject).status_code == 200


def test_kill_reaches_both_replicas_also_after_a_database_cut(issuer: LocalIssuer, replay_issuer: LocalIssuer, postgres_url: str,
                                                             proxy: TcpProxy, kek: str, tmp_path: Path) -> None:
    config = tmp_path / "sts.yaml"
    write_config(config, broker_config(issuer, replay_issuer))
    direct = BrokerProcess(config=config, database_url=postgres_url, kek=kek, log_path=tmp_path / "a.log").start()
    try:
        cut = BrokerProcess(config=config, database_url=through(proxy, postgres_url), kek=kek, log_path=tmp_path / "b.log").start()
        try:
            operator = {**direct.env}
            first = issuer.mint({"sub": "agent-k1", "aud": AUDIENCE}, alg="ES256", lifetime=600)
            second = issuer.mint({"sub": "agent-k2", "aud": AUDIENCE}, alg="ES256", lifetime=600)
            for replica in (direct, cut):
                assert allowed(replica, first) and allowed(replica, second)

            # 1. A kill through the command line: both replicas refuse.
            started = time.monotonic()
            sts(operator, "kill", "identity", "wl:agent-k1", "--reason", "replica test")
            for replica in (direct, cut):
                assert wait_until(lambda r=replica: refused(r, first), FOLLOW_DEADLINE, 0.05)
                print(f"kill enforced by {replica.url} after {time.monotonic() - started:.2f} s")
            assert allowed(direct, second)

            # 2. The lift reaches both too.
            sts(operator, "kill", "lift", "identity", "wl:agent-k1")
            for replica in (direct, cut):
                assert wait_until(lambda r=replica: allowed(r, first), FOLLOW_DEADLINE, 0.05)

            # 3. One replica loses its database (connections reset, new ones refused); a kill is
            #    made meanwhile; once the database is back, that replica enforces it too.
            proxy.cut("refuse")
            sts(operator, "kill", "identity", "wl:agent-k2", "--reason", "made during the cut")
            assert wait_until(lambda: refused(direct, second), FOLLOW_DEADLINE, 0.05)
            time.sleep(1.5)  # long enough for the cut replica's poll and listener to fail
            proxy.restore()
            restored = time.monotonic()
            assert wait_until(lambda: refused(cut, second), FOLLOW_DEADLINE, 0.05)
            print(f"kill enforced by the reconnected replica {time.monotonic() - restored:.2f} s after the restore")

            # 4. And its listener is back: a further kill reaches it as well.
            sts(operator, "kill", "identity", "wl:agent-k1", "--reason", "after the restore")
            assert wait_until(lambda: refused(cut, first), FOLLOW_DEADLINE, 0.05)
        finally:
            cut.stop()
    finally:
        direct.stop()
    cut_log = cut.log_path.read_text()
    assert "lifecycle listener lost its database connection" in cut_log
    assert "lifecycle listener lost" not in direct.log_path.read_text()
