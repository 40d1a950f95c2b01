"""A database outage seen by callers: ``temporarily_unavailable`` with ``Retry-After``.

RFC 6749 §4.1.2.1 defines ``temporarily_unavailable`` for "a temporary overloading or
maintenance of the server"; the token endpoint sends it as a 503 (RFC 9110 §15.6.4) with
``Retry-After`` (RFC 9110 §10.2.3), as it already does for unreachable issuer keys. A request
whose durable write or one-time ``jti`` claim could not reach the database gets this answer
instead of ``server_error``: nothing was issued (a token is sent only after its record is
durable), and the caller may simply retry. Bounds and behaviour: docs/operations.md,
"Failure behaviour".
"""

from __future__ import annotations

from sts.errors import TemporarilyUnavailable
from sts.store.errors import StoreUnavailable

# What callers are told to wait: a PostgreSQL restart or fail-over takes seconds.
DATABASE_RETRY_AFTER_SECONDS = 5
# How long /readyz waits for ``SELECT 1`` before it reports the database down (the connection
# attempt itself is bounded by libpq's connect_timeout, sts.store.db.POSTGRES_CONNECT_DEFAULTS).
READINESS_DATABASE_SECONDS = 2.0


def database_unavailable(exc: BaseException) -> TemporarilyUnavailable | None:
    """The answer for ``exc`` if it means "the database is unavailable", else None.

    ``TimeoutError`` counts: on the token path the only waits that raise it are the bounded
    waits for the database (the durable write and the one-time ``jti`` claims); fetches of
    issuer keys turn their timeouts into ``IssuerKeysUnavailable`` before they get here.
    """
    if isinstance(exc, StoreUnavailable):
        detail = str(exc)
    elif isinstance(exc, TimeoutError):
        detail = "database wait timed out"
    else:
        return None
    return TemporarilyUnavailable(
        "The service is temporarily unavailable; retry later.",
        reason="database_unavailable",
        detail=detail,
        retry_after=DATABASE_RETRY_AFTER_SECONDS,
    )
