"""Helpers for the admin API tests: a broker with the admin listener on, and its audit rows."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from broker_harness import BrokerServer, free_port

ADMIN_PREFIX = "/admin/v1"


def write_token(path: Path) -> str:
    token = secrets.token_urlsafe(32)
    path.write_text(token + "\n")
    return token


def admin_broker(config: dict[str, Any], *, workdir: Path, database_url: str, port: int | None = None,
                 settings: dict[str, Any] | None = None) -> tuple[BrokerServer, str, str]:
    """A started broker whose admin API listens on loopback with a bearer token file.
    Returns the broker, the admin base URL and the token."""
    admin_port = free_port()
    token = write_token(workdir / "admin-token")
    server = BrokerServer(config, workdir=workdir, database_url=database_url, port=port or free_port(),
                          settings={"admin_listen": f"127.0.0.1:{admin_port}", "admin_token_file": workdir / "admin-token",
                                    "audit_coalesce_window": 0, **(settings or {})}).start()
    return server, f"http://127.0.0.1:{admin_port}", token


def audit_rows(database_url: str, request_id: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(
                sa.text("SELECT * FROM audit_events WHERE request_id = :rid ORDER BY id"), {"rid": request_id})]
    finally:
        engine.dispose()
    for row in rows:
        for name in ("mode_notes", "context"):
            if isinstance(row.get(name), str):
                row[name] = json.loads(row[name])
    return rows


def assert_no_store_json(response: httpx.Response) -> None:
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
