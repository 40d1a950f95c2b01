"""Record factories and small helpers shared by the storage tests."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from sts.store.db import make_engine
from sts.store.records import AuditRecord, IssuedTokenRecord


def create_schema(base_url: str) -> str:
    schema = f"sts_test_{secrets.token_hex(6)}"
    admin = make_engine(base_url, pool_size=1)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    finally:
        admin.dispose()
    return schema


def drop_schema(base_url: str, schema: str) -> None:
    admin = make_engine(base_url, pool_size=1)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        admin.dispose()


@dataclass(frozen=True)
class Backend:
    name: str
    url: str  # every engine made from it lands in this test's database / schema
    schema: str | None = None


def audit(n: int, **overrides: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "time": 1_700_000_000.0 + n,
        "request_id": f"req-{n}",
        "outcome": "issued",
        "client_id": "ci-runner",
        "issuer": "github",
        "external_subject": "repo:acme/app:ref:refs/heads/main",
        "identity": "github:acme/app",
        "grant": "deploy-bot",
        "mode_notes": ("audit-grant matched",),
        "requested_targets": ("https://vector.example.com",),
        "granted_target": "https://vector.example.com",
        "requested_scopes": ("read",),
        "granted_scopes": ("read",),
        "lifetime": 900,
        "issued_jti": f"jti-{n}",
        "subject_token_sha256": "a" * 64,
        "config_version": "v1",
    }
    fields.update(overrides)
    return AuditRecord(**fields)


def issued(jti: str, **overrides: Any) -> IssuedTokenRecord:
    fields: dict[str, Any] = {
        "jti": jti,
        "identity": "github:acme/app",
        "issuer_name": "github",
        "audience": "https://vector.example.com",
        "scopes": "read write",
        "issued_at": 1_700_000_000.0,
        "expires_at": 1_700_000_900.0,
        "subject_token_sha256": "b" * 64,
        "client_id": "ci-runner",
        "signing_kid": "kid-1",
    }
    fields.update(overrides)
    return IssuedTokenRecord(**fields)


def count(engine: Engine, table: str, where: str = "") -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table} {where}")).scalar_one())
