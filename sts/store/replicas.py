"""Reports of running broker processes: which key-encryption keys each one holds.

Each broker renews its row from its key loop; a key is promoted, or the keys re-encrypted, only
when every fresh report holds the KEK needed (``sts/tokens/keyplan.py``). A report names KEK ids
(hashes), never key material.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine, Row

from sts.store.db import write_transaction
from sts.store.errors import store_errors
from sts.store.models import broker_replicas as replicas_table
from sts.store.records import ReplicaRecord


def _to_record(row: Row[Any]) -> ReplicaRecord:
    m = row._mapping
    return ReplicaRecord(
        replica_id=m["replica_id"],
        kek_ids=frozenset(m["kek_ids"].split()),
        started_at=m["started_at"],
        last_seen=m["last_seen"],
        expires_at=m["expires_at"],
    )


class ReplicaRepository:
    """Reads and renews ``broker_replicas``. Invariant: one row per replica id; a report is
    replaced whole."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def report(self, record: ReplicaRecord) -> None:
        """Insert or renew ``record`` (one transaction; replica ids are unique per process, so
        no two writers race on one row)."""
        t = replicas_table.c
        values = {"kek_ids": " ".join(sorted(record.kek_ids)), "last_seen": record.last_seen, "expires_at": record.expires_at}
        with store_errors("reporting this replica"), write_transaction(self._engine) as conn:
            updated = conn.execute(update(replicas_table).where(t.replica_id == record.replica_id).values(values)).rowcount
            if updated == 0:
                conn.execute(insert(replicas_table).values(replica_id=record.replica_id, started_at=record.started_at, **values))

    def list(self) -> list[ReplicaRecord]:
        stmt = select(replicas_table).order_by(replicas_table.c.replica_id)
        with store_errors("listing replicas"), self._engine.connect() as conn:
            return [_to_record(r) for r in conn.execute(stmt)]

    def remove(self, replica_id: str) -> None:
        with store_errors("removing this replica's report"), write_transaction(self._engine) as conn:
            conn.execute(delete(replicas_table).where(replicas_table.c.replica_id == replica_id))

    def prune(self, expired_before: float) -> int:
        """Forget replicas whose report expired before ``expired_before`` (crashed processes)."""
        with store_errors("pruning replica reports"), write_transaction(self._engine) as conn:
            return int(conn.execute(delete(replicas_table).where(replicas_table.c.expires_at < expired_before)).rowcount)
