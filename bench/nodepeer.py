"""The Node peer of the benchmark: panva's ``oidc-provider`` 9.x with an RFC 8693 grant.

``bench/node/server.js`` is the server (what it does per request is written at its top);
this module finds Node.js and npm, installs the locked dependencies into ``bench/node`` with
``npm ci`` on first use, and builds the command and environment that start it. When Node.js or
npm is missing, or the install fails, :func:`prepare` says why in one line and the benchmark
skips the peer's scenarios.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parent / "node"
SERVER = NODE_DIR / "server.js"
CLIENT_ID = "bench-peer"  # the peer's one public client (token_endpoint_auth_method "none")
MIN_NODE_MAJOR = 20


def _locked_version(package: str) -> str | None:
    try:
        lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    except (OSError, ValueError):
        return None
    entry = lock.get("packages", {}).get(f"node_modules/{package}")
    return entry.get("version") if isinstance(entry, dict) else None


def _installed_version(package: str) -> str | None:
    try:
        return json.loads((NODE_DIR / "node_modules" / package / "package.json").read_text()).get("version")
    except (OSError, ValueError):
        return None


def installed() -> bool:
    """The locked ``oidc-provider`` and ``jose`` are what ``node_modules`` holds."""
    return all(
        _installed_version(p) is not None and _installed_version(p) == _locked_version(p)
        for p in ("oidc-provider", "jose")
    )


def node_major(node: str) -> int | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20, check=False).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def prepare(*, install_timeout: float = 300.0) -> tuple[str | None, str | None]:
    """(node executable, None) when the peer can run, else (None, why not)."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if path is None)
        return None, f"{missing} not found on PATH (install Node.js {MIN_NODE_MAJOR}+ with npm to run it)"
    major = node_major(node)
    if major is None or major < MIN_NODE_MAJOR:
        return None, f"Node.js {MIN_NODE_MAJOR}+ needed, found {major if major is not None else 'an unknown version'}"
    if installed():
        return node, None
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--omit=dev", "--loglevel=error"],
            cwd=NODE_DIR, capture_output=True, text=True, timeout=install_timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"npm ci in bench/node did not finish within {install_timeout:.0f}s"
    if done.returncode != 0 or not installed():
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return None, f"npm ci in bench/node failed ({last})"
    return node, None


def command(node: str) -> list[str]:
    return [node, str(SERVER)]


def environment(
    *, port: int, workers: int, jwks: Path, subject_issuer: str, subject_audience: str, target: str
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BENCH_PEER_PORT=str(port),
        BENCH_PEER_WORKERS=str(workers),
        BENCH_PEER_JWKS=str(jwks),
        BENCH_PEER_SUBJECT_ISSUER=subject_issuer,
        BENCH_PEER_AUDIENCE=subject_audience,
        BENCH_PEER_TARGET=target,
        NODE_ENV="production",
    )
    return env
