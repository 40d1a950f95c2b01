"""Fixtures for brokers run as real processes: loopback issuers, a KEK, a fresh database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_harness import postgres_base_url, postgres_schema_url
from conformance.issuer import LocalIssuer
from replica_support import TcpProxy, new_kek
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


@pytest.fixture()
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the test's PostgreSQL server, for cutting and restoring it."""
    from sqlalchemy import make_url

    from sts.store.db import normalise_url

    target = make_url(normalise_url(postgres_url))
    running = TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()
    try:
        yield running
    finally:
        running.stop()
