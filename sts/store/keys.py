"""Signing keys of the broker, shared by every replica through the database.

The states and their meaning for the JWKS (RFC 7517 §5) are the key ring's business
(``sts/tokens/keyring.py``); this module only guarantees that a rotation is one atomic,
optimistic transaction, so that replicas racing to rotate the same algorithm rotate it once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Connection, Engine, Row

from sts.store.db import write_transaction
from sts.store.errors import store_errors
from sts.store.models import signing_keys as keys_table
from sts.store.records import SigningKeyRow


class _Conflict(Exception):
    """Another replica changed the keys first; roll back and report False."""


def _to_row(row: Row[Any]) -> SigningKeyRow:
    m = row._mapping
    return SigningKeyRow(
        kid=m["kid"],
        alg=m["alg"],
        state=m["state"],
        public_jwk=json.loads(m["public_jwk"]),
        private_key_ciphertext=bytes(m["private_key_ciphertext"]),
        kek_id=m["kek_id"],
        created_at=m["created_at"],
        activated_at=m["activated_at"],
        retired_at=m["retired_at"],
        not_after=m["not_after"],
        publish_until=m["publish_until"],
    )


def _values(row: SigningKeyRow) -> dict[str, Any]:
    return {
        "kid": row.kid,
        "alg": row.alg,
        "state": row.state,
        "public_jwk": json.dumps(row.public_jwk, sort_keys=True, separators=(",", ":")),
        "private_key_ciphertext": bytes(row.private_key_ciphertext),
        "kek_id": row.kek_id,
        "created_at": row.created_at,
        "activated_at": row.activated_at,
        "retired_at": row.retired_at,
        "not_after": row.not_after,
        "publish_until": row.publish_until,
    }


class KeyRepository:
    """Reads and changes ``signing_keys``. Invariant: ``rotate`` either applies all of its
    three changes or none, and applies them only if the caller's view of the active key is
    still true when its transaction holds the write lock."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def list(self) -> list[SigningKeyRow]:
        """Every key, ordered by algorithm, then oldest first."""
        stmt = select(keys_table).order_by(keys_table.c.alg, keys_table.c.created_at, keys_table.c.kid)
        with store_errors("listing signing keys"), self._engine.connect() as conn:
            return [_to_row(r) for r in conn.execute(stmt)]

    def insert(self, row: SigningKeyRow) -> None:
        with store_errors("storing a signing key"), write_transaction(self._engine) as conn:
            conn.execute(insert(keys_table).values(_values(row)))

    def insert_missing(self, rows: Sequence[SigningKeyRow], now: float) -> list[str]:
        """Store each of ``rows`` whose algorithm has no key in its state yet (an ``active``
        key counts while ``now`` is before its ``not_after``), in one transaction that holds
        the key-setup lock: replicas starting together on an empty database create one set of
        keys, not one each. Returns the kids stored."""
        t = keys_table.c
        stored: list[str] = []
        with store_errors("storing signing keys"), write_transaction(self._engine) as conn:
            if conn.dialect.name == "postgresql":
                # SQLite's BEGIN IMMEDIATE already serializes writers; PostgreSQL needs a lock
                # that exists before any row does.
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('sts-keys:' || current_schema(), 0))"))
            for row in rows:
                present = (t.alg == row.alg) & (t.state == row.state)
                if row.state == "active":
                    present = present & (t.not_after > now)
                if conn.execute(select(t.kid).where(present).limit(1)).first() is None:
                    conn.execute(insert(keys_table).values(_values(row)))
                    stored.append(row.kid)
        return stored

    def rotate(
        self,
        *,
        expect_active_kid: str | None,
        new_next: SigningKeyRow,
        now: float,
        publish_until_for_retired: float,
        alg: str | None = None,
        active_not_after: float | None = None,
        promote_kid: str | None = None,
        withdraw: Sequence[str] = (),
    ) -> bool:
        """Retire the active key of ``alg``, promote a ``next`` key to active and store
        ``new_next`` as the new ``next``, in one transaction.

        The key promoted is ``promote_kid`` (the caller checked that every replica can open
        it), or the oldest ``next`` key when it is None. ``withdraw`` names ``next`` keys to
        retire at once, unpublished (they never signed).

        Returns False, changing nothing, when the active key is no longer ``expect_active_kid``
        (``None``: when some key of ``alg`` is active) or the key to promote is no longer
        ``next``: another replica rotated first. ``active_not_after``, if given, becomes the
        promoted key's ``not_after`` (its signing life starts now, not when it was created).
        """
        alg = alg or new_next.alg
        if new_next.alg != alg:
            raise ValueError(f"new next key is {new_next.alg}, rotation is for {alg}")
        try:
            with store_errors("rotating signing keys"), write_transaction(self._engine) as conn:
                self._withdraw(conn, alg, withdraw, now)
                self._rotate(conn, alg, expect_active_kid, new_next, now, publish_until_for_retired, active_not_after, promote_kid)
        except _Conflict:
            return False
        return True

    def replace_next(self, *, alg: str, withdraw: Sequence[str], new_next: SigningKeyRow | None, now: float) -> bool:
        """Withdraw the ``next`` keys ``withdraw`` and store ``new_next``, in one transaction,
        without promoting anything. False, changing nothing, if one of them is no longer
        ``next`` (another replica acted first)."""
        if new_next is not None and new_next.alg != alg:
            raise ValueError(f"new next key is {new_next.alg}, the keys replaced are {alg}")
        try:
            with store_errors("replacing next signing keys"), write_transaction(self._engine) as conn:
                self._withdraw(conn, alg, withdraw, now)
                if new_next is not None:
                    conn.execute(insert(keys_table).values(_values(replace(new_next, state="next"))))
        except _Conflict:
            return False
        return True

    @staticmethod
    def _withdraw(conn: Connection, alg: str, kids: Sequence[str], now: float) -> None:
        t = keys_table.c
        for kid in kids:
            gone = {"state": "retired", "retired_at": now, "publish_until": now}
            if conn.execute(update(keys_table).where((t.kid == kid) & (t.alg == alg) & (t.state == "next")).values(gone)).rowcount != 1:
                raise _Conflict

    def rewrap(self, changes: Sequence[tuple[str, str, bytes, str]]) -> bool:
        """Re-encrypt keys: each change is ``(kid, sealed_under, new_ciphertext, new_kek_id)``.
        All changes apply in one transaction, each only while the key is still sealed under
        ``sealed_under``; otherwise none applies and the result is False."""
        t = keys_table.c
        try:
            with store_errors("re-encrypting signing keys"), write_transaction(self._engine) as conn:
                for kid, sealed_under, ciphertext, kek_id in changes:
                    stmt = update(keys_table).where((t.kid == kid) & (t.kek_id == sealed_under))
                    if conn.execute(stmt.values(private_key_ciphertext=ciphertext, kek_id=kek_id)).rowcount != 1:
                        raise _Conflict
        except _Conflict:
            return False
        return True

    @staticmethod
    def _rotate(
        conn: Connection,
        alg: str,
        expect_active_kid: str | None,
        new_next: SigningKeyRow,
        now: float,
        publish_until: float,
        active_not_after: float | None,
        promote_kid: str | None = None,
    ) -> None:
        t = keys_table.c
        active = (t.alg == alg) & (t.state == "active")
        retire = {"state": "retired", "retired_at": now, "publish_until": publish_until}
        if expect_active_kid is None:
            if conn.execute(select(t.kid).where(active).limit(1)).first() is not None:
                raise _Conflict
        else:
            # The conditional UPDATE is the optimistic check: on PostgreSQL a racing replica
            # blocks on the row lock, then finds the row no longer active.
            if conn.execute(update(keys_table).where(active & (t.kid == expect_active_kid)).values(retire)).rowcount != 1:
                raise _Conflict
            # Duplicates from replicas that set up the same algorithm at once: after a
            # rotation exactly one key of the algorithm signs.
            conn.execute(update(keys_table).where(active).values(retire))
        candidates = (t.alg == alg) & (t.state == "next")
        if promote_kid is not None:
            candidates = candidates & (t.kid == promote_kid)
        next_kid = conn.execute(
            select(t.kid).where(candidates).order_by(t.created_at, t.kid).limit(1).with_for_update()
        ).scalar()
        if next_kid is None:
            raise _Conflict
        promote: dict[str, Any] = {"state": "active", "activated_at": now}
        if active_not_after is not None:
            promote["not_after"] = active_not_after
        if conn.execute(update(keys_table).where((t.kid == next_kid) & (t.state == "next")).values(promote)).rowcount != 1:
            raise _Conflict
        conn.execute(insert(keys_table).values(_values(replace(new_next, state="next"))))

    def prune(self, now: float) -> int:
        """Delete retired keys whose ``publish_until`` has passed; returns how many."""
        t = keys_table.c
        stmt = delete(keys_table).where((t.state == "retired") & (t.publish_until < now))
        with store_errors("pruning signing keys"), write_transaction(self._engine) as conn:
            return int(conn.execute(stmt).rowcount)
