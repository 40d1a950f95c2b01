"""The exceptions the storage layer raises to its callers."""

from __future__ import annotations


class StoreError(Exception):
    """A write or claim could not be made durable. The message names the database error, never
    the record's values; the broker maps it to ``server_error`` (RFC 6749 §5.2)."""


class DatabaseMissing(StoreError):
    """A command that only reads was pointed at an SQLite file that does not exist.

    Opening it would create an empty database (and its directory) that every later command
    would then take for the real one, so nothing is created and the caller says how to make it.
    """

    fix = "run `sts db upgrade` to create it, or point STS_DATABASE_URL at the existing database"

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(f"no database at {where}")


class SchemaNotCurrent(StoreError):
    """The database exists but its schema is not the one this version needs (empty or behind)."""

    fix = "run `sts db upgrade`"

    def __init__(self, where: str, current: str | None, head: str) -> None:
        self.where, self.current, self.head = where, current, head
        state = "has no schema" if current is None else f"is at schema revision {current}, this version needs {head}"
        super().__init__(f"the database at {where} {state}")
