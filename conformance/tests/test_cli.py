"""The command line and the pytest entry point, end to end against the reference target.

Here the kit starts its own issuer and bundle endpoint, as it does against a real service: the
reference target is pointed at the ports the profile makes the kit bind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conformance.cli import conformance_command
from conformance.issuer import LocalIssuer, SpiffeBundleServer
from conformance.tests.reference_target import ReferenceTarget

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def standalone() -> Iterator[tuple[ReferenceTarget, int, int]]:
    issuer_port, bundle_port = _free_port(), _free_port()
    # Never started: they only tell the target where the kit's own servers will listen.
    issuer = LocalIssuer(port=issuer_port, algorithms=())
    bundle = SpiffeBundleServer(port=bundle_port)
    target = ReferenceTarget(issuer, bundle).start()
    try:
        yield target, issuer_port, bundle_port
    finally:
        target.stop()


def _profile_file(tmp_path: Path, standalone: tuple[ReferenceTarget, int, int], variant: str) -> Path:
    target, issuer_port, bundle_port = standalone
    data = target.profile(variant).model_dump(mode="json")
    data["issuer"]["port"] = issuer_port
    data["spiffe"]["port"] = bundle_port
    path = tmp_path / f"{variant}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_passes_reference_and_writes_reports(tmp_path: Path, standalone: tuple[ReferenceTarget, int, int]) -> None:
    profile = _profile_file(tmp_path, standalone, "reference")
    junit, markdown = tmp_path / "report.xml", tmp_path / "report.md"
    result = CliRunner().invoke(conformance_command, ["--target", str(profile), "--junit", str(junit),
                                                      "--markdown", str(markdown), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "CONFORMANT (no failure counted under --fail-on must)" in result.output
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("failures") == "0" and root.get("errors") == "0"
    names = {tc.get("name") for tc in root.iter("testcase")}
    assert {"rfc8725.alg.none-refused", "rfc8414.metadata.issuer-matches"} <= names
    text = markdown.read_text()
    assert text.startswith("## Conformance report: reference target (reference)")
    assert "### RFC 8693 §2.2.1" in text and "### Failures" in text


def test_cli_fails_on_a_must_and_reports_json(tmp_path: Path, standalone: tuple[ReferenceTarget, int, int]) -> None:
    profile = _profile_file(tmp_path, standalone, "no-cache-control")
    args = ["--target", str(profile), "--json", "--only", "rfc6749.response.*"]
    result = CliRunner().invoke(conformance_command, args)
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    failed = {r["id"] for r in doc["results"] if r["outcome"] == "fail"}
    assert failed == {"rfc6749.response.cache-control-no-store", "rfc6749.response.pragma-no-cache"}
    assert doc["exit_code"] == 1


def test_cli_usage() -> None:
    runner = CliRunner()
    listed = runner.invoke(conformance_command, ["--list", "--only", "spiffe.*"])
    assert listed.exit_code == 0 and "spiffe.svid.valid" in listed.output and "rfc8693" not in listed.output
    assert runner.invoke(conformance_command, []).exit_code == 2
    assert runner.invoke(conformance_command, ["--target", "missing.toml"]).exit_code == 2


@pytest.mark.parametrize("variant,only,returncode,marker", [
    ("no-cache-control", "rfc6749.response.*", 1, "failed"),
    # Echoing a token is a security property: it fails the run under the default --fail-on must.
    ("leaks-token", "hardening.error.*,rfc8693.request.valid-exchange", 1, "failed"),
    ("copies-audience", "rfc8693.error.forbidden-audience-invalid-target,rfc8693.request.valid-exchange", 0,
     "xfailed"),
], ids=["must-failure-fails", "security-hardening-failure-fails", "should-failure-xfails"])
def test_plain_pytest_entry_point(tmp_path: Path, standalone: tuple[ReferenceTarget, int, int], variant: str,
                                  only: str, returncode: int, marker: str) -> None:
    profile = _profile_file(tmp_path, standalone, variant)
    env = {**os.environ, "STS_CONFORMANCE_PROFILE": str(profile), "STS_CONFORMANCE_ONLY": only}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "conformance/tests/test_target_profile.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == returncode, proc.stdout + proc.stderr
    assert marker in proc.stdout.splitlines()[-1]
