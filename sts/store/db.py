"""Engine construction for SQLite (stdlib ``sqlite3``) and PostgreSQL (psycopg 3).

SQLite is set up for a durable, multi-connection service on every new connection: WAL (readers
never block the writer), ``synchronous=FULL`` (a commit is on disk before the response leaves),
a busy timeout (a second process waits for the write lock instead of failing) and foreign keys.
SQLAlchemy, not ``sqlite3``, emits ``BEGIN`` so that transactions really are serializable; a
connection that is about to write asks for ``BEGIN IMMEDIATE`` (``write_transaction``) so it
takes the write lock up front and cannot fail half-way on a lock upgrade.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from sts.store.errors import DatabaseMissing

# Connection execution option read by the SQLite "begin" hook.
_SQLITE_BEGIN = "sts_sqlite_begin"
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)


# libpq connection parameters set unless the URL names them. They bound how long a request can
# wait on a database that does not answer (docs/operations.md, "Failure behaviour"):
# connect_timeout: seconds for a connection attempt (without it a black-holed server hangs the
#   writer, /readyz and startup for minutes);
# tcp_user_timeout: milliseconds that sent data may stay unacknowledged before the kernel drops
#   the connection, so a statement on a connection cut by a network partition fails instead of
#   waiting for TCP's retransmission limit (about 15 minutes on Linux).
POSTGRES_CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 5,
    "tcp_user_timeout": 10_000,
    "application_name": "sts",
}


SUPPORTED_DATABASE_URLS: Final = "sqlite:///path/to/sts.db or postgresql://user@host:5432/dbname"


class UnsupportedDatabaseURL(ValueError):
    """A database URL this broker cannot use; the message names the problem, never the URL
    (it may hold a password)."""

    fix = f"use {SUPPORTED_DATABASE_URLS}"


def database_url_problem(url: str) -> str | None:
    """Why ``url`` is not a database this broker supports (None when it is). Pure: parses only."""
    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError:
        return "not a database URL"
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "postgresql":
        if driver != "psycopg":
            return f"PostgreSQL driver {driver!r} is not supported (psycopg 3 only: postgresql:// or postgresql+psycopg://)"
        return None
    if backend == "sqlite":
        if driver != "pysqlite":
            return f"SQLite driver {driver!r} is not supported (sqlite:///path only)"
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            # Every pooled connection would see its own empty in-memory database.
            return "SQLite needs a database file (sqlite:///path/to/sts.db)"
        return None
    return f"unsupported database {backend!r} (sqlite and postgresql are supported)"


def database_backend(url: str) -> str | None:
    """``sqlite`` or ``postgresql`` (or another backend name) of ``url``; None if unparsable."""
    try:
        return make_url(normalise_url(url)).get_backend_name()
    except ArgumentError:
        return None


def describe_database(url: str) -> str:
    """Where ``url`` points, for messages: the SQLite file, or the PostgreSQL URL without its
    password."""
    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError:
        return "(unparsable URL)"
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or "(no file)"
    return parsed.render_as_string(hide_password=True)


def normalise_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` mean psycopg 3 here (SQLAlchemy would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, *, pool_size: int = 5, create: bool = True) -> Engine:
    """A pooled engine for ``url`` (``sqlite:///path`` or ``postgresql[+psycopg]://...``).

    With ``create=False`` (commands that only read, and ``serve`` without ``--migrate``) a
    missing SQLite file raises :class:`DatabaseMissing` instead of being created, and later
    connections open it in a mode that cannot create it either.
    """
    problem = database_url_problem(url)
    if problem is not None:
        raise UnsupportedDatabaseURL(problem)
    parsed = make_url(normalise_url(url))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, pool_size, create=create)
    if backend == "postgresql":
        connect_args: dict[str, Any] = {}
        for name, value in POSTGRES_CONNECT_DEFAULTS.items():
            if name not in parsed.query:
                connect_args[name] = value
        return sqlalchemy.create_engine(
            parsed, pool_size=pool_size, pool_pre_ping=True, connect_args=connect_args
        )
    raise AssertionError(backend)  # pragma: no cover - database_url_problem refused it


def _sqlite_engine(parsed: sqlalchemy.URL, pool_size: int, *, create: bool) -> Engine:
    path = Path(parsed.database or "").expanduser()
    options: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        if not path.is_file():
            raise DatabaseMissing(str(parsed.database))
        # mode=rw: sqlite3 fails instead of creating the file should it vanish meanwhile.
        uri = path.resolve().as_uri() + "?mode=rw"
        options = {"creator": lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)}
    engine = sqlalchemy.create_engine(parsed, pool_size=pool_size, **options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from sqlite3 (it skips BEGIN before SELECT and DDL).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in _SQLITE_PRAGMAS:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def prepare_for_writes(conn: Connection) -> Connection:
    """Mark ``conn`` so its transactions take the SQLite write lock at BEGIN (no effect on
    PostgreSQL, whose row locks do the same job)."""
    if conn.dialect.name == "sqlite":
        conn.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
    return conn


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One read-write transaction: committed on success, rolled back on error."""
    with engine.connect() as conn:
        prepare_for_writes(conn)
        with conn.begin():
            yield conn


def database_ok(engine: Engine) -> bool:
    """``SELECT 1`` through the pool (for ``/readyz``); False on any database or network error."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError):
        return False
    return True


@contextmanager
def session_advisory_lock(conn: Connection, key_sql: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold a PostgreSQL session advisory lock (``key_sql``: an SQL expression of the bigint
    key) for the block; yields False, holding nothing, when ``wait`` is off and another session
    has it. The lock is released on leaving, or with the session if that fails."""
    if wait:
        conn.execute(text(f"SELECT pg_advisory_lock({key_sql})"))
    elif not conn.execute(text(f"SELECT pg_try_advisory_lock({key_sql})")).scalar():
        conn.rollback()
        yield False
        return
    conn.commit()
    try:
        yield True
    finally:
        try:
            conn.rollback()
            conn.execute(text(f"SELECT pg_advisory_unlock({key_sql})"))
            conn.commit()
        except Exception:  # the session is gone, and with it the lock
            conn.invalidate()
