"""LocalIssuer and SpiffeBundleServer: the contract other parts of the project rely on."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from conformance import jose
from conformance.issuer import LocalIssuer, SpiffeBundleServer, server_tls_context, write_loopback_tls_files


def _get(url: str) -> httpx.Response:
    return httpx.get(url, trust_env=False, timeout=5)


def test_discovery_and_jwks_are_served(issuer: LocalIssuer) -> None:
    before = issuer.hits["/jwks"]
    doc = _get(issuer.url + "/.well-known/openid-configuration").json()
    assert doc["issuer"] == issuer.url
    assert doc["jwks_uri"] == issuer.jwks_uri
    resp = _get(issuer.jwks_uri)
    assert resp.headers["cache-control"] == "max-age=300"
    assert resp.json() == issuer.jwks()
    assert issuer.hits["/jwks"] == before + 1
    assert issuer.url.startswith("http://127.0.0.1:")


def test_jwks_holds_public_keys_only(issuer: LocalIssuer) -> None:
    for key in issuer.jwks()["keys"]:
        assert {"kid", "alg", "kty", "use"} <= key.keys()
        assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys()


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256"])
def test_minted_tokens_verify_with_an_independent_library(issuer: LocalIssuer, alg: str) -> None:
    token = issuer.mint(alg=alg)
    keys = KeySet.import_key_set(issuer.jwks())  # type: ignore[arg-type]
    decoded = jwt.decode(token, keys, algorithms=[alg])
    assert decoded.header["kid"] == issuer.default_kid(alg)
    claims = decoded.claims
    assert claims["iss"] == issuer.url
    assert claims["sub"] == "workload-1"
    assert claims["aud"] == "conformance"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["nbf"] == claims["iat"]
    assert isinstance(claims["jti"], str) and claims["jti"]


def test_mint_overrides_removes_and_extends(issuer: LocalIssuer) -> None:
    token = issuer.mint({"sub": "other", "exp": None, "extra": [1]}, lifetime=60, header={"typ": None, "x": "y"})
    header, claims = jose.verify_compact(token, issuer.jwks())
    assert claims["sub"] == "other" and "exp" not in claims and claims["extra"] == [1]
    assert "typ" not in header and header["x"] == "y"


def test_sign_with_keeps_the_trusted_kid(issuer: LocalIssuer) -> None:
    attacker = jose.generate_key("RS256")
    token = issuer.mint(sign_with=attacker)
    header, _, _, _ = jose.decode_unverified(token)
    assert header["kid"] == issuer.default_kid("RS256")
    with pytest.raises(jose.JoseError):
        jose.verify_compact(token, issuer.jwks())


def test_unsigned_and_hs256_tokens(issuer: LocalIssuer) -> None:
    unsigned = issuer.mint_unsigned({"sub": "x"})
    assert unsigned.endswith(".")
    assert jose.decode_unverified(unsigned)[0]["alg"] == "none"
    secret = issuer.public_pem()
    hs = issuer.mint_hs256(secret)
    header, _, signing_input, signature = jose.decode_unverified(hs)
    assert header["alg"] == "HS256" and header["kid"] == issuer.default_kid("RS256")
    assert jose.raw_verify("HS256", secret, signing_input, signature)


def test_rotate_publishes_and_becomes_default_then_retire_reverts() -> None:
    with LocalIssuer(algorithms=("ES256",)) as iss:
        old = iss.default_kid("ES256")
        new = iss.rotate("ES256")
        kids = {k["kid"] for k in _get(iss.jwks_uri).json()["keys"]}
        assert {old, new} <= kids
        assert jose.decode_unverified(iss.mint(alg="ES256"))[0]["kid"] == new
        iss.retire(new)
        assert new not in {k["kid"] for k in iss.jwks()["keys"]}
        assert iss.default_kid("ES256") == old


def test_write_jwks_and_key_persistence(tmp_path: Path) -> None:
    first = LocalIssuer(algorithms=("RS256", "ES256"))
    first.write_jwks(tmp_path / "public.json")
    assert json.loads((tmp_path / "public.json").read_text()) == first.jwks()
    first.save_keys(tmp_path / "private.json")
    second = LocalIssuer(algorithms=("RS256", "ES256"))
    second.load_keys(tmp_path / "private.json")
    assert second.jwks() == first.jwks()
    jose.verify_compact(second.mint(alg="ES256"), first.jwks())


def test_stop_and_restart_on_the_same_fixed_port() -> None:
    iss = LocalIssuer().start()
    port = int(iss.url.rsplit(":", 1)[1])
    iss.stop()
    again = LocalIssuer(port=port).start()
    try:
        assert again.url == f"http://127.0.0.1:{port}"
        assert _get(again.jwks_uri).status_code == 200
    finally:
        again.stop()


def test_spiffe_bundle_and_jwt_svid(spiffe: SpiffeBundleServer) -> None:
    bundle = _get(spiffe.bundle_url).json()
    assert bundle["spiffe_sequence"] == spiffe.sequence and bundle["spiffe_refresh_hint"] == 300
    uses = sorted(k["use"] for k in bundle["keys"])
    assert "jwt-svid" in uses and "x509-svid" in uses
    x509 = next(k for k in bundle["keys"] if k["use"] == "x509-svid")
    assert x509["x5c"]
    token = spiffe.mint_jwt_svid("spiffe://conformance.test/w", ["a", "b"])
    header, claims = jose.verify_compact(token, bundle, use="jwt-svid")
    assert claims["sub"] == "spiffe://conformance.test/w" and claims["aud"] == ["a", "b"]
    assert claims["exp"] > claims["iat"] and "iss" not in claims
    # The x509-svid key never verifies a JWT-SVID.
    forged = spiffe.mint_jwt_svid("spiffe://conformance.test/w", "a", sign_with=spiffe.x509_key, kid=spiffe.x509_kid)
    with pytest.raises(jose.JoseError):
        jose.verify_compact(forged, bundle, use="jwt-svid")


def test_published_documents_are_counted(issuer: LocalIssuer) -> None:
    url = issuer.publish("/attacker-test/doc.json", {"keys": []})
    assert _get(url).json() == {"keys": []}
    assert issuer.hits["/attacker-test/doc.json"] == 1
    assert _get(issuer.url + "/missing").status_code == 404


def test_bundle_endpoint_over_https(tmp_path: Path) -> None:
    # SPIFFE Federation §5.2 targets fetch bundles over https only: the kit can serve it so.
    ca, cert, key = write_loopback_tls_files(tmp_path, "bundle")
    with SpiffeBundleServer("conformance.test", tls=server_tls_context(str(cert), str(key))) as server:
        assert server.bundle_url.startswith("https://127.0.0.1:")
        trusted = httpx.get(server.bundle_url, verify=ssl.create_default_context(cafile=str(ca)), trust_env=False, timeout=5)
        assert trusted.json() == server.bundle()
        with pytest.raises(httpx.ConnectError):  # a client without the kit's CA refuses it
            httpx.get(server.bundle_url, verify=ssl.create_default_context(), trust_env=False, timeout=5)
