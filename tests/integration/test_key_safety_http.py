"""A running broker and its keys: it reports the KEKs it holds, signs with a fallback key
(degraded, still ready) when it cannot use the active key, and refuses to start with a wrong KEK."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from broker_harness import BrokerServer, decode_issued, free_port, kek_for, postgres_base_url, postgres_schema_url
from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE, base_config
from sts.app import WrongKek, create_app
from sts.store.keys import KeyRepository
from sts.store.replicas import ReplicaRepository
from sts.tokens.keyring import KeyEncryptor


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'sts.db'}"
        return
    base = postgres_base_url()
    if not base:
        pytest.skip("STS_TEST_POSTGRES_URL is not set")
    with postgres_schema_url(base) as url:
        yield url


@pytest.fixture()
def server(issuer: LocalIssuer, replay_issuer: LocalIssuer, fresh_database_url: str, tmp_path: Path) -> Iterator[BrokerServer]:
    port = free_port()
    live = BrokerServer(base_config(port, issuer, replay_issuer, dead_port=free_port()), workdir=tmp_path,
                        database_url=fresh_database_url, port=port).start()
    try:
        yield live
    finally:
        live.stop()


def test_running_broker_reports_its_keks_and_leaves_on_stop(server: BrokerServer) -> None:
    replicas = ReplicaRepository(server.broker.engine)
    (report,) = replicas.list()
    assert report.kek_ids == server.broker.keyring.kek_ids
    server.stop()
    assert replicas.list() == []


def test_active_key_it_cannot_open_falls_back_to_the_retired_key(server: BrokerServer, issuer: LocalIssuer) -> None:
    ring = server.broker.keyring
    subject = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, lifetime=600)
    first = decode_issued(server, server.exchange(subject).json()["access_token"])[0]["kid"]

    # Another process promoted a key sealed under a KEK this broker does not hold (what an
    # unchecked promotion did before): the next key, re-sealed under a stranger KEK.
    repo = KeyRepository(server.broker.engine)
    nxt = next(r for r in repo.list() if r.alg == "ES256" and r.state == "next")
    stranger = KeyEncryptor(secrets.token_bytes(32))
    pem = ring._enc.open(nxt.private_key_ciphertext, nxt.kid, nxt.kek_id)
    assert repo.rewrap([(nxt.kid, nxt.kek_id, stranger.seal(pem, nxt.kid), stranger.kek_id)])
    now = server.broker.clock()
    assert repo.rotate(alg="ES256", expect_active_kid=first, new_next=ring._new_row("ES256", "next", now), now=now,
                       active_not_after=now + 86_400, publish_until_for_retired=now + 3600 + 300)
    ring.refresh()

    response = server.exchange(subject)
    assert response.status_code == 200, response.text
    header, claims = decode_issued(server, response.json()["access_token"])  # still published, still verifies
    assert header["kid"] == first
    assert claims["exp"] <= now + 3600
    assert ring.fallback_signatures >= 1
    with server.client() as c:
        ready = c.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "degraded", "database": True, "signing_keys": True, "signing_keys_degraded": True}


def test_broker_with_a_wrong_kek_refuses_to_start(issuer: LocalIssuer, replay_issuer: LocalIssuer, fresh_database_url: str,
                                                 tmp_path: Path) -> None:
    port = free_port()
    first = BrokerServer(base_config(port, issuer, replay_issuer, dead_port=free_port()), workdir=tmp_path,
                         database_url=fresh_database_url, port=port).start()
    first.stop()
    wrong = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    assert wrong != kek_for(fresh_database_url)
    app = create_app(first.settings.model_copy(update={"kek": SecretStr(wrong)}))
    broker = app.state.broker
    try:
        with pytest.raises(WrongKek, match=r"opens none of the \d+ stored signing keys"):
            asyncio.run(broker.start())
        assert ReplicaRepository(broker.engine).list() == []  # it never reported itself
    finally:
        broker.engine.dispose()
