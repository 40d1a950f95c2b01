"""docs/production.md works as written: its marked command blocks run in order, in a directory
laid out like a fresh clone, against a real PostgreSQL, and end with two replicas that serve
the same keys; a token issued by one verifies with the keys the other publishes.

Blocks marked ``<!-- guide-test: NAME -->`` run verbatim except for what only a reader can fill
in: the database URL (a fresh schema of the test server) and the two ports (free ones, as the
machine is shared). Between ``init`` and ``check`` the test does what section 3 asks of the
reader: it edits the trust configuration, here to trust an issuer whose keys the test holds
(a static JWKS file), so that no broker fetches keys from the network.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from broker_harness import free_port, postgres_base_url, postgres_schema_url
from packaging_support import GUIDE_DATABASE_URL, GUIDE_PORTS, ROOT, guide_blocks, trust_test_issuer
from sts import jose

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_guide_marks_the_blocks_this_test_runs() -> None:
    # docker-run runs in test_container_image.py, where a container engine is available.
    assert list(guide_blocks()) == ["init", "check", "database", "replicas", "keys", "docker-run"]


@pytest.fixture
def database_url() -> Iterator[str]:
    base = postgres_base_url()
    if not base:
        pytest.skip("STS_TEST_POSTGRES_URL is not set")
    with postgres_schema_url(base) as url:
        yield url


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """What a fresh clone has under deploy/: the tracked manifests (so deploy/ already exists)."""
    for tracked in ("deploy/kubernetes", "deploy/compose"):
        shutil.copytree(ROOT / tracked, tmp_path / tracked)
    return tmp_path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(script: str, cwd: Path) -> str:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    return result.stdout


def _github_token(key: jose.PrivateKey) -> str:
    now = int(time.time())
    claims = {"iss": "https://token.actions.githubusercontent.com", "aud": "https://sts.example.com",
              "sub": "repo:example-org/app:ref:refs/heads/main", "repository": "example-org/app",
              "repository_owner": "example-org", "repository_owner_id": "123456", "repository_id": "7891011",
              "iat": now, "nbf": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    return jose.sign(claims, key, typ="JWT")


def test_production_guide_runs_as_written(clone: Path, database_url: str) -> None:
    if shutil.which("curl") is None:
        pytest.skip("the guide's checks use curl, which is not installed")
    blocks = guide_blocks()

    created = _run(blocks["init"], clone)
    site = clone / "deploy" / "site"
    assert "created deploy/site/sts.yaml" in created and "created deploy/site/kek" in created
    assert (site / "kek").stat().st_mode & 0o777 == 0o600
    issuer_key = trust_test_issuer(site)

    assert _run(blocks["check"], clone).splitlines() == ["deploy/site/sts.yaml: ok", "deploy/site/sts.yaml: ok (for production)"]

    ports = (str(free_port()), str(free_port()))
    serving = blocks["database"].replace(GUIDE_DATABASE_URL, database_url) + blocks["replicas"] + blocks["keys"]
    for guide_port, port in zip(GUIDE_PORTS, ports):
        assert guide_port in serving
        serving = serving.replace(guide_port, port)
    # Keep the replicas serving while the test uses them; the test ends the whole group.
    process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", serving + "\necho GUIDE-DONE\nwait\n"], cwd=clone,
                               env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 90
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.strip() == "GUIDE-DONE":
                break
        output = "\n".join(lines)
        assert lines and lines[-1] == "GUIDE-DONE", output + (process.stderr.read() if process.poll() is not None and process.stderr else "")
        assert re.search(r"database upgraded: .* -> \w+", output)
        assert "same keys" in output
        assert sum(line.startswith("ready: ") for line in lines) >= 2
        assert re.search(r"ES256\s+active", output), output

        # A token issued through one replica verifies with the keys the other publishes.
        from joserfc import jwt
        from joserfc.jwk import KeySet

        answer = httpx.post(f"http://127.0.0.1:{ports[0]}/token", timeout=10, data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "subject_token": _github_token(issuer_key),
            "audience": "https://api.example.com",
        })
        assert answer.status_code == 200, answer.text
        keys = KeySet.import_key_set(httpx.get(f"http://127.0.0.1:{ports[1]}/jwks", timeout=10).json())
        token = jwt.decode(answer.json()["access_token"], keys, algorithms=["ES256"])
        assert token.claims["iss"] == "https://sts.example.com"
        assert token.claims["sub"] == "github:123456/7891011"
        assert token.claims["aud"] == "https://api.example.com"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
