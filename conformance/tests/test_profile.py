"""Target profiles: the shipped examples load, environment references expand, mistakes are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conformance.profile import ACCESS_TOKEN_TYPE, ProfileError, load_profile, parse_profile

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
MINIMAL: dict[str, Any] = {"target": {"token_endpoint": "http://127.0.0.1:1/token"},
                           "allowed": {"audiences": ["https://api.example"]}}


def test_broker_profile_matches_its_broker_config() -> None:
    profile = load_profile(PROFILES / "sts-broker.toml", env={})
    config = yaml.safe_load((PROFILES / "sts-broker.yaml").read_text())
    trusted = config["issuers"][0]
    assert trusted["issuer"] == f"http://{profile.issuer.host}:{profile.issuer.port}"
    assert profile.issuer.audience in trusted["audiences"]
    assert set(profile.issuer.algorithms) == set(trusted["algorithms"])
    assert trusted["require_jti"] is profile.choices.replay_protection
    assert trusted["allow_insecure_http"] is True
    grant = config["grants"][0]
    audiences = [t["audience"] for t in grant["targets"] if "audience" in t]
    resources = [t["resource"] for t in grant["targets"] if "resource" in t]
    assert audiences == list(profile.allowed.audiences)
    assert resources == list(profile.allowed.resources)
    assert set(grant["targets"][0]["scopes"]) == set(profile.allowed.scopes)
    assert not set(profile.forbidden.audiences) & set(audiences)
    assert grant["lifetime"] <= profile.choices.max_lifetime
    assert profile.target.token_endpoint == "http://127.0.0.1:18080/token"
    assert config["issuer"] == "http://127.0.0.1:18080"


def test_keycloak_example_needs_its_secrets() -> None:
    with pytest.raises(ProfileError, match="KEYCLOAK_INITIAL_SECRET"):
        load_profile(PROFILES / "keycloak.example.toml", env={})
    profile = load_profile(PROFILES / "keycloak.example.toml",
                           env={"KEYCLOAK_INITIAL_SECRET": "a", "KEYCLOAK_REQUESTER_SECRET": "b",
                                "KEYCLOAK_URL": "https://kc.example"})
    assert profile.target.token_endpoint == "https://kc.example/realms/demo/protocol/openid-connect/token"
    assert profile.subject_source.kind == "client_credentials"
    assert not profile.mints_subjects
    assert profile.client.secret == "b"


def test_yaml_profile_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    profile = load_profile(path, env={})
    assert profile.choices.requested_token_types == (ACCESS_TOKEN_TYPE,)
    assert profile.primary_target() == [("audience", "https://api.example")]
    assert profile.issuer.algorithms == ("RS256", "ES256")


@pytest.mark.parametrize("change,message", [
    ({"target": {}}, "token_endpoint"),
    ({"allowed": {}}, "at least one target"),
    ({"surprise": 1}, "surprise"),
    ({"issuer": {"algorithms": ["HS256"]}}, "algorithms"),
    ({"client": {"auth": "client_secret_basic"}}, "needs id and secret"),
    ({"subject_source": {"kind": "password", "client_id": "c"}}, "username and password"),
    ({"choices": {"scope_escalation": "ignore"}}, "scope_escalation"),
], ids=["no endpoint", "no target", "unknown key", "hmac algorithm", "basic without secret",
        "password without user", "unknown choice"])
def test_invalid_profiles_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_profile({**MINIMAL, **change}, env={})


def test_environment_expansion() -> None:
    data = {**MINIMAL, "target": {"token_endpoint": "${BASE:-http://fallback}/token"}}
    assert parse_profile(data, env={}).target.token_endpoint == "http://fallback/token"
    assert parse_profile(data, env={"BASE": "https://x"}).target.token_endpoint == "https://x/token"


@pytest.mark.parametrize("name,text", [("p.json", "{}"), ("p.toml", "not = [toml"), ("p.yaml", "- a list")],
                         ids=["suffix", "toml syntax", "not a mapping"])
def test_unreadable_profiles(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ProfileError):
        load_profile(path, env={})
