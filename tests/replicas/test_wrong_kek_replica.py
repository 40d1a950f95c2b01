"""A replica started with the wrong KEK beside a running one: it exits at start with one line,
writes nothing, and the running replica keeps serving (the issue's outage, as processes)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conformance.issuer import LocalIssuer
from replica_support import AUDIENCE, STS, BrokerProcess, broker_config, new_kek, write_config
from sts.store.db import make_engine
from sts.store.keys import KeyRepository

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers"])
def test_a_replica_with_a_wrong_kek_exits_at_start_and_the_fleet_keeps_serving(
    issuer: LocalIssuer, replay_issuer: LocalIssuer, sqlite_url: str, kek: str, tmp_path: Path, workers: int
) -> None:
    config = tmp_path / "sts.yaml"
    write_config(config, broker_config(issuer, replay_issuer))
    running = BrokerProcess(config=config, database_url=sqlite_url, kek=kek, log_path=tmp_path / "a.log").start()
    try:
        listed = subprocess.run([STS, "keys", "replicas", "--json"], env=running.env, capture_output=True, text=True, timeout=60)
        assert [r["fresh"] for r in json.loads(listed.stdout)] == [True]
        engine = make_engine(sqlite_url)
        before = KeyRepository(engine).list()

        wrong = BrokerProcess(config=config, database_url=sqlite_url, kek=new_kek(), log_path=tmp_path / "b.log", workers=workers)
        done = subprocess.run(wrong.args, env=wrong.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        plain = [line for line in done.stderr.splitlines() if not line.startswith("{")]
        assert len(plain) == 1 and plain[0].startswith("sts: cannot start: the key-encryption key from STS_KEK"), done.stderr
        assert "opens none of the" in plain[0] and "Traceback" not in done.stderr

        assert KeyRepository(engine).list() == before
        listed = subprocess.run([STS, "keys", "replicas", "--json"], env=running.env, capture_output=True, text=True, timeout=60)
        assert len(json.loads(listed.stdout)) == 1  # the refused one never reported itself
        subject = issuer.mint({"sub": "agent-1", "aud": AUDIENCE}, alg="ES256", lifetime=600)
        assert running.exchange(subject).status_code == 200
        engine.dispose()
    finally:
        running.stop()
    listed = subprocess.run([STS, "keys", "replicas", "--json"], env=running.env, capture_output=True, text=True, timeout=60)
    assert json.loads(listed.stdout) == []  # a stopped replica removes its report
