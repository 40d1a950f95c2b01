"""Step 6c of the exchange: an allowed request that asks for something needing approval is
issued only within an approval of exactly that request (docs/approvals.md).

The pipeline calls :meth:`ApprovalGate.check` only when the policy's decision carries an
approval rule (one attribute check otherwise). The answer comes from the in-memory snapshot;
the database is touched only when the snapshot knows nothing of the request: then the request
is recorded (or found, when another replica just recorded it) and refused with its id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sts.approvals.decision import APPROVED, DENIED, PENDING, Ask, ApprovalSnapshot, elevated
from sts.approvals.errors import ApprovalDenied, ApprovalRequired
from sts.errors import ServerError
from sts.store.approvals import ApprovalRepository

if TYPE_CHECKING:
    from sts.audit import AuditEvent
    from sts.trust.policy import Allow

# How long the pipeline waits for the database to record a request (as for the audit write).
RECORD_WAIT_SECONDS = 10.0


class ApprovalGate:
    """Answers "may this allowed request be issued now?" for targets with an approval rule.
    Invariant: it never allows a request the snapshot does not hold an approval for, and it
    records a request before it hands out its id."""

    def __init__(self, snapshot: Callable[[], ApprovalSnapshot], repository: ApprovalRepository, *,
                 max_pending: int = 10, recorded: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time, record: bool = True) -> None:
        # record=False: a side-effect-free twin (``sts explain``) that answers from memory and
        # never writes; an unknown request is refused as the real gate would, without an id.
        self._record = record
        self._snapshot = snapshot
        self._repository = repository
        self._max_pending = max_pending
        self._recorded = recorded
        self._clock = clock

    async def check(self, decision: Allow, event: AuditEvent,
                    authorization_details: Sequence[Mapping[str, Any]] | None = None) -> Allow:
        """The decision to issue, when the request may be issued: unchanged when it needs no
        approval, else with its lifetime capped to the approval's window (a token never
        outlives the approval it was issued under). Raises ``approval_required`` or
        ``access_denied`` otherwise. Who asked is read from ``event`` (identity, issuer, client,
        actor), which the pipeline filled in by step 6."""
        rule = decision.approval
        if rule is None:
            return decision
        marked = elevated(rule, decision.scopes, authorization_details)
        if not marked:
            return decision
        if event.identity is None or event.issuer is None:
            raise ServerError(reason="approval_without_identity")
        ask = Ask.of(identity=event.identity, issuer=event.issuer, client=event.client_id, actor=event.actor_identity,
                     target=decision.target, scopes=decision.scopes, authorization_details=authorization_details,
                     grant=decision.grant)
        fingerprint = ask.fingerprint
        now = self._clock()
        standing = self._snapshot().lookup(fingerprint, now)
        if standing is not None:
            status, approval_id, until, created = standing.status, standing.id, standing.until, False
        elif not self._record:
            event.add_context("approval", {"id": None, "status": "unknown", "until": None, "elevated": list(marked),
                                           "recorded": False})
            raise ApprovalRequired(None, reason="approval_would_be_requested",
                                   detail=f"not recorded: {' '.join(marked)}"[:500])
        else:
            recorded = await asyncio.wait_for(asyncio.to_thread(
                self._repository.request, fingerprint=fingerprint, identity=ask.identity, issuer_name=ask.issuer,
                client_id=ask.client, actor_identity=ask.actor, grant=ask.grant, target=ask.target, request=ask.what(),
                elevated=list(marked), request_id=event.request_id, now=now, request_ttl=rule.request_ttl,
                max_window=rule.max_window, max_pending=self._max_pending), RECORD_WAIT_SECONDS)
            if recorded.created:
                self._recorded()
            status, approval_id, until, created = recorded.status, recorded.id, recorded.until, recorded.created
        event.add_context("approval", {"id": approval_id, "status": status, "until": until, "elevated": list(marked),
                                       "recorded": created})
        if status == APPROVED and until is not None:
            remaining = max(1, math.floor(until - now))
            return decision if decision.lifetime <= remaining else dataclasses.replace(decision, lifetime=remaining)
        if status == DENIED and approval_id is not None:
            raise ApprovalDenied(approval_id, reason="approval_denied", detail=f"approval {approval_id}")
        if status == PENDING:
            reason = "approval_requested" if created else "approval_pending"
            raise ApprovalRequired(approval_id, reason=reason, detail=f"approval {approval_id}: {' '.join(marked)}"[:500])
        raise ApprovalRequired(None, reason="approval_pending_limit",
                               detail=f"{self._max_pending} approval requests of {ask.identity} pending"[:500])


class NoApprovals:
    """The gate of a pipeline built without approvals (a test, a tool): a request that needs
    approval is refused as a server error, never issued (fail closed)."""

    async def check(self, decision: Allow, event: AuditEvent,
                    authorization_details: Sequence[Mapping[str, Any]] | None = None) -> Allow:
        if decision.approval is not None and elevated(decision.approval, decision.scopes, authorization_details):
            raise ServerError(reason="approvals_unavailable", detail="no approval gate configured")
        return decision
