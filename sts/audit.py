"""The audit trail: one typed record per decision, durable before the response is sent.

Every path through the token endpoint (issued, denied, error) produces exactly one
``AuditEvent``. The record holds the SHA-256 of the subject token, never the token, and the
private ``detail`` of a refusal that the caller is never shown. The durable copy goes to the
database through the group-commit writer together with the issued-token row (one write per
exchange); a JSON copy goes to the ``sts.audit`` logger for log pipelines, written by the
writer thread once the record is durable, one write per committed batch (``audit_log_lines``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from sts.logs import emit_batch
from sts.store.records import AuditRecord, IssuedTokenRecord
from sts.store.writer import GroupCommitWriter, context_text, issued_row, json_text

log = logging.getLogger("sts.audit")

DATABASE_WAIT_SECONDS = 10.0


@dataclass(slots=True)
class AuditEvent:
    """Built up while a request moves through the pipeline; frozen into an ``AuditRecord``."""

    time: float
    request_id: str
    config_version: str
    outcome: str = "error"
    error: str | None = None
    reason: str | None = None
    client_id: str | None = None
    issuer: str | None = None
    external_subject: str | None = None
    identity: str | None = None
    grant: str | None = None
    mode_notes: list[str] = field(default_factory=list)
    requested_targets: list[str] = field(default_factory=list)
    granted_target: str | None = None
    requested_scopes: list[str] | None = None
    granted_scopes: list[str] = field(default_factory=list)
    lifetime: int | None = None
    issued_jti: str | None = None
    subject_token_sha256: str | None = None
    actor_identity: str | None = None
    detail: str | None = None
    trace_id: str | None = None  # W3C trace id, when tracing is on (sts.ops.tracing)
    # Structured facts without a column of their own, one key per capability (for example
    # "chain", "authorization_details", "upstream", "explain"); None when there are none.
    context: dict[str, Any] | None = None

    def add_context(self, key: str, value: Any) -> None:
        """Record ``value`` (JSON-serialisable) under ``key`` in the audit ``context``."""
        if self.context is None:
            self.context = {}
        self.context[key] = value

    def log_fields(self) -> dict[str, Any]:
        """The event as the JSON log line's ``audit`` object (what ``dataclasses.asdict``
        gives, built directly: asdict's recursive deep copy cost more than the rest of the log
        line). Values are str, numbers or None, and lists of str, which are copied."""
        return {
            "time": self.time,
            "request_id": self.request_id,
            "config_version": self.config_version,
            "outcome": self.outcome,
            "error": self.error,
            "reason": self.reason,
            "client_id": self.client_id,
            "issuer": self.issuer,
            "external_subject": self.external_subject,
            "identity": self.identity,
            "grant": self.grant,
            "mode_notes": list(self.mode_notes),
            "requested_targets": list(self.requested_targets),
            "granted_target": self.granted_target,
            "requested_scopes": list(self.requested_scopes) if self.requested_scopes is not None else None,
            "granted_scopes": list(self.granted_scopes),
            "lifetime": self.lifetime,
            "issued_jti": self.issued_jti,
            "subject_token_sha256": self.subject_token_sha256,
            "actor_identity": self.actor_identity,
            "detail": self.detail,
            "trace_id": self.trace_id,
            "context": capped_context(self.context),
        }

    def to_record(self) -> AuditRecord:
        """Freeze the event. Text that came from the caller (subjects, targets, client ids,
        details) is escaped if it holds control characters: a NUL would make PostgreSQL refuse
        the row (and so the whole answer), and escape sequences would reach operators' terminals."""
        c, cs = _clean, _clean_all
        return AuditRecord(
            time=self.time,
            request_id=self.request_id,
            outcome=self.outcome,
            error=c(self.error),
            reason=c(self.reason),
            client_id=c(self.client_id),
            issuer=c(self.issuer),
            external_subject=c(self.external_subject),
            identity=c(self.identity),
            grant=c(self.grant),
            mode_notes=cs(self.mode_notes),
            requested_targets=cs(self.requested_targets),
            granted_target=c(self.granted_target),
            requested_scopes=cs(self.requested_scopes) if self.requested_scopes is not None else None,
            granted_scopes=cs(self.granted_scopes),
            lifetime=self.lifetime,
            issued_jti=c(self.issued_jti),
            subject_token_sha256=c(self.subject_token_sha256),
            actor_identity=c(self.actor_identity),
            config_version=self.config_version,
            detail=c(self.detail),
            trace_id=self.trace_id,
            context=capped_context(self.context),
        )


    def row(self) -> tuple[Any, ...]:
        """``audit_row(self.to_record())`` (the ``audit_events`` row), built in one step: the
        token endpoint builds one per request (a test pins the two equal)."""
        c, j = _clean, _json_clean
        return (
            self.time, self.request_id, self.outcome, c(self.error), c(self.reason), c(self.client_id),
            c(self.issuer), c(self.external_subject), c(self.identity), c(self.grant), j(self.mode_notes),
            j(self.requested_targets), c(self.granted_target),
            j(self.requested_scopes) if self.requested_scopes is not None else None, j(self.granted_scopes),
            self.lifetime, c(self.issued_jti), c(self.subject_token_sha256), c(self.actor_identity),
            self.config_version, c(self.detail), self.trace_id,
            context_text(capped_context(self.context)) if self.context else None,
        )  # fmt: skip


