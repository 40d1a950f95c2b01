"""The exceptions the storage layer raises to its callers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import SQLAlchemyError


class StoreError(Exception):
    """A write or claim could not be made durable. The message names the database error, never
    the record's values; the broker maps it to ``server_error`` (RFC 6749 §5.2)."""


class StoreUnavailable(StoreError):
    """The database could not be reached (refused, reset, timed out, or lost mid-transaction),
    as opposed to a write it refused. Nothing of the call was committed, unless the connection
    was lost during COMMIT, when the outcome is unknown (the record may exist; no answer that
    depends on it is sent). The broker maps it to ``temporarily_unavailable`` (503) with
    ``Retry-After``: the caller may retry once the database is back (docs/operations.md)."""


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


@contextmanager
def store_errors(action: str) -> Iterator[None]:
    """Turn a database error inside the block into a ``StoreError`` naming ``action`` and the
    driver's error class (never the statement or its values)."""
    try:
        yield
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        raise StoreError(f"{action} failed ({type(orig).__name__})") from exc
