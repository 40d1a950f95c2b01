"""Programmatic Alembic: upgrade, downgrade, current revision, and model/database drift.

The URL always comes from the caller (settings), never from ``alembic.ini``. Replicas may all
run ``upgrade`` at start-up: on PostgreSQL a session advisory lock (keyed by the schema)
serializes them, and on SQLite the migration transaction begins IMMEDIATE, which takes the
database write lock; either way the second replica finds the schema already at head.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from sts.store.db import describe_database, make_engine, prepare_for_writes, session_advisory_lock
from sts.store.errors import SchemaNotCurrent, StoreError
from sts.store.models import metadata

# Same key for every replica of one schema; other schemas on the server do not wait on it.
_LOCK_SQL = "hashtextextended('sts-migrations:' || current_schema(), 0)"


def migrations_dir() -> Path:
    """``migrations/`` beside the package (source tree, editable install) or
    ``<prefix>/share/migrations`` (the container image installs it there)."""
    candidates = (Path(__file__).resolve().parents[2] / "migrations", Path(sys.prefix) / "share" / "migrations")
    for path in candidates:
        if (path / "env.py").is_file():
            return path
    raise StoreError("the Alembic migrations directory was not found next to the package or in <prefix>/share")


def _config(connection: Connection | None = None, schema: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    cfg.attributes["schema"] = schema
    return cfg


def set_search_path(conn: Connection, schema: str | None) -> None:
    """Point unqualified names at ``schema`` (PostgreSQL; SQLite has no schemas to choose)."""
    if schema and conn.dialect.name == "postgresql":
        quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
        conn.exec_driver_sql(f"SET search_path TO {quoted}")


@contextmanager
def connect(url: str, schema: str | None = None, *, create: bool = True) -> Iterator[Connection]:
    # One short-lived connection; dispose() leaves no pool behind in the calling process.
    engine = make_engine(url, pool_size=1, create=create)
    try:
        with engine.connect() as conn:
            set_search_path(conn, schema)
            conn.commit()  # a session setting, kept for the life of the connection
            yield conn
    finally:
        engine.dispose()


@contextmanager
def migration_lock(conn: Connection) -> Iterator[None]:
    """Hold the PostgreSQL session advisory lock for migrations of this schema (no-op on SQLite,
    where the IMMEDIATE migration transaction is the lock)."""
    if conn.dialect.name != "postgresql":
        yield
        return
    with session_advisory_lock(conn, _LOCK_SQL):
        yield


def _run(url: str, schema: str | None, action: Any) -> None:
    """Run ``action(config)`` in one transaction under the migration lock."""
    with connect(url, schema) as conn, migration_lock(conn):
        prepare_for_writes(conn)
        with conn.begin():
            action(_config(conn, schema))


def upgrade(url: str, revision: str = "head", *, schema: str | None = None) -> None:
    """Bring the database (``schema`` on PostgreSQL, else the search_path) up to ``revision``."""
    _run(url, schema, lambda cfg: command.upgrade(cfg, revision))


def downgrade(url: str, revision: str, *, schema: str | None = None) -> None:
    _run(url, schema, lambda cfg: command.downgrade(cfg, revision))


def current(url: str, *, schema: str | None = None, create: bool = True) -> str | None:
    """The database's revision, or None for an empty database. With ``create=False`` a missing
    SQLite file raises ``DatabaseMissing`` instead of being created."""
    with connect(url, schema, create=create) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_current(engine: Engine, url: str) -> None:
    """Raise ``SchemaNotCurrent`` unless the database behind ``engine`` is at the head revision
    (reads only: the check creates no table)."""
    # Plain SQL rather than MigrationContext, which logs its set-up at INFO on every call.
    with engine.connect() as conn:
        revision = None
        if inspect(conn).has_table("alembic_version"):
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if revision != head():
        raise SchemaNotCurrent(describe_database(url), revision, head())


def head() -> str:
    heads = ScriptDirectory.from_config(_config()).get_heads()
    if len(heads) != 1:
        raise StoreError(f"the migrations must have exactly one head, found {heads}")
    return heads[0]


def check(url: str, *, schema: str | None = None) -> list[str]:
    """Differences between ``sts.store.models`` and the database (Alembic autogenerate);
    empty when they agree. Non-empty means a migration is missing or was not applied."""
    with connect(url, schema) as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return [_describe(diff) for diff in compare_metadata(context, metadata)]


def _describe(diff: Any) -> str:
    if isinstance(diff, list):  # modify_* entries come grouped per column
        return "; ".join(_describe(d) for d in diff)
    op, *args = diff
    if op.startswith("modify_"):
        _schema, table, column, _info, old, new = args
        return f"{op} {table}.{column}: {old!r} -> {new!r}"
    names: list[str] = []
    for arg in args:
        table = getattr(arg, "table", None)
        if isinstance(arg, str):
            names.append(arg)
        elif table is not None and getattr(table, "name", None) not in names:
            names += [table.name, arg.name]
        elif getattr(arg, "name", None):
            names.append(arg.name)
    return f"{op} {'.'.join(names)}"
