"""Durable state of the broker: signing keys, issued tokens, audit records and the replay guard.

SQLAlchemy Core on a synchronous engine (SQLite through the standard library, PostgreSQL through
psycopg 3); the schema is owned by the Alembic migrations in ``migrations/``. Request handlers
never touch a connection: writes go through ``writer.GroupCommitWriter``.
"""

from __future__ import annotations

from sts.store.errors import StoreError

__all__ = ["StoreError"]
