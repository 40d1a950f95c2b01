"""Audit queries (`sts audit list`) on every backend: each filter, the window, the order, the
``--follow`` read, and the query plan of each filter (an index, never a full scan)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.engine import Connection, Engine

from sts.store.models import audit_events
from sts.store.queries import AuditFilter, after_statement, audit_after, last_audit_id, list_audit, newest_statement
from sts.store.writer import AUDIT_COLUMNS, GroupCommitWriter, audit_row
from store_support import Backend, audit

T0 = 1_700_000_000.0


def _fill(engine: Engine, n: int) -> None:
    """``n`` records: identity 1 in 500, grant, target and client 1 in 250, issuer 1 in 3,
    one in ten refused with one of 7 reasons."""
    rows = []
    for i in range(n):
        denied = i % 10 == 0
        record = audit(i, time=T0 + i, request_id=f"r-{i}", identity=f"wl:agent-{i % 500}", grant=f"g{i % 250}",
                       granted_target=None if denied else f"https://t{i % 250}.example.com", client_id=f"c{i % 250}",
                       issuer=f"i{i % 3}", outcome="denied" if denied else "issued", reason=f"reason{i % 7}" if denied else None)
        rows.append(dict(zip(AUDIT_COLUMNS, audit_row(record), strict=True)))
    with engine.begin() as conn:
        conn.execute(insert(audit_events), rows)
        conn.execute(text("ANALYZE"))


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["request_id"] for r in rows]


async def test_each_filter_selects_newest_first(engine: Engine, writer: GroupCommitWriter) -> None:
    await writer.write(
        audit(1, time=T0 + 1),
        audit(2, time=T0 + 2, identity="wl:other", grant="other-grant", granted_target="https://other.example.com",
              client_id="other-client", issuer="gitlab"),
        audit(3, time=T0 + 3, outcome="denied", reason="scope_not_allowed", granted_target=None),
        audit(4, time=T0 + 4, outcome="error", reason="signing_key_unavailable"),
        audit(5, time=T0 + 5, request_id="dup"),
        audit(6, time=T0 + 6, request_id="dup"),  # a caller may reuse its X-Request-Id
    )
    with engine.connect() as conn:
        def ids(**where: Any) -> list[str]:
            return _ids(list_audit(conn, AuditFilter(**where), limit=50))

        assert ids() == ["dup", "dup", "req-4", "req-3", "req-2", "req-1"]
        assert [r["time"] for r in list_audit(conn, AuditFilter(request_id="dup"))] == [T0 + 6, T0 + 5]
        assert ids(identity="wl:other") == ["req-2"]
        assert ids(issuer="gitlab") == ["req-2"]
        assert ids(client_id="other-client") == ["req-2"]
        assert ids(grant="other-grant") == ["req-2"]
        assert ids(target="https://other.example.com") == ["req-2"]
        assert ids(outcome="denied") == ["req-3"]
        assert ids(outcome="error") == ["req-4"]
        assert ids(reason="scope_not_allowed") == ["req-3"]
        assert ids(outcome="issued", identity="github:acme/app") == ["dup", "dup", "req-1"]
        assert ids(since=T0 + 2, until=T0 + 4) == ["req-3", "req-2"]  # since inclusive, until exclusive
        assert ids(identity="nobody") == []
        assert _ids(list_audit(conn, AuditFilter(), limit=2)) == ["dup", "dup"]
        # JSON columns come back decoded.
        assert list_audit(conn, AuditFilter(request_id="req-1"))[0]["granted_scopes"] == ["read"]


async def test_after_reads_new_records_in_id_order(engine: Engine, writer: GroupCommitWriter) -> None:
    with engine.connect() as conn:
        assert last_audit_id(conn) == 0
    await writer.write(audit(1), audit(2, identity="wl:other"))
    with engine.connect() as conn:
        start = last_audit_id(conn)
    await writer.write(audit(3), audit(4, identity="wl:other"), audit(5))
    with engine.connect() as conn:
        assert _ids(audit_after(conn, AuditFilter(), start)) == ["req-3", "req-4", "req-5"]
        assert _ids(audit_after(conn, AuditFilter(identity="wl:other"), start)) == ["req-4"]
        assert _ids(audit_after(conn, AuditFilter(), 0, limit=2)) == ["req-1", "req-2"]
        assert last_audit_id(conn) == start + 3


# --- query plans ---------------------------------------------------------------------------------

# filter -> the index the plan must use. The selective filters have an index of their own; the
# ones with a handful of values (outcome, issuer) walk the time index newest first and stop
# after --limit matches.
PLANS: list[tuple[str, dict[str, Any], str]] = [
    ("none", {}, "ix_audit_events_time"),
    ("since", {"since": T0 + 7_500}, "ix_audit_events_time"),
    ("request_id", {"request_id": "r-77"}, "ix_audit_events_request_id"),
    ("identity", {"identity": "wl:agent-7"}, "ix_audit_events_identity"),
    ("identity_since", {"identity": "wl:agent-7", "since": T0 + 7_500}, "ix_audit_events_identity"),
    ("grant", {"grant": "g3"}, "ix_audit_events_grant"),
    ("target", {"target": "https://t3.example.com"}, "ix_audit_events_granted_target"),
    ("client", {"client_id": "c3"}, "ix_audit_events_client_id"),
    ("reason", {"reason": "reason3"}, "ix_audit_events_reason"),
    ("outcome_reason", {"outcome": "denied", "reason": "reason3"}, "ix_audit_events_reason"),
    ("outcome", {"outcome": "denied"}, "ix_audit_events_time"),
    ("issuer", {"issuer": "i1"}, "ix_audit_events_time"),
]


def query_plan(conn: Connection, statement: Any) -> str:
    """The database's plan for ``statement`` with its parameters bound as the CLI binds them:
    SQLite's EXPLAIN QUERY PLAN, PostgreSQL's EXPLAIN."""
    compiled = statement.compile(dialect=conn.dialect)
    if conn.dialect.name == "sqlite":
        params: Any = tuple(compiled.params[name] for name in compiled.positiontup or ())
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, params)
        return "\n".join(str(r[-1]) for r in rows)
    return "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + compiled.string, compiled.params))


@pytest.fixture
def filled(engine: Engine) -> Engine:
    _fill(engine, 10_000)
    return engine


def test_every_filter_reads_through_an_index(backend: Backend, filled: Engine) -> None:
    # One database of 10,000 records for every filter (filling it is most of the test's time).
    wrong = []
    for name, where, index in PLANS:
        with filled.connect() as conn:
            plan = query_plan(conn, newest_statement(AuditFilter(**where), 20))
            got = list_audit(conn, AuditFilter(**where), limit=20)
        ok = index in plan
        if backend.name == "sqlite":
            ok = ok and f"INDEX {index}" in plan
            # The index also gives the order: no sort of the matches, except for a request id
            # (a handful of rows).
            ok = ok and ("TEMP B-TREE" not in plan or "request_id" in where)
        else:
            ok = ok and "Seq Scan" not in plan
        if not ok:
            wrong.append(f"{name}: expected {index}\n{plan}")
        columns = {"client_id": "client_id", "target": "granted_target"}
        assert len(got) == 1 if name == "request_id" else 0 < len(got) <= 20, name
        assert all(r[columns.get(k, k)] == v for r in got for k, v in where.items() if k not in ("since", "until")), name
        assert [r["time"] for r in got] == sorted((r["time"] for r in got), reverse=True), name
    # --follow: records after an id, through the primary key (or the filter's index).
    with filled.connect() as conn:
        plan = query_plan(conn, after_statement(AuditFilter(identity="wl:agent-7"), 9_000, 1000))
    if "Seq Scan" in plan or not any(i in plan for i in ("pk_audit_events", "INTEGER PRIMARY KEY", "ix_audit_events_identity")):
        wrong.append(f"follow:\n{plan}")
    assert not wrong, "\n\n".join(wrong)
