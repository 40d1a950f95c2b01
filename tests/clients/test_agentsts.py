"""The agentsts client (``agentsts-core`` on PyPI, unmodified) in its delegation mode against
the broker running the delegation-chain configuration of docs/agents.md.

``STSClient.delegate`` discovers the token endpoint from the authorization-server metadata
(RFC 8414) and posts ``subject_token`` plus ``actor_token`` (RFC 8693 §2.1), both typed
``urn:ietf:params:oauth:token-type:jwt``, without client authentication: the first hop takes the
workload's identity-provider token, the next ones a token the broker issued, and each answer
carries the nested ``act`` (RFC 8693 §4.1). A refused hop surfaces as agentsts's own
``TokenExchangeError`` with the RFC error code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from agentsts.core import STSClient, STSConfig, TokenType
from agentsts.core.client import TokenExchangeError
from broker_harness import BrokerServer, decode_issued, free_port
from chains_support import DOCS_API, GATEWAY, IDP_AUDIENCE, MCP, chain_config

from conformance.issuer import LocalIssuer


@pytest.fixture(scope="module")
def chains_broker(issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("agentsts-broker")
    server = BrokerServer(chain_config(port, issuer, extra_grants=False), workdir=workdir,
                          database_url=f"sqlite:///{workdir / 'sts.db'}", port=port).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def idp(issuer: LocalIssuer) -> Callable[..., str]:
    def mint(sub: str, **claims: Any) -> str:
        return issuer.mint({"sub": sub, "aud": IDP_AUDIENCE, **claims}, alg="ES256", lifetime=600)

    return mint


def sts_client(broker: BrokerServer) -> STSClient:
    return STSClient(STSConfig(well_known_uri=f"{broker.url}/.well-known/oauth-authorization-server"))


async def test_delegation_mode_through_a_chain(chains_broker: BrokerServer, idp: Callable[..., str]) -> None:
    async with sts_client(chains_broker) as client:
        # The workload's own exchange (impersonation mode: no actor) gives the gateway's token.
        t0 = await client.impersonate(subject_token=idp("report-job"), audience=GATEWAY)
        # The gateway's delegation: the workload's token of ours plus its own credential.
        t1 = await client.delegate(subject_token=t0.access_token, subject_token_type=TokenType.JWT,
                                   actor_token=idp("gateway"), actor_token_type=TokenType.JWT,
                                   audience=MCP, scope="docs.read")
        assert t1.issued_token_type == TokenType.ACCESS_TOKEN and t1.scope == "docs.read"
        # The MCP tool's hop, with the access-token type this time.
        t2 = await client.delegate(subject_token=t1.access_token, subject_token_type=TokenType.ACCESS_TOKEN,
                                   actor_token=idp("search-tool"), actor_token_type=TokenType.JWT, audience=DOCS_API)
    claims = decode_issued(chains_broker, t2.access_token)[1]
    assert claims["sub"] == "wl:report-job" and claims["aud"] == DOCS_API
    assert claims["act"] == {"sub": "wl:search-tool", "act": {"sub": "wl:gateway"}}


async def test_delegation_mode_refusal_is_a_token_exchange_error(chains_broker: BrokerServer, idp: Callable[..., str]) -> None:
    async with sts_client(chains_broker) as client:
        t0 = await client.impersonate(subject_token=idp("report-job"), audience=GATEWAY)
        t1 = await client.delegate(subject_token=t0.access_token, subject_token_type=TokenType.JWT,
                                   actor_token=idp("gateway"), actor_token_type=TokenType.JWT, audience=MCP,
                                   scope="docs.read")
        with pytest.raises(TokenExchangeError) as err:
            await client.delegate(subject_token=t1.access_token, subject_token_type=TokenType.JWT,
                                  actor_token=idp("search-tool"), actor_token_type=TokenType.JWT, audience=DOCS_API,
                                  scope="docs.read docs.write")
    assert err.value.error == "invalid_scope"
