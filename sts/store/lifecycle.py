"""Kill switches and token revocations: the durable state behind ``sts.lifecycle``.

Every change bumps a row of ``lifecycle_versions`` in the same transaction and, on PostgreSQL,
sends ``NOTIFY`` on :data:`NOTIFY_CHANNEL` in that transaction too, so a listener is woken only
once the change is visible. Replicas poll the version (one primary-key read) as a fallback for
a lost notification, and reload their in-memory view only when it moved.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import and_, insert, or_, select, text, update
from sqlalchemy.engine import Connection, Engine

from sts.store.db import write_transaction
from sts.store.errors import store_errors
from sts.store.models import issued_tokens, kill_switches, lifecycle_versions

# One channel for the whole database: a notification only says "read your version again", so
# one meant for another schema on the same server costs a primary-key read and nothing else.
NOTIFY_CHANNEL: Final = "sts_lifecycle"
KILLS: Final = "kills"
REVOCATIONS: Final = "revocations"
KILL_KINDS: Final = ("identity", "issuer", "client", "grant")


@dataclass(frozen=True, slots=True)
class KillRecord:
    """One kill switch as stored. Active while ``lifted_at`` is None and ``until`` is None or
    in the future."""

    id: int
    kind: str
    value: str
    created_at: float
    until: float | None
    reason: str
    actor: str
    lifted_at: float | None = None
    lifted_by: str | None = None
    lift_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def bump_version(conn: Connection, name: str) -> None:
    """Move the version of ``name`` on and wake the listeners, inside the caller's transaction."""
    # An upsert: the migration creates the rows, but two first writers on a database without
    # them must not collide on the primary key.
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    stmt = dialect_insert(lifecycle_versions).values(name=name, version=1)
    conn.execute(stmt.on_conflict_do_update(index_elements=["name"],
                                            set_={"version": lifecycle_versions.c.version + 1}))
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, :name)"), {"channel": NOTIFY_CHANNEL, "name": name})


def _kill(row: Any) -> KillRecord:
    m = row._mapping
    return KillRecord(id=int(m["id"]), kind=m["kind"], value=m["value"], created_at=m["created_at"], until=m["until"],
                      reason=m["reason"], actor=m["actor"], lifted_at=m["lifted_at"], lifted_by=m["lifted_by"],
                      lift_reason=m["lift_reason"])


