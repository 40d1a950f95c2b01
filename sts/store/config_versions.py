"""Stored configuration versions: the document behind every ``config_version`` of the audit.

A broker records the configuration it loaded at start and at every reload, before it serves
with it (``sts.app``), never on the request path. The write is an upsert on the document's
SHA-256, so it is idempotent, and replicas that load the same document at the same moment meet
on the primary key (``INSERT ... ON CONFLICT``, SQLite and PostgreSQL alike): one row, whose
``last_loaded_at`` and ``loaded_by`` move forward and whose document never changes.

A version is named by any unambiguous prefix of at least 4 hex digits of its SHA-256: the 12
that audit records carry, or all 64.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import case, select
from sqlalchemy.engine import Connection, Engine, Row

from sts.store.db import write_transaction
from sts.store.errors import StoreError, store_errors
from sts.store.models import config_versions

MIN_PREFIX: Final = 4
_HEX: Final = re.compile(r"[0-9a-f]{4,64}")


class UnknownVersion(StoreError):
    """No stored configuration version has this name (or the name is not hex)."""

    fix = "list the stored versions with `sts config history`"


class AmbiguousVersion(StoreError):
    """Several stored versions start with this prefix."""

    fix = "give more hex digits of the version (`sts config history` lists them)"


@dataclass(frozen=True, slots=True)
class ConfigVersionRecord:
    """One stored configuration. Invariant: ``version == sha256[:12]``; ``document`` is the
    file's text, or for a directory the canonical JSON of its files (``sts.config.sources``)."""

    sha256: str
    version: str
    kind: str
    source: str
    document: str
    first_loaded_at: float = 0.0
    last_loaded_at: float = 0.0
    loaded_by: str = ""

    def summary(self) -> dict[str, Any]:
        """Everything but the document."""
        return {"version": self.version, "sha256": self.sha256, "kind": self.kind, "source": self.source,
                "first_loaded_at": self.first_loaded_at, "last_loaded_at": self.last_loaded_at, "loaded_by": self.loaded_by}


_SUMMARY_COLUMNS: Final = [c for c in config_versions.c if c.name != "document"]


def _record(row: Row[Any]) -> ConfigVersionRecord:
    m = row._mapping
    return ConfigVersionRecord(sha256=m["sha256"], version=m["version"], kind=m["kind"], source=m["source"],
                               document=m.get("document", ""), first_loaded_at=m["first_loaded_at"],
                               last_loaded_at=m["last_loaded_at"], loaded_by=m["loaded_by"])


def _upsert(conn: Connection, values: dict[str, Any]) -> None:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    stmt = dialect_insert(config_versions).values(values)
    newer = stmt.excluded.last_loaded_at > config_versions.c.last_loaded_at
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["sha256"],
        # Only the time and who moved forward: the document of a hash never changes, and a
        # replica whose clock is behind does not move the time back.
        set_={"last_loaded_at": case((newer, stmt.excluded.last_loaded_at), else_=config_versions.c.last_loaded_at),
              "loaded_by": case((newer, stmt.excluded.loaded_by), else_=config_versions.c.loaded_by)},
    ))


class ConfigVersionRepository:
    """Reads and records ``config_versions``. Invariant: one row per SHA-256; a row's document
    is never rewritten."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(self, *, sha256: str, kind: str, source: str, document: str, now: float, loaded_by: str) -> None:
        """Store that this document was loaded now (insert, or move ``last_loaded_at``)."""
        values = {"sha256": sha256, "version": sha256[:12], "kind": kind, "source": source, "document": document,
                  "first_loaded_at": now, "last_loaded_at": now, "loaded_by": loaded_by}
        with store_errors("recording the configuration version"), write_transaction(self._engine) as conn:
            _upsert(conn, values)

    def history(self, limit: int = 50) -> list[ConfigVersionRecord]:
        """The most recently loaded versions first, without their documents."""
        stmt = (select(*_SUMMARY_COLUMNS).order_by(config_versions.c.last_loaded_at.desc(), config_versions.c.sha256)
                .limit(limit))
        with store_errors("listing configuration versions"), self._engine.connect() as conn:
            return [_record(r) for r in conn.execute(stmt)]

    def latest(self) -> ConfigVersionRecord | None:
        """The version loaded most recently by any replica, with its document."""
        stmt = select(config_versions).order_by(config_versions.c.last_loaded_at.desc(), config_versions.c.sha256).limit(1)
        with store_errors("reading the latest configuration version"), self._engine.connect() as conn:
            row = conn.execute(stmt).first()
        return _record(row) if row is not None else None

    def get(self, name: str) -> ConfigVersionRecord:
        """The version named by a hex prefix of its SHA-256 (at least 4 digits)."""
        ref = name.strip().lower()
        if _HEX.fullmatch(ref) is None:
            raise UnknownVersion(f"{name!r} is not a configuration version (4 to 64 hex digits)")
        # Hex digits hold no LIKE wildcard.
        stmt = (select(config_versions).where(config_versions.c.sha256.startswith(ref))
                .order_by(config_versions.c.sha256).limit(2))
        with store_errors("reading a configuration version"), self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
        if not rows:
            raise UnknownVersion(f"no stored configuration version {ref}")
        if len(rows) > 1:
            raise AmbiguousVersion(f"several stored configuration versions start with {ref}")
        return _record(rows[0])
