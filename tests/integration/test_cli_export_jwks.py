"""``sts keys export-jwks``: the published keys including the next one, a rotation warning on
stderr, ``--out`` and ``--json``, and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sts import jose
from sts.cli.jwks_export import ROTATION_WARNING
from sts.cli.main import main


@pytest.fixture()
def deployed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("STS_KEK", "STS_KEK_FILE", "STS_KEK_PREVIOUS", "STS_KEK_PREVIOUS_FILE", "STS_DEV_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STS_DATABASE_URL", f"sqlite:///{tmp_path / 'sts.db'}")
    monkeypatch.setenv("STS_CONFIG", str(tmp_path / "deploy" / "sts.yaml"))
    monkeypatch.setenv("STS_KEK_FILE", str(tmp_path / "deploy" / "kek"))
    assert run("init", "deploy").exit_code == 0
    assert run("db", "upgrade").exit_code == 0
    assert run("keys", "rotate").exit_code == 0
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def listed() -> list[dict[str, object]]:
    result = run("keys", "list", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_exports_the_published_set_with_the_next_key_and_warns(deployed: Path) -> None:
    result = run("keys", "export-jwks")
    assert result.exit_code == 0, result.output
    assert ROTATION_WARNING in result.stderr
    document = json.loads(result.stdout)
    kids = {k["kid"] for k in document["keys"]}
    published = {str(k["kid"]) for k in listed() if k["published"]}
    assert kids == published
    states = {str(k["state"]) for k in listed()}
    assert {"active", "next"} <= states
    assert all("d" not in k for k in document["keys"])  # public members only
    jose.parse_jwks(document)  # a JWK Set our own verifier accepts


def test_out_writes_the_file_and_json_reports(deployed: Path) -> None:
    out = deployed / "upload" / "jwks.json"
    out.parent.mkdir()
    result = run("keys", "export-jwks", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["out"] == str(out) and report["warning"] == ROTATION_WARNING
    assert json.loads(out.read_text()) == report["jwks"]
    assert {k["state"] for k in report["keys"]} >= {"active", "next"}
    human = run("keys", "export-jwks", "--out", str(out))
    assert human.exit_code == 0 and human.stdout.startswith("wrote ") and ROTATION_WARNING in human.stderr


def test_alg_filter_and_refusals(deployed: Path) -> None:
    none = run("keys", "export-jwks", "--alg", "RS256")
    assert none.exit_code == 2 and none.stdout == "" and none.stderr.startswith("sts: no published signing key for RS256")
    bad = run("keys", "export-jwks", "--out", str(deployed / "missing-dir" / "jwks.json"))
    assert bad.exit_code == 2 and "cannot write" in bad.stderr and "Traceback" not in bad.stderr
    es = run("keys", "export-jwks", "--alg", "ES256")
    assert es.exit_code == 0 and all(k["alg"] == "ES256" for k in json.loads(es.stdout)["keys"])
