"""Fixtures for the third-party client tests: a local OIDC issuer and the real broker over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_harness import BrokerServer, free_port
from clients_setup import BROKER_AUDIENCE, clients_config

from conformance.issuer import LocalIssuer


@pytest.fixture(scope="session")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(algorithms=("RS256", "ES256")) as iss:
        yield iss


@pytest.fixture(scope="session")
def broker(issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("clients-broker")
    server = BrokerServer(clients_config(port, issuer), workdir=workdir,
                          database_url=f"sqlite:///{workdir / 'sts.db'}", port=port).start()
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
