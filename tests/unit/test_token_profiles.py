"""sts.tokens.profiles (pure shaping) and the configuration checks of profiles and upstreams."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from sts.config.models import BrokerConfig
from sts.config.upstream import UpstreamConfig
from sts.tokens.profiles import (
    ENTRA_DEFAULT_AUDIENCE,
    PROFILES,
    assertion_audience,
    google_audience,
    shape_claims,
    shaped,
    token_typ,
)

RFC9068 = {
    "iss": "https://sts.example.com", "sub": "wl:agent-1", "aud": "https://api.openai.com", "exp": 2000, "iat": 1000,
    "nbf": 1000, "jti": "j1", "client_id": "wl:agent-1", "scope": "read",
    "workload": {"issuer": "https://idp", "subject": "agent-1", "attributes": {}},
}
GOOGLE = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/sts"


@pytest.mark.parametrize("name", ["openai", "anthropic", "openrouter", "gcp-sts", "entra"])
def test_provider_profiles_keep_registered_claims_and_drop_access_token_claims(name: str) -> None:
    shaped_claims = shape_claims(name, RFC9068, workload_claim="workload", audience="aud-x")
    assert set(shaped_claims) == {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "workload"}
    assert shaped_claims["aud"] == "aud-x" and shaped_claims["sub"] == "wl:agent-1"
    assert token_typ(name, "at+jwt") == "JWT"


def test_generic_profile_is_the_rfc9068_token_unchanged() -> None:
    claims = dict(RFC9068)
    assert shaped(None, claims, "workload", None) == (claims, "at+jwt")
    assert shaped("generic", claims, "workload", None) == (claims, "at+jwt")
    assert token_typ("generic", "at+jwt") == "at+jwt"


@pytest.mark.parametrize(
    ("name", "target", "configured", "expected"),
    [
        pytest.param("openai", "https://api.openai.com", None, "https://api.openai.com", id="openai-target"),
        pytest.param("openai", "https://api.openai.com", "my-aud", "my-aud", id="configured-wins"),
        pytest.param("entra", "https://graph.microsoft.com", None, ENTRA_DEFAULT_AUDIENCE, id="entra-default"),
        pytest.param("gcp-sts", GOOGLE, None, "https:" + GOOGLE, id="google-https-prefix"),
        pytest.param("gcp-sts", "https://iam.googleapis.com/x", None, "https://iam.googleapis.com/x", id="google-already-https"),
    ],
)
def test_assertion_audience(name: str, target: str, configured: str | None, expected: str) -> None:
    assert assertion_audience(name, target, configured) == expected


def test_shaped_entra_token_has_the_documented_audience() -> None:
    claims, typ = shaped("entra", dict(RFC9068), "workload", None)
    assert claims["aud"] == ENTRA_DEFAULT_AUDIENCE and typ == "JWT" and "scope" not in claims


def test_google_audience() -> None:
    assert google_audience(GOOGLE) == "https:" + GOOGLE


def _config(**target: Any) -> dict[str, Any]:
    return {
        "issuer": "https://sts.example.com",
        "tokens": {"default_lifetime": 900, "max_lifetime": 3600 * 12, "algorithm": "ES256"},
        "issuers": [{"name": "idp", "issuer": "https://idp.example.com", "audiences": ["sts"]}],
        "grants": [{"name": "g", "match": {"identity": "x"}, "targets": [{"audience": "https://api.example.com", **target}]}],
    }


def test_profile_needing_rs256_is_refused_with_es256() -> None:
    with pytest.raises(ValidationError, match="profile entra needs algorithm RS256"):
        BrokerConfig.model_validate(_config(profile="entra"))
    BrokerConfig.model_validate(_config(profile="entra", algorithm="RS256"))


def test_grant_lifetime_beyond_profile_limit_is_refused_not_capped() -> None:
    cfg = _config(profile="openai")
    cfg["grants"][0]["lifetime"] = 7200
    with pytest.raises(ValidationError, match="exceeds profile openai's limit of 3600 s"):
        BrokerConfig.model_validate(cfg)
    cfg["grants"][0]["lifetime"] = 3600
    BrokerConfig.model_validate(cfg)
    cfg = _config(profile="gcp-sts", algorithm="RS256")
    cfg["grants"][0]["lifetime"] = PROFILES["gcp-sts"].max_lifetime
    BrokerConfig.model_validate(cfg)


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValidationError):
        BrokerConfig.model_validate(_config(profile="bedrock"))


OPENAI_UPSTREAM = {"name": "oa", "provider": "openai", "identity_provider_id": "idp_1", "service_account_id": "sa_1",
                   "assertion_audience": "https://broker.example.com/openai"}


def test_target_naming_unknown_upstream_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown upstream 'nope'"):
        BrokerConfig.model_validate(_config(upstream="nope"))
    cfg = _config(upstream="oa")
    cfg["upstreams"] = [OPENAI_UPSTREAM]
    parsed = BrokerConfig.model_validate(cfg)
    assert parsed.upstreams[0].endpoint == "https://auth.openai.com/oauth/token"


def test_upstream_profile_mismatch_is_refused() -> None:
    cfg = _config(upstream="oa", profile="anthropic")
    cfg["upstreams"] = [OPENAI_UPSTREAM]
    with pytest.raises(ValidationError, match="omit profile or set it to openai"):
        BrokerConfig.model_validate(cfg)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"service_account_id": None}, "needs service_account_id", id="missing-parameter"),
        pytest.param({"federation_policy_id": "p"}, "takes no federation_policy_id", id="other-providers-parameter"),
        pytest.param({"token_endpoint": "http://auth.example.com/token"}, "must use https", id="http-not-loopback"),
        pytest.param({"token_endpoint": "http://127.0.0.1:9/token"}, "allow_insecure_http", id="http-loopback-not-allowed"),
        pytest.param({"assertion_lifetime": 30}, "greater than or equal to 60", id="assertion-too-short"),
        pytest.param({"service_account_id": "has space"}, "identifier", id="bad-identifier"),
    ],
)
def test_upstream_validation(changes: dict[str, Any], message: str) -> None:
    raw = {**OPENAI_UPSTREAM, **changes}
    with pytest.raises(ValidationError, match=message):
        UpstreamConfig.model_validate({k: v for k, v in raw.items() if v is not None})


@pytest.mark.parametrize(
    ("raw", "endpoint", "audience"),
    [
        pytest.param({"provider": "entra", "tenant_id": "contoso.onmicrosoft.com", "client_id": "11111111-2222-3333-4444-555555555555",
                      "scope": "https://cognitiveservices.azure.com/.default"},
                     "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token", ENTRA_DEFAULT_AUDIENCE, id="entra"),
        pytest.param({"provider": "gcp-sts", "audience": GOOGLE}, "https://sts.googleapis.com/v1/token", "https:" + GOOGLE, id="gcp"),
        pytest.param({"provider": "anthropic", "federation_rule_id": "fdrl_1", "organization_id": "00000000-0000-0000-0000-000000000000",
                      "service_account_id": "svac_1", "assertion_audience": "https://api.anthropic.com"},
                     "https://api.anthropic.com/v1/oauth/token", "https://api.anthropic.com", id="anthropic"),
        pytest.param({"provider": "openrouter", "federation_policy_id": "4b2f7d1e", "assertion_audience": "https://openrouter.ai"},
                     "https://openrouter.ai/api/v1/oauth/token", "https://openrouter.ai", id="openrouter"),
    ],
)
def test_upstream_defaults(raw: dict[str, Any], endpoint: str, audience: str) -> None:
    u = UpstreamConfig.model_validate({"name": "u", **raw})
    assert (u.endpoint, u.audience_claim, u.subject) == (endpoint, audience, "upstream:u")


def test_upstream_identity_differs_per_provider_identity() -> None:
    a = UpstreamConfig.model_validate(OPENAI_UPSTREAM)
    b = UpstreamConfig.model_validate({**OPENAI_UPSTREAM, "service_account_id": "sa_2"})
    assert a.identity != b.identity


def test_insecure_upstream_needs_dev_mode() -> None:
    cfg = copy.deepcopy(_config(upstream="oa"))
    cfg["upstreams"] = [{**OPENAI_UPSTREAM, "token_endpoint": "http://127.0.0.1:9/token", "allow_insecure_http": True}]
    assert any("allow_insecure_http" in r for r in BrokerConfig.model_validate(cfg).requires_dev_mode())


def test_config_check_reports_every_profile_and_upstream_problem_with_its_line(tmp_path: Any) -> None:
    from sts.config import check_config

    text = """\
