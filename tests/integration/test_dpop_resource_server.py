"""The resource-server check documented in docs/configuration.md ("Checking a bound token at a
resource server"), run as written against tokens from the real broker: a DPoP-bound token with
a good proof passes; a bearer presentation, another key, another token, another request, a
replayed proof, a missing or another client certificate are refused."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from broker_harness import BrokerServer, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dpop_support import dpop_key, make_proof
from joserfc.errors import JoseError

from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE
from sts.jose import generate_private_key

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
API = "https://api.example.com"
API_URL = "https://api.example.com/v1/items"
CERT_API = "https://cert.example.com"


def documented_check() -> Callable[..., dict[str, Any]]:
    text = DOC.read_text().split("### Checking a bound token at a resource server", 1)[1]
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    check: Callable[..., dict[str, Any]] = namespace["check_bound_request"]
    return check


check_bound_request = documented_check()


@pytest.fixture(scope="module")
def server(issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    config = {
        "issuer": f"http://127.0.0.1:{port}",
        "clients": {"allow_public": True},
        "issuers": [{"name": "local", "issuer": issuer.url, "audiences": [BROKER_AUDIENCE], "keys": {"discovery": True},
                     "allow_insecure_http": True, "claim_mappings": {"identity": '"wl:" + claims.sub'}}],
        "grants": [{"name": "agents", "match": {"identity_pattern": "^wl:agent-[a-z0-9-]+$"}, "sender_constraint": "dpop",
                    "targets": [{"audience": API, "scopes": ["read"]},
                                {"audience": CERT_API, "scopes": ["read"], "sender_constraint": "mtls"}]}],
    }
    workdir = tmp_path_factory.mktemp("rs-broker")
    srv = BrokerServer(config, workdir=workdir, database_url=f"sqlite:///{workdir / 'sts.db'}", port=port,
                       settings={"trusted_proxies": ["127.0.0.1"]}).start()
    try:
        yield srv
    finally:
        srv.stop()


def exchange(server: BrokerServer, subject: str, audience: str, headers: dict[str, str]) -> str:
    with server.client() as c:
        response = c.post("/token", headers=headers, data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": subject,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "audience": audience})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def ath(token: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()


def test_documented_resource_server_check(server: BrokerServer, mint: Any) -> None:
    key = dpop_key("ES256")
    token = exchange(server, mint(), API, {"DPoP": make_proof(server.url + "/token", key=key)})
    with server.client() as c:
        jwks = c.get("/jwks").json()
    common = {"method": "GET", "url": API_URL, "broker_jwks": jwks, "issuer": server.url, "audience": API}
    seen: set[str] = set()

    def call(authorization: str, proof: str | None, **over: Any) -> dict[str, Any]:
        return check_bound_request(authorization=authorization, dpop=proof, seen_jti=seen, **{**common, **over})

    good = make_proof(API_URL, key=key, method="GET", claims={"ath": ath(token)})
    assert call(f"DPoP {token}", good)["sub"] == "wl:agent-1"
    refusals = {
        "replayed": (f"DPoP {token}", good, {}),
        "as_bearer": (f"Bearer {token}", make_proof(API_URL, key=key, method="GET", claims={"ath": ath(token)}), {}),
        "no_proof": (f"DPoP {token}", None, {}),
        "other_key": (f"DPoP {token}", make_proof(API_URL, key=generate_private_key("ES256"), method="GET",
                                                  claims={"ath": ath(token)}), {}),
        "other_token": (f"DPoP {token}", make_proof(API_URL, key=key, method="GET", claims={"ath": ath("x")}), {}),
        "other_url": (f"DPoP {token}", make_proof(API_URL + "/1", key=key, method="GET", claims={"ath": ath(token)}), {}),
        "other_method": (f"DPoP {token}", make_proof(API_URL, key=key, method="POST", claims={"ath": ath(token)}), {}),
        "other_audience": (f"DPoP {token}", make_proof(API_URL, key=key, method="GET", claims={"ath": ath(token)}),
                           {"audience": "https://elsewhere.example.com"}),
    }
    refused = {}
    for name, (authorization, proof, over) in refusals.items():
        with pytest.raises((ValueError, JoseError)) as info:
            call(authorization, proof, **over)
        refused[name] = type(info.value).__name__
    # each refusal comes from the documented check, not from a crash
    assert refused == {name: "ValueError" for name in refusals} | {"other_audience": "InvalidClaimError"}


def _cert() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")])
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1)).sign(key, hashes.SHA256()))


def test_documented_check_of_a_certificate_bound_token(server: BrokerServer, mint: Any) -> None:
    cert = _cert()
    der = cert.public_bytes(serialization.Encoding.DER)
    xfcc = f'Hash={hashlib.sha256(der).hexdigest()};Cert="{quote(cert.public_bytes(serialization.Encoding.PEM).decode(), safe="")}"'
    token = exchange(server, mint(), CERT_API, {"x-forwarded-client-cert": xfcc})
    with server.client() as c:
        jwks = c.get("/jwks").json()
    common = {"authorization": f"Bearer {token}", "dpop": None, "method": "GET", "url": CERT_API + "/x",
              "broker_jwks": jwks, "issuer": server.url, "audience": CERT_API, "seen_jti": set()}
    assert check_bound_request(client_cert_der=der, **common)["aud"] == CERT_API
    with pytest.raises(ValueError):
        check_bound_request(client_cert_der=None, **common)
    with pytest.raises(ValueError):
        check_bound_request(client_cert_der=_cert().public_bytes(serialization.Encoding.DER), **common)