class LifecycleRepository:
    """Reads and changes ``kill_switches`` and the revocation columns of ``issued_tokens``.
    Invariant: every change and its version bump commit together or not at all."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # --- versions ------------------------------------------------------------------------
    def versions(self) -> dict[str, int]:
        with store_errors("reading lifecycle versions"), self._engine.connect() as conn:
            return {r[0]: int(r[1]) for r in conn.execute(select(lifecycle_versions.c.name, lifecycle_versions.c.version))}

    # --- kill switches -------------------------------------------------------------------
    def kill(self, *, kind: str, value: str, now: float, until: float | None, reason: str, actor: str) -> KillRecord:
        if kind not in KILL_KINDS:
            raise ValueError(f"unknown kill kind {kind!r}")
        values = {"kind": kind, "value": value, "created_at": now, "until": until, "reason": reason, "actor": actor}
        with store_errors("recording the kill switch"), write_transaction(self._engine) as conn:
            new_id = conn.execute(insert(kill_switches).values(values).returning(kill_switches.c.id)).scalar_one()
            bump_version(conn, KILLS)
        return KillRecord(id=int(new_id), **values)  # type: ignore[arg-type]

    def lift(self, *, kind: str, value: str, now: float, reason: str, actor: str) -> list[KillRecord]:
        """Lift every active kill of (``kind``, ``value``); the lifted records (none: nothing
        was active, and no version moves)."""
        c = kill_switches.c
        active = and_(c.kind == kind, c.value == value, c.lifted_at.is_(None), or_(c.until.is_(None), c.until > now))
        with store_errors("lifting the kill switch"), write_transaction(self._engine) as conn:
            rows = [_kill(r) for r in conn.execute(select(kill_switches).where(active).order_by(c.id))]
            if rows:
                conn.execute(update(kill_switches).where(c.id.in_([r.id for r in rows]))
                             .values(lifted_at=now, lifted_by=actor, lift_reason=reason))
                bump_version(conn, KILLS)
        return [KillRecord(**{**r.as_dict(), "lifted_at": now, "lifted_by": actor, "lift_reason": reason}) for r in rows]

    def active_kills(self, now: float) -> list[KillRecord]:
        c = kill_switches.c
        stmt = (select(kill_switches).where(c.lifted_at.is_(None), or_(c.until.is_(None), c.until > now)).order_by(c.id))
        with store_errors("reading kill switches"), self._engine.connect() as conn:
            return [_kill(r) for r in conn.execute(stmt)]

    def all_kills(self, limit: int = 1000) -> list[KillRecord]:
        stmt = select(kill_switches).order_by(kill_switches.c.id.desc()).limit(limit)
        with store_errors("reading kill switches"), self._engine.connect() as conn:
            return [_kill(r) for r in conn.execute(stmt)]

    # --- revocation ----------------------------------------------------------------------
    def revocable(self, where: Any, now: float) -> list[dict[str, Any]]:
        """Issued tokens matching ``where`` that are still valid and not yet revoked."""
        t = issued_tokens.c
        stmt = (select(t.jti, t.identity, t.issuer_name, t.client_id, t.audience, t.expires_at)
                .where(where, t.revoked_at.is_(None), t.expires_at > now).order_by(t.issued_at))
        with store_errors("reading issued tokens"), self._engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def revoke(self, jtis: Iterable[str], *, now: float, reason: str) -> int:
        """Mark ``jtis`` revoked (those not already revoked); how many rows changed."""
        jtis = list(jtis)
        if not jtis:
            return 0
        t = issued_tokens.c
        changed = 0
        with store_errors("revoking tokens"), write_transaction(self._engine) as conn:
            for start in range(0, len(jtis), 500):
                chunk = jtis[start:start + 500]
                changed += int(conn.execute(update(issued_tokens).where(t.jti.in_(chunk), t.revoked_at.is_(None))
                                            .values(revoked_at=now, revoked_reason=reason[:1000])).rowcount)
            if changed:
                bump_version(conn, REVOCATIONS)
        return changed

    def revoked_valid(self, now: float) -> dict[str, float]:
        """jti -> expires_at of revoked tokens that have not expired yet (the in-memory set)."""
        t = issued_tokens.c
        stmt = select(t.jti, t.expires_at).where(t.revoked_at.is_not(None), t.expires_at > now)
        with store_errors("reading revoked tokens"), self._engine.connect() as conn:
            return {r[0]: float(r[1]) for r in conn.execute(stmt)}

    def lineage(self, root: str, now: float) -> list[str]:
        """``root`` and every token issued from it, transitively (by ``parent_jti``)."""
        t = issued_tokens.c
        seen: list[str] = [root]
        frontier = [root]
        with store_errors("reading token lineage"), self._engine.connect() as conn:
            while frontier:
                children = [r[0] for r in conn.execute(select(t.jti).where(t.parent_jti.in_(frontier[:500])))]
                frontier = frontier[500:] + [c for c in children if c not in seen]
                seen.extend(c for c in children if c not in seen)
        return seen

    def token(self, jti: str) -> dict[str, Any] | None:
        with store_errors("reading an issued token"), self._engine.connect() as conn:
            row = conn.execute(select(issued_tokens).where(issued_tokens.c.jti == jti)).first()
        return dict(row._mapping) if row is not None else None


REVOKE_SELECTORS: Final = ("jti", "identity", "issuer", "trust_domain", "grant", "client", "subject_sha256")


def selector(kind: str, value: str) -> Any:
    """The ``issued_tokens`` condition for one operator selector (``sts revoke --KIND VALUE``)."""
    from sqlalchemy import select as _select

    from sts.store.models import audit_events

    t = issued_tokens.c
    if kind == "jti":
        return t.jti == value
    if kind == "identity":
        return t.identity == value
    if kind == "issuer":
        return t.issuer_name == value
    if kind == "trust_domain":
        # SPIFFE subjects carry the trust domain as their issuer name and in their identity.
        return or_(t.issuer_name == value, t.identity.like(f"spiffe://{value}/%"))
    if kind == "client":
        return t.client_id == value
    if kind == "subject_sha256":
        return t.subject_token_sha256 == value.lower()
    if kind == "grant":
        # The grant is recorded with the issuing decision in the audit record, not on the row.
        a = audit_events.c
        return t.jti.in_(_select(a.issued_jti).where(a.grant == value, a.outcome == "issued", a.issued_jti.is_not(None)))
    raise ValueError(f"unknown selector {kind!r}")


def jti_selector(jtis: list[str]) -> Any:
    return issued_tokens.c.jti.in_(jtis)
