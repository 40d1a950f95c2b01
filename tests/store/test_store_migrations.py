"""Migrations: upgrade, drift check, downgrade, concurrent upgrades (one suite, every backend)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from sts.store import migrate
from sts.store.db import make_engine
from store_support import Backend, create_schema, drop_schema

TABLES = ("approvals", "audit_events", "broker_replicas", "config_versions", "issued_tokens", "kill_switches", "lifecycle_versions", "replay_guard", "signing_keys",
          "status_list_blocks", "usage_counts")


def test_single_linear_history() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate._config())
    revisions = list(scripts.walk_revisions())  # head first; raises on a branch
    assert revisions[0].revision == migrate.head()
    assert revisions[-1].down_revision is None
    assert all(isinstance(r.down_revision, str) for r in revisions[:-1])  # no merges


def test_upgrade_check_downgrade_upgrade(backend: Backend) -> None:
    migrate.upgrade(backend.url)
    assert migrate.current(backend.url) == migrate.head()
    assert migrate.check(backend.url) == []

    migrate.downgrade(backend.url, "base")
    assert migrate.current(backend.url) is None
    missing = migrate.check(backend.url)
    assert {f"add_table {t}" for t in TABLES} <= set(missing)

    migrate.upgrade(backend.url)
    assert migrate.current(backend.url) == migrate.head()
    assert migrate.check(backend.url) == []


def test_check_reports_drift(backend: Backend, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE signing_keys ADD COLUMN surprise INTEGER"))
    try:
        assert any("remove_column" in d and "surprise" in d for d in migrate.check(backend.url))
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE signing_keys DROP COLUMN surprise"))
    assert migrate.check(backend.url) == []


def test_concurrent_upgrades_serialize(backend: Backend) -> None:
    """Replicas starting together: each runs upgrade, one migrates, the others find head."""
    migrate.upgrade(backend.url)
    migrate.downgrade(backend.url, "base")
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def replica() -> None:
        start.wait()
        try:
            migrate.upgrade(backend.url)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert migrate.current(backend.url) == migrate.head()
    assert migrate.check(backend.url) == []


@pytest.mark.postgres
def test_schema_given_through_config_attributes(postgres_base_url: str) -> None:
    """``schema=`` reaches env.py through Alembic config attributes and lands every table there."""
    schema = create_schema(postgres_base_url)
    try:
        migrate.upgrade(postgres_base_url, schema=schema)
        assert migrate.current(postgres_base_url, schema=schema) == migrate.head()
        assert migrate.check(postgres_base_url, schema=schema) == []
        admin = make_engine(postgres_base_url, pool_size=1)
        try:
            with admin.connect() as conn:
                found = conn.execute(
                    text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"), {"s": schema}
                ).scalars().all()
        finally:
            admin.dispose()
        assert set(found) == {*TABLES, "alembic_version"}
        migrate.downgrade(postgres_base_url, "base", schema=schema)
        assert migrate.current(postgres_base_url, schema=schema) is None
    finally:
        drop_schema(postgres_base_url, schema)
