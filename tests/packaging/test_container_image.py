"""Build the image and run it the way compose.yaml and docs/production.md do, with a real
container engine (Docker or Podman) and PostgreSQL.

Skipped, with the reason, where no engine can run containers or where the base image is not
present locally: the test never pulls from a registry. ``STS_TEST_PYTHON_IMAGE`` names a local
image to build from instead of the Dockerfile's default base (a mirror, or a stand-in built for
a machine without registry access); the build itself installs the dependencies from the package
index pip is configured with.

What it shows:
- the image builds, runs as uid 10001 and carries the ``sts probe ready`` health check;
- the build context admits only the sources (the engine's own .dockerignore matching);
- the failure the issue reports: a broker given ``sts init``'s KEK file (0600, the host user's)
  through a bind mount cannot read it;
- compose.yaml's ``kek``, ``migrate`` and broker services, run with exactly their user,
  entrypoint, command, capabilities, read-only root, tmpfs, volumes and environment (only the
  network is the host's and the database the test's): two replicas become healthy on two
  different ports, serve the same keys, and write nothing outside their volumes;
- the single-container recipe of docs/production.md, run as written but for the engine's
  name, the image tag, the site directory, the database URL (reached over the host's network),
  the port and unique container and volume names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from broker_harness import free_port, postgres_base_url, postgres_schema_url
from packaging_support import (GUIDE_DATABASE_URL, IMAGE_UID, ROOT, guide_blocks, in_build_context, interpolate,
                               project_version, trust_test_issuer)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DEFAULT_BASE = "python:3.12-slim"
HOST_USER_UID = 4242


def _engine() -> tuple[str | None, str]:
    """The first engine that answers, or None and why not."""
    reasons = []
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if path is None:
            reasons.append(f"no {name} command")
            continue
        result = subprocess.run([path, "info"], capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            return path, ""
        reasons.append(f"{name} info failed: {(result.stderr.strip().splitlines() or ['?'])[-1][:160]}")
    return None, "; ".join(reasons)


ENGINE, WHY_NOT = _engine()
if ENGINE is None:
    pytest.skip(f"no container engine can run here ({WHY_NOT})", allow_module_level=True)
IS_PODMAN = Path(ENGINE).name == "podman"
BASE = os.environ.get("STS_TEST_PYTHON_IMAGE") or DEFAULT_BASE


def engine(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert ENGINE is not None
    result = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{Path(ENGINE).name} {' '.join(args)}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def base_image() -> str:
    if engine("image", "inspect", BASE, check=False).returncode != 0:
        pytest.skip(f"base image {BASE} is not present locally and the test does not pull: pull it, "
                    "or set STS_TEST_PYTHON_IMAGE to a local Python 3.11+ image")
    probe = engine("run", "--rm", "--network", "none", BASE, "python", "-c", "print('ok')", check=False, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"the engine cannot run containers here: {probe.stderr.strip()[-200:]}")
    return BASE


@pytest.fixture(scope="module")
def image(base_image: str) -> Iterator[str]:
    tag = f"localhost/workload-sts:test-{uuid.uuid4().hex[:8]}"
    # Docker's image format keeps HEALTHCHECK (Podman builds OCI images without it by default).
    fmt = ["--format", "docker"] if IS_PODMAN else []
    engine("build", *fmt, "--network", "host", "--build-arg", f"PYTHON_IMAGE={base_image}", "-t", tag, str(ROOT),
           timeout=900)
    try:
        yield tag
    finally:
        engine("rmi", "-f", tag, check=False)


@pytest.fixture
def database_url() -> Iterator[str]:
    base = postgres_base_url()
    if not base:
        pytest.skip("STS_TEST_POSTGRES_URL is not set")
    with postgres_schema_url(base.replace("postgresql+psycopg://", "postgresql://", 1)) as url:
        yield url


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """`sts init` on the host, as the guide's section 2, and section 3's edit."""
    site = tmp_path / "deploy" / "site"
    subprocess.run([str(Path(sys.executable).parent / "sts"), "init", str(site)], check=True, capture_output=True, timeout=60)
    assert (site / "kek").stat().st_mode & 0o777 == 0o600
    if os.getuid() == 0:
        # The case is a host user other than root and other than the image's: be one.
        os.chown(site / "kek", HOST_USER_UID, HOST_USER_UID)
    trust_test_issuer(site)
    return site


@pytest.fixture
def cleanup() -> Iterator[list[tuple[str, str]]]:
    made: list[tuple[str, str]] = []
    yield made
    for kind, name in reversed(made):
        if kind == "container":
            engine("rm", "-f", name, check=False)
        else:
            engine("volume", "rm", "-f", name, check=False)


def _inspect(ref: str) -> dict[str, Any]:
    return json.loads(engine("inspect", ref).stdout)[0]


def test_image_runs_as_uid_10001_with_the_probe_health_check(image: str) -> None:
    inspected = _inspect(image)
    config = inspected["Config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    health = config.get("Healthcheck") or inspected.get("Healthcheck")  # Docker's place, Podman's
    assert health["Test"][:4] == ["CMD", "sts", "probe", "ready"]
    assert engine("run", "--rm", "--network", "none", "--read-only", image, "--version").stdout.strip().endswith(project_version())


def test_build_context_admits_only_sources(base_image: str, tmp_path: Path) -> None:
    context = tmp_path / "context"
    files = ["pyproject.toml", "sts/app.py", "migrations/env.py", "deploy/site/kek", "deploy/site/sts.yaml", ".env",
             "var/dev.kek", "sts/kek", "tests/test_x.py", "sts/__pycache__/app.cpython-311.pyc"]
    for name in files:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text("x")
    shutil.copy(ROOT / ".dockerignore", context / ".dockerignore")
    (context / "Dockerfile").write_text(f"FROM {base_image}\nCOPY . /ctx\n")
    tag = f"localhost/sts-context:test-{uuid.uuid4().hex[:8]}"
    engine("build", "-t", tag, str(context), timeout=300)
    try:
        listed = engine("run", "--rm", "--network", "none", tag, "find", "/ctx", "-type", "f").stdout.split()
    finally:
        engine("rmi", "-f", tag, check=False)
    seen = {p.removeprefix("/ctx/") for p in listed}
    assert seen == {name for name in files if in_build_context(name)} == {"pyproject.toml", "sts/app.py", "migrations/env.py"}


def _compose_run_args(service: dict[str, Any], *, name: str, volumes: dict[str, str], site: Path, env: dict[str, str],
                      secrets: dict[str, Path]) -> list[str]:
    """``<engine> run`` arguments for a compose.yaml service (the settings it uses), with
    compose's named volumes and secrets mapped to this test's."""
    args = ["--name", name]
    if "user" in service:
        args += ["--user", service["user"]]
    if service.get("read_only"):
        args.append("--read-only")
    args += [f"--tmpfs={path}" for path in service.get("tmpfs", [])]
    args += [f"--cap-drop={cap}" for cap in service.get("cap_drop", [])]
    args += [f"--cap-add={cap}" for cap in service.get("cap_add", [])]
    args += [f"--security-opt={opt}" for opt in service.get("security_opt", [])]
    args += ["--network", "none" if service.get("network_mode") == "none" else "host"]
    # The test's database replaces the compose network's (whose URL needs STS_DB_PASSWORD).
    environment = {k: interpolate(v, {"STS_DB_PASSWORD": "unused"}) for k, v in service.get("environment", {}).items()} | env
    for key, value in environment.items():
        args += ["-e", f"{key}={value}"]
    for spec in service.get("volumes", []):
        source, target, *options = interpolate(spec, {"STS_SITE_DIR": str(site)}).split(":")
        source = volumes.get(source, source)
        args += ["-v", ":".join([source, target, *options])]
    for secret in service.get("secrets", []):
        args += ["-v", f"{secrets[secret]}:/run/secrets/{secret}:ro"]
    if "entrypoint" in service:
        args += ["--entrypoint", service["entrypoint"][0]]
    return args


def _service_command(service: dict[str, Any]) -> list[str]:
    return list(service["entrypoint"][1:]) if "entrypoint" in service else list(service.get("command") or [])


def _wait_healthy(container: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _inspect(container)["State"]
        if not state.get("Running", False):
            raise AssertionError(f"{container} stopped:\n{engine('logs', container, check=False).stderr[-2000:]}")
        if IS_PODMAN:
            # Podman schedules health checks with systemd timers, which a container host without
            # systemd lacks; run the image's check now, as the timer would.
            if engine("healthcheck", "run", container, check=False).returncode == 0:
                return
        elif (state.get("Health") or {}).get("Status") == "healthy":
            return
        time.sleep(1)
    raise AssertionError(f"{container} never became healthy:\n{engine('logs', container, check=False).stderr[-2000:]}")


def test_compose_services_run_with_the_kek_from_sts_init(image: str, site: Path, database_url: str,
                                                         cleanup: list[tuple[str, str]]) -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    suffix = uuid.uuid4().hex[:8]
    kek_volume = f"sts-test-kek-{suffix}"
    cleanup.append(("volume", kek_volume))
    volumes = {"kek": kek_volume}
    secrets = {"kek": site / "kek"}
    env = {"STS_DATABASE_URL": database_url}

    def one_shot(name: str) -> None:
        service = services[name]
        container = f"sts-test-{name}-{suffix}"
        cleanup.append(("container", container))
        args = _compose_run_args(service, name=container, volumes=volumes, site=site, env=env, secrets=secrets)
        engine("run", *args, image, *_service_command(service), timeout=180)

    one_shot("kek")
    listing = engine("run", "--rm", "--network", "none", "-v", f"{kek_volume}:/run/sts-kek:ro", "--entrypoint", "stat",
                     image, "-c", "%u %g %a", "/run/sts-kek/kek").stdout.split()
    assert listing == [str(IMAGE_UID), str(IMAGE_UID), "400"]
    one_shot("migrate")

    # The failure: the broker cannot read the 0600 KEK file through a bind mount.
    direct = engine("run", "--rm", "--network", "host", "--read-only", "--tmpfs=/tmp", "-e", f"STS_DATABASE_URL={database_url}",
                    "-e", "STS_KEK_FILE=/run/secrets/kek", "-e", "STS_CONFIG=/etc/sts/sts.yaml",
                    "-e", f"STS_PORT={free_port()}", "-v", f"{site}:/etc/sts:ro", "-v", f"{site / 'kek'}:/run/secrets/kek:ro",
                    image, check=False, timeout=120)
    if (site / "kek").stat().st_uid != IMAGE_UID:
        assert direct.returncode != 0
        assert "cannot read the key-encryption key file" in direct.stderr

    ports = {}
    for name in ("broker-1", "broker-2"):
        service = services[name]
        container = f"sts-test-{name}-{suffix}"
        cleanup.append(("container", container))
        ports[name] = free_port()
        # STS_PORT differs per replica: the health check must follow it.
        args = _compose_run_args(service, name=container, volumes=volumes, site=site, secrets=secrets,
                                 env=env | {"STS_HOST": "127.0.0.1", "STS_PORT": str(ports[name])})
        engine("run", "-d", *args, image, *_service_command(service))
    for name in ports:
        _wait_healthy(f"sts-test-{name}-{suffix}")
    jwks = [httpx.get(f"http://127.0.0.1:{port}/jwks", timeout=10).json() for port in ports.values()]
    assert jwks[0] == jwks[1] and jwks[0]["keys"]
    container = f"sts-test-broker-1-{suffix}"
    assert engine("exec", container, "id", "-u").stdout.strip() == str(IMAGE_UID)
    # Nothing written outside /tmp: the root filesystem refuses, /tmp accepts.
    assert engine("exec", container, "sh", "-c", "echo x > /var/lib/sts/probe", check=False).returncode != 0
    engine("exec", container, "sh", "-c", "echo x > /tmp/probe")


def test_single_container_recipe_of_the_guide(image: str, site: Path, database_url: str,
                                              cleanup: list[tuple[str, str]]) -> None:
    suffix = uuid.uuid4().hex[:8]
    volume, name, port = f"sts-test-kek-{suffix}", f"sts-test-single-{suffix}", free_port()
    cleanup += [("volume", volume), ("container", name)]
    script = guide_blocks()["docker-run"]
    lines = [line for line in script.replace("\\\n", " ").splitlines() if line.strip()]
    assert lines[0].startswith("docker build ")  # the fixture built the image (from a local base)
    commands = []
    for line in lines[1:]:
        line = re.sub(r"\s+", " ", line.strip())
        line = line.replace("workload-sts:0.1.0", image).replace("sts-kek", volume).replace("--name sts ", f"--name {name} ")
        line = line.replace(GUIDE_DATABASE_URL, database_url).replace('"$PWD/deploy/site', f'"{site}')
        # The machine is shared: the host's network and a free port instead of publishing 8080.
        line = line.replace("-p 8080:8080", f"--network host -e STS_HOST=127.0.0.1 -e STS_PORT={port}")
        if " db upgrade" in line:
            line = line.replace("docker run --rm ", "docker run --rm --network host ")
        assert line.startswith("docker "), line
        commands.append(line.replace("docker ", f"{ENGINE} ", 1))
    for command in commands:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    _wait_healthy(name)
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["signing_keys"] is True