issuer: https://sts.example.com
issuers:
  - name: idp
    issuer: https://idp.example.com
    audiences: [sts]
upstreams:
  - name: broken
    provider: entra
    tenant_id: t
    client_id: not-a-uuid
    scope: https://x/.default
grants:
  - name: g
    match: { identity: "x" }
    targets:
      - audience: https://login.microsoftonline.com/t
        profile: entra
      - audience: https://nope
        upstream: missing
      - audience: https://broken
        upstream: broken
"""
    path = tmp_path / "sts.yaml"
    path.write_text(text)
    problems = check_config(path)
    assert [(p.path, p.line) for p in problems] == [("upstreams[0]", 7), ("grants[0].targets[0].profile", 17),
                                                    ("grants[0].targets[1].upstream", 19)]
    messages = {p.path: p.message for p in problems}
    assert "needs algorithm RS256" in messages["grants[0].targets[0].profile"]
    assert messages["grants[0].targets[1].upstream"] == "unknown upstream 'missing'"
    # An upstream that is invalid on its own is still known by name: no second error at its target.
    assert "grants[0].targets[2].upstream" not in messages


@pytest.mark.parametrize(
    ("grant", "target", "message"),
    [
        pytest.param({"sender_constraint": "dpop"}, {}, "cannot be sender-constrained", id="grant-dpop"),
        pytest.param({}, {"sender_constraint": "mtls"}, "cannot be sender-constrained", id="target-mtls"),
        pytest.param({"status_list": True}, {}, "no status claim", id="grant-status-list"),
    ],
)
def test_upstream_targets_refuse_what_a_provider_token_cannot_carry(grant: dict[str, Any], target: dict[str, Any], message: str) -> None:
    cfg = _config(upstream="oa", **target)
    cfg["upstreams"] = [OPENAI_UPSTREAM]
    cfg["grants"][0].update(grant)
    with pytest.raises(ValidationError, match=message):
        BrokerConfig.model_validate(cfg)
    cfg["grants"][0]["targets"][0].update({"sender_constraint": "none", "status_list": False})
    BrokerConfig.model_validate(cfg)
