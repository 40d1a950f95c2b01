"""The kit's issuer as production issuers are served: over https from a throwaway CA, under a path."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from conformance.issuer import LocalIssuer, server_tls_context, write_loopback_tls_files
from conformance.profile import ProfileError, parse_profile
from conformance.runner import make_issuer, target_http_client
from conformance.tls import issuer_tls_context


def _profile(tmp_path: Path, **issuer: object) -> dict[str, object]:
    return {"target": {"token_endpoint": "http://127.0.0.1:9/token"}, "allowed": {"audiences": ["a"]},
            "issuer": {"port": 0, **issuer}}


def test_issuer_with_a_path_serves_discovery_under_it() -> None:
    with LocalIssuer(path="/realms/conformance") as issuer:
        assert issuer.url.endswith("/realms/conformance") and issuer.url.startswith("http://127.0.0.1:")
        doc = httpx.get(issuer.url + "/.well-known/openid-configuration").json()
        assert doc["issuer"] == issuer.url and doc["jwks_uri"] == issuer.url + "/jwks"
        assert len(httpx.get(doc["jwks_uri"]).json()["keys"]) == 2
        # Nothing at the root: a target that drops the path finds no keys.
        assert httpx.get(issuer.origin + "/.well-known/openid-configuration").status_code == 404
        assert issuer.publish("/attacker.json", {"keys": []}) == issuer.url + "/attacker.json"
        assert httpx.get(issuer.url + "/attacker.json").status_code == 200


def test_profile_issuer_over_https_with_a_throwaway_ca(tmp_path: Path) -> None:
    files = {"tls_ca_file": str(tmp_path / "ca.pem"), "tls_cert_file": str(tmp_path / "tls" / "issuer.pem"),
             "tls_key_file": str(tmp_path / "tls" / "issuer.key")}
    profile = parse_profile(_profile(tmp_path, path="/realms/x", **files), env={})
    issuer = make_issuer(profile).start()
    try:
        assert issuer.url.startswith("https://127.0.0.1:") and issuer.url.endswith("/realms/x")
        trusted = httpx.get(issuer.url + "/.well-known/openid-configuration", verify=ssl.create_default_context(cafile=files["tls_ca_file"]))
        assert trusted.json()["issuer"] == issuer.url
        with pytest.raises(httpx.ConnectError):
            httpx.get(issuer.url + "/jwks")  # the system trust store does not know the throwaway CA
    finally:
        issuer.stop()
    # A second run keeps the CA the target was configured to trust.
    ca = Path(files["tls_ca_file"]).read_bytes()
    make_issuer(profile)
    assert Path(files["tls_ca_file"]).read_bytes() == ca
    assert profile.issuer.url == "https://127.0.0.1:0/realms/x"


def test_issuer_tls_needs_a_ca_file_to_create_one(tmp_path: Path) -> None:
    assert issuer_tls_context(None, None, None, "127.0.0.1") is None
    with pytest.raises(FileNotFoundError, match="tls_ca_file"):
        issuer_tls_context(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"), None, "127.0.0.1")


@pytest.mark.parametrize("issuer", [
    {"path": "realms/x"}, {"path": "/realms/x/"}, {"tls_cert_file": "c.pem"}, {"tls_ca_file": "ca.pem"},
], ids=["relative-path", "trailing-slash", "cert-without-key", "ca-without-cert"])
def test_profile_refuses_inconsistent_issuer_settings(tmp_path: Path, issuer: dict[str, str]) -> None:
    with pytest.raises(ProfileError):
        parse_profile(_profile(tmp_path, **issuer), env={})


def test_target_over_https_is_verified_with_the_profiles_ca(tmp_path: Path) -> None:
    ca, cert, key = write_loopback_tls_files(tmp_path, "target")
    with LocalIssuer(tls=server_tls_context(str(cert), str(key)), path="/sts") as https_target:
        url = https_target.url + "/.well-known/openid-configuration"
        trusting = parse_profile({"target": {"token_endpoint": https_target.url + "/token", "ca_file": str(ca)},
                                  "allowed": {"audiences": ["a"]}}, env={})
        with target_http_client(trusting) as http:
            assert http.get(url).json()["issuer"] == https_target.url
        with target_http_client(trusting.model_copy(update={"target": trusting.target.model_copy(
                update={"ca_file": None})})) as http, pytest.raises(httpx.ConnectError):
            http.get(url)
