"""The admin listener binds once: with several workers the first one serves it and another takes
it over when that one stops; with one process a taken port is a start-up error."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml
from admin_support import ADMIN_PREFIX, write_token
from broker_harness import BrokerServer, free_port, kek_for
from integration_config import base_config

from conformance.issuer import LocalIssuer
from sts.app import StartupError, create_app
from sts.settings import Settings
from sts.store import migrate


def _settings(workdir: Path, admin_port: int, **extra: object) -> dict[str, object]:
    return {"admin_listen": f"127.0.0.1:{admin_port}", "admin_token_file": workdir / "admin-token", **extra}


def _pid(admin_port: int, token: str) -> int | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{admin_port}{ADMIN_PREFIX}/issuers", timeout=5,
                             headers={"Authorization": f"Bearer {token}"})
    except httpx.ConnectError:
        return None
    assert response.status_code == 200
    return int(response.json()["served_by"]["pid"])


def test_workers_share_one_admin_listener(issuer: LocalIssuer, replay_issuer: LocalIssuer, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sts.admin.listener.RETRY_SECONDS", 0.1)
    database_url = f"sqlite:///{tmp_path / 'sts.db'}"
    token = write_token(tmp_path / "admin-token")
    admin_port = free_port()
    brokers = []
    for name in ("first", "second"):
        port = free_port()
        workdir = tmp_path / name
        workdir.mkdir()
        brokers.append(BrokerServer(base_config(port, issuer, replay_issuer, dead_port=free_port()), workdir=workdir,
                                    database_url=database_url, port=port,
                                    settings=_settings(tmp_path, admin_port, workers=2)).start())
    first, second = brokers
    try:
        assert first.broker.admin.serving and not second.broker.admin.serving
        assert _pid(admin_port, token) is not None
        first.stop()
        deadline = time.monotonic() + 10
        while not second.broker.admin.serving and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second.broker.admin.serving
        assert _pid(admin_port, token) is not None
    finally:
        for b in brokers:
            b.stop()


def test_one_process_refuses_to_start_on_a_taken_port(issuer: LocalIssuer, replay_issuer: LocalIssuer, tmp_path: Path) -> None:
    write_token(tmp_path / "admin-token")
    database_url = f"sqlite:///{tmp_path / 'sts.db'}"
    migrate.upgrade(database_url)
    (tmp_path / "sts.yaml").write_text(yaml.safe_dump(base_config(free_port(), issuer, replay_issuer, free_port())))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin_port = taken.getsockname()[1]
        settings = Settings(config=tmp_path / "sts.yaml", database_url=database_url, dev_mode=True, kek=kek_for(database_url),
                            **_settings(tmp_path, admin_port))
        broker = create_app(settings).state.broker

        async def start() -> None:
            try:
                await broker.start()
            finally:
                await broker.stop()

        with pytest.raises(StartupError, match="admin address .* in use"):
            asyncio.run(start())


def test_unauthenticated_refusals_are_coalesced_and_none_is_lost(issuer: LocalIssuer, replay_issuer: LocalIssuer,
                                                                  tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'sts.db'}"
    write_token(tmp_path / "admin-token")
    admin_port, port = free_port(), free_port()
    server = BrokerServer(base_config(port, issuer, replay_issuer, dead_port=free_port()), workdir=tmp_path,
                          database_url=database_url, port=port, settings=_settings(tmp_path, admin_port)).start()
    try:
        for _ in range(5):
            response = httpx.get(f"http://127.0.0.1:{admin_port}{ADMIN_PREFIX}/keys", timeout=5)
            assert response.status_code == 401
        authenticated_404 = httpx.get(f"http://127.0.0.1:{admin_port}{ADMIN_PREFIX}/nope", timeout=5,
                                      headers={"Authorization": f"Bearer {(tmp_path / 'admin-token').read_text().strip()}"})
        assert authenticated_404.status_code == 404
    finally:
        server.stop()  # flushes the open coalescing windows
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT reason, count FROM audit_events WHERE mode_notes LIKE '%endpoint:admin%'")).all()
    engine.dispose()
    missing = [count or 1 for reason, count in rows if reason == "admin_credentials_missing"]
    assert len(missing) == 2 and sum(missing) == 5  # the first on its own, the other four as one record
    assert [reason for reason, _ in rows].count("admin_unknown_path") == 1
