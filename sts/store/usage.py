"""Usage counters: what each workload identity obtained, counted as it happens.

`sts inventory` (sts/ops/inventory.py) answers "which identities exist and what do they use"
from the ``usage_counts`` table instead of scanning the audit table. The group-commit writer
(sts/store/writer.py) folds every batch of audit rows into counters keyed by (UTC day,
identity, issuer, client, grant, target, granted scope set, outcome, reason) and upserts them
in the same transaction as the audit rows, so the counters are exactly as durable as the
records they count and cost no extra commit. A batch holds few distinct keys (a workload
repeats itself), so the upsert is a handful of rows whatever the batch size.

Correct with several replicas writing at once: each row is ``INSERT .. ON CONFLICT (key) DO
UPDATE SET count = count + excluded.count`` (atomic on both backends), and a batch upserts its
keys in sorted order so that two PostgreSQL transactions never lock the same two rows in
opposite orders (which would deadlock one of them).

What is counted: records that name an identity (a token that failed verification, or a
refusal coalesced by sts/ops/coalesce.py, names none and is not part of an inventory of
workload identities). Audit-mode grants (docs/configuration.md) issue nothing; the decision
notes the writer already stores say what they would have allowed, and those are counted with
the outcome ``audit_allow`` so that a grant can be reviewed before it is enforced.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection, Dialect

from sts.store.models import usage_counts

DAY = 86400

#: Column order of the upserted rows.
USAGE_COLUMNS: tuple[str, ...] = (
    "key", "day", "identity", "issuer", "client_id", "grant", "target", "scopes", "outcome", "reason",
    "count", "first_seen", "last_seen",
)  # fmt: skip

AUDIT_ALLOW = "audit_allow"
_KEY_CACHE = 10_000

_AUDIT_ALLOW_NOTE = re.compile(r"audit grant '([^']*)' would allow target (.+) with scopes (.+)")
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class UsageCounter:
    """Turns audit rows (tuples in the writer's column order) into usage upsert rows.

    Invariant: the rows returned for a batch sum, per key, exactly the audited records of that
    batch that name an identity (plus one ``audit_allow`` per audit-mode grant that would have
    allowed), and come sorted by key.
    """

    def __init__(self, audit_columns: Sequence[str]) -> None:
        index = {name: i for i, name in enumerate(audit_columns)}
        # One C call fetches every field the counters need from a row.
        self._fields = itemgetter(*(
            index[name]
            for name in ("time", "outcome", "reason", "client_id", "issuer", "identity", "grant", "mode_notes",
                         "granted_target", "granted_scopes")
        ))  # fmt: skip
        # Keys repeat from batch to batch (a workload asks for the same thing all day), so
        # their hashes are remembered; the cache is emptied when it grows past its bound.
        self._keys: dict[tuple[Any, ...], str] = {}

    def rows(self, audit: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
        fields = self._fields
        counts: dict[tuple[Any, ...], list[Any]] = {}
        for row in audit:
            t, outcome, reason, client, issuer, identity, grant, notes, target, scopes = fields(row)
            if identity is None:
                continue
            if outcome == "issued":
                key = (int(t // DAY), identity, issuer or "", client or "", grant or "", target or "", scopes or "[]", outcome, "")
            else:
                key = (int(t // DAY), identity, issuer or "", client or "", grant or "", "", "[]", outcome, reason or "")
            entry = counts.get(key)
            if entry is None:
                counts[key] = [1, t, t]
            else:
                entry[0] += 1
                entry[1] = min(entry[1], t)
                entry[2] = max(entry[2], t)
            # Only audit-mode grants write this note; any other request skips it in one test.
            if notes and "would allow" in notes:
                for grant, target, scopes in audit_allowed(notes):
                    _add(counts, (key[0], identity, key[2], key[3], grant, target, scopes, AUDIT_ALLOW, ""), t)
        keys = self._keys
        if len(keys) > _KEY_CACHE:
            keys.clear()
        out = []
        for key, (n, first, last) in counts.items():
            digest = keys.get(key)
            if digest is None:
                digest = keys[key] = usage_key(key)
            out.append((digest, *key, n, first, last))
        out.sort()
        return out


def _add(counts: dict[tuple[Any, ...], list[Any]], key: tuple[Any, ...], t: float) -> None:
    entry = counts.get(key)
    if entry is None:
        counts[key] = [1, t, t]
    else:
        entry[0] += 1
        if t < entry[1]:
            entry[1] = t
        if t > entry[2]:
            entry[2] = t


def usage_key(fields: tuple[Any, ...]) -> str:
    """The row's primary key: SHA-256 of its identifying fields (day first). ``repr`` of a
    tuple of str and int is unambiguous and cheaper than JSON."""
    return hashlib.sha256(repr(fields).encode()).hexdigest()


def audit_allowed(notes_json: str) -> list[tuple[str, str, str]]:
    """``(grant, target, scopes as a JSON array)`` for each audit-mode grant that would have
    allowed, from the audit record's ``mode_notes`` (written by sts.trust.policy)."""
    try:
        notes = json.loads(notes_json)
    except ValueError:
        return []
    found: list[tuple[str, str, str]] = []
    for note in notes if isinstance(notes, list) else ():
        match = _AUDIT_ALLOW_NOTE.fullmatch(note) if isinstance(note, str) else None
        if match is None:
            continue
        try:
            target, scopes = ast.literal_eval(match.group(2)), ast.literal_eval(match.group(3))
        except (ValueError, SyntaxError):
            continue
        if isinstance(target, str) and isinstance(scopes, str):
            found.append((match.group(1), target, _encode(scopes.split())))
    return found


def upsert_suffix(dialect: Dialect) -> str:
    """What turns the multi-row insert into an accumulating upsert on ``dialect``."""
    q = dialect.identifier_preparer
    t = q.format_table(usage_counts)
    c = {name: q.format_column(usage_counts.c[name]) for name in ("key", "count", "first_seen", "last_seen")}
    least, greatest = ("least", "greatest") if dialect.name == "postgresql" else ("min", "max")
    return (
        f" ON CONFLICT ({c['key']}) DO UPDATE SET {c['count']} = {t}.{c['count']} + excluded.{c['count']},"
        f" {c['first_seen']} = {least}({t}.{c['first_seen']}, excluded.{c['first_seen']}),"
        f" {c['last_seen']} = {greatest}({t}.{c['last_seen']}, excluded.{c['last_seen']})"
    )


# --- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Counters summed over the days read, for one (identity, issuer, client, grant, target,
    scope set, outcome, reason). Empty strings stand for "none"."""

    identity: str
    issuer: str
    client_id: str
    grant: str
    target: str
    scopes: tuple[str, ...]
    outcome: str
    reason: str
    count: int
    first_seen: float
    last_seen: float


def read_usage(conn: Connection, *, since: float | None = None, identity: str | None = None) -> list[UsageRow]:
    """Counters summed over every stored day, or only over the events seen at or after
    ``since`` (precise to the day: a day's row counts whole once its last event is in the
    window). Reads the usage table only, never the audit records."""
    u = usage_counts.c
    keys = (u.identity, u.issuer, u.client_id, u.grant, u.target, u.scopes, u.outcome, u.reason)
    stmt = select(*keys, func.sum(u.count), func.min(u.first_seen), func.max(u.last_seen)).group_by(*keys)
    if since is not None:
        stmt = stmt.where(u.day >= int(since // DAY), u.last_seen >= since)
    if identity is not None:
        stmt = stmt.where(u.identity == identity)
    rows = []
    for r in conn.execute(stmt.order_by(*keys)):
        scopes = json.loads(r[5]) if r[5] else []
        rows.append(UsageRow(r[0], r[1], r[2], r[3], r[4], tuple(scopes), r[6], r[7], int(r[8]), float(r[9]), float(r[10])))
    return rows


# --- retention ------------------------------------------------------------------------------------


def delete_usage_batch(conn: Connection, before: float, limit: int) -> int:
    """Delete at most ``limit`` counters of UTC days that ended before ``before`` (the audit
    retention cutoff: a counter goes once every record it counts may be gone)."""
    u = usage_counts.c
    day = int(before // DAY)
    oldest = select(u.key).where(u.day < day).order_by(u.day).limit(limit).scalar_subquery()
    return int(conn.execute(delete(usage_counts).where(u.key.in_(oldest) & (u.day < day))).rowcount)


def count_usage_before(conn: Connection, before: float) -> int:
    return int(conn.execute(select(func.count()).select_from(usage_counts).where(usage_counts.c.day < int(before // DAY))).scalar_one())
