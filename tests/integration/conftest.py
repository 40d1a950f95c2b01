"""Fixtures: a local OIDC issuer and the real broker over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker_harness import BrokerServer, free_port, postgres_base_url, postgres_schema_url
from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE, base_config

@pytest.fixture(scope="session")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(algorithms=("RS256", "ES256")) as iss:
        yield iss


@pytest.fixture(scope="session")
def replay_issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(algorithms=("ES256",)) as iss:
        yield iss


def _backends() -> list[Any]:
    return [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'sts.db'}"
        return
    base = postgres_base_url()
    if not base:
        pytest.skip("STS_TEST_POSTGRES_URL is not set")
    with postgres_schema_url(base) as url:
        yield url


@pytest.fixture(scope="module")
def broker(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    config = base_config(port, issuer, replay_issuer, dead_port=free_port())
    # These tests look for the audit row of each refusal they make, and many make the same
    # unauthenticated refusal from 127.0.0.1: coalescing is off here and tested on its own
    # (test_retention_broker.py).
    server = BrokerServer(config, workdir=tmp_path_factory.mktemp("broker"), database_url=database_url, port=port,
                          settings={"audit_coalesce_window": 0}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def mint(issuer: LocalIssuer) -> Callable[..., str]:
    def _mint(sub: str = "agent-1", *, alg: str = "RS256", lifetime: int = 3600, **claims: Any) -> str:
        return issuer.mint({"sub": sub, "aud": BROKER_AUDIENCE, **claims}, alg=alg, lifetime=lifetime)

    return _mint


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return tmp_path
