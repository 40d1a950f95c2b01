"""Fixtures for brokers run as real processes: loopback issuers, a KEK, a fresh database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_harness import postgres_base_url, postgres_schema_url
from conformance.issuer import LocalIssuer
from replica_support import new_kek
from sts.store import migrate


@pytest.fixture(scope="session")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(algorithms=("ES256",)) as iss:
        yield iss


@pytest.fixture(scope="session")
def replay_issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(algorithms=("ES256",)) as iss:
        yield iss


@pytest.fixture()
def kek() -> str:
    return new_kek()


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A migrated, empty schema of its own on the shared PostgreSQL server."""
    base = postgres_base_url()
    if not base:
        pytest.skip("STS_TEST_POSTGRES_URL is not set")
    with postgres_schema_url(base) as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'sts.db'}"
    migrate.upgrade(url)
    return url
