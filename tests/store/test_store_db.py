"""Engines, readiness and the CLI's audit query."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from sts.store.db import database_ok, make_engine
from sts.store.queries import recent_audit
from sts.store.writer import GroupCommitWriter
from store_support import Backend, audit


def test_sqlite_settings_on_every_connection(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'sts.db'}", pool_size=2)
    try:
        assert (tmp_path / "nested" / "dir").is_dir()
        with engine.connect() as a, engine.connect() as b:
            for conn in (a, b):
                pragmas = ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
                got = [conn.execute(text(f"PRAGMA {p}")).scalar() for p in pragmas]
                assert got == ["wal", 2, 5000, 1]  # synchronous 2 == FULL
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        pytest.param("postgresql://u@127.0.0.1:1/db", "psycopg", id="postgresql-scheme"),
        pytest.param("postgres://u@127.0.0.1:1/db", "psycopg", id="postgres-scheme"),
        pytest.param("postgresql+psycopg://u@127.0.0.1:1/db", "psycopg", id="explicit-driver"),
    ],
)
def test_postgres_urls_use_psycopg3(url: str, driver: str) -> None:
    engine = make_engine(url)
    try:
        assert engine.dialect.driver == driver
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("sqlite://", id="sqlite-memory"),
        pytest.param("sqlite:///:memory:", id="sqlite-memory-path"),
        pytest.param("postgresql+psycopg2://u@h/db", id="psycopg2"),
        pytest.param("mysql://u@h/db", id="mysql"),
    ],
)
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        make_engine(url)


def test_database_ok(engine: Engine) -> None:
    assert database_ok(engine) is True


def test_database_down_is_not_ok() -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    try:
        assert database_ok(engine) is False
    finally:
        engine.dispose()


async def test_recent_audit_newest_first_and_filters(backend: Backend, engine: Engine, writer: GroupCommitWriter) -> None:
    await writer.write(audit(1), audit(2, outcome="denied", identity="other"), audit(3), audit(4, outcome="denied"))
    assert [r["request_id"] for r in recent_audit(engine)] == ["req-4", "req-3", "req-2", "req-1"]
    assert [r["request_id"] for r in recent_audit(engine, limit=2)] == ["req-4", "req-3"]
    assert [r["request_id"] for r in recent_audit(engine, outcome="denied")] == ["req-4", "req-2"]
    assert [r["request_id"] for r in recent_audit(engine, outcome="denied", identity="other")] == ["req-2"]


@pytest.mark.postgres
def test_postgres_connections_are_bounded_in_time(postgres_backend: Backend) -> None:
    # Defaults that bound a request's wait on an unreachable database; a URL may set its own.
    from sts.store.db import POSTGRES_CONNECT_DEFAULTS

    url = str(postgres_backend.url)
    for url, expected in ((url, POSTGRES_CONNECT_DEFAULTS["connect_timeout"]),
                          (url + ("&" if "?" in url else "?") + "connect_timeout=3", 3)):
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                params = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
        finally:
            engine.dispose()
        assert params["connect_timeout"] == str(expected)
        assert params["tcp_user_timeout"] == str(POSTGRES_CONNECT_DEFAULTS["tcp_user_timeout"])
