"""``sts serve --workers 2`` with the admin API: the admin address is bound by one worker; when
that worker dies, another worker takes the address over (docs/admin-api.md#several-workers)."""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import httpx
import pytest

from broker_harness import free_port
from conformance.issuer import LocalIssuer
from replica_support import BrokerProcess, broker_config, wait_until, write_config


@pytest.mark.slow
def test_one_worker_serves_the_admin_api_and_another_takes_over(issuer: LocalIssuer, replay_issuer: LocalIssuer,
                                                                sqlite_url: str, kek: str, tmp_path: Path) -> None:
    config = tmp_path / "sts.yaml"
    write_config(config, broker_config(issuer, replay_issuer))
    token = secrets.token_hex(32)
    (tmp_path / "admin-token").write_text(token)
    admin = f"127.0.0.1:{free_port()}"
    broker = BrokerProcess(config=config, database_url=sqlite_url, kek=kek, log_path=tmp_path / "broker.log", workers=2,
                           env={"STS_ADMIN_LISTEN": admin, "STS_ADMIN_TOKEN_FILE": str(tmp_path / "admin-token")}).start()

    def serving_pid() -> int | None:
        try:
            response = httpx.get(f"http://{admin}/admin/v1/keys", headers={"Authorization": f"Bearer {token}"}, timeout=3)
        except httpx.HTTPError:
            return None
        return int(response.json()["served_by"]["pid"]) if response.status_code == 200 else None

    try:
        assert wait_until(lambda: len([r for r in broker.logs() if r.get("msg") == "broker started"]) == 2, 30)
        first = serving_pid()
        assert first is not None, broker.log_path.read_text()[-3000:]
        # Every connection lands on the same worker: only one listens.
        assert {serving_pid() for _ in range(10)} == {first}
        os.kill(first, signal.SIGKILL)
        # The other worker (or the one the supervisor starts in place of the dead one) binds it.
        assert wait_until(lambda: serving_pid() not in (None, first), 30), broker.log_path.read_text()[-3000:]
        assert any(str(r.get("msg")).startswith("admin API served by another worker") for r in broker.logs())
    finally:
        broker.stop()
