"""Targets that name a model provider, through real HTTP: the broker mints its assertion, the
provider's fake (tests/provider_fakes, a real local server checking the documented request
shape) answers, and the workload gets the provider's token. For every provider: a good
exchange, a cache hit, a refresh before expiry, the provider down (503 + Retry-After, no
provider body), the provider refusing (invalid_target); and two workloads that must not share
a cached token. Also the per-target token profiles, verified by the fakes as a provider would.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from broker_harness import BrokerServer, free_port
from conformance.issuer import LocalIssuer
from provider_fakes import FakeAnthropic, FakeEntra, FakeGoogleSts, FakeOpenAI, FakeOpenRouter, FakeProvider
from provider_fakes.google import PROVIDER as GOOGLE_PROVIDER

AUD = "sts-test"
ORG = "6f1c1c3e-0c5e-4a53-9b0e-2b6f3c0a9d11"
ENTRA_APP = "11111111-2222-3333-4444-555555555555"
POLICY = "4b2f7d1e-8c3a-4e5f-9a6b-1c2d3e4f5a6b"
CLOUD = "https://www.googleapis.com/auth/cloud-platform"


@dataclass
class Case:
    """One upstream under test: its name, the target a workload asks for, its fake."""

    upstream: str
    target: str
    fake: FakeProvider
    scope: str | None = None


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeProvider]]:
    made = {"openai": FakeOpenAI(), "anthropic": FakeAnthropic(), "openrouter": FakeOpenRouter(), "gcp-sts": FakeGoogleSts(),
            "entra": FakeEntra()}
    for f in made.values():
        f.__enter__()
    try:
        yield made
    finally:
        for f in made.values():
            f.__exit__()


def _upstreams(f: dict[str, FakeProvider]) -> list[dict[str, Any]]:
    common = {"allow_insecure_http": True, "timeout": 1.0, "retries": 1}
    return [
        {"name": "openai-a", "provider": "openai", "token_endpoint": f["openai"].url, "identity_provider_id": "wip_123",
         "service_account_id": "sa_1", "assertion_audience": "https://broker.test/openai", **common},
        {"name": "openai-b", "provider": "openai", "token_endpoint": f["openai"].url, "identity_provider_id": "wip_123",
         "service_account_id": "sa_2", "assertion_audience": "https://broker.test/openai", **common},
        {"name": "anthropic", "provider": "anthropic", "token_endpoint": f["anthropic"].url, "federation_rule_id": "fdrl_01",
         "organization_id": ORG, "service_account_id": "svac_1", "workspace_id": "default",
         "assertion_audience": "https://api.anthropic.com", **common},
        {"name": "openrouter", "provider": "openrouter", "token_endpoint": f["openrouter"].url, "federation_policy_id": POLICY,
         "assertion_audience": "https://openrouter.ai", **common},
        {"name": "google", "provider": "gcp-sts", "token_endpoint": f["gcp-sts"].url, "audience": GOOGLE_PROVIDER, **common},
        {"name": "entra", "provider": "entra", "token_endpoint": f["entra"].url, "tenant_id": "contoso.onmicrosoft.com",
         "client_id": ENTRA_APP, "scope": "https://cognitiveservices.azure.com/.default", **common},
    ]


CASES = {
    "openai": ("openai-a", "https://api.openai.com", None),
    "anthropic": ("anthropic", "https://api.anthropic.com", None),
    "openrouter": ("openrouter", "https://openrouter.ai/api/v1", "inference"),
    "gcp-sts": ("google", "https://aiplatform.googleapis.com", CLOUD),
    "entra": ("entra", "https://cognitiveservices.azure.com", None),
}


def _config(port: int, issuer: LocalIssuer, f: dict[str, FakeProvider]) -> dict[str, Any]:
    targets = [{"audience": target, "upstream": upstream, **({"scopes": [scope], "default_scopes": [scope]} if scope else {})}
               for upstream, target, scope in CASES.values()]
    return {
        "issuer": f"http://127.0.0.1:{port}",
        "tokens": {"default_lifetime": 900, "max_lifetime": 3600, "algorithm": "ES256"},
        "issuers": [{"name": "local", "issuer": issuer.url, "audiences": [AUD], "allow_insecure_http": True,
                     "claim_mappings": {"identity": '"wl:" + claims.sub'}}],
        "upstreams": _upstreams(f),
        "grants": [
            {"name": "agents", "issuers": ["local"], "match": {"identity_pattern": "^wl:agent-[0-9]+$"}, "targets": targets},
            {"name": "billing", "issuers": ["local"], "match": {"identity": "wl:billing"},
             "targets": [{"audience": "https://api.openai.com/billing", "upstream": "openai-b"}]},
            {"name": "profiles", "issuers": ["local"], "match": {"identity": "wl:profiled"}, "lifetime": 600, "targets": [
                {"audience": "https://broker.test/openai", "profile": "openai"},
                {"audience": "https://api.anthropic.com", "profile": "anthropic"},
                {"audience": "https://openrouter.ai", "profile": "openrouter"},
                {"audience": GOOGLE_PROVIDER, "profile": "gcp-sts", "algorithm": "RS256"},
                {"audience": "https://login.microsoftonline.com/contoso", "profile": "entra", "algorithm": "RS256"},
            ]},
        ],
    }


@pytest.fixture(scope="module")
def server(issuer: LocalIssuer, database_url: str, fakes: dict[str, FakeProvider],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    broker = BrokerServer(_config(port, issuer, fakes), workdir=tmp_path_factory.mktemp("upstream"), database_url=database_url,
                          port=port, settings={"audit_coalesce_window": 0}).start()
    for f in fakes.values():
        f.issuer, f.jwks_url = broker.url, broker.url + "/jwks"
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture()
def fresh(server: BrokerServer, fakes: dict[str, FakeProvider]) -> Iterator[None]:
    """Every test starts with an empty provider-token cache, closed breakers, fakes ok."""
    server.broker.upstreams.cache.clear()
    server.broker.upstreams.client._breakers.clear()
    for f in fakes.values():
        f.reset()
    yield


@pytest.fixture()
def mint(issuer: LocalIssuer) -> Callable[..., str]:
    def _mint(sub: str = "agent-1", **claims: Any) -> str:
        return issuer.mint({"sub": sub, "aud": AUD, **claims}, alg="ES256", lifetime=3600)

    return _mint


def case(fakes: dict[str, FakeProvider], provider: str) -> Case:
    upstream, target, scope = CASES[provider]
    fake = fakes[provider]
    # What the provider's trust configuration expects of our assertion.
    fake.audience = {"openai": "https://broker.test/openai", "anthropic": "https://api.anthropic.com",
                     "openrouter": "https://openrouter.ai", "gcp-sts": "https:" + GOOGLE_PROVIDER,
                     "entra": "api://AzureADTokenExchange"}[provider]
    return Case(upstream, target, fake, scope)


def audit(server: BrokerServer, response: httpx.Response) -> dict[str, Any]:
    with server.broker.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT outcome, error, reason, detail, lifetime, context FROM audit_events WHERE request_id = :r"),
                           {"r": response.headers["x-request-id"]}).one()
    ctx = row[5]
    return {"outcome": row[0], "error": row[1], "reason": row[2], "detail": row[3], "lifetime": row[4],
            "context": json.loads(ctx) if isinstance(ctx, str) else ctx}


PROVIDERS = list(CASES)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_good_exchange_returns_the_providers_token(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                                   mint: Callable[..., str], provider: str) -> None:
    c = case(fakes, provider)
    response = server.exchange(mint(), audience=c.target)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["access_token"] == c.fake.issued[-1] and c.fake.calls == 1
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= min(c.fake.expires_in, 900)
    # Our assertion, as the fake saw it: our issuer, the upstream as subject, a kid.
    claims, header = c.fake.last_claims, c.fake.last_header
    assert claims["iss"] == server.url and claims["sub"] == f"upstream:{c.upstream}" and header["kid"] and header["typ"] == "JWT"
    assert claims["exp"] - claims["iat"] == 600
    record = audit(server, response)
    upstream = record["context"]["upstream"]
    assert record["outcome"] == "issued" and upstream["name"] == c.upstream and upstream["cache"] == "miss"
    assert upstream["token_sha256"] == hashlib.sha256(body["access_token"].encode()).hexdigest()
    assert body["access_token"] not in json.dumps(record)
    if c.fake.request_id_header:
        assert upstream["request_id"].startswith("req_")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_second_exchange_is_a_cache_hit(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                        mint: Callable[..., str], provider: str) -> None:
    c = case(fakes, provider)
    first = server.exchange(mint("agent-1"), audience=c.target)
    second = server.exchange(mint("agent-2"), audience=c.target)
    assert first.status_code == second.status_code == 200
    assert second.json()["access_token"] == first.json()["access_token"] and c.fake.calls == 1
    assert audit(server, second)["context"]["upstream"]["cache"] == "hit"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_token_is_refreshed_before_it_expires(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                              mint: Callable[..., str], provider: str) -> None:
    c = case(fakes, provider)
    c.fake.expires_in = 2  # advisory window: the last second (half of a short token's life)
    try:
        first = server.exchange(mint(), audience=c.target)
        assert first.status_code == 200 and first.json()["expires_in"] <= 2
        time.sleep(1.2)
        second = server.exchange(mint(), audience=c.target)
    finally:
        c.fake.expires_in = 3600
    assert second.status_code == 200 and c.fake.calls == 2
    assert second.json()["access_token"] != first.json()["access_token"]
    assert audit(server, second)["context"]["upstream"]["cache"] == "refresh"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_provider_down_is_503_with_retry_after_and_no_provider_body(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                                                    mint: Callable[..., str], provider: str) -> None:
    c = case(fakes, provider)
    c.fake.mode = "down"
    response = server.exchange(mint(), audience=c.target)
    assert response.status_code == 503 and response.json()["error"] == "temporarily_unavailable"
    assert response.headers["retry-after"] == "1"  # the provider's own Retry-After
    assert "secret-internal-host" not in response.text and c.fake.calls == 2  # one retry
    record = audit(server, response)
    assert record["reason"] == "upstream_unavailable" and "HTTP 503" in record["detail"]
    assert "secret-internal-host" not in (record["detail"] or "")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_provider_refusal_is_invalid_target(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                            mint: Callable[..., str], provider: str) -> None:
    c = case(fakes, provider)
    c.fake.mode = "refuse"
    response = server.exchange(mint(), audience=c.target)
    assert response.status_code == 400 and response.json()["error"] == "invalid_target", response.text
    assert c.fake.calls == 1  # a refusal is not retried
    assert "invalid_grant" not in response.text and "invalid_client" not in response.text
    record = audit(server, response)
    assert record["reason"] == "upstream_refused" and record["detail"].startswith("HTTP 4")


def test_two_workloads_must_not_share_a_cached_token(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                                     mint: Callable[..., str]) -> None:
    fake = case(fakes, "openai").fake
    agent = server.exchange(mint("agent-1"), audience="https://api.openai.com")
    billing = server.exchange(mint("billing"), audience="https://api.openai.com/billing")
    assert agent.status_code == billing.status_code == 200
    assert agent.json()["access_token"] != billing.json()["access_token"]
    assert agent.json()["access_token"].startswith("oai-wif-sa_1-") and billing.json()["access_token"].startswith("oai-wif-sa_2-")
    assert fake.calls == 2
    # Neither may reach the other's upstream: refused by policy, no provider call, no token.
    assert server.exchange(mint("billing"), audience="https://api.openai.com").json()["error"] == "invalid_target"
    assert server.exchange(mint("agent-1"), audience="https://api.openai.com/billing").json()["error"] == "invalid_target"
    assert fake.calls == 2


def test_breaker_opens_after_repeated_failures_and_answers_without_calling(server: BrokerServer, fakes: dict[str, FakeProvider],
                                                                           fresh: None, mint: Callable[..., str]) -> None:
    c = case(fakes, "anthropic")
    c.fake.mode = "drop"
    for _ in range(5):
        assert server.exchange(mint(), audience=c.target).status_code == 503
    calls = c.fake.calls
    c.fake.mode = "ok"
    response = server.exchange(mint(), audience=c.target)
    assert response.status_code == 503 and int(response.headers["retry-after"]) > 1
    assert c.fake.calls == calls and audit(server, response)["reason"] == "upstream_circuit_open"


def test_timeout_is_a_transient_failure(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                        mint: Callable[..., str]) -> None:
    c = case(fakes, "openrouter")
    c.fake.mode, c.fake.slow_seconds = "slow", 1.5
    started = time.monotonic()
    response = server.exchange(mint(), audience=c.target)
    assert response.status_code == 503 and audit(server, response)["detail"].startswith("openrouter: timeout")
    assert time.monotonic() - started < 4


def test_jwt_requested_token_type_is_refused_for_an_upstream(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                                             mint: Callable[..., str]) -> None:
    c = case(fakes, "openai")
    response = server.exchange(mint(), audience=c.target, requested_token_type="urn:ietf:params:oauth:token-type:jwt")
    assert response.status_code == 400 and response.json()["error"] == "invalid_request" and c.fake.calls == 0


PROFILE_TARGETS = {
    "openai": "https://broker.test/openai",
    "anthropic": "https://api.anthropic.com",
    "openrouter": "https://openrouter.ai",
    "gcp-sts": GOOGLE_PROVIDER,
    "entra": "https://login.microsoftonline.com/contoso",
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_profiled_token_is_accepted_by_the_provider_as_its_subject_token(server: BrokerServer, fakes: dict[str, FakeProvider],
                                                                          fresh: None, mint: Callable[..., str], provider: str) -> None:
    """The workload itself takes our profiled token to the provider: the fake verifies it
    exactly as it verifies the broker's own assertions."""
    c = case(fakes, provider)
    response = server.exchange(mint("profiled"), audience=PROFILE_TARGETS[provider])
    assert response.status_code == 200, response.text
    ours = response.json()
    assert ours["expires_in"] == 600
    request = {
        "openai": ("json", {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": ours["access_token"],
                            "identity_provider_id": "wip_123", "service_account_id": "sa_1"}),
        "anthropic": ("json", {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": ours["access_token"],
                               "federation_rule_id": "fdrl_01", "organization_id": ORG, "service_account_id": "svac_1"}),
        "openrouter": ("form", {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": ours["access_token"],
                                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "federation_policy_id": POLICY}),
        "gcp-sts": ("form", {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "audience": GOOGLE_PROVIDER,
                             "scope": CLOUD, "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
                             "subject_token": ours["access_token"], "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}),
        "entra": ("form", {"client_id": ENTRA_APP, "scope": "https://cognitiveservices.azure.com/.default",
                           "grant_type": "client_credentials",
                           "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                           "client_assertion": ours["access_token"]}),
    }[provider]
    encoding, fields = request
    headers = {"anthropic-beta": "oauth-2025-04-20,oidc-federation-2026-04-01"} if provider == "anthropic" else {}
    answer = httpx.post(c.fake.url, **({"json": fields} if encoding == "json" else {"data": fields}), headers=headers, timeout=5)
    assert answer.status_code == 200, (c.fake.refusals, answer.text)
    claims = c.fake.last_claims
    assert claims["sub"] == "wl:profiled" and "scope" not in claims and "client_id" not in claims
    assert c.fake.last_header["typ"] == "JWT" and claims["exp"] - claims["iat"] == 600


def test_expires_in_is_never_longer_than_policy_allows(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                                       issuer: LocalIssuer) -> None:
    c = case(fakes, "openai")  # the fake's tokens live 3600 s
    first = server.exchange(issuer.mint({"sub": "agent-1", "aud": AUD}, alg="ES256", lifetime=3600), audience=c.target)
    assert first.json()["expires_in"] == 900  # the grant's lifetime (tokens.default_lifetime)
    # The same cached token, for a workload whose own token ends in 100 s (cap_to_subject_lifetime).
    short = server.exchange(issuer.mint({"sub": "agent-2", "aud": AUD}, alg="ES256", lifetime=100), audience=c.target)
    assert short.json()["access_token"] == first.json()["access_token"] and 95 <= short.json()["expires_in"] <= 100
    assert c.fake.calls == 1 and audit(server, short)["lifetime"] == short.json()["expires_in"]


async def test_explain_names_the_upstream_without_calling_it(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                                            mint: Callable[..., str]) -> None:
    from sts.config import load_config
    from sts.explain.run import ExplainInput, explain_exchange

    c = case(fakes, "openai")
    report = await explain_exchange(load_config(server.config_path), ExplainInput(mint(), audiences=(c.target,)), dev_mode=True)
    assert report["outcome"] == "would_issue", report
    assert report["audit"]["context"]["upstream"] == {"name": c.upstream, "provider": "openai", "endpoint": c.fake.url,
                                                      "dry_run": True}
    assert c.fake.calls == 0
