"""``sts config diff | history | show | schema``: exit codes, human and ``--json`` output."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import Run, assert_one_line_user_error

from sts.config.sources import read_source
from sts.store.config_versions import ConfigVersionRepository
from sts.store.db import make_engine

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "sts" / "examples" / "trust"

OLD = """\
issuer: https://sts.example.com
issuers:
  - name: github
    issuer: https://token.actions.githubusercontent.com
    preset: github-actions
    audiences: [https://sts.example.com]
grants:
  - name: deploy
    issuers: [github]
    match: {identity: "github:1/2"}
    targets: [{audience: vault, scopes: [read]}]
    lifetime: 600
"""
WIDER = OLD.replace("scopes: [read]", "scopes: [read, write]").replace("lifetime: 600", "lifetime: 300")
NARROWER = OLD.replace("scopes: [read]", "scopes: []")


def files(root: Path, **texts: str) -> list[Path]:
    out = []
    for name, text in texts.items():
        p = root / f"{name}.yaml"
        p.write_text(text)
        out.append(p)
    return out


def test_diff_widening_exits_3_with_widenings_first_and_marked(cli: Path, run: Callable[..., Run]) -> None:
    old, new = files(cli, old=OLD, new=WIDER)
    result = run("config", "diff", "old.yaml", "new.yaml")
    assert result.code == 3, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("old.yaml (") and " -> new.yaml (" in lines[0]
    assert lines[1].startswith("! widens") and "scopes added: write" in lines[1]
    assert lines[2].startswith("  narrows") and "lifetime" in lines[2] and "600 -> 300" in lines[2]
    assert lines[-2] == "2 changes: 1 widens, 1 narrows"
    assert "exit 3" in lines[-1]

    data = json.loads(run("config", "diff", str(old), str(new), "--json").stdout)
    assert data["widens"] is True and data["counts"] == {"widens": 1, "may_widen": 0, "narrows": 1, "neutral": 0}
    assert [c["effect"] for c in data["changes"]] == ["widens", "narrows"]
    first = data["changes"][0]
    assert (first["section"], first["name"], first["path"], first["old"], first["new"]) == (
        "grant", "deploy", "targets[audience=vault].scopes", ["read"], ["read", "write"])
    assert data["old"]["version"] == read_source(old, max_bytes=1 << 20).version


def test_diff_without_widening_exits_0(cli: Path, run: Callable[..., Run]) -> None:
    old, narrower = files(cli, old=OLD, narrower=NARROWER)
    result = run("config", "diff", str(old), str(narrower))
    assert result.code == 0 and "narrows" in result.stdout and "!" not in result.stdout
    same = run("config", "diff", str(old), str(old), "--json")
    assert same.code == 0 and json.loads(same.stdout)["changes"] == []
    reformatted, = files(cli, reformatted="# a comment\n" + OLD.replace("lifetime: 600", "lifetime:   600"))
    result = run("config", "diff", str(old), str(reformatted))
    assert result.code == 0 and "no change to trust (the files differ only in form" in result.stdout


def test_diff_may_widen_counts_as_widening(cli: Path, run: Callable[..., Run]) -> None:
    old, new = files(cli, old=OLD.replace('{identity: "github:1/2"}', '{identity_pattern: "^github:1/[0-9]$"}'),
                     new=OLD.replace('{identity: "github:1/2"}', '{identity_pattern: "^github:1/[0-9]+$"}'))
    result = run("config", "diff", str(old), str(new))
    assert result.code == 3 and result.stdout.splitlines()[1].startswith("! may widen")


def test_diff_of_directories(cli: Path, run: Callable[..., Run]) -> None:
    old = cli / "old"
    shutil.copytree(EXAMPLE, old)
    new = cli / "new"
    shutil.copytree(EXAMPLE, new)
    grant = new / "grants" / "deploy.yaml"
    grant.write_text(grant.read_text().replace("mode: audit", "mode: enforce"))
    result = run("config", "diff", str(old), str(new))
    assert result.code == 3
    assert "! widens     grant deploy mode: mode audit -> enforce (now issues tokens)" in result.stdout.splitlines()


@pytest.mark.parametrize("args", [
    pytest.param(("one.yaml",), id="one-path"),
    pytest.param(("a.yaml", "b.yaml", "c.yaml"), id="three-paths"),
    pytest.param(("a.yaml", "b.yaml", "--against-running"), id="two-paths-against-running"),
    pytest.param(("a.yaml", "--against-running", "--against", "abcd"), id="both-against"),
])
def test_diff_usage_errors(cli: Path, run: Callable[..., Run], args: tuple[str, ...]) -> None:
    assert_one_line_user_error(run("config", "diff", *args))


def test_diff_of_a_configuration_that_does_not_load(cli: Path, run: Callable[..., Run]) -> None:
    old, bad = files(cli, old=OLD, bad=OLD.replace("issuers: [github]", "issuers: [gitlab]"))
    line = assert_one_line_user_error(run("config", "diff", str(old), str(bad)), "bad.yaml does not load", "sts config check")
    assert "unknown issuer" in line
    assert_one_line_user_error(run("config", "diff", str(old), str(cli / "missing.yaml")), "not found")


def test_against_running_needs_a_database(cli: Path, run: Callable[..., Run]) -> None:
    old, = files(cli, old=OLD)
    assert_one_line_user_error(run("config", "diff", str(old), "--against-running"), "no database", "sts db upgrade")
    assert_one_line_user_error(run("config", "history"), "no database")


def _store(cli: Path, run: Callable[..., Run], path: Path, at: float) -> str:
    """Record a configuration as a broker does when it loads one (sts.app)."""
    if not (cli / "var" / "sts.db").exists():
        assert run("db", "upgrade").code == 0
    source = read_source(path, max_bytes=1 << 24)
    engine = make_engine(f"sqlite:///{cli / 'var' / 'sts.db'}")
    try:
        ConfigVersionRepository(engine).record(sha256=source.sha256, kind=source.kind, source=str(path.resolve()),
                                               document=source.document_bytes.decode(), now=at, loaded_by="host/1/abc")
    finally:
        engine.dispose()
    return source.version


def test_history_show_and_against_running(cli: Path, run: Callable[..., Run]) -> None:
    assert run("db", "upgrade").code == 0
    empty = run("config", "history")
    assert empty.code == 0 and "no configuration version stored yet" in empty.stdout
    assert_one_line_user_error(run("config", "diff", "x.yaml", "--against-running"), "holds no configuration version")

    old, new = files(cli, old=OLD, new=WIDER)
    now = time.time()
    v_dir = _store(cli, run, EXAMPLE, now - 100)
    v_old = _store(cli, run, old, now - 10)

    history = run("config", "history")
    assert history.code == 0
    lines = history.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "LAST", "LOADED", "FIRST", "LOADED", "KIND", "LOADED", "BY", "SOURCE"]
    assert lines[1].startswith(f"* {v_old}") and "file" in lines[1] and lines[1].endswith(str(old.resolve()))
    assert lines[2].startswith(f"  {v_dir}") and "directory" in lines[2]
    data = json.loads(run("config", "history", "--json").stdout)
    assert [(d["version"], d["latest"], d["kind"]) for d in data] == [(v_old, True, "file"), (v_dir, False, "directory")]
    assert "document" not in data[0]

    shown = run("config", "show", v_old)
    assert shown.code == 0 and shown.stdout == OLD
    assert hashlib.sha256(shown.stdout.encode()).hexdigest().startswith(v_old)
    shown_dir = run("config", "show", v_dir[:6])
    assert shown_dir.code == 0
    assert shown_dir.stdout.startswith("# ==> sts.yaml <==\n") and "# ==> grants/deploy.yaml <==\n" in shown_dir.stdout
    as_json = json.loads(run("config", "show", v_dir, "--json").stdout)
    assert as_json["version"] == v_dir and as_json["files"]["issuers/gitlab.yaml"] == (EXAMPLE / "issuers" / "gitlab.yaml").read_text()
    assert_one_line_user_error(run("config", "show", "0000000000ab"), "no stored configuration version", "sts config history")
    assert_one_line_user_error(run("config", "show", "zz"), "not a configuration version")

    running = run("config", "diff", str(new), "--against-running")
    assert running.code == 3
    assert running.stdout.splitlines()[0] == f"running version {v_old} -> {new} ({read_source(new, max_bytes=1 << 20).version})"
    assert json.loads(run("config", "diff", str(new), "--against-running", "--json").stdout)["old"] == {
        "source": "database", "version": v_old, "running": True, "loaded_from": str(old.resolve())}
    assert run("config", "diff", str(old), "--against-running").code == 0
    against = run("config", "diff", str(cli / "old.yaml"), "--against", v_dir, "--json")
    assert against.code == 3 and json.loads(against.stdout)["old"]["version"] == v_dir


def test_schema_prints_the_published_schema(cli: Path, run: Callable[..., Run]) -> None:
    result = run("config", "schema")
    assert result.code == 0 and result.stdout == (REPO / "docs" / "sts-config.schema.json").read_text()
    part = run("config", "schema", "--part", "--out", str(cli / "part.json"))
    assert part.code == 0 and (cli / "part.json").read_text() == (REPO / "docs" / "sts-config-part.schema.json").read_text()


def test_check_names_the_file_of_a_directory(cli: Path, run: Callable[..., Run]) -> None:
    d = cli / "trust"
    shutil.copytree(EXAMPLE, d)
    (d / "grants" / "extra.yaml").write_text("grants:\n  - name: deploy\n    match: {identity: x}\n    targets: [{audience: a}]\n")
    result = run("config", "check", str(d))
    assert result.code == 1
    assert result.stdout.splitlines()[0] == f"{d / 'grants' / 'extra.yaml'}:2:5: error: grants[1].name: duplicate grant name 'deploy' (also grants[0])"
