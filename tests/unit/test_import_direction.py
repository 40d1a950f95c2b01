"""Imports go one way: HTTP and wiring -> pipeline -> capability packages -> store and jose.

A module that imports upward would let a decision depend on the transport (or a store on the
pipeline) and make the layers impossible to test alone. Imports under ``TYPE_CHECKING`` are
for annotations only and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "sts"

TOP = {"sts.app", "sts.cli"}
# The admin API (sts.admin) is an HTTP surface of its own, at the level of sts.http.
HTTP = {"sts.http", "sts.endpoints", "sts.admin"}
PIPELINE = {"sts.exchange"}
# sts explain runs the pipeline with recording twins: it sits above the pipeline, below the CLI.
EXPLAIN = {"sts.explain"}
BASE = {"sts.jose", "sts.errors", "sts.logs", "sts.gcpolicy", "sts.store"}

# package -> the packages it must never import
FORBIDDEN: dict[str, set[str]] = {
    **{name: TOP | HTTP | PIPELINE | EXPLAIN for name in (
        "sts.subject", "sts.trust", "sts.tokens", "sts.spiffe", "sts.config", "sts.ops", "sts.audit", "sts.lifecycle",
        "sts.availability", "sts.settings", "sts.protocol", "sts.client_auth", "sts.client_tls", "sts.runtime",
        "sts.approvals", "sts.txn", "sts.jsonparam",
        # docs/providers: outbound exchange with model providers, called by the pipeline only.
        "sts.upstream",
        "sts.assertion",
    )},
    "sts.exchange": TOP | HTTP | EXPLAIN,
    "sts.explain": TOP | HTTP,
    "sts.http": TOP,
    "sts.admin": TOP,
    "sts.endpoints": TOP,
    "sts.app": {"sts.cli"},
    **{name: TOP | HTTP | PIPELINE | EXPLAIN | {"sts.subject", "sts.trust", "sts.tokens", "sts.spiffe", "sts.ops", "sts.runtime",
                                                "sts.lifecycle", "sts.approvals", "sts.upstream"}
       for name in BASE},
}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    annotation_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            annotation_only.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in annotation_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "sts" else [f"sts.{a.name}" for a in node.names]
            found.update(n for n in names if n.startswith("sts"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sts"))
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_imports_point_down(module: str, path: Path) -> None:
    forbidden = FORBIDDEN.get(_package(module), set())
    upward = sorted(name for name in _imports(path) if _package(name) in forbidden)
    assert not upward, f"{module} imports {upward}, which sit above it"


def test_the_rules_see_real_imports() -> None:
    # The scanner must find what is there, or every rule above passes vacuously.
    assert "sts.exchange" in _imports(ROOT / "app.py")
    assert "sts.jose" in _imports(ROOT / "subject" / "oidc.py")
