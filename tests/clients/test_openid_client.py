"""openid-client (panva, Node.js) against the real broker, unmodified: its DPoP flow for an
RFC 8693 token exchange (RFC 9449 §5), including its own retry on ``use_dpop_nonce`` (§8), with
client authentication (``client_secret_basic``) and as a public client.

The locked dependencies are installed into ``tests/clients/js`` with ``npm ci`` on first use.
Without Node.js 20+ and npm the tests skip, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from broker_harness import BrokerServer, decode_issued, free_port
from clients_setup import CLIENT_SECRET, clients_config

from conformance.issuer import LocalIssuer

JS = Path(__file__).parent / "js"
BOUND = "https://bound.example.com"

pytestmark = pytest.mark.slow


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed for the openid-client tests")
    assert node is not None and npm is not None
    if not (JS / "node_modules" / "openid-client").is_dir():
        try:
            subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS, check=True,
                           capture_output=True, timeout=180)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            _unavailable(f"npm ci in tests/clients/js failed: {exc}")
    return node


@pytest.fixture(scope="module")
def nonce_broker(issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    """A broker that requires server nonces and a DPoP proof for ``BOUND``."""
    port = free_port()
    config = clients_config(port, issuer)
    config["grants"].append({"name": "bound", "issuers": ["local"], "match": {"identity_pattern": "^wl:agent-[a-z0-9-]+$"},
                             "sender_constraint": "dpop", "targets": [{"audience": BOUND, "scopes": ["read"]}]})
    workdir = tmp_path_factory.mktemp("openid-client-broker")
    server = BrokerServer(config, workdir=workdir, database_url=f"sqlite:///{workdir / 'sts.db'}", port=port,
                          settings={"dpop_require_nonce": True, "audit_coalesce_window": 0}).start()
    try:
        yield server
    finally:
        server.stop()


def _nonce_requests(server: BrokerServer) -> int:
    with server.broker.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM audit_events WHERE error = 'use_dpop_nonce'")).scalar_one())


def run_openid_client(node: str, server: BrokerServer, subject: str, *, dpop: bool, client_id: str,
                      secret: str | None) -> dict[str, Any]:
    env = {"PATH": os.environ.get("PATH", ""), "STS_ISSUER": server.url, "STS_SUBJECT_TOKEN": subject,
           "STS_AUDIENCE": BOUND, "STS_CLIENT_ID": client_id, "STS_DPOP": "1" if dpop else "0"}
    if secret is not None:
        env["STS_CLIENT_SECRET"] = secret
    done = subprocess.run([node, str(JS / "exchange.mjs")], env=env, capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("client_id", "secret"), [("basic-client", CLIENT_SECRET), ("public-agent", None)],
                         ids=["client_secret_basic", "public"])
def test_openid_client_dpop_token_exchange(node: str, nonce_broker: BrokerServer, mint: Any, client_id: str,
                                           secret: str | None) -> None:
    asked_before = _nonce_requests(nonce_broker)
    result = run_openid_client(node, nonce_broker, mint(), dpop=True, client_id=client_id, secret=secret)
    assert result["ok"], result
    # openid-client met the use_dpop_nonce answer and retried with the nonce on its own
    assert _nonce_requests(nonce_broker) == asked_before + 1
    assert result["token_type"].lower() == "dpop"
    _, claims = decode_issued(nonce_broker, result["access_token"])
    assert claims["cnf"] == {"jkt": result["dpop_jkt"]}
    assert claims["aud"] == BOUND
    assert claims["client_id"] == (client_id if secret is not None else claims["sub"])


def test_openid_client_without_dpop_is_refused_for_a_dpop_target(node: str, nonce_broker: BrokerServer, mint: Any) -> None:
    result = run_openid_client(node, nonce_broker, mint(), dpop=False, client_id="basic-client", secret=CLIENT_SECRET)
    assert not result["ok"]
    assert result["error"] == "invalid_dpop_proof", result
