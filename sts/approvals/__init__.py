"""Just-in-time approval of elevated scopes (docs/approvals.md).

A target can mark scopes (and RFC 9396 authorization-detail values) as needing approval. The
pipeline asks :class:`sts.approvals.gate.ApprovalGate` once the policy allowed the exchange
(step 6c); the gate answers from an in-memory snapshot (:mod:`sts.approvals.view`) and touches
the database only to record a new approval request on a refusal. The decision itself is pure
(:mod:`sts.approvals.decision`); the durable state is owned by :mod:`sts.store.approvals`.
"""
