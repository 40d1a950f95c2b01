"""The admin API over HTTPS with pinned client certificates (docs/admin-api.md): an allowed
certificate authenticates without a token; another certificate, even from the same CA, does not;
the bearer token still works beside it; a certificate OpenSSL does not accept ends the handshake."""

from __future__ import annotations

import hashlib
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from admin_support import ADMIN_PREFIX, assert_no_store_json, audit_rows, write_token
from broker_harness import BrokerServer, free_port
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from integration_config import base_config
from spiffe_support import WebCA, certificate, ec_key, pem, write_identity

from conformance.issuer import LocalIssuer

SERVER_CA = WebCA()
CLIENT_CA_KEY = ec_key()
CLIENT_CA = certificate(CLIENT_CA_KEY, cn="operators CA", ca=True)
UNTRUSTED_CA_KEY = ec_key()
UNTRUSTED_CA = certificate(UNTRUSTED_CA_KEY, cn="some other CA", ca=True)


def _leaf(cn: str, issuer: tuple[x509.Certificate, Any] | None = (CLIENT_CA, CLIENT_CA_KEY)) -> tuple[x509.Certificate, Any]:
    key = ec_key()
    return certificate(key, issuer=issuer, cn=cn, eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), key


OPERATOR = _leaf("operator")            # issued by the client CA, pinned
COLLEAGUE = _leaf("colleague")          # same CA, not pinned
PINNED_SELF = _leaf("self-signed operator", None)  # self-signed, in the CA file, pinned
STRANGER = _leaf("stranger", (UNTRUSTED_CA, UNTRUSTED_CA_KEY))  # OpenSSL refuses it


def _thumbprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


class Env:
    def __init__(self, server: BrokerServer, url: str, token: str, workdir: Path, identities: dict[str, tuple[Path, Path]]) -> None:
        self.server, self.url, self.token, self.workdir, self.identities = server, url, token, workdir, identities

    def get(self, path: str, identity: str | None = None, token: str | None = None, request_id: str | None = None) -> httpx.Response:
        ctx = ssl.create_default_context(cafile=str(self.workdir / "server-ca.pem"))
        if identity is not None:
            ctx.load_cert_chain(*map(str, self.identities[identity]))
        headers = {"X-Request-Id": request_id} if request_id else {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        with httpx.Client(base_url=self.url, verify=ctx, timeout=10) as c:
            return c.get(path, headers=headers)


@pytest.fixture(scope="module")
def env(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("admin-mtls")
    SERVER_CA.write(workdir / "server-ca.pem")
    (workdir / "client-ca.pem").write_bytes(pem(CLIENT_CA) + pem(PINNED_SELF[0]))
    server_cert = write_identity(workdir, "admin-server", *SERVER_CA.server())
    identities = {name: write_identity(workdir, name, *pair) for name, pair in
                  {"operator": OPERATOR, "colleague": COLLEAGUE, "self": PINNED_SELF, "stranger": STRANGER}.items()}
    token = write_token(workdir / "admin-token")
    port, admin_port = free_port(), free_port()
    server = BrokerServer(base_config(port, issuer, replay_issuer, dead_port=free_port()), workdir=workdir,
                          database_url=database_url, port=port, settings={
                              "admin_listen": f"127.0.0.1:{admin_port}", "admin_token_file": workdir / "admin-token",
                              "admin_tls_cert": server_cert[0], "admin_tls_key": server_cert[1],
                              "admin_tls_client_ca": workdir / "client-ca.pem",
                              "admin_allowed_cert_sha256": [_thumbprint(OPERATOR[0]), _thumbprint(PINNED_SELF[0]).upper()],
                              "audit_coalesce_window": 0}).start()
    try:
        yield Env(server, f"https://127.0.0.1:{admin_port}", token, workdir, identities)
    finally:
        server.stop()


@pytest.mark.parametrize("identity", ["operator", "self"])
def test_an_allowed_certificate_authenticates(env: Env, identity: str) -> None:
    response = env.get(ADMIN_PREFIX + "/keys", identity=identity)
    assert response.status_code == 200, response.text
    assert_no_store_json(response)
    assert response.json()["keys"]


def test_another_certificate_of_the_same_ca_is_refused_and_audited(env: Env) -> None:
    rid = f"admin-mtls-{uuid.uuid4().hex[:10]}"
    response = env.get(ADMIN_PREFIX + "/keys", identity="colleague", request_id=rid)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    [row] = audit_rows(env.server.database_url, rid)
    assert row["reason"] == "admin_certificate_not_allowed" and "endpoint:admin" in row["mode_notes"]


def test_the_token_works_beside_certificates(env: Env) -> None:
    assert env.get(ADMIN_PREFIX + "/keys", token=env.token).status_code == 200
    assert env.get(ADMIN_PREFIX + "/keys", identity="colleague", token=env.token).status_code == 200
    assert env.get(ADMIN_PREFIX + "/keys").status_code == 401


def test_a_certificate_outside_the_client_ca_ends_the_handshake(env: Env) -> None:
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        env.get(ADMIN_PREFIX + "/keys", identity="stranger", token=env.token)


def test_plain_http_is_not_served_on_the_tls_listener(env: Env) -> None:
    with pytest.raises(httpx.HTTPError), httpx.Client(timeout=5) as c:
        response = c.get(env.url.replace("https://", "http://") + ADMIN_PREFIX + "/keys",
                         headers={"Authorization": f"Bearer {env.token}"})
        assert response.status_code != 200
        raise httpx.HTTPError("answered, but not with data")


def test_the_token_port_ignores_admin_certificates(env: Env) -> None:
    with env.server.client() as c:
        assert c.get(ADMIN_PREFIX + "/keys", headers={"Authorization": f"Bearer {env.token}"}).status_code == 404
