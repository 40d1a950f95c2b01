"""``sts serve --workers N``: SIGHUP to the supervisor reloads the configuration in every
worker, and the worker processes stay the same (uvicorn alone would replace them all)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from conformance.issuer import LocalIssuer
from replica_support import AUDIENCE, BrokerProcess, broker_config, child_pids, wait_until, write_config

NEW_AUDIENCE = "https://new.example.com"


@pytest.mark.slow
def test_sighup_reloads_every_worker_in_place(issuer: LocalIssuer, replay_issuer: LocalIssuer, sqlite_url: str,
                                              kek: str, tmp_path: Path) -> None:
    config = tmp_path / "sts.yaml"
    write_config(config, broker_config(issuer, replay_issuer))
    # No polling: only SIGHUP can make a worker read the edited file.
    broker = BrokerProcess(config=config, database_url=sqlite_url, kek=kek, log_path=tmp_path / "broker.log",
                           workers=2, env={"STS_CONFIG_RELOAD_INTERVAL": "0"}).start()
    try:
        assert wait_until(lambda: len(_started(broker)) == 2, 30), broker.log_path.read_text()[-3000:]
        workers = sorted(_started(broker))
        # The supervisor's children: the two workers (and multiprocessing's resource tracker).
        children = child_pids(broker.pid)
        assert set(workers) <= set(children)
        subject = issuer.mint({"sub": "agent-1", "aud": AUDIENCE}, alg="ES256", lifetime=600)
        assert broker.exchange(subject, audience=NEW_AUDIENCE).json()["error"] == "invalid_target"

        write_config(config, broker_config(issuer, replay_issuer, extra_audiences=(NEW_AUDIENCE,)))
        # Without the signal nothing changes: the new audience is still refused.
        assert broker.exchange(subject, audience=NEW_AUDIENCE).json()["error"] == "invalid_target"

        broker.signal(signal.SIGHUP)
        assert wait_until(lambda: sorted(_reloaded(broker)) == workers, 30), broker.log_path.read_text()[-3000:]
        # Every request, whichever worker accepts its connection, gets the new policy.
        for _ in range(20):
            response = broker.exchange(subject, audience=NEW_AUDIENCE)
            assert response.status_code == 200, response.text
        # Same processes: no worker was started or stopped.
        assert child_pids(broker.pid) == children
        assert sorted(_started(broker)) == workers
    finally:
        broker.stop()


def _started(broker: BrokerProcess) -> list[int]:
    return [r["pid"] for r in broker.logs() if r.get("msg") == "broker started"]


def _reloaded(broker: BrokerProcess) -> list[int]:
    return [r["pid"] for r in broker.logs() if r.get("msg") == "configuration reloaded"]
