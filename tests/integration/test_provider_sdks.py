"""The providers' official SDKs with what the broker returns (docs/providers): the token an
upstream target answers with works as the SDK's bearer credential against the provider's API
(the fake accepts only tokens it issued), and a profiled token of ours is accepted by the
SDK's own workload identity exchange. Through real HTTP, as a workload would do it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from anthropic.lib.credentials import AccessToken, WorkloadIdentityCredentials
from google.auth import identity_pool
from google.auth.transport.requests import AuthorizedSession, Request
from google.oauth2.credentials import Credentials
from openai.auth import WorkloadIdentityAuth

from broker_harness import BrokerServer
from provider_fakes import FakeProvider
from provider_fakes.google import PROVIDER as GOOGLE_PROVIDER
from test_upstream_providers import ORG, case, fakes, fresh, mint, server  # noqa: F401 - fixtures

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    # What is under test is the SDKs' view of our answers; storage is covered on both
    # databases by test_upstream_providers.py.
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'sts.db'}"


def broker_token(server: BrokerServer, subject: str, audience: str) -> dict[str, Any]:
    response = server.exchange(subject, audience=audience)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_openai_sdk_uses_the_token_the_broker_returns(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                                      mint: Callable[..., str]) -> None:
    fake = case(fakes, "openai").fake
    # api_key may be a callable: the SDK asks for a token per request, the broker's cache answers.
    client = openai.OpenAI(api_key=lambda: broker_token(server, mint(), "https://api.openai.com")["access_token"],
                           base_url=fake.base_url + "/v1", max_retries=0)
    assert [m.id for m in client.models.list()] == ["test-model"]
    assert [m.id for m in client.models.list()] == ["test-model"]
    assert fake.api_tokens[0] == fake.issued[0] and fake.calls == 1 and fake.api_calls == 2


def test_openai_sdk_pointed_at_openrouter(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                          mint: Callable[..., str]) -> None:
    fake = case(fakes, "openrouter").fake
    token = broker_token(server, mint(), "https://openrouter.ai/api/v1")["access_token"]
    client = openai.OpenAI(api_key=token, base_url=fake.base_url + "/api/v1", max_retries=0)
    assert [m.id for m in client.models.list()] == ["test-model"] and fake.api_tokens == [token]


def test_azure_openai_with_a_token_provider(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                            mint: Callable[..., str]) -> None:
    fake = case(fakes, "entra").fake
    client = openai.AzureOpenAI(
        azure_endpoint=fake.base_url, api_version="2024-10-21", max_retries=0,
        azure_ad_token_provider=lambda: broker_token(server, mint(), "https://cognitiveservices.azure.com")["access_token"])
    assert [m.id for m in client.models.list()] == ["test-model"]
    assert fake.api_tokens == fake.issued[:1]


class BrokerCredentials:
    """An Anthropic ``AccessTokenProvider`` backed by the broker (docs/providers/anthropic.md)."""

    def __init__(self, fetch: Callable[[], dict[str, Any]]) -> None:
        self._fetch = fetch
        self.calls = 0

    def __call__(self, *, force_refresh: bool = False) -> AccessToken:
        self.calls += 1
        body = self._fetch()
        return AccessToken(token=body["access_token"], expires_at=int(time.time()) + int(body["expires_in"]))


def test_anthropic_sdk_with_broker_credentials(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                               mint: Callable[..., str]) -> None:
    fake = case(fakes, "anthropic").fake
    credentials = BrokerCredentials(lambda: broker_token(server, mint(), "https://api.anthropic.com"))
    client = anthropic.Anthropic(credentials=credentials, base_url=fake.base_url, max_retries=0)
    assert [m.id for m in client.models.list()] == ["claude-test"]
    assert [m.id for m in client.models.list()] == ["claude-test"]
    # The SDK caches the token (its own advisory/mandatory windows) and sends the oauth beta flag.
    assert credentials.calls == 1 and fake.api_tokens == fake.issued[:1] * 2


def test_google_credentials_with_the_federated_token(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                                     mint: Callable[..., str]) -> None:
    fake = case(fakes, "gcp-sts").fake
    token = broker_token(server, mint(), "https://aiplatform.googleapis.com")["access_token"]
    session = AuthorizedSession(Credentials(token))
    response = session.get(fake.base_url + "/v1/projects/p/locations/us-central1/publishers/google/models")
    assert response.status_code == 200 and fake.api_tokens == [token]


# --- profiles: the SDK exchanges our token itself ---------------------------------------------------


def test_openai_sdk_workload_identity_exchanges_a_profiled_token(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                                                 mint: Callable[..., str]) -> None:
    fake = case(fakes, "openai").fake
    ours = broker_token(server, mint("profiled"), "https://broker.test/openai")["access_token"]
    auth = WorkloadIdentityAuth(token_exchange_url=fake.url, workload_identity={
        "identity_provider_id": "wip_123", "service_account_id": "sa_1",
        "provider": {"token_type": "jwt", "get_token": lambda: ours}})
    assert auth.get_token() == fake.issued[-1] and fake.last_claims["sub"] == "wl:profiled"


def test_anthropic_sdk_workload_identity_exchanges_a_profiled_token(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                                                    mint: Callable[..., str]) -> None:
    fake = case(fakes, "anthropic").fake
    ours = broker_token(server, mint("profiled"), "https://api.anthropic.com")["access_token"]
    federation = WorkloadIdentityCredentials(identity_token_provider=lambda: ours, federation_rule_id="fdrl_01",
                                             organization_id=ORG, service_account_id="svac_1")
    federation.bind_base_url(fake.base_url)
    try:
        token = federation()
    finally:
        federation.close()
    assert token.token == fake.issued[-1] and fake.last_claims["sub"] == "wl:profiled"


def test_google_auth_external_account_exchanges_a_profiled_token(server: BrokerServer, fakes: dict[str, FakeProvider], fresh: None,
                                                                 mint: Callable[..., str], tmp_path: Path) -> None:
    fake = case(fakes, "gcp-sts").fake
    ours = broker_token(server, mint("profiled"), GOOGLE_PROVIDER)["access_token"]
    (tmp_path / "token").write_text(ours)
    info = {"type": "external_account", "audience": GOOGLE_PROVIDER, "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": fake.url, "credential_source": {"file": str(tmp_path / "token")}}
    credentials = identity_pool.Credentials.from_info(json.loads(json.dumps(info)),
                                                      scopes=["https://www.googleapis.com/auth/cloud-platform"])
    credentials.refresh(Request())
    assert credentials.token == fake.issued[-1] and fake.last_claims["sub"] == "wl:profiled"
