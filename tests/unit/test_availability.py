"""Which failures a caller sees as ``temporarily_unavailable`` (sts.availability)."""

from __future__ import annotations

import pytest

from sts.availability import DATABASE_RETRY_AFTER_SECONDS, database_unavailable
from sts.store.errors import StoreError, StoreUnavailable


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(StoreUnavailable("database write failed (OperationalError: connection refused)"), id="unreachable"),
        pytest.param(TimeoutError(), id="database-wait-timed-out"),
    ],
)
def test_database_outages_are_503_with_retry_after(exc: BaseException) -> None:
    error = database_unavailable(exc)
    assert error is not None
    assert (error.status, error.error, error.reason) == (503, "temporarily_unavailable", "database_unavailable")
    assert error.headers["Retry-After"] == str(DATABASE_RETRY_AFTER_SECONDS)
    # The driver's message goes to the audit record only, never to the caller.
    assert "OperationalError" not in str(error.body())


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(StoreError("database write failed (IntegrityError: duplicate key)"), id="refused-write"),
        pytest.param(ValueError("a bug"), id="bug"),
    ],
)
def test_other_failures_are_not_outages(exc: BaseException) -> None:
    assert database_unavailable(exc) is None
