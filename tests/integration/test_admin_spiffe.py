"""The admin API and SPIFFE trust domains: per-domain bundle status, and an X.509-SVID that the
token listener would accept is no credential on the admin listener (its trust domains'
authorities are never added to the admin TLS context)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from admin_support import ADMIN_PREFIX, write_token
from broker_harness import TLSBroker, free_port
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from spiffe_support import TrustDomain, WebCA, certificate, ec_key, pem, write_identity

AUD = "sts-spiffe-admin"
TD = TrustDomain("example.org")
WEB = WebCA()
OPERATORS_KEY = ec_key()
OPERATORS = certificate(OPERATORS_KEY, cn="operators", ca=True)


class Env:
    def __init__(self, server: TLSBroker, url: str, token: str, workdir: Path) -> None:
        self.server, self.url, self.token, self.workdir = server, url, token, workdir

    def context(self, identity: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.workdir / "web-ca.pem"))
        if identity is not None:
            ctx.load_cert_chain(*map(str, identity))
        return ctx


@pytest.fixture(scope="module")
def env(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("admin-spiffe")
    WEB.write(workdir / "web-ca.pem")
    (workdir / "example.json").write_text(json.dumps(TD.bundle()))
    (workdir / "operators.pem").write_bytes(pem(OPERATORS))
    token = write_token(workdir / "admin-token")
    port, admin_port = free_port(), free_port()
    tls = write_identity(workdir, "server", *WEB.server())
    config = {
        "issuer": f"https://127.0.0.1:{port}",
        "tokens": {"default_lifetime": 300, "max_lifetime": 900},
        "issuers": [],
        "trust_domains": [{"name": "example.org", "bundle_file": "example.json", "audiences": [AUD]}],
        "grants": [{"name": "svids", "match": {"identity_pattern": "^.*$"},
                    "targets": [{"audience": "https://api.example.com", "scopes": ["read"]}]}],
    }
    server = TLSBroker(config, workdir=workdir, database_url=database_url, port=port, tls=tls, ca_file=workdir / "web-ca.pem",
                       settings={"admin_listen": f"127.0.0.1:{admin_port}", "admin_token_file": workdir / "admin-token",
                                 "admin_tls_cert": tls[0], "admin_tls_key": tls[1],
                                 "admin_tls_client_ca": workdir / "operators.pem",
                                 "admin_allowed_cert_sha256": ["00" * 32], "audit_coalesce_window": 0}).start()
    try:
        yield Env(server, f"https://127.0.0.1:{admin_port}", token, workdir)
    finally:
        server.stop()


def test_trust_domain_bundle_status(env: Env) -> None:
    with httpx.Client(verify=env.context(), timeout=10) as c:
        response = c.get(env.url + ADMIN_PREFIX + "/issuers", headers={"Authorization": f"Bearer {env.token}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issuers"] == []
    [domain] = body["trust_domains"]
    assert domain["name"] == "example.org" and domain["registered"] and not domain["stale"]
    assert domain["jwt_keys"] == 1 and [k["kid"] for k in domain["kids"]] == ["example.org-jwt-1"]
    assert domain["x509_authorities"] == [{"sha256": TD.root.fingerprint(hashes.SHA256()).hex(),
                                           "subject": TD.root.subject.rfc4514_string()}]
    assert domain["sequence"] == TD.sequence and domain["last_success"] and domain["last_error"] is None


def test_an_svid_is_no_admin_credential(env: Env) -> None:
    svid = write_identity(env.workdir, "svid", *TD.svid("/ns/ops/sa/admin", eku=[ExtendedKeyUsageOID.CLIENT_AUTH]),
                          chain=[TD.inter])
    # The token listener takes the SVID in its handshake (its trust domain is configured) ...
    with httpx.Client(verify=env.context(svid), timeout=10) as c:
        assert c.get(env.server.url + "/healthz").status_code == 200
    # ... the admin listener does not: only STS_ADMIN_TLS_CLIENT_CA decides its handshake.
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        with httpx.Client(verify=env.context(svid), timeout=10) as c:
            c.get(env.url + ADMIN_PREFIX + "/keys", headers={"Authorization": f"Bearer {env.token}"})
