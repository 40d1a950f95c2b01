"""Our broker, started from its CLI as a user would, passes every case of the conformance kit that
applies to it, through the kit's sanity gates, on SQLite and on PostgreSQL (issue: "In our CI").

Every port is a free one picked at run time (two runs on one machine must not collide), and the
run looks like production: the kit's issuer is served over https from a throwaway CA that the broker's issuer entry names as
its ``ca_file`` and under a path (``/realms/conformance``), and the kit authenticates with
``private_key_jwt`` while the broker refuses public clients."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest

from broker_harness import postgres_base_url, postgres_schema_url
from conformance.issuer import write_loopback_tls_files

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "conformance" / "profiles"
STS = str(Path(sys.executable).with_name("sts"))
ISSUER_PATH = "/realms/conformance"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _database(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'conformance.db'}"
        return
    base = postgres_base_url()
    if not base:
        pytest.skip("STS_TEST_POSTGRES_URL is not set")
    with postgres_schema_url(base) as url:
        yield url


@pytest.fixture(params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from _database(request.param, tmp_path)


# The kit's SPIFFE bundle endpoint. The broker fetches bundles over https only (SPIFFE
# Federation §5.2), so the kit serves it with a certificate from a throwaway CA that the
# broker's trust domain names as its ca_file.
SPIFFE_BROKER_CONFIG = """
  - name: conformance-spiffe-workload
    issuers: [conformance.test]
    match:
      identity: spiffe://conformance.test/workload
    targets:
      - audience: https://api.conformance.test
        scopes: [read, write]
        default_scopes: [read]
      - audience: https://second.conformance.test
        scopes: [read]
        default_scopes: [read]
      - resource: https://mcp.conformance.test/tools/search
        scopes: [invoke]
        default_scopes: [invoke]
    lifetime: 300
trust_domains:
  - name: conformance.test
    bundle_endpoint:
      url: https://127.0.0.1:{port}/bundle
      profile: https_web
      ca_file: {ca_file}
    audiences: [conformance]
"""


def _with_ports(text: str, broker_url: str, issuer_url: str) -> str:
    """The shipped profile and configuration, moved from their fixed ports to this run's."""
    return text.replace("http://127.0.0.1:18081", issuer_url).replace("http://127.0.0.1:18080", broker_url)


