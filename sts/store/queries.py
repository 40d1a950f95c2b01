"""Read-side queries and housekeeping for the command line (``sts audit``, ``sts db``)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from sts.store.db import write_transaction
from sts.store.errors import StoreError
from sts.store.models import audit_events, replay_guard

__all__ = ["StoreError", "purge_replay", "recent_audit"]

_JSON_COLUMNS = ("mode_notes", "requested_targets", "requested_scopes", "granted_scopes", "context")


def recent_audit(
    engine: Engine, *, limit: int = 50, outcome: str | None = None, identity: str | None = None
) -> list[dict[str, Any]]:
    """The newest audit records first, as plain dicts (JSON columns decoded to lists)."""
    stmt = select(audit_events)
    if outcome is not None:
        stmt = stmt.where(audit_events.c.outcome == outcome)
    if identity is not None:
        stmt = stmt.where(audit_events.c.identity == identity)
    stmt = stmt.order_by(audit_events.c.time.desc(), audit_events.c.id.desc()).limit(max(0, limit))
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    for row in rows:
        for name in _JSON_COLUMNS:
            if row[name] is not None:
                row[name] = json.loads(row[name])
    return rows


def purge_replay(engine: Engine, now: float) -> int:
    """Delete replay-guard entries that expired before ``now``; returns how many. Expired
    entries are harmless (a claim takes them over) but would grow the table forever."""
    with write_transaction(engine) as conn:
        return int(conn.execute(delete(replay_guard).where(replay_guard.c.expires_at < now)).rowcount)
