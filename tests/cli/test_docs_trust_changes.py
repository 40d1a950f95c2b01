"""docs/trust-changes.md is followed word for word: its files load, and the outputs it shows
are what the commands print for them."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import yaml
from cli_support import Run

DOC = (Path(__file__).resolve().parents[2] / "docs" / "trust-changes.md").read_text(encoding="utf-8")
FILES = ("trust/sts.yaml", "trust/issuers/github.yaml", "trust/issuers/gitlab.yaml", "trust/grants/deploy.yaml")


def _file_block(name: str) -> str:
    m = re.search(r"`" + re.escape(name) + r"`[^\n]*\n(?:[^\n]*\n)*?```yaml\n(.*?)```", DOC, re.S)
    assert m is not None, name
    return m.group(1)


def _output_after(marker: str, nth: int = 0) -> str:
    blocks = re.findall(re.escape(marker) + r".*?```text\n(.*?)```", DOC, re.S)
    return str(blocks[nth])


def _write(root: Path) -> None:
    for name in FILES:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(_file_block(name))


def _edit(path: Path, *pairs: tuple[str, str]) -> None:
    text = path.read_text()
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)


def test_walk_through(cli: Path, run: Callable[..., Run]) -> None:
    _write(cli)
    check = run("config", "check", "trust/")
    assert (check.code, check.stdout) == (0, "trust: ok\n")

    # Step 3: the pull request of the example.
    base = cli / "base"
    base.mkdir()
    (cli / "trust").rename(base / "trust")
    _write(cli)
    grant = cli / "trust" / "grants" / "deploy.yaml"
    _edit(grant, ("(5678|5679)", "(5678|5679|9999)"), ("        scopes: [deploy]\n", "        scopes: [deploy, admin]\n"),
          ("lifetime: 600", "lifetime: 300"))
    _edit(cli / "trust" / "sts.yaml", ("max_lifetime: 3600", "max_lifetime: 7200"))
    diff = run("config", "diff", "base/trust", "trust")
    assert diff.code == 3
    assert diff.stdout == _output_after("sts config diff base/trust trust\n```")
    # The same against a base where the grant is enforced.
    for root in (base, cli):
        _edit(root / "trust" / "grants" / "deploy.yaml", ("mode: audit", "mode: enforce"))
    enforced = run("config", "diff", "base/trust", "trust")
    assert enforced.code == 3
    assert enforced.stdout == _output_after("already enforced (`mode: enforce` on both sides):")
    _edit(base / "trust" / "grants" / "deploy.yaml", ("mode: enforce", "mode: audit"))

    # Step 6: the pull request that enforces the grant.
    _write(cli)
    _edit(grant, ("mode: audit", "mode: enforce"))
    enforce = run("config", "diff", "base/trust", "trust")
    assert enforce.code == 3
    assert enforce.stdout == _output_after("The diff shows the one widening")

    # Step 2: the problems of a directory.
    _write(cli)
    (cli / "trust" / "tokens.yaml").write_text("tokens:\n  max_lifetime: 7200\n")
    (cli / "trust" / "grants" / "extra.yaml").write_text(
        "grants:\n  - name: deploy\n    match: {identity: x}\n    targets: [{audience: a}]\n")
    problems = run("config", "check", "trust/")
    assert problems.code == 1
    assert problems.stdout == _output_after("with the\nfile inside the directory:")


def test_ci_snippets_are_valid_yaml() -> None:
    snippets = re.findall(r"```yaml\n(# \.(?:github|gitlab).*?)```", DOC, re.S)
    assert len(snippets) == 2
    github, gitlab = (yaml.safe_load(s) for s in snippets)
    assert "trust-change-approved" in github["jobs"]["diff"]["steps"][-1]["run"]
    assert "sts config diff ../base/trust trust" in gitlab["trust-review"]["script"][-1]
