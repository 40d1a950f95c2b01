"""Engines, readiness and the CLI's audit query."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from sts.store.db import database_ok, database_url_problem, describe_database, make_engine
from sts.store.errors import DatabaseMissing
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


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite:///var/sts.db", None),
        ("postgresql://sts@db:5432/sts", None),
        ("postgres://sts@db/sts", None),
        ("postgresql+psycopg://sts@db/sts", None),
        ("mysql://sts@db/sts", "unsupported database 'mysql'"),
        ("postgresql+asyncpg://sts@db/sts", "psycopg 3 only"),
        ("sqlite+aiosqlite:///x.db", "sqlite:///path only"),
        ("sqlite://", "SQLite needs a database file"),
        ("sqlite:///:memory:", "SQLite needs a database file"),
        ("::", "not a database URL"),
    ],
)
def test_database_url_problem(url: str, problem: str | None) -> None:
    found = database_url_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_describe_database_hides_the_password() -> None:
    assert describe_database("postgresql://sts:hunter2@db:5432/sts") == "postgresql+psycopg://sts:***@db:5432/sts"
    assert describe_database("sqlite:///var/sts.db") == "var/sts.db"


def test_make_engine_without_create_touches_nothing(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "sts.db"
    with pytest.raises(DatabaseMissing) as info:
        make_engine(f"sqlite:///{target}", create=False)
    assert info.value.where == str(target) and not target.parent.exists()
    target.parent.mkdir()
    with pytest.raises(DatabaseMissing):
        make_engine(f"sqlite:///{target}", create=False)
    assert list(target.parent.iterdir()) == []
