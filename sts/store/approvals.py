"""Just-in-time approvals: the durable state behind ``sts.approvals`` (docs/approvals.md).

One row per approval request. Every change bumps the ``approvals`` row of
``lifecycle_versions`` in the same transaction and, on PostgreSQL, notifies the lifecycle
channel (``sts.store.lifecycle.bump_version``), so replicas reload their in-memory view within
the documented bound. Transitions:

    pending --approve--> approved --revoke--> revoked
    pending --deny-----> denied
    pending (lapsed) ---> expired (when the same request is asked again)

Recording a request is idempotent per fingerprint (the unique ``pending_key``), bounded per
identity (``max_pending``), and never creates a pending request beside an approval or a denial
that still holds: a replica whose view is stale gets the answer from here instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import and_, func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from sts.jose.b64 import b64url_encode
from sts.store.db import write_transaction
from sts.store.errors import StoreError, StoreUnavailable, store_errors
from sts.store.lifecycle import bump_version
from sts.store.models import approvals, audit_events, lifecycle_versions

VERSION_NAME: Final = "approvals"
PENDING, APPROVED, DENIED, REVOKED, EXPIRED = "pending", "approved", "denied", "revoked", "expired"


class ApprovalNotFound(LookupError):
    """No approval request has this id (the command line's user error)."""

    fix = "list them with `sts approvals list --all`"


class ApprovalStateError(ValueError):
    """The approval request is not in a state that allows this change (approving a denied
    one, revoking a pending one...)."""

    fix = "see its state with `sts approvals show ID`"


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    """One approval request as stored (``request`` and ``elevated`` decoded)."""

    id: str
    status: str
    fingerprint: str
    identity: str
    issuer_name: str
    client_id: str | None
    actor_identity: str | None
    grant: str | None
    target: str
    request: dict[str, Any]
    elevated: list[str]
    request_id: str
    requested_at: float
    expires_at: float
    max_window: int
    decided_at: float | None = None
    decided_by: str | None = None
    decision_reason: str | None = None
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None

    def state(self, now: float) -> str:
        """The status as it stands at ``now``: a pending request or an approval whose time is
        over reads ``expired``."""
        if self.status in (PENDING, APPROVED) and now >= self.expires_at:
            return EXPIRED
        return self.status

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        if now is not None:
            out["state"] = self.state(now)
        return out


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording a request found or made: ``status`` approved / pending / denied (with the
    record that answers), or ``limit`` (too many pending requests, nothing recorded)."""

    status: str
    id: str | None
    until: float | None
    created: bool = False


def new_approval_id() -> str:
    # 96 random bits: ids are not guessable, though knowing one grants nothing.
    return "apr_" + b64url_encode(os.urandom(12))


def _record(row: Any) -> ApprovalRecord:
    m = dict(row._mapping)
    m.pop("pending_key", None)
    m["request"] = json.loads(m["request"])
    m["elevated"] = json.loads(m["elevated"])
    return ApprovalRecord(**m)


class ApprovalRepository:
    """Reads and changes ``approvals``. Invariant: every change and its version bump commit
    together or not at all."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        return self._engine

    def version(self) -> int:
        stmt = select(lifecycle_versions.c.version).where(lifecycle_versions.c.name == VERSION_NAME)
        with store_errors("reading the approvals version"), self._engine.connect() as conn:
            found = conn.execute(stmt).scalar()
        return int(found) if found is not None else 0

    # --- the broker's side -----------------------------------------------------------------
    def standing(self, now: float) -> list[ApprovalRecord]:
        """Every record that answers a request at ``now``: pending requests and approvals not
        yet over, denials still held."""
        c = approvals.c
        stmt = select(approvals).where(c.status.in_((PENDING, APPROVED, DENIED)), c.expires_at > now)
        with store_errors("reading approvals"), self._engine.connect() as conn:
            return [_record(r) for r in conn.execute(stmt)]

    def request(self, *, fingerprint: str, identity: str, issuer_name: str, client_id: str | None,
                actor_identity: str | None, grant: str | None, target: str, request: dict[str, Any],
                elevated: list[str], request_id: str, now: float, request_ttl: float, max_window: int,
                max_pending: int) -> Recorded:
        """Record that this request was refused for want of approval, unless the store already
        answers it (an approval or denial that holds, the same request pending)."""
        for _ in range(3):
            try:
                with store_errors("recording an approval request"), write_transaction(self._engine) as conn:
                    return self._request(conn, fingerprint=fingerprint, identity=identity, issuer_name=issuer_name,
                                         client_id=client_id, actor_identity=actor_identity, grant=grant, target=target,
                                         request=request, elevated=elevated, request_id=request_id, now=now,
                                         request_ttl=request_ttl, max_window=max_window, max_pending=max_pending)
            except StoreError as exc:
                cause = exc.__cause__
                # Another replica recorded the same request in between: read what it made.
                if isinstance(cause, IntegrityError):
                    continue
                # An unreachable database is "retry later" for the caller (sts.availability).
                if isinstance(cause, (OperationalError, InterfaceError)) or (
                        isinstance(cause, DBAPIError) and cause.connection_invalidated):
                    raise StoreUnavailable(str(exc)) from cause
                raise
        raise RuntimeError("approval request kept colliding")  # pragma: no cover - three races in a row

    def _request(self, conn: Connection, *, fingerprint: str, identity: str, now: float, request_ttl: float,
                 max_pending: int, **values: Any) -> Recorded:
        c = approvals.c
        if conn.dialect.name == "postgresql":
            # Serialises the bound check of one identity across replicas (READ COMMITTED would
            # let two new requests both see room for one).
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 7))"), {"k": "sts-approvals:" + identity})
        held = conn.execute(select(c.id, c.status, c.expires_at).where(
            c.fingerprint == fingerprint, c.status.in_((APPROVED, DENIED)), c.expires_at > now)
            .order_by(c.status.desc(), c.expires_at.desc())).first()  # "denied" sorts after "approved": desc puts it first
        if held is not None:
            return Recorded(held.status, held.id, held.expires_at)
        pending = conn.execute(select(c.id, c.expires_at).where(c.pending_key == fingerprint)).first()
        if pending is not None:
            if pending.expires_at > now:
                return Recorded(PENDING, pending.id, pending.expires_at)
            conn.execute(update(approvals).where(c.id == pending.id).values(status=EXPIRED, pending_key=None))
        waiting = conn.execute(select(func.count()).select_from(approvals).where(
            c.identity == identity, c.status == PENDING, c.expires_at > now)).scalar_one()
        if waiting >= max_pending:
            return Recorded("limit", None, None)
        new_id = new_approval_id()
        expires_at = now + request_ttl
        conn.execute(insert(approvals).values(
            id=new_id, status=PENDING, fingerprint=fingerprint, pending_key=fingerprint, identity=identity,
            issuer_name=values["issuer_name"], client_id=values["client_id"], actor_identity=values["actor_identity"],
            grant=values["grant"], target=values["target"], request=json.dumps(values["request"], sort_keys=True),
            elevated=json.dumps(values["elevated"]), request_id=values["request_id"], requested_at=now,
            expires_at=expires_at, max_window=values["max_window"]))
        bump_version(conn, VERSION_NAME)
        return Recorded(PENDING, new_id, expires_at, created=True)

    # --- the approver's side ---------------------------------------------------------------
    def get(self, approval_id: str) -> ApprovalRecord:
        with store_errors("reading an approval"), self._engine.connect() as conn:
            row = conn.execute(select(approvals).where(approvals.c.id == approval_id)).first()
        if row is None:
            raise ApprovalNotFound(f"no approval request {approval_id!r}")
        return _record(row)

    def list(self, *, now: float, include_all: bool = False, identity: str | None = None,
             limit: int = 200) -> list[ApprovalRecord]:
        """Newest first. Without ``include_all``: what still holds (pending requests waiting,
        approvals in their window, denials held)."""
        c = approvals.c
        stmt = select(approvals)
        if not include_all:
            stmt = stmt.where(c.status.in_((PENDING, APPROVED, DENIED)), c.expires_at > now)
        if identity is not None:
            stmt = stmt.where(c.identity == identity)
        stmt = stmt.order_by(c.requested_at.desc(), c.id).limit(limit)
        with store_errors("reading approvals"), self._engine.connect() as conn:
            return [_record(r) for r in conn.execute(stmt)]

    def _change(self, approval_id: str, *, expect: str, now: float, values: dict[str, Any], what: str) -> ApprovalRecord:
        c = approvals.c
        with store_errors(f"{what} the approval"), write_transaction(self._engine) as conn:
            row = conn.execute(select(approvals).where(c.id == approval_id)).first()
            if row is None:
                raise ApprovalNotFound(f"no approval request {approval_id!r}")
            current = _record(row)
            state = current.state(now)
            if state != expect:
                raise ApprovalStateError(f"approval request {approval_id} is {state}, not {expect}")
            # The status is part of the condition: of two approvers racing, one changes nothing.
            changed = conn.execute(update(approvals).where(and_(c.id == approval_id, c.status == current.status))
                                   .values(**values)).rowcount
            if changed != 1:
                raise ApprovalStateError(f"approval request {approval_id} changed meanwhile")
            bump_version(conn, VERSION_NAME)
        return self.get(approval_id)

    def approve(self, approval_id: str, *, by: str, window: int, reason: str, now: float) -> ApprovalRecord:
        """Grant a pending request for ``window`` seconds from now (at most its ``max_window``)."""
        current = self.get(approval_id)
        if window <= 0 or window > current.max_window:
            raise ApprovalStateError(f"the window must be between 1 s and {current.max_window} s for this target")
        return self._change(approval_id, expect=PENDING, now=now, what="approving", values={
            "status": APPROVED, "pending_key": None, "expires_at": now + window, "decided_at": now, "decided_by": by,
            "decision_reason": reason})

    def deny(self, approval_id: str, *, by: str, reason: str, now: float, hold: float | None = None) -> ApprovalRecord:
        """Refuse a pending request; the same request is answered ``access_denied`` for ``hold``
        seconds (default: the target's ``request_ttl``, as long as the request could have
        waited) rather than recorded again."""
        if hold is None:
            current = self.get(approval_id)
            hold = max(current.expires_at - current.requested_at, 1.0)
        return self._change(approval_id, expect=PENDING, now=now, what="denying", values={
            "status": DENIED, "pending_key": None, "expires_at": now + hold, "decided_at": now, "decided_by": by,
            "decision_reason": reason})

    def revoke(self, approval_id: str, *, by: str, reason: str, now: float) -> ApprovalRecord:
        """End an approval before its window does."""
        return self._change(approval_id, expect=APPROVED, now=now, what="revoking", values={
            "status": REVOKED, "revoked_at": now, "revoked_by": by, "revoke_reason": reason})

    def issued_under(self, approval_id: str) -> list[str]:
        """The jtis of tokens issued under this approval, as their audit records name it
        (``context.approval.id``; the identity column narrows the search to one workload)."""
        record = self.get(approval_id)
        a = audit_events.c
        stmt = (select(a.issued_jti, a.context)
                .where(a.identity == record.identity, a.outcome == "issued", a.issued_jti.is_not(None),
                       a.time >= (record.decided_at or record.requested_at) - 1, a.context.contains(approval_id)))
        jtis: list[str] = []
        with store_errors("reading audit records"), self._engine.connect() as conn:
            for jti, context in conn.execute(stmt):
                approval = (json.loads(context) or {}).get("approval") if context else None
                if isinstance(approval, dict) and approval.get("id") == approval_id:
                    jtis.append(jti)
        return jtis
