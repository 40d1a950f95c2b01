"""Keys stay out of git and out of every image build context (.gitignore, .dockerignore)."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from packaging_support import ROOT, dockerfile_instructions, dockerignore_rules, git_ignored, in_build_context

SECRETS = [
    "deploy/site/kek", "deploy/site/sts.yaml", "deploy/site/database-url", "deploy/kek", "deploy/sts.yaml",
    "var/dev.kek", "var/dev/kek", "var/sts.db", ".env", "somewhere/else/kek", "backup.kek",
]  # fmt: skip
TRACKED_DEPLOYMENT_FILES = [
    "deploy/kubernetes/deployment.yaml", "deploy/kubernetes/kustomization.yaml",
    "deploy/kubernetes/site-kustomization.yaml", "deploy/compose/nginx.conf", "compose.yaml", "Dockerfile",
    ".dockerignore",
]  # fmt: skip


def test_dockerignore_is_an_allowlist() -> None:
    rules = dockerignore_rules()
    assert rules[0][2] == "*" and not rules[0][0], "the first rule must exclude everything"
    admitted = {text.rstrip("/") for keep, _, text in rules if keep}
    assert admitted == {"pyproject.toml", "README.md", "alembic.ini", "sts", "conformance", "migrations"}


@pytest.mark.parametrize("path", SECRETS + ["sts/kek", "tests/unit/test_cel.py", ".git/config", ".venv/bin/python",
                                            "sts/__pycache__/app.cpython-311.pyc"])
def test_secrets_and_clutter_stay_out_of_the_build_context(path: str) -> None:
    assert not in_build_context(path)


def test_everything_the_dockerfile_copies_is_in_the_build_context() -> None:
    sources = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "COPY" and "--from=" not in instruction.args:
            sources += shlex.split(instruction.args)[:-1]
    assert sources
    for source in sources:
        assert in_build_context(source.rstrip("/")), source
        assert in_build_context(source.rstrip("/") + "/any.py") or (ROOT / source).is_file(), source
    assert in_build_context("migrations/versions/0001_initial.py")


def _in_git_work_tree() -> bool:
    try:
        return subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True,
                              text=True, timeout=30).stdout.strip() == "true"
    except OSError:
        return False


@pytest.mark.skipif(not _in_git_work_tree(), reason="not a git work tree (git ignore rules apply only there)")
def test_git_ignores_keys_but_not_the_manifests() -> None:
    ignored = git_ignored(SECRETS + TRACKED_DEPLOYMENT_FILES)
    assert set(SECRETS) <= ignored, sorted(set(SECRETS) - ignored)
    assert not ignored & set(TRACKED_DEPLOYMENT_FILES), sorted(ignored & set(TRACKED_DEPLOYMENT_FILES))
