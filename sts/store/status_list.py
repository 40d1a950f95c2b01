"""Storage for the Token Status List (sts/lifecycle/statuslist.py): blocks of indices reserved
by broker processes, and the indices of revoked tokens that have not expired."""

from __future__ import annotations

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from sts.store.db import write_transaction
from sts.store.errors import store_errors
from sts.store.models import issued_tokens, status_list_blocks


class StatusListRepository:
    """Reads and reserves status list indices. Invariant: two reservations never return the
    same block number, on one replica or many (the database assigns the block's id)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def reserve_block(self, *, size: int, now: float) -> int:
        """Reserve the next block of ``size`` indices; its number (0, 1, 2, ...)."""
        with store_errors("reserving status list indices"), write_transaction(self._engine) as conn:
            result = conn.execute(insert(status_list_blocks).values(size=size, reserved_at=now))
            return int(result.inserted_primary_key[0]) - 1

    def blocks_reserved(self) -> int:
        with store_errors("reading status list blocks"), self._engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(status_list_blocks.c.id), 0))).scalar_one())

    def revoked_indices(self, now: float) -> list[int]:
        """Status indices of revoked tokens that have not expired (expired ones need no bit)."""
        t = issued_tokens.c
        stmt = select(t.status_idx).where(t.status_idx.is_not(None), t.revoked_at.is_not(None), t.expires_at > now)
        with store_errors("reading revoked status indices"), self._engine.connect() as conn:
            return [int(r[0]) for r in conn.execute(stmt)]
