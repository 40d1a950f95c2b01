"""Audit export for archiving: one JSON object per line (JSON Lines), stable field names.

Each line is one audit record with the fields of ``EXPORT_FIELDS`` in that order; list fields
are JSON arrays, ``time`` is epoch seconds and ``time_utc`` the same instant in RFC 3339. New
fields are only ever appended, so an archive reader written today keeps working.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import IO, Any

EXPORT_FIELDS: tuple[str, ...] = (
    "id", "time", "time_utc", "request_id", "outcome", "error", "reason", "count", "client_id", "issuer",
    "external_subject", "identity", "grant", "mode_notes", "requested_targets", "granted_target",
    "requested_scopes", "granted_scopes", "lifetime", "issued_jti", "subject_token_sha256",
    "actor_identity", "config_version", "detail", "trace_id", "context",
)  # fmt: skip

_EPOCH_RE = re.compile(r"[0-9]+(\.[0-9]+)?")
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class BadTime(ValueError):
    """A time argument is neither ISO 8601 nor epoch seconds."""


def parse_time(text: str) -> float:
    """Epoch seconds of ``text``: epoch seconds (``1764547200``, ``1764547200.5``) or ISO 8601
    (``2026-12-01``, ``2026-12-01T08:00:00Z``, ``2026-12-01T10:00:00+02:00``); a date or time
    without an offset is UTC."""
    value = text.strip()
    if _EPOCH_RE.fullmatch(value):
        return float(value)
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value)
    except ValueError:
        raise BadTime(f"{text!r} is not a time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def utc_text(t: float) -> str:
    """RFC 3339 UTC with microseconds: ``2026-12-01T08:00:00.123456Z``."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def export_line(record: dict[str, Any]) -> str:
    """One JSON line (without the newline) for an audit row from ``sts.store.retention.audit_between``."""
    t = float(record["time"])
    doc = {name: record.get(name) for name in EXPORT_FIELDS}
    doc["time"] = t if math.isfinite(t) else None
    doc["time_utc"] = utc_text(t) if math.isfinite(t) else None
    return _encode(doc)


def write_jsonl(records: Iterable[dict[str, Any]], out: IO[str]) -> int:
    """Write one line per record; returns how many."""
    n = 0
    for record in records:
        out.write(export_line(record))
        out.write("\n")
        n += 1
    return n