# The audit context is bounded so that a large request (many authorization details, a long
# chain) cannot make one audit row arbitrarily large.
MAX_CONTEXT_CHARS = 16 * 1024


def capped_context(context: dict[str, Any] | None) -> dict[str, Any] | None:
    """``context`` if its JSON fits ``MAX_CONTEXT_CHARS``; otherwise the keys that fit, in
    insertion order, and ``"truncated"`` listing the keys left out."""
    if not context:
        return None
    if len(context_text(context) or "") <= MAX_CONTEXT_CHARS:
        return context
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    budget = MAX_CONTEXT_CHARS - 256  # room for the "truncated" list itself
    for key, value in context.items():
        size = len(context_text({key: value}) or "")
        if size <= budget:
            kept[key] = value
            budget -= size
        else:
            dropped.append(key[:64])
    kept["truncated"] = dropped[:16]
    return kept


def _json_clean(values: list[str]) -> str:
    if not values:
        return "[]"
    return json_text(values if all(v.isprintable() for v in values) else _clean_all(values)) or "[]"


def _clean(value: str | None) -> str | None:
    if value is None or value.isprintable():
        return value
    return value.encode("unicode_escape").decode("ascii")


def _clean_all(values: list[str]) -> tuple[str, ...]:
    return tuple(v if v.isprintable() else v.encode("unicode_escape").decode("ascii") for v in values)


def audit_log_lines(values: list[dict[str, Any]]) -> None:
    """The writer's after-commit hook: the JSON log copy of each durable audit record."""
    emit_batch(log, "token_exchange", "audit", values)


class AuditSink:
    """Writes audit records durably (and the issued-token row with them); their log lines
    follow from the writer (``audit_log_lines``)."""

    def __init__(self, writer: GroupCommitWriter) -> None:
        self._writer = writer

    async def record(self, event: AuditEvent, issued: IssuedTokenRecord | None = None) -> None:
        fields = event.log_fields() if log.isEnabledFor(logging.INFO) else None
        durable = self._writer.submit([issued_row(issued)] if issued is not None else [], [event.row()], fields)
        # Bounded: a locked or unreachable database must turn into server_error, not a request
        # that hangs forever (the write may still land later; the token is then never sent).
        # asyncio.timeout, not wait_for: wait_for wraps the write in a new Task per request,
        # which costs a task and an extra event-loop turn; a timeout only arms a timer.
        async with asyncio.timeout(DATABASE_WAIT_SECONDS):
            await durable