def test_broker_passes_every_applicable_case(database_url: str, tmp_path: Path) -> None:
    broker_port, issuer_port, spiffe_port = _free_port(), _free_port(), _free_port()
    broker_url = f"http://127.0.0.1:{broker_port}"
    issuer_url = f"https://127.0.0.1:{issuer_port}{ISSUER_PATH}"
    env = {
        **os.environ,
        "STS_DEV_MODE": "true",
        "STS_DATABASE_URL": database_url,
        "STS_KEK": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
        # The kit forges tokens with unknown kids and then rotates its issuer keys; a short
        # cooldown keeps the run fast without changing what is checked.
        "STS_JWKS_UNKNOWN_KID_COOLDOWN": "2",
        "STS_LOG_LEVEL": "warning",
    }
    ca_file, cert_file, key_file = write_loopback_tls_files(tmp_path, "bundle")
    # The kit creates the issuer's throwaway CA at the first run (here: --prepare, as a user
    # would before starting the target that must trust it).
    issuer_ca, issuer_cert, issuer_key = (tmp_path / "issuer-ca.pem", tmp_path / "issuer-server.pem",
                                          tmp_path / "issuer-server.key")
    profile = tmp_path / "sts-broker.toml"
    profile_text = _with_ports((PROFILES / "sts-broker.toml").read_text(), broker_url, issuer_url)
    profile_text = re.sub(r"(?m)^rotation_wait = \d+", "rotation_wait = 4", profile_text)
    profile_text = re.sub(r"(?m)^port = 18081", f'port = {issuer_port}\npath = "{ISSUER_PATH}"\n'
                          f'tls_cert_file = "{issuer_cert}"\ntls_key_file = "{issuer_key}"\n'
                          f'tls_ca_file = "{issuer_ca}"', profile_text)
    profile_text = re.sub(r"(?m)^supports_spiffe = false", "supports_spiffe = true", profile_text)
    # The kit authenticates as a registered private_key_jwt client (RFC 7523), and the broker
    # refuses exchanges without client authentication. Every request carries a DPoP proof
    # (RFC 9449): the broker binds tokens to a proof's key under its default sender_constraint.
    client_key, client_jwks = tmp_path / "client-key.json", tmp_path / "client-jwks.json"
    profile_text = profile_text.replace('[client]\nauth = "none"\n', f"""[client]
auth = "private_key_jwt"
id = "conformance-client"
required = true
private_key_file = "{client_key}"
jwks_file = "{client_jwks}"
assertion_alg = "ES256"
dpop = true
dpop_required = true
""")
    profile.write_text(profile_text + f"""
[spiffe]
host = "127.0.0.1"
port = {spiffe_port}
trust_domain = "conformance.test"
spiffe_id = "spiffe://conformance.test/workload"
audience = "conformance"
rotation_wait = 4
tls_cert_file = "{cert_file}"
tls_key_file = "{key_file}"
""")
    prepared = subprocess.run([STS, "conformance", "--target", str(profile), "--prepare"], env=env,
                              capture_output=True, text=True)
    assert prepared.returncode == 0 and issuer_ca.exists(), prepared.stdout + prepared.stderr
    assert f"issuer {issuer_url} ready" in prepared.stdout
    config = tmp_path / "sts-broker.yaml"
    config_text = _with_ports((PROFILES / "sts-broker.yaml").read_text(), broker_url, issuer_url)
    config_text = config_text.replace("    allow_insecure_http: true\n", f"    ca_file: {issuer_ca}\n")
    registered = json.dumps([{"client_id": "conformance-client", "auth_method": "private_key_jwt",
                              "jwks": json.loads(client_jwks.read_text()), "jwt_bearer": True}])
    config_text = config_text.replace("  allow_public: true\n", f"  allow_public: false\n  registered: {registered}\n")
    # Every token of the kit's grant is DPoP-bound: a request without a proof is refused
    # (RFC 9449 §5.2), which the profile declares (client.dpop_required).
    config_text = config_text.replace("    lifetime: 300\n    cap_to_subject_lifetime: true\n",
                                      "    lifetime: 300\n    cap_to_subject_lifetime: true\n    sender_constraint: dpop\n")
    assert "sender_constraint: dpop" in config_text
    config.write_text(config_text + SPIFFE_BROKER_CONFIG.replace("{port}", str(spiffe_port))
                      .replace("{ca_file}", str(ca_file)))
    with _serving(env, tmp_path, ["--config", str(config), "--host", "127.0.0.1", "--port", str(broker_port)], broker_url):
        junit, markdown = tmp_path / "conformance.xml", tmp_path / "conformance.md"
        result = subprocess.run([STS, "conformance", "--target", str(profile), "--junit", str(junit), "--markdown", str(markdown), "--quiet"],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert junit.exists() and "<testsuite" in junit.read_text()
        cases = {tc.get("name"): tc for tc in ElementTree.parse(junit).iter("testcase")}
        # Every applicable case passed: nothing failed, not even uncounted, and nothing was
        # left inconclusive; only cases whose capability the profile does not declare skip.
        not_passed = {name: [(child.tag, child.get("message")) for child in tc if child.tag != "properties"]
                      for name, tc in cases.items()}
        problems = {name: tags for name, tags in not_passed.items()
                    if tags and not (tags[0][0] == "skipped" and tags[0][1] and "not counted" not in tags[0][1])}
        assert problems == {}
        spiffe = {name: tc for name, tc in cases.items() if name and name.startswith("spiffe.")}
        assert len(spiffe) >= 8
        # The JWT-SVID cases ran (over the https bundle endpoint) and passed, none skipped.
        outcomes = {name: [child.tag for child in tc if child.tag != "properties"] for name, tc in spiffe.items()}
        assert all(not tags for tags in outcomes.values()), {
            name: [child.get("message") for child in spiffe[name] if child.tag != "properties"]
            for name, tags in outcomes.items() if tags
        }
        assert "MUST" in markdown.read_text()
        # The client-authentication cases ran with private_key_jwt, and passed ...
        for name in ("rfc6749.client.wrong-secret", "rfc6749.client.missing-credentials",
                     # ... and so did the DPoP cases.
                     "rfc9449.token.bound-to-proof-key", "rfc9449.proof.other-url", "rfc9449.proof.other-method",
                     "hardening.dpop.proof-replay-refused", "rfc9449.token.required-without-proof",
                     # ... and so did the JWT-bearer cases (RFC 7523, MCP SEP-1933).
                     "rfc7523.grant.valid-assertion", "rfc7523.grant.bad-signature", "rfc7523.grant.replay",
                     "rfc7523.grant.missing-jti", "rfc8414.metadata.grant-types-jwt-bearer"):
            assert not [child for child in cases[name] if child.tag != "properties"], name
        if os.environ.get("STS_CONFORMANCE_REPORT"):
            shutil.copy(markdown, os.environ["STS_CONFORMANCE_REPORT"])


@contextlib.contextmanager
def _serving(env: dict[str, str], tmp_path: Path, args: list[str], url: str, verify: Any = True) -> Iterator[None]:
    """``sts db upgrade`` and ``sts serve ARGS``, until /readyz answers 200; stopped on exit."""
    subprocess.run([STS, "db", "upgrade"], env=env, check=True, capture_output=True)
    log = (tmp_path / "broker.log").open("w")
    server = subprocess.Popen([STS, "serve", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1, verify=verify).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "broker.log").read_text()
            time.sleep(0.2)
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def test_broker_with_mtls_client_authentication(tmp_path: Path) -> None:
    """The kit as an RFC 8705 ``tls_client_auth`` client of the broker serving https: its own
    certificate (created by ``--prepare``, registered by subject DN with itself as the CA) is
    accepted, and the client-authentication cases pass: no certificate, and the impostor (same
    subject, another key) are refused although both pass the TLS handshake."""
    broker_port, issuer_port = _free_port(), _free_port()
    broker_url = f"https://127.0.0.1:{broker_port}"
    issuer_url = f"http://127.0.0.1:{issuer_port}"
    env = {**os.environ, "STS_DEV_MODE": "true", "STS_DATABASE_URL": f"sqlite:///{tmp_path / 'mtls.db'}",
           "STS_KEK": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
           "STS_JWKS_UNKNOWN_KID_COOLDOWN": "2", "STS_LOG_LEVEL": "warning"}
    server_ca, server_cert, server_key = write_loopback_tls_files(tmp_path, "broker")
    client_cert, client_key = tmp_path / "kit-client.pem", tmp_path / "kit-client.key"
    profile_text = _with_ports((PROFILES / "sts-broker.toml").read_text(), broker_url, issuer_url)
    profile_text = re.sub(r"(?m)^rotation_wait = \d+", "rotation_wait = 4", profile_text)
    profile_text = re.sub(r"(?m)^port = 18081", f"port = {issuer_port}", profile_text)
    profile_text = profile_text.replace("timeout = 10\n", f'timeout = 10\nca_file = "{server_ca}"\n', 1)
    profile_text = profile_text.replace('[client]\nauth = "none"\n', f"""[client]
auth = "tls_client_auth"
id = "conformance-client"
required = true
tls_cert_file = "{client_cert}"
tls_key_file = "{client_key}"
""")
    profile = tmp_path / "sts-broker-mtls.toml"
    profile.write_text(profile_text)
    prepared = subprocess.run([STS, "conformance", "--target", str(profile), "--prepare"], env=env,
                              capture_output=True, text=True)
    assert prepared.returncode == 0 and client_cert.exists(), prepared.stdout + prepared.stderr
    impostor = tmp_path / "kit-client.impostor.pem"
    assert impostor.exists()
    # The handshake accepts both certificates; only the registration tells them apart.
    handshake = tmp_path / "handshake.pem"
    handshake.write_bytes(client_cert.read_bytes() + impostor.read_bytes())
    registered = json.dumps([{"client_id": "conformance-client", "auth_method": "tls_client_auth",
                              "tls_client_auth_subject_dn": "CN=conformance-client",
                              "tls_client_auth_ca_file": str(client_cert)}])
    config_text = _with_ports((PROFILES / "sts-broker.yaml").read_text(), broker_url, issuer_url)
    config_text = config_text.replace("  allow_public: true\n", f"  allow_public: false\n  registered: {registered}\n")
    config = tmp_path / "sts-broker.yaml"
    config.write_text(config_text)
    args = ["--config", str(config), "--host", "127.0.0.1", "--port", str(broker_port), "--tls-cert", str(server_cert),
            "--tls-key", str(server_key), "--tls-client-ca", str(handshake)]
    with _serving(env, tmp_path, args, broker_url, verify=ssl.create_default_context(cafile=str(server_ca))):
        junit = tmp_path / "mtls.xml"
        result = subprocess.run([STS, "conformance", "--target", str(profile), "--junit", str(junit), "--quiet",
                                 "--only", "rfc6749.client.*", "--only", "rfc8693.request.valid-exchange"],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        cases = {tc.get("name"): [c for c in tc if c.tag != "properties"] for tc in ElementTree.parse(junit).iter("testcase")}
        assert cases["rfc6749.client.wrong-secret"] == [] and cases["rfc6749.client.missing-credentials"] == []
        assert cases["rfc8693.request.valid-exchange"] == []
