"""RFC 8705 §2 mutual-TLS client authentication over real HTTPS and through a trusted proxy.

The broker terminates TLS with ``--tls-client-ca`` holding the client CA and the self-signed
client certificate (so that OpenSSL lets the handshake finish); the application then applies the
client's own registration: its CA and subject DN or SAN (``tls_client_auth``) or its certificate
thumbprint (``self_signed_tls_client_auth``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from broker_harness import BrokerServer, TLSBroker, free_port
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from integration_config import BROKER_AUDIENCE, CLIENT_SECRET
from spiffe_support import WebCA, certificate, ec_key, pem, write_identity

from conformance.issuer import LocalIssuer

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
API = "https://vector.example.com"

SERVER_CA = WebCA()
CLIENT_CA_KEY = ec_key()
CLIENT_CA = certificate(CLIENT_CA_KEY, cn="agents client CA", ca=True)
OTHER_CA_KEY = ec_key()
OTHER_CA = certificate(OTHER_CA_KEY, cn="another client CA", ca=True)


def _client_cert(cn: str, issuer: tuple[x509.Certificate, Any] = (CLIENT_CA, CLIENT_CA_KEY), **kw: Any) -> tuple[x509.Certificate, Any]:
    key = ec_key()
    return certificate(key, issuer=issuer, cn=cn, eku=[ExtendedKeyUsageOID.CLIENT_AUTH], **kw), key


GATEWAY = _client_cert("agent-gateway", dns=["gateway.agents.example"])
ROGUE = _client_cert("rogue")  # same CA, another name
FOREIGN = _client_cert("agent-gateway", (OTHER_CA, OTHER_CA_KEY))  # right name, CA not registered for the client
SELF_KEY = ec_key()
SELF_SIGNED = (certificate(SELF_KEY, cn="self-signed agent", eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), SELF_KEY)
OTHER_SELF_KEY = ec_key()
OTHER_SELF_SIGNED = (certificate(OTHER_SELF_KEY, cn="other self-signed agent", eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), OTHER_SELF_KEY)


def _thumbprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _config(port: int, scheme: str, issuer: LocalIssuer) -> dict[str, Any]:
    return {
        "issuer": f"{scheme}://127.0.0.1:{port}",
        "tokens": {"default_lifetime": 300, "max_lifetime": 900, "algorithm": "ES256"},
        "clients": {
            "allow_public": False,
            "registered": [
                {"client_id": "gateway", "auth_method": "tls_client_auth", "tls_client_auth_subject_dn": "CN=agent-gateway",
                 "tls_client_auth_ca_file": "client-ca.pem", "introspection": True},
                {"client_id": "gateway-by-dns", "auth_method": "tls_client_auth",
                 "tls_client_auth_san_dns": "gateway.agents.example", "tls_client_auth_ca_file": "client-ca.pem"},
                {"client_id": "self-signed", "auth_method": "self_signed_tls_client_auth",
                 "certificates_sha256": [_thumbprint(SELF_SIGNED[0])]},
                {"client_id": "post-client", "auth_method": "client_secret_post",
                 "secret_sha256": hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()},
            ],
        },
        "issuers": [{"name": "local", "issuer": issuer.url, "audiences": [BROKER_AUDIENCE], "keys": {"discovery": True},
                     "allow_insecure_http": True, "claim_mappings": {"identity": '"wl:" + claims.sub'}}],
        "grants": [{"name": "agents", "issuers": ["local"], "match": {"identity_pattern": "^wl:agent-[a-z0-9-]+$"},
                    "targets": [{"audience": API, "scopes": ["read"], "default_scopes": ["read"]}], "default_target": API}],
    }


class Env:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server_ca_file = SERVER_CA.write(workdir / "server-ca.pem")
        (workdir / "client-ca.pem").write_bytes(pem(CLIENT_CA))
        # What OpenSSL accepts in the handshake: both CAs and both self-signed certificates.
        # The application, not the handshake, decides which client a certificate authenticates.
        self.handshake_ca = workdir / "handshake-ca.pem"
        self.handshake_ca.write_bytes(b"".join(pem(c) for c in (CLIENT_CA, OTHER_CA, SELF_SIGNED[0], OTHER_SELF_SIGNED[0])))
        self.identities = {name: write_identity(workdir, name, *pair) for name, pair in {
            "gateway": GATEWAY, "rogue": ROGUE, "foreign": FOREIGN, "self": SELF_SIGNED, "other-self": OTHER_SELF_SIGNED}.items()}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("mtls-client"))


@pytest.fixture(scope="module")
def tls_broker(env: Env, issuer: LocalIssuer, database_url: str) -> Iterator[TLSBroker]:
    port = free_port()
    cert, key = SERVER_CA.server()
    tls = write_identity(env.workdir, f"broker-{port}", cert, key)
    server = TLSBroker(_config(port, "https", issuer), workdir=env.workdir, database_url=database_url, port=port,
                       tls=tls, ca_file=env.server_ca_file, client_ca=env.handshake_ca,
                       settings={"audit_coalesce_window": 0}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxied_broker(env: Env, issuer: LocalIssuer, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("mtls-proxied")
    (workdir / "client-ca.pem").write_bytes(pem(CLIENT_CA))
    server = BrokerServer(_config(port, "http", issuer), workdir=workdir, database_url=database_url, port=port,
                          settings={"trusted_proxies": ["127.0.0.1"], "audit_coalesce_window": 0}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def subject(issuer: LocalIssuer) -> Callable[[], str]:
    return lambda: issuer.mint({"sub": "agent-7", "aud": BROKER_AUDIENCE}, alg="RS256", lifetime=600)


def _exchange(server: TLSBroker, identity: str | None, env: Env, token: str, **extra: str) -> httpx.Response:
    with server.client(env.identities[identity] if identity else None) as c:
        return c.post("/token", data={"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": JWT, **extra})


def _invalid_client(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"


def _audit(server: BrokerServer, request_id: str) -> dict[str, Any]:
    with server.broker.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM audit_events WHERE request_id = :r"), {"r": request_id})]
    assert len(rows) == 1
    return rows[0]


@pytest.mark.parametrize(("client_id", "identity"), [("gateway", "gateway"), ("gateway-by-dns", "gateway"), ("self-signed", "self")])
def test_registered_certificate_authenticates_the_client(tls_broker: TLSBroker, env: Env, subject: Callable[[], str],
                                                         client_id: str, identity: str) -> None:
    response = _exchange(tls_broker, identity, env, subject(), client_id=client_id)
    assert response.status_code == 200, response.text
    row = _audit(tls_broker, response.headers["x-request-id"])
    assert row["client_id"] == client_id and row["outcome"] == "issued"


@pytest.mark.parametrize(("client_id", "identity", "reason"), [
    ("gateway", None, "tls_client_certificate_missing"),
    ("gateway", "rogue", "tls_client_certificate_subject_mismatch"),
    ("gateway", "foreign", "tls_client_certificate_untrusted_issuer"),
    ("gateway", "self", "tls_client_certificate_untrusted_issuer"),
    ("gateway-by-dns", "rogue", "tls_client_certificate_san_mismatch"),
    ("self-signed", "other-self", "tls_client_certificate_not_registered"),
    ("self-signed", "gateway", "tls_client_certificate_not_registered"),
    ("self-signed", None, "tls_client_certificate_missing"),
])
def test_other_certificates_are_invalid_client(tls_broker: TLSBroker, env: Env, subject: Callable[[], str],
                                               client_id: str, identity: str | None, reason: str) -> None:
    response = _exchange(tls_broker, identity, env, subject(), client_id=client_id)
    _invalid_client(response)
    row = _audit(tls_broker, response.headers["x-request-id"])
    assert row["reason"] == reason and row["outcome"] == "denied"


def test_a_certificate_does_not_stand_in_for_another_method(tls_broker: TLSBroker, env: Env, subject: Callable[[], str]) -> None:
    # A secret for an mTLS client, and a certificate for a secret client, both fail.
    _invalid_client(_exchange(tls_broker, "gateway", env, subject(), client_id="gateway", client_secret=CLIENT_SECRET))
    _invalid_client(_exchange(tls_broker, "gateway", env, subject(), client_id="post-client"))
    # Without client_id the certificate names no client (RFC 8705 §2), and public exchange is off.
    _invalid_client(_exchange(tls_broker, "gateway", env, subject()))


def test_metadata_lists_the_methods(tls_broker: TLSBroker) -> None:
    with tls_broker.client() as c:
        meta = c.get("/.well-known/oauth-authorization-server").json()
    assert {"tls_client_auth", "self_signed_tls_client_auth", "client_secret_post"} <= set(meta["token_endpoint_auth_methods_supported"])
    assert "none" not in meta["token_endpoint_auth_methods_supported"]


def test_introspection_authenticates_by_certificate(tls_broker: TLSBroker, env: Env, subject: Callable[[], str]) -> None:
    token = _exchange(tls_broker, "gateway", env, subject(), client_id="gateway").json()["access_token"]
    with tls_broker.client(env.identities["gateway"]) as c:
        assert c.post("/introspect", data={"token": token, "client_id": "gateway"}).json()["active"] is True
    with tls_broker.client(env.identities["rogue"]) as c:
        assert c.post("/introspect", data={"token": token, "client_id": "gateway"}).status_code == 401


def _xfcc(cert: x509.Certificate, *, with_cert: bool = True) -> str:
    value = f"Hash={_thumbprint(cert)}"
    return value + (f';Cert="{quote(pem(cert).decode(), safe="")}"' if with_cert else "")


@pytest.mark.parametrize(("client_id", "cert", "with_cert", "status"), [
    ("gateway", GATEWAY[0], True, 200),
    ("gateway", ROGUE[0], True, 401),
    # Only the hash: nothing to check a CA, a name or validity against (PKI); enough for a thumbprint.
    ("gateway", GATEWAY[0], False, 401),
    ("self-signed", SELF_SIGNED[0], False, 200),
    ("self-signed", OTHER_SELF_SIGNED[0], True, 401),
])
def test_certificate_forwarded_by_a_trusted_proxy(proxied_broker: BrokerServer, subject: Callable[[], str],
                                                  client_id: str, cert: x509.Certificate, with_cert: bool, status: int) -> None:
    with proxied_broker.client() as c:
        response = c.post("/token", headers={"x-forwarded-client-cert": _xfcc(cert, with_cert=with_cert)},
                          data={"grant_type": TOKEN_EXCHANGE, "subject_token": subject(), "subject_token_type": JWT,
                                "client_id": client_id})
    assert response.status_code == status, response.text
