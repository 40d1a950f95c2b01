"""``/introspect`` (RFC 7662) and ``/revoke`` (RFC 7009) over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from broker_harness import BrokerServer, free_port
from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE, CLIENT_SECRET, base_config
from dpop_support import dpop_key, make_proof
from sts import jose
from sts.store.db import make_engine

DPOP_TARGET = "https://dpop.example.com"
RS_SECRET = "resource-server-secret-0123456789abcdef"
RS_AUTH = ("resource-server", RS_SECRET)
POST_CREDS = {"client_id": "post-client", "client_secret": CLIENT_SECRET}
# The broker's poll (1 s) plus a margin for a busy machine.
FOLLOW = 10.0


@pytest.fixture(scope="module")
def live(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    config = copy.deepcopy(base_config(port, issuer, replay_issuer, dead_port=free_port()))
    config["clients"]["registered"].append({"client_id": "resource-server", "auth_method": "client_secret_basic",
                                            "secret_sha256": hashlib.sha256(RS_SECRET.encode()).hexdigest(),
                                            "token_exchange": False, "introspection": True})
    config["grants"][0]["targets"].append({"audience": DPOP_TARGET, "scopes": ["read"], "sender_constraint": "dpop"})
    server = BrokerServer(config, workdir=tmp_path_factory.mktemp("introspect"), database_url=database_url, port=port,
                          settings={"audit_coalesce_window": 0}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def token_for(live: BrokerServer, issuer: LocalIssuer) -> Callable[..., str]:
    def make(sub: str = "agent-intro", **creds: str) -> str:
        subject = issuer.mint({"sub": sub, "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=600)
        response = live.exchange(subject, **creds)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    return make


def introspect(live: BrokerServer, token: str, *, auth: Any = RS_AUTH, **extra: str) -> httpx.Response:
    return httpx.post(live.url + "/introspect", data={"token": token, **extra}, auth=auth, timeout=10)


def revoke(live: BrokerServer, token: str, **form: str) -> httpx.Response:
    return httpx.post(live.url + "/revoke", data={"token": token, **form}, timeout=10)


def wait_for(predicate: Callable[[], bool], timeout: float = FOLLOW) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_active_token_has_the_rfc_fields(live: BrokerServer, token_for: Callable[..., str]) -> None:
    token = token_for(**POST_CREDS)
    response = introspect(live, token, token_type_hint="access_token")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    claims = jose.unsafe_decode(token).claims
    assert body["active"] is True and body["token_type"] == "Bearer"
    for name in ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti"):
        assert body[name] == claims[name], name
    assert body["client_id"] == "post-client" and body["iss"] == live.url


@pytest.mark.parametrize("make_token", [
    pytest.param(lambda issuer, good: "not-a-jwt", id="garbage"),
    pytest.param(lambda issuer, good: issuer.mint({"sub": "agent-x", "aud": BROKER_AUDIENCE}, alg="ES256"), id="foreign"),
    pytest.param(lambda issuer, good: good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"), id="bad-signature"),
])
def test_inactive_answers_say_nothing_more(live: BrokerServer, token_for: Callable[..., str], issuer: LocalIssuer,
                                          make_token: Callable[[LocalIssuer, str], str]) -> None:
    response = introspect(live, make_token(issuer, token_for()))
    assert response.status_code == 200 and response.json() == {"active": False}


def test_expired_token_is_inactive(live: BrokerServer, token_for: Callable[..., str], issuer: LocalIssuer) -> None:
    subject = issuer.mint({"sub": "agent-short", "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=3)
    token = live.exchange(subject).json()["access_token"]
    assert introspect(live, token).json()["active"] is True
    assert wait_for(lambda: introspect(live, token).json() == {"active": False}, timeout=8)


@pytest.mark.parametrize(("auth", "status", "error"), [
    pytest.param(None, 401, "invalid_client", id="public"),
    pytest.param(("resource-server", "wrong-secret-0123456789"), 401, "invalid_client", id="bad-secret"),
    pytest.param(("basic-client", CLIENT_SECRET), 403, "unauthorized_client", id="not-allowed"),
])
def test_only_introspection_clients_may_call(live: BrokerServer, token_for: Callable[..., str], auth: Any,
                                            status: int, error: str) -> None:
    response = introspect(live, token_for(), auth=auth)
    assert response.status_code == status and response.json()["error"] == error
    assert "active" not in response.json()
    engine = make_engine(live.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT outcome, error, mode_notes FROM audit_events ORDER BY id DESC LIMIT 1")).one()
    finally:
        engine.dispose()
    assert row.outcome == "denied" and row.error == error and "endpoint:introspect" in row.mode_notes


def test_bad_requests(live: BrokerServer) -> None:
    missing = httpx.post(live.url + "/introspect", data={}, auth=RS_AUTH, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    twice = httpx.post(live.url + "/introspect", content=b"token=a&token=b", auth=RS_AUTH, timeout=10,
                       headers={"content-type": "application/x-www-form-urlencoded"})
    assert twice.status_code == 400
    as_json = httpx.post(live.url + "/introspect", json={"token": "a"}, auth=RS_AUTH, timeout=10)
    assert as_json.status_code == 400


def test_client_revokes_its_own_token_only(live: BrokerServer, token_for: Callable[..., str]) -> None:
    mine = token_for("agent-rev-mine", **POST_CREDS)
    public = token_for("agent-rev-public")
    # Another client's token: 200, nothing revoked (RFC 7009 §2.1 and §2.2).
    other = revoke(live, public, **POST_CREDS)
    assert other.status_code == 200 and other.content == b""
    assert introspect(live, public).json()["active"] is True
    # Unknown and foreign tokens: the same 200.
    assert revoke(live, "not-a-token", **POST_CREDS).status_code == 200
    # Its own: revoked, inactive at once, and refused as a subject token by the pipeline.
    done = revoke(live, mine, token_type_hint="access_token", **POST_CREDS)
    assert done.status_code == 200 and done.headers["cache-control"] == "no-store"
    assert introspect(live, mine).json() == {"active": False}
    assert revoke(live, mine, **POST_CREDS).status_code == 200  # again: still 200
    # Without client authentication: refused.
    assert revoke(live, mine).status_code == 401


def test_metadata_advertises_both_endpoints(live: BrokerServer) -> None:
    meta = httpx.get(live.url + "/.well-known/oauth-authorization-server", timeout=10).json()
    assert meta["introspection_endpoint"] == live.url + "/introspect"
    assert meta["revocation_endpoint"] == live.url + "/revoke"
    assert "none" not in meta["introspection_endpoint_auth_methods_supported"]
    assert set(meta["revocation_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post", "private_key_jwt"}


def test_dpop_bound_token_introspects_with_cnf(live: BrokerServer, issuer: LocalIssuer) -> None:
    key = dpop_key("ES256")
    subject = issuer.mint({"sub": "agent-dpop", "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=600)
    response = httpx.post(live.url + "/token", timeout=10, headers={"DPoP": make_proof(live.url + "/token", key=key)},
                          data={"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": subject,
                                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "audience": DPOP_TARGET})
    assert response.status_code == 200, response.text
    body = introspect(live, response.json()["access_token"]).json()
    assert body["active"] is True and body["token_type"] == "DPoP"
    assert body["cnf"] == {"jkt": jose.jwk_thumbprint(key.public_jwk())}
