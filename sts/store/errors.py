"""The one exception the storage layer raises to its callers."""

from __future__ import annotations


class StoreError(Exception):
    """A write or claim could not be made durable. The message names the database error, never
    the record's values; the broker maps it to ``server_error`` (RFC 6749 §5.2)."""
