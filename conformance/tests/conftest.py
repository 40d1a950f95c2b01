"""Shared loopback parties for the kit's tests: one issuer, one bundle endpoint, one target."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conformance.issuer import LocalIssuer, SpiffeBundleServer
from conformance.tests.reference_target import ReferenceTarget


@pytest.fixture(scope="session")
def issuer() -> Iterator[LocalIssuer]:
    # PS256 is published but not accepted by the reference target: the "not allowed" key.
    with LocalIssuer(algorithms=("RS256", "ES256", "PS256")) as server:
        yield server


@pytest.fixture(scope="session")
def spiffe() -> Iterator[SpiffeBundleServer]:
    with SpiffeBundleServer("conformance.test") as server:
        yield server


@pytest.fixture(scope="session")
def target(issuer: LocalIssuer, spiffe: SpiffeBundleServer) -> Iterator[ReferenceTarget]:
    server = ReferenceTarget(issuer, spiffe).start()
    try:
        yield server
    finally:
        server.stop()
