"""Retention on the storage side: batch deletes, the one-pruner lock, export reads, and the
insert of coalesced audit records.

Deletes are small: each batch removes at most ``limit`` rows chosen through the ``time`` (audit)
or ``expires_at`` (issued tokens) index and deleted by primary key, in a transaction of its own,
so the group-commit writer never waits for more than one batch. Every delete repeats the age
condition, so no batch can remove a row younger than its cutoff whatever the order of ids.

One pruner at a time: on PostgreSQL a session advisory lock keyed by the schema (the same scheme
as the migration lock); on SQLite, whose database is one local file, an exclusive ``flock`` on a
file beside it. Both are released by the operating system or the server when the holder dies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection, Engine

from sts.store.db import prepare_for_writes, session_advisory_lock, write_transaction
from sts.store.models import audit_events, issued_tokens
from sts.store.records import AuditRecord
from sts.store.writer import AUDIT_COLUMNS, audit_row

try:  # POSIX; elsewhere SQLite replicas (processes on one host) may prune concurrently, harmlessly
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# Same key for every replica of one schema; pruners of other schemas on the server do not wait.
_PG_LOCK_KEY = "hashtextextended('sts-pruner:' || current_schema(), 0)"
JSON_COLUMNS = ("mode_notes", "requested_targets", "requested_scopes", "granted_scopes", "context")


def delete_audit_batch(conn: Connection, before: float, limit: int) -> int:
    """Delete at most ``limit`` audit records with ``time < before``, oldest first."""
    t = audit_events.c
    oldest = select(t.id).where(t.time < before).order_by(t.time, t.id).limit(limit).scalar_subquery()
    return int(conn.execute(delete(audit_events).where(t.id.in_(oldest) & (t.time < before))).rowcount)


def delete_issued_batch(conn: Connection, expired_before: float, limit: int) -> int:
    """Delete at most ``limit`` issued-token rows with ``expires_at < expired_before``."""
    t = issued_tokens.c
    oldest = select(t.jti).where(t.expires_at < expired_before).order_by(t.expires_at, t.jti).limit(limit).scalar_subquery()
    stmt = delete(issued_tokens).where(t.jti.in_(oldest) & (t.expires_at < expired_before))
    return int(conn.execute(stmt).rowcount)


def count_audit_before(conn: Connection, before: float) -> int:
    return int(conn.execute(select(func.count()).select_from(audit_events).where(audit_events.c.time < before)).scalar_one())


def count_issued_expired_before(conn: Connection, expired_before: float) -> int:
    stmt = select(func.count()).select_from(issued_tokens).where(issued_tokens.c.expires_at < expired_before)
    return int(conn.execute(stmt).scalar_one())


class LockHeld(Exception):
    """Another pruner (replica or command) holds the pruning lock."""


@contextmanager
def pruning_connection(engine: Engine) -> Iterator[Connection]:
    """A connection that holds the one-pruner lock for as long as the block runs; its
    transactions take the SQLite write lock at BEGIN. Raises ``LockHeld`` without waiting
    when another pruner has it."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn, session_advisory_lock(conn, _PG_LOCK_KEY, wait=False) as held:
            if not held:
                raise LockHeld
            yield conn
        return
    with _sqlite_file_lock(engine), engine.connect() as conn:
        yield prepare_for_writes(conn)


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if fcntl is None or not database:  # pragma: no cover - Windows
        yield
        return
    path = Path(database).expanduser().with_name(Path(database).name + ".prune-lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def insert_audit_records(engine: Engine, records: Sequence[AuditRecord]) -> None:
    """Insert ``records`` with their ``count`` in one short transaction (used for coalesced
    refusals, a few rows a minute at most; the request path writes through the group commit)."""
    if not records:
        return
    rows = [{**dict(zip(AUDIT_COLUMNS, audit_row(r), strict=True)), "count": r.count} for r in records]
    with write_transaction(engine) as conn:
        conn.execute(insert(audit_events), rows)


def audit_between(conn: Connection, since: float | None, until: float | None, *, chunk: int = 1000) -> Iterator[dict[str, Any]]:
    """Audit records with ``since <= time < until`` (either bound optional), oldest first, as
    plain dicts with the JSON columns decoded; streamed, so an export never holds the table."""
    t = audit_events.c
    stmt = select(audit_events)
    if since is not None:
        stmt = stmt.where(t.time >= since)
    if until is not None:
        stmt = stmt.where(t.time < until)
    stmt = stmt.order_by(t.time, t.id)
    result = conn.execution_options(stream_results=True, yield_per=chunk).execute(stmt)
    for row in result:
        record = dict(row._mapping)
        for name in JSON_COLUMNS:
            if record[name] is not None:
                record[name] = json.loads(record[name])
        yield record
