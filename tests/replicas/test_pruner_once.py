"""The retention pruner runs on one replica at a time (docs/operations.md, "Retention"): two
broker processes on one PostgreSQL database, old audit records to delete; one replica deletes
them while the other finds the pruning lock taken and skips its turns, and every record goes
exactly once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker_harness import postgres_base_url, postgres_schema_url
from conformance.issuer import LocalIssuer
from replica_support import BrokerProcess, broker_config, new_kek, wait_until, write_config
from sts.store import migrate
from sts.store.models import audit_events

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

OLD_RECORDS = 600
BATCH, PAUSE = 50, 0.25  # one run takes about 12 batches x 0.25 s: both replicas wake during it


def _log_lines(path: Path) -> list[dict[str, object]]:
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def test_one_replica_prunes_while_the_other_skips(issuer: LocalIssuer, replay_issuer: LocalIssuer, tmp_path: Path) -> None:
    base = postgres_base_url()
    if not base:
        pytest.skip("STS_TEST_POSTGRES_URL is not set")
    config = tmp_path / "sts.yaml"
    write_config(config, broker_config(issuer, replay_issuer))
    with postgres_schema_url(base) as url:
        migrate.upgrade(url)
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        old = time.time() - 30 * 86400
        with engine.begin() as conn:
            conn.execute(sa.insert(audit_events), [
                {"time": old + i, "request_id": f"old-{i}", "outcome": "denied", "mode_notes": "[]",
                 "requested_targets": "[]", "granted_scopes": "[]"} for i in range(OLD_RECORDS)
            ])
        env = {"STS_AUDIT_RETENTION_DAYS": "7", "STS_PRUNE_INTERVAL": "1", "STS_PRUNE_BATCH_SIZE": str(BATCH),
               "STS_PRUNE_BATCH_PAUSE": str(PAUSE), "STS_LOG_LEVEL": "debug"}
        kek = new_kek()
        a = BrokerProcess(config=config, database_url=url, kek=kek, log_path=tmp_path / "a.log", env=env).start()
        try:
            b = BrokerProcess(config=config, database_url=url, kek=kek, log_path=tmp_path / "b.log", env=env).start()
            try:
                def remaining() -> int:
                    with engine.connect() as conn:
                        return int(conn.execute(sa.select(sa.func.count()).select_from(audit_events)
                                                .where(audit_events.c.request_id.like("old-%"))).scalar_one())

                assert wait_until(lambda: remaining() == 0, timeout=60), f"{remaining()} old records left"
                time.sleep(1.5)  # a further turn of each pruner finds nothing to do
            finally:
                b.stop()
        finally:
            a.stop()
            engine.dispose()
    logs = {name: _log_lines(tmp_path / f"{name}.log") for name in ("a", "b")}
    runs = {name: [line["prune"] for line in lines if line.get("msg") == "pruned expired records"] for name, lines in logs.items()}
    skips = {name: sum(1 for line in lines if line.get("msg") == "another replica is pruning") for name, lines in logs.items()}
    deleted = sum(int(run["audit_records"]) for name in runs for run in runs[name])  # type: ignore[index]
    assert deleted == OLD_RECORDS, runs  # each record deleted once
    # One run deleted everything; while it held the lock for its multi-second run, the other
    # replica woke and skipped instead of deleting beside it.
    assert sorted(len(r) for r in runs.values()) == [0, 1], runs
    idle = next(name for name in runs if not runs[name])
    assert skips[idle] >= 1, (runs, skips)
