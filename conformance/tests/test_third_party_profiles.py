"""The third-party profiles in conformance/profiles load and agree with the servers they describe.

The runs themselves are documented commands (docs/conformance.md, "Third-party targets"): what
the kit finds in other implementations is not a failure of this project's CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conformance.profile import ProfileError, load_profile

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"


def test_oidc_provider_profile_matches_its_server() -> None:
    profile = load_profile(PROFILES / "oidc-provider.toml", env={})
    server = (ROOT / "thirdparty" / "oidc-provider" / "server.js").read_text()
    assert profile.target.token_endpoint == "http://127.0.0.1:18090/token"
    assert f"'http://127.0.0.1:{profile.issuer.port}'" in server
    assert f"'{profile.issuer.audience}'" in server
    assert ",".join(profile.allowed.audiences) in server
    # The declared key-cache bounds are the createRemoteJWKSet options of the server.
    cache = profile.key_cache
    assert f"cooldownDuration: {int((cache.refetch_interval or 0) * 1000)}," in server
    assert f"cacheMaxAge: {int((cache.cache_lifetime or 0) * 1000)}," in server
    timeout = int(re.search(r"timeoutDuration: (\d+)", server).group(1))  # type: ignore[union-attr]
    assert timeout / 1000 < (cache.fail_fast or 0)
    assert f"const LIFETIME = {profile.choices.max_lifetime};" in server


def test_authgent_profile_needs_its_client() -> None:
    with pytest.raises(ProfileError, match="AUTHGENT_CLIENT_ID"):
        load_profile(PROFILES / "authgent-server.toml", env={})
    profile = load_profile(PROFILES / "authgent-server.toml",
                           env={"AUTHGENT_CLIENT_ID": "agnt_x", "AUTHGENT_CLIENT_SECRET": "sec_y"})
    assert profile.issuer.subject_token_type == "urn:ietf:params:oauth:token-type:id_token"
    assert profile.client.id == "agnt_x"
    text = (PROFILES / "authgent-server.toml").read_text()
    assert f"http://127.0.0.1:{profile.issuer.port}" in text
