"""The exceptions the storage layer raises to its callers."""

from __future__ import annotations


class StoreError(Exception):
    """A write or claim could not be made durable. The message names the database error, never
    the record's values; the broker maps it to ``server_error`` (RFC 6749 §5.2)."""


class StoreUnavailable(StoreError):
    """The database could not be reached (refused, reset, timed out, or lost mid-transaction),
    as opposed to a write it refused. Nothing of the call was committed, unless the connection
    was lost during COMMIT, when the outcome is unknown (the record may exist; no answer that
    depends on it is sent). The broker maps it to ``temporarily_unavailable`` (503) with
    ``Retry-After``: the caller may retry once the database is back (docs/operations.md)."""
