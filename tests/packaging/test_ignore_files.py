"""Keys stay out of git and out of every image build context (.gitignore, .dockerignore)."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from packaging_support import ROOT, dockerfile_instructions, git_ignored

SECRETS = [
    "deploy/site/kek", "deploy/site/sts.yaml", "deploy/site/database-url", "deploy/kek", "deploy/sts.yaml",
    "var/dev.kek", "var/dev/kek", "var/sts.db", ".env", "somewhere/else/kek", "backup.kek",
]  # fmt: skip
TRACKED_DEPLOYMENT_FILES = [
    "deploy/kubernetes/deployment.yaml", "deploy/kubernetes/kustomization.yaml",
    "deploy/kubernetes/site-kustomization.yaml", "deploy/compose/nginx.conf", "compose.yaml", "Dockerfile",
    ".dockerignore",
]  # fmt: skip


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore syntax (Go filepath.Match plus ``**``) as a regular expression
    that matches the path or any of its parent directories."""
    pattern = pattern.strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(f"{out}(?:/.*)?")


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str], str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        text = line[1:] if keep else line
        rules.append((keep, _docker_pattern(text), text))
    return rules


def in_build_context(path: str) -> bool:
    included = True
    for keep, pattern, _ in _dockerignore_rules():
        if pattern.fullmatch(path):
            included = keep
    return included


def test_dockerignore_is_an_allowlist() -> None:
    rules = _dockerignore_rules()
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
