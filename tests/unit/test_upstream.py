"""sts.upstream: the wire formats (pure), the cache (windows, single flight, LRU), the circuit
breaker, and the HTTP client's bounds (no redirects, size cap, retries) on a mock transport."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from sts.config.upstream import UpstreamConfig
from sts.errors import InvalidTarget, TemporarilyUnavailable
from sts.upstream.cache import TokenCache
from sts.upstream.client import FAILURE_THRESHOLD, OPEN_SECONDS, CircuitBreaker, ProviderClient
from sts.upstream.service import assertion_claims
from sts.upstream.wire import (
    BadProviderResponse,
    build_request,
    error_summary,
    parse_token,
    request_id,
    request_scope,
)

GOOGLE = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/sts"
UPSTREAMS = {
    "openai": {"provider": "openai", "identity_provider_id": "wip_1", "service_account_id": "sa_1", "assertion_audience": "aud"},
    "anthropic": {"provider": "anthropic", "federation_rule_id": "fdrl_1", "organization_id": "00000000-0000-0000-0000-000000000000",
                  "service_account_id": "svac_1", "assertion_audience": "aud"},
    "openrouter": {"provider": "openrouter", "federation_policy_id": "pol", "assertion_audience": "aud", "scope": "inference"},
    "gcp-sts": {"provider": "gcp-sts", "audience": GOOGLE},
    "entra": {"provider": "entra", "tenant_id": "t1", "client_id": "11111111-2222-3333-4444-555555555555",
              "scope": "https://graph.microsoft.com/.default"},
}


def upstream(provider: str, **extra: Any) -> UpstreamConfig:
    return UpstreamConfig.model_validate({"name": "u", **UPSTREAMS[provider], **extra})


@pytest.mark.parametrize(
    ("provider", "encoding", "fields"),
    [
        pytest.param("openai", "json", {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                                        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "subject_token": "A",
                                        "identity_provider_id": "wip_1", "service_account_id": "sa_1"}, id="openai"),
        pytest.param("anthropic", "json", {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "A",
                                           "federation_rule_id": "fdrl_1", "organization_id": "00000000-0000-0000-0000-000000000000",
                                           "service_account_id": "svac_1"}, id="anthropic"),
        pytest.param("openrouter", "form", {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": "A",
                                            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "federation_policy_id": "pol",
                                            "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
                                            "scope": "inference"}, id="openrouter"),
        pytest.param("gcp-sts", "form", {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "audience": GOOGLE,
                                         "scope": "https://www.googleapis.com/auth/cloud-platform",
                                         "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
                                         "subject_token": "A", "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}, id="gcp"),
        pytest.param("entra", "form", {"client_id": "11111111-2222-3333-4444-555555555555", "scope": "https://graph.microsoft.com/.default",
                                       "grant_type": "client_credentials",
                                       "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                       "client_assertion": "A"}, id="entra"),
    ],
)
def test_request_shape_per_provider(provider: str, encoding: str, fields: dict[str, str]) -> None:
    u = upstream(provider)
    request = build_request(u, "A", request_scope(u, ()))
    assert request.url == u.endpoint and request.encoding == encoding and dict(request.fields) == fields
    body, content_type = request.content()
    decoded = json.loads(body) if encoding == "json" else dict(parse_qsl(body.decode()))
    assert decoded == fields
    assert content_type == ("application/json" if encoding == "json" else "application/x-www-form-urlencoded")


def test_anthropic_workspace_and_granted_scopes() -> None:
    assert build_request(upstream("anthropic", workspace_id="default"), "A", None).fields["workspace_id"] == "default"
    assert request_scope(upstream("gcp-sts"), ("s1", "s2")) == "s1 s2"
    assert request_scope(upstream("openai"), ("s1",)) is None  # OpenAI: "A scope value ... doesn't grant access"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"access_token": "t", "token_type": "Bearer", "expires_in": 3599}, (3599, None), id="rfc6749"),
        pytest.param({"access_token": "t", "token_type": "bearer", "expires_in": "3599", "ext_expires_in": 3599}, (3599, None), id="entra-string"),
        pytest.param({"access_token": "t", "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer",
                      "expires_in": 10 ** 9, "scope": "x"}, (86400, "x"), id="capped"),
    ],
)
def test_parse_token(body: dict[str, Any], expected: tuple[int, str | None]) -> None:
    token = parse_token(json.dumps(body).encode())
    assert (token.expires_in, token.scope) == expected


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"<html>", "not_json", id="html"),
        pytest.param(b"[]", "not_object", id="array"),
        pytest.param(b'{"token_type":"Bearer","expires_in":1}', "access_token", id="no-token"),
        pytest.param(b'{"access_token":"a b","expires_in":1}', "access_token", id="space"),
        pytest.param(b'{"access_token":"t","token_type":"DPoP","expires_in":1}', "token_type", id="dpop"),
        pytest.param(b'{"access_token":"t","expires_in":0}', "expires_in", id="zero"),
        pytest.param(b'{"access_token":"t"}', "expires_in", id="no-expiry"),
        pytest.param(b'{"access_token":"t","expires_in":true}', "expires_in", id="bool"),
        pytest.param(b'{"access_token":"t","expires_in":5,"issued_token_type":"urn:ietf:params:oauth:token-type:jwt"}',
                     "issued_token_type", id="jwt-type"),
    ],
)
def test_unusable_token_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(BadProviderResponse) as info:
        parse_token(body)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("status", "body", "summary"),
    [
        pytest.param(400, b'{"error":"invalid_grant","error_description":"secret text"}', "HTTP 400 invalid_grant", id="oauth"),
        pytest.param(400, b'{"error":"invalid_client","error_codes":[70021]}', "HTTP 400 invalid_client AADSTS70021", id="entra"),
        pytest.param(401, b'{"error":"has space"}', "HTTP 401", id="odd-code"),
        pytest.param(502, b"<html>", "HTTP 502", id="html"),
    ],
)
def test_error_summary_never_keeps_text(status: int, body: bytes, summary: str) -> None:
    assert error_summary(status, body) == summary


def test_request_id_headers() -> None:
    assert request_id({"request-id": "req_1"}) == "req_1"
    assert request_id({"x-ms-request-id": "abc-123"}) == "abc-123"
    assert request_id({"x-request-id": "bad value\n"}) is None


def test_assertion_claims_are_capped_by_the_key() -> None:
    u = upstream("entra")
    claims = assertion_claims(u, issuer="https://sts", now=1000, not_after=1100.5, jti="j")
    assert claims == {"iss": "https://sts", "sub": "upstream:u", "aud": "api://AzureADTokenExchange", "iat": 1000, "nbf": 1000,
                      "exp": 1100, "jti": "j"}


# --- cache -----------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cache_windows_hit_refresh_stale_and_mandatory() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(clock=clock)
    n = 0
    fail = False

    async def fetch() -> tuple[str, float]:
        nonlocal n
        if fail:
            raise TemporarilyUnavailable(reason="down")
        n += 1
        return f"t{n}", clock.now + 3600

    assert (await cache.get("k", fetch))[1] == "miss"
    clock.now += 3600 - 121
    entry, outcome = await cache.get("k", fetch)
    assert (entry.value, outcome) == ("t1", "hit")
    clock.now += 2  # expiry - 119: advisory refresh
    entry, outcome = await cache.get("k", fetch)
    assert (entry.value, outcome) == ("t2", "refresh")
    clock.now += 3600 - 100
    fail = True
    entry, outcome = await cache.get("k", fetch)  # advisory refresh fails: the cached token still serves
    assert (entry.value, outcome) == ("t2", "stale")
    clock.now += 80  # expiry - 20: inside the mandatory window, never served
    with pytest.raises(TemporarilyUnavailable):
        await cache.get("k", fetch)


async def test_cache_is_single_flight_per_key() -> None:
    cache: TokenCache[str] = TokenCache(clock=Clock())
    calls = 0
    gate = asyncio.Event()

    async def fetch() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "t", 10 ** 6

    tasks = [asyncio.create_task(cache.get("k", fetch)) for _ in range(10)]
    other = asyncio.create_task(cache.get("other", fetch))
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, other)
    assert calls == 2 and {r[0].value for r in results} == {"t"}


async def test_single_flight_failure_reaches_every_waiter_and_is_not_cached() -> None:
    cache: TokenCache[str] = TokenCache(clock=Clock())
    gate = asyncio.Event()

    async def fetch() -> tuple[str, float]:
        await gate.wait()
        raise TemporarilyUnavailable(reason="down")

    tasks = [asyncio.create_task(cache.get("k", fetch)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, TemporarilyUnavailable) for r in results) and len(cache) == 0


async def test_cache_is_bounded_lru() -> None:
    cache: TokenCache[str] = TokenCache(clock=Clock(), max_entries=2)

    async def fetch() -> tuple[str, float]:
        return "t", 10 ** 6

    await cache.get("a", fetch)
    await cache.get("b", fetch)
    await cache.get("a", fetch)  # a is now the most recently used
    await cache.get("c", fetch)
    assert len(cache) == 2 and cache.peek("b") is None and cache.peek("a") is not None


# --- breaker and client ----------------------------------------------------------------------------


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = Clock()
    b = CircuitBreaker(clock)
    for _ in range(FAILURE_THRESHOLD - 1):
        b.failure()
    assert b.retry_after() is None and b.state == "closed"
    b.failure()
    assert b.state == "open" and b.retry_after() == OPEN_SECONDS
    clock.now += OPEN_SECONDS
    assert b.retry_after() is None  # the trial
    assert b.retry_after() == 1  # only one trial at a time
    b.failure()
    assert b.state == "open"
    clock.now += OPEN_SECONDS
    assert b.retry_after() is None
    b.success()
    assert b.state == "closed" and b.retry_after() is None


def _client(handler: Any) -> ProviderClient:
    async def no_sleep(_: float) -> None:
        return None

    return ProviderClient(clock=Clock(), sleep=no_sleep, transport=httpx.MockTransport(handler))


def _request() -> Any:
    return build_request(upstream("openai"), "A", None)


async def test_redirects_are_never_followed() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(307, headers={"Location": "https://evil.example/token"})

    client = _client(handler)
    with pytest.raises(TemporarilyUnavailable) as info:
        await client.post("u", _request(), timeout=1, retries=0)
    await client.aclose()
    assert seen == ["https://auth.openai.com/oauth/token"] and "HTTP 307" in (info.value.detail or "")


async def test_oversized_response_is_abandoned() -> None:
    client = _client(lambda request: httpx.Response(200, content=b"x" * (65 * 1024)))
    with pytest.raises(TemporarilyUnavailable) as info:
        await client.post("u", _request(), timeout=1, retries=0)
    await client.aclose()
    assert "too large" in (info.value.detail or "")


async def test_transient_failures_are_retried_then_succeed() -> None:
    answers = iter([httpx.Response(502), httpx.Response(429, headers={"Retry-After": "1"}),
                    httpx.Response(200, json={"access_token": "t", "token_type": "Bearer", "expires_in": 60},
                                   headers={"x-request-id": "req_9"})])
    client = _client(lambda request: next(answers))
    fetched = await client.post("u", _request(), timeout=1, retries=2)
    await client.aclose()
    assert (fetched.token.access_token, fetched.attempts, fetched.request_id) == ("t", 3, "req_9")


async def test_refusal_is_not_retried_and_keeps_only_the_code() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        assert json.loads(request.content)["subject_token"] == "A"
        return httpx.Response(401, json={"error": "invalid_grant", "error_description": "your JWT aud was wrong"})

    client = _client(handler)
    with pytest.raises(InvalidTarget) as info:
        await client.post("u", _request(), timeout=1, retries=3)
    await client.aclose()
    assert calls == 1 and info.value.detail == "HTTP 401 invalid_grant" and "aud" not in info.value.description
