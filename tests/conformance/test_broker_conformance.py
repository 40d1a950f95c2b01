"""Our broker, started from its CLI as a user would, passes every MUST of the conformance kit,
on SQLite and on PostgreSQL (issue: "In our CI")."""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

from broker_harness import postgres_base_url, postgres_schema_url
from conformance.issuer import write_loopback_tls_files

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "conformance" / "profiles"
STS = str(Path(sys.executable).with_name("sts"))
BROKER_URL = "http://127.0.0.1:18080"


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
SPIFFE_PORT = 18082
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


def test_broker_passes_every_must(database_url: str, tmp_path: Path) -> None:
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
    config = tmp_path / "sts-broker.yaml"
    config.write_text((PROFILES / "sts-broker.yaml").read_text()
                      + SPIFFE_BROKER_CONFIG.replace("{port}", str(SPIFFE_PORT)).replace("{ca_file}", str(ca_file)))
    profile = tmp_path / "sts-broker.toml"
    profile_text = re.sub(r"(?m)^rotation_wait = \d+", "rotation_wait = 4", (PROFILES / "sts-broker.toml").read_text())
    profile_text = re.sub(r"(?m)^supports_spiffe = false", "supports_spiffe = true", profile_text)
    profile.write_text(profile_text + f"""
[spiffe]
host = "127.0.0.1"
port = {SPIFFE_PORT}
trust_domain = "conformance.test"
spiffe_id = "spiffe://conformance.test/workload"
audience = "conformance"
rotation_wait = 4
tls_cert_file = "{cert_file}"
tls_key_file = "{key_file}"
""")
    subprocess.run([STS, "db", "upgrade"], env=env, check=True, capture_output=True)
    log = (tmp_path / "broker.log").open("w")
    server = subprocess.Popen([STS, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", "18080"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(BROKER_URL + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "broker.log").read_text()
            time.sleep(0.2)
        junit, markdown = tmp_path / "conformance.xml", tmp_path / "conformance.md"
        result = subprocess.run([STS, "conformance", "--target", str(profile), "--junit", str(junit), "--markdown", str(markdown), "--quiet"],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert junit.exists() and "<testsuite" in junit.read_text()
        cases = {tc.get("name"): tc for tc in ElementTree.parse(junit).iter("testcase")}
        spiffe = {name: tc for name, tc in cases.items() if name and name.startswith("spiffe.")}
        assert len(spiffe) >= 8
        # The JWT-SVID cases ran (over the https bundle endpoint) and passed, none skipped.
        outcomes = {name: [child.tag for child in tc if child.tag != "properties"] for name, tc in spiffe.items()}
        assert all(not tags for tags in outcomes.values()), {
            name: [child.get("message") for child in spiffe[name] if child.tag != "properties"]
            for name, tags in outcomes.items() if tags
        }
        assert "MUST" in markdown.read_text()
        if os.environ.get("STS_CONFORMANCE_REPORT"):
            shutil.copy(markdown, os.environ["STS_CONFORMANCE_REPORT"])
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
