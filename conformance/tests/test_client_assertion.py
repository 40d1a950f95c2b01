"""``private_key_jwt`` client authentication in the kit (RFC 7523 §3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance import jose
from conformance.cases.base import Context
from conformance.client_assertion import CLIENT_ASSERTION_TYPE, ensure_client_key
from conformance.issuer import LocalIssuer
from conformance.profile import ProfileError, parse_profile
from conformance.runner import prepare


def _profile(tmp_path: Path, **client: object):  # type: ignore[no-untyped-def]
    return parse_profile({"target": {"token_endpoint": "http://127.0.0.1:9/token"}, "allowed": {"audiences": ["a"]},
                          "client": {"auth": "private_key_jwt", "id": "kit-client",
                                     "private_key_file": str(tmp_path / "client.json"), **client}}, env={})


def test_assertions_are_fresh_and_verify_against_the_written_jwks(tmp_path: Path) -> None:
    profile = _profile(tmp_path, jwks_file=str(tmp_path / "client-jwks.json"), assertion_alg="ES256")
    prepare(profile)
    public = json.loads((tmp_path / "client-jwks.json").read_text())
    assert all("d" not in k for k in public["keys"])
    ctx = Context(profile=profile, issuer=LocalIssuer(algorithms=()))
    try:
        first, _ = ctx.client_auth([("grant_type", "x")])
        second, _ = ctx.client_auth([("grant_type", "x")])
        forged, _ = ctx.client_auth([("grant_type", "x")], secret="wrong")
    finally:
        ctx.http.close()
    form = {k: v for k, v in first}
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE and form["client_id"] == "kit-client"
    header, claims = jose.verify_compact(form["client_assertion"], public)
    assert header["alg"] == "ES256"
    assert claims["iss"] == claims["sub"] == "kit-client" and claims["aud"] == "http://127.0.0.1:9/token"
    assert 0 < claims["exp"] - claims["iat"] <= 60
    # RFC 7523 §3: a jti is usable once, so every request carries a new one.
    assert jose.decode_unverified(dict(second)["client_assertion"])[1]["jti"] != claims["jti"]
    with pytest.raises(jose.JoseError):
        jose.verify_compact(dict(forged)["client_assertion"], public)
    # The key survives runs: the target registered its public half once.
    assert ensure_client_key(str(tmp_path / "client.json"), "ES256")[0] == header["kid"]


@pytest.mark.parametrize("client", [{"private_key_file": None}, {"assertion_alg": "HS256"}, {"id": None}])
def test_private_key_jwt_profile_needs_a_key_and_an_asymmetric_alg(tmp_path: Path, client: dict[str, object]) -> None:
    with pytest.raises(ProfileError):
        _profile(tmp_path, **client)
