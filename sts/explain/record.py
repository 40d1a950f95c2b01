"""A past request's audit records, for ``sts explain --request-id``.

A request id is the ``X-Request-Id`` the broker answered with (the caller's own when it sent a
safe one, else 128 random bits). Callers can reuse ids, so every record with the id is
returned, newest first, at most ``limit`` of them.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from sts.store.models import audit_events

_JSON_COLUMNS = ("mode_notes", "requested_targets", "requested_scopes", "granted_scopes", "context")


def records_for_request(engine: Engine, request_id: str, *, limit: int = 10) -> list[dict[str, Any]]:
    """The audit records of ``request_id``, newest first, JSON columns decoded."""
    t = audit_events.c
    stmt = select(audit_events).where(t.request_id == request_id).order_by(t.time.desc(), t.id.desc()).limit(limit)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    for row in rows:
        for name in _JSON_COLUMNS:
            if row.get(name) is not None:
                row[name] = json.loads(row[name])
    return rows
