"""Retention in the running broker, over real HTTP: refusal coalescing at the token endpoint and
the background pruner owned by the app's lifespan (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from broker_harness import BrokerServer, free_port
from conformance.issuer import LocalIssuer
from integration_config import base_config
from sts.store.db import make_engine
from sts.store.records import IssuedTokenRecord

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"


def start(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str, workdir: Path, **settings: Any) -> BrokerServer:
    port = free_port()
    config = base_config(port, issuer, replay_issuer, dead_port=free_port())
    return BrokerServer(config, workdir=workdir, database_url=database_url, port=port,
                        settings={"config_reload_interval": 0, **settings}).start()


def rows(server: BrokerServer, prefix: str) -> list[dict[str, Any]]:
    with server.broker.engine.connect() as conn:
        result = conn.execute(sa.text("SELECT request_id, outcome, error, reason, count, mode_notes, detail FROM audit_events "
                                      "WHERE request_id LIKE :p ORDER BY id"), {"p": prefix + "%"})
        return [dict(r._mapping) for r in result]


def test_identical_unauthenticated_refusals_become_one_counted_record(
    issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str, tmp_path: Path, mint: Callable[..., str]
) -> None:
    server = start(issuer, replay_issuer, database_url, tmp_path, audit_coalesce_window=60, prune_interval=0)
    try:
        with server.client() as c:
            for n in range(30):  # garbage: not even a form
                resp = c.post("/token", content=b"{}", headers={"content-type": "application/json", "x-request-id": f"garbage-{n}"})
                assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"
            for n in range(5):  # a verified identity asking for a target it may not have
                resp = c.post("/token", headers={"x-request-id": f"verified-{n}"},
                              data={"grant_type": GRANT, "subject_token_type": JWT, "subject_token": mint("agent-1"),
                                    "audience": "https://not-granted.example.com"})
                assert resp.status_code == 400 and resp.json()["error"] == "invalid_target"
            for n in range(3):
                resp = c.post("/token", headers={"x-request-id": f"issued-{n}"},
                              data={"grant_type": GRANT, "subject_token_type": JWT, "subject_token": mint("agent-1")})
                assert resp.status_code == 200
        # While the window is open only the first refusal is in the table; the rest are counted.
        assert [(r["request_id"], r["count"]) for r in rows(server, "garbage-")] == [("garbage-0", 1)]
        # Decisions about a verified identity, refused or issued, are each written at once.
        assert [r["count"] for r in rows(server, "verified-")] == [1] * 5
        assert [(r["outcome"], r["count"]) for r in rows(server, "issued-")] == [("issued", 1)] * 3
    finally:
        server.stop()  # closes the window: the count record is written at shutdown
    garbage = rows(server, "garbage-")
    assert [r["count"] for r in garbage] == [1, 29]
    assert sum(r["count"] for r in garbage) == 30
    summary = garbage[1]
    assert (summary["request_id"], summary["error"], summary["reason"]) == ("garbage-1", "invalid_request", "bad_content_type")
    assert "coalesced" in json.loads(summary["mode_notes"])
    assert "garbage-0" in summary["detail"] and "garbage-29" in summary["detail"] and "127.0.0.1" in summary["detail"]


def test_background_pruner_removes_only_what_its_window_lets_go(
    issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str, tmp_path: Path
) -> None:
    now = time.time()
    server = start(issuer, replay_issuer, database_url, tmp_path, audit_retention_days=1, issued_token_retention_days=1,
                   prune_interval=0.05, prune_batch_size=2)
    try:
        # Written under the broker's feet: 5 old audit records and expired tokens, and young ones.
        engine = make_engine(database_url)
        try:
            with engine.begin() as conn:
                for n in range(5):
                    conn.execute(sa.text("INSERT INTO audit_events (time, request_id, outcome, mode_notes, requested_targets, "
                                         "granted_scopes) VALUES (:t, :r, 'denied', '[]', '[]', '[]')"),
                                 {"t": now - 2 * 86400 - n, "r": f"prune-old-{n}"})
                conn.execute(sa.text("INSERT INTO audit_events (time, request_id, outcome, mode_notes, requested_targets, "
                                     "granted_scopes) VALUES (:t, 'prune-young', 'denied', '[]', '[]', '[]')"), {"t": now - 86000})
            expired = [issued(f"prune-jti-{n}", expires_at=now - 2 * 86400, issued_at=now - 2 * 86400 - 900) for n in range(3)]
            with engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM issued_tokens WHERE jti LIKE 'prune-%'"))
            insert_issued(engine, expired + [issued("prune-jti-young", expires_at=now - 86000, issued_at=now - 86900)])
        finally:
            engine.dispose()
        deadline = time.monotonic() + 20
        while rows(server, "prune-old-") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rows(server, "prune-old-") == []
        assert [r["request_id"] for r in rows(server, "prune-young")] == ["prune-young"]
        while time.monotonic() < deadline and issued_jtis(server) != ["prune-jti-young"]:
            time.sleep(0.05)
        assert issued_jtis(server) == ["prune-jti-young"]
    finally:
        server.stop()


def insert_issued(engine: sa.engine.Engine, records: list[Any]) -> None:
    from sts.store.models import issued_tokens
    from sts.store.writer import ISSUED_COLUMNS, issued_row

    with engine.begin() as conn:
        conn.execute(issued_tokens.insert(), [dict(zip(ISSUED_COLUMNS, issued_row(r), strict=True)) for r in records])


def issued_jtis(server: BrokerServer) -> list[str]:
    with server.broker.engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text("SELECT jti FROM issued_tokens WHERE jti LIKE 'prune-%' ORDER BY jti"))]


def issued(jti: str, *, expires_at: float, issued_at: float) -> IssuedTokenRecord:
    return IssuedTokenRecord(jti=jti, identity="wl:agent-1", issuer_name="local", audience="https://vector.example.com",
                             scopes="read", issued_at=issued_at, expires_at=expires_at, subject_token_sha256="a" * 64,
                             signing_kid="kid-1")
