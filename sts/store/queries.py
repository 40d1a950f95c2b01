"""Read-side queries and housekeeping for the command line (``sts audit``, ``sts db``).

Audit queries (`sts audit list`, docs/audit-queries.md) are "these filters, newest first, at
most N" and "these filters, after record id X" (``--follow``). Each filter is an equality on
a column, so the database answers the first from one of the composite ``(column, time)``
indexes of ``audit_events`` (or the ``time`` index) walked backwards, and the second from the
primary key: neither reads more than the rows it returns plus the rows the other filters skip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.engine import Connection, Engine

from sts.store.db import write_transaction
from sts.store.errors import StoreError
from sts.store.models import audit_events, replay_guard

__all__ = ["AuditFilter", "StoreError", "audit_after", "list_audit", "purge_replay", "recent_audit"]

_JSON_COLUMNS = ("mode_notes", "requested_targets", "requested_scopes", "granted_scopes", "context")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditFilter:
    """Which audit records to read: every field that is not None must equal the record's
    column (``target`` is the granted target); ``since`` is inclusive, ``until`` exclusive."""

    request_id: str | None = None
    identity: str | None = None
    issuer: str | None = None
    client_id: str | None = None
    grant: str | None = None
    target: str | None = None
    outcome: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None

    def apply(self, stmt: Select[Any]) -> Select[Any]:
        c = audit_events.c
        columns = {"request_id": c.request_id, "identity": c.identity, "issuer": c.issuer, "client_id": c.client_id,
                   "grant": c.grant, "target": c.granted_target, "outcome": c.outcome, "reason": c.reason}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name in columns:
                stmt = stmt.where(columns[f.name] == value)
        if self.since is not None:
            stmt = stmt.where(c.time >= self.since)
        if self.until is not None:
            stmt = stmt.where(c.time < self.until)
        return stmt


def newest_statement(where: AuditFilter, limit: int) -> Select[Any]:
    """The ``limit`` newest records matching ``where``, newest first (shown by tests and
    docs/audit-queries.md with the query plan of each filter)."""
    c = audit_events.c
    return where.apply(select(audit_events)).order_by(c.time.desc(), c.id.desc()).limit(max(0, limit))


def after_statement(where: AuditFilter, after_id: int, limit: int) -> Select[Any]:
    """Records matching ``where`` with an id above ``after_id``, in id order (``--follow``)."""
    c = audit_events.c
    return where.apply(select(audit_events)).where(c.id > after_id).order_by(c.id).limit(max(0, limit))


def _decoded(conn: Connection, stmt: Select[Any]) -> list[dict[str, Any]]:
    rows = [dict(r._mapping) for r in conn.execute(stmt)]
    for row in rows:
        for name in _JSON_COLUMNS:
            if row[name] is not None:
                row[name] = json.loads(row[name])
    return rows


def list_audit(conn: Connection, where: AuditFilter, *, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` records matching ``where``, newest first, as plain dicts (JSON
    columns decoded)."""
    return _decoded(conn, newest_statement(where, limit))


def audit_after(conn: Connection, where: AuditFilter, after_id: int, *, limit: int = 1000) -> list[dict[str, Any]]:
    """Records matching ``where`` committed with an id above ``after_id``, oldest id first."""
    return _decoded(conn, after_statement(where, after_id, limit))


def last_audit_id(conn: Connection) -> int:
    """The highest audit record id so far (0 for none): where ``--follow`` starts."""
    return int(conn.execute(select(func.coalesce(func.max(audit_events.c.id), 0))).scalar_one())


def recent_audit(
    engine: Engine, *, limit: int = 50, outcome: str | None = None, identity: str | None = None
) -> list[dict[str, Any]]:
    """The newest audit records first, as plain dicts (JSON columns decoded to lists)."""
    with engine.connect() as conn:
        return list_audit(conn, AuditFilter(outcome=outcome, identity=identity), limit=limit)


def purge_replay(engine: Engine, now: float) -> int:
    """Delete replay-guard entries that expired before ``now``; returns how many. Expired
    entries are harmless (a claim takes them over) but would grow the table forever."""
    with write_transaction(engine) as conn:
        return int(conn.execute(delete(replay_guard).where(replay_guard.c.expires_at < now)).rowcount)
