"""Issuers on a private CA (a self-managed Kubernetes API server, GitHub Enterprise Server): the
running broker fetches discovery and keys over HTTPS from two local issuers whose certificates
come from one throwaway CA. The issuer whose configuration names the CA in ``ca_file`` works;
the other, served under the very same CA, fails TLS verification, because a ``ca_file`` is used
for its own issuer only and the process-wide trust is left as it was. A replaced CA file is
read again on reload, though the configuration file itself did not change."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker_harness import BrokerServer, free_port
from conformance.issuer import LocalIssuer, server_tls_context
from spiffe_support import WebCA, pem, write_identity

AUDIENCE = "sts-private-ca"
TARGET = "https://api.example.com"
PRIVATE_CA = WebCA()
UNRELATED_CA = WebCA()


def https_issuer(workdir: Path, name: str) -> LocalIssuer:
    cert, key = PRIVATE_CA.server()
    cert_file, key_file = write_identity(workdir, name, cert, key)
    return LocalIssuer(algorithms=("ES256",), tls=server_tls_context(str(cert_file), str(key_file))).start()


def issuer_entry(name: str, issuer: LocalIssuer, ca_file: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "issuer": issuer.url, "audiences": [AUDIENCE],
                             "claim_mappings": {"identity": f'"{name}:" + claims.sub'}}
    if ca_file is not None:
        entry["ca_file"] = ca_file
    return entry


@dataclass
class Setup:
    server: BrokerServer
    ghes: LocalIssuer  # ca_file names the private CA
    plain: LocalIssuer  # no ca_file, same private CA
    cluster: LocalIssuer  # ca_file names an unrelated CA, until the reload test replaces it
    workdir: Path
    trust_before: tuple[Any, ...]


def process_trust() -> tuple[Any, ...]:
    return os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"), ssl.get_default_verify_paths()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    trust_before = process_trust()
    workdir = tmp_path_factory.mktemp("private-ca")
    ghes, plain, cluster = (https_issuer(workdir, name) for name in ("ghes", "plain", "cluster"))
    (workdir / "certs").mkdir()
    PRIVATE_CA.write(workdir / "certs" / "ghes-ca.pem")
    UNRELATED_CA.write(workdir / "certs" / "cluster-ca.pem")
    port = free_port()
    config = {
        "issuer": f"http://127.0.0.1:{port}",
        "issuers": [issuer_entry("ghes", ghes, "certs/ghes-ca.pem"),
                    issuer_entry("plain", plain, None),
                    issuer_entry("cluster", cluster, "certs/cluster-ca.pem")],
        "grants": [{"name": "all", "match": {"identity_pattern": "^(ghes|plain|cluster):.*$"},
                    "targets": [{"audience": TARGET, "scopes": ["read"], "default_scopes": ["read"]}]}],
    }
    server = BrokerServer(config, workdir=workdir, database_url=f"sqlite:///{workdir / 'sts.db'}", port=port,
                          settings={"config_reload_interval": 0.1}).start()
    try:
        yield Setup(server, ghes, plain, cluster, workdir, trust_before)
    finally:
        server.stop()
        for issuer in (ghes, plain, cluster):
            issuer.stop()


def exchange(server: BrokerServer, issuer: LocalIssuer) -> httpx.Response:
    return server.exchange(issuer.mint({"sub": "agent-1", "aud": AUDIENCE}, alg="ES256", lifetime=600),
                           audience=TARGET)


def key_status(server: BrokerServer, name: str) -> dict[str, Any]:
    runtime = server.broker.runtime()
    return server.broker.jwks.status()[runtime.key_sources[name]]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_the_issuer_with_the_ca_file_works(setup: Setup) -> None:
    response = exchange(setup.server, setup.ghes)
    assert response.status_code == 200, response.text
    assert setup.ghes.hits["/.well-known/openid-configuration"] >= 1 and setup.ghes.hits["/jwks"] >= 1
    assert key_status(setup.server, "ghes")["last_error"] is None


@pytest.mark.parametrize("name", ["plain", "cluster"])
def test_an_issuer_without_that_ca_fails_tls_verification(setup: Setup, name: str) -> None:
    # `plain` is served under the very CA that `ghes` names, and has no ca_file of its own.
    issuer = getattr(setup, name)
    response = exchange(setup.server, issuer)
    assert response.status_code == 503 and response.json()["error"] == "temporarily_unavailable"
    assert key_status(setup.server, name)["last_error"] == "tls"
    assert issuer.hits["/.well-known/openid-configuration"] == 0  # refused at the handshake


def test_the_process_wide_trust_is_unchanged(setup: Setup) -> None:
    # The broker runs in this very process, and has fetched from the private CA's servers.
    assert exchange(setup.server, setup.ghes).status_code == 200
    assert process_trust() == setup.trust_before
    port = int(setup.ghes.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
    with pytest.raises(httpx.ConnectError):
        httpx.get(setup.ghes.url + "/.well-known/openid-configuration", trust_env=False)


def test_a_replaced_ca_file_is_read_again_on_reload(setup: Setup) -> None:
    server = setup.server
    before = server.broker.runtime()
    (setup.workdir / "certs" / "cluster-ca.pem").write_bytes(pem(PRIVATE_CA.cert))
    # The configuration file is byte for byte the same; a touch (or SIGHUP) asks for a reload.
    stat = server.config_path.stat()
    os.utime(server.config_path, (stat.st_atime, stat.st_mtime + 5))
    assert wait_for(lambda: server.broker.runtime() is not before)
    assert server.broker.runtime().version == before.version
    response = exchange(server, setup.cluster)
    assert response.status_code == 200, response.text
    assert key_status(server, "cluster")["last_error"] is None
