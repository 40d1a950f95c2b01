"""Every configuration the broker serves is stored, and audit records name it: a broker run
from a configuration directory, over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from broker_harness import BrokerServer, free_port
from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE, base_config
from sts.store.config_versions import ConfigVersionRepository
from sts.store.models import audit_events


def write_directory(root: Path, config: dict[str, Any]) -> None:
    parts = {
        "sts.yaml": {k: v for k, v in config.items() if k not in ("issuers", "grants")},
        "issuers/all.yaml": {"issuers": config["issuers"]},
        "grants/all.yaml": {"grants": config["grants"]},
    }
    for name, doc in parts.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture()
def served(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerServer, Path, dict[str, Any]]]:
    port = free_port()
    config = base_config(port, issuer, replay_issuer, dead_port=free_port())
    workdir = tmp_path_factory.mktemp("dir-broker")
    directory = workdir / "trust"
    write_directory(directory, config)
    server = BrokerServer(config, workdir=workdir, database_url=database_url, port=port,
                          settings={"config": directory, "config_reload_interval": 0.1, "audit_coalesce_window": 0})
    server.start()
    try:
        yield server, directory, config
    finally:
        server.stop()


def replace_file(path: Path, text: str) -> None:
    """Write as editors and ConfigMap updates do (a new file renamed over the old one), so the
    broker's poll never reads a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def last_audit_version(server: BrokerServer) -> str:
    with server.broker.engine.connect() as conn:
        row = conn.execute(select(audit_events.c.config_version).order_by(audit_events.c.id.desc()).limit(1)).first()
    assert row is not None
    return str(row[0])


def test_served_versions_are_stored_and_audit_records_name_them(
        served: tuple[BrokerServer, Path, dict[str, Any]], issuer: LocalIssuer) -> None:
    server, directory, config = served
    repo = ConfigVersionRepository(server.broker.engine)
    subject = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, lifetime=600)
    assert server.exchange(subject).status_code == 200

    first = server.broker.runtime().version
    assert last_audit_version(server) == first
    stored = repo.get(first)
    assert stored.kind == "directory" and stored.source == str(directory.resolve())
    files = json.loads(stored.document)["files"]
    assert files == {name: (directory / name).read_text() for name in ("sts.yaml", "issuers/all.yaml", "grants/all.yaml")}

    # An edit of one file of the directory is noticed, stored, and then named by the audit.
    config["grants"][0]["targets"].append({"audience": "https://new.example.com", "scopes": ["read"]})
    replace_file(directory / "grants" / "all.yaml", yaml.safe_dump({"grants": config["grants"]}, sort_keys=False))
    assert wait_for(lambda: server.broker.runtime().version != first)
    second = server.broker.runtime().version
    assert server.exchange(subject, audience="https://new.example.com").status_code == 200
    assert last_audit_version(server) == second
    assert [r.version for r in repo.history()] == [second, first]
    latest = repo.latest()
    assert latest is not None and latest.version == second
    assert "https://new.example.com" in json.loads(latest.document)["files"]["grants/all.yaml"]


def test_a_version_that_cannot_be_stored_does_not_serve(
        served: tuple[BrokerServer, Path, dict[str, Any]], issuer: LocalIssuer) -> None:
    from sqlalchemy import text

    server, directory, config = served
    subject = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, lifetime=600)
    before = server.broker.runtime().version
    with server.broker.engine.begin() as conn:
        conn.execute(text("ALTER TABLE config_versions RENAME TO config_versions_away"))
    try:
        config["grants"][0]["targets"].append({"audience": "https://new.example.com", "scopes": ["read"]})
        replace_file(directory / "grants" / "all.yaml", yaml.safe_dump({"grants": config["grants"]}, sort_keys=False))
        time.sleep(0.8)  # several reload attempts, each refused
        assert server.broker.runtime().version == before
        assert server.exchange(subject, audience="https://new.example.com").json()["error"] == "invalid_target"
    finally:
        with server.broker.engine.begin() as conn:
            conn.execute(text("ALTER TABLE config_versions_away RENAME TO config_versions"))
    # The next poll tries again, stores it and serves it.
    assert wait_for(lambda: server.broker.runtime().version != before)
    assert server.exchange(subject, audience="https://new.example.com").status_code == 200
    assert ConfigVersionRepository(server.broker.engine).get(server.broker.runtime().version).kind == "directory"
