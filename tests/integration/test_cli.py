"""The ``sts`` command line as a platform team uses it (human output and --json, exit codes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sts.cli.main import main


@pytest.fixture()
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STS_DATABASE_URL", f"sqlite:///{tmp_path / 'sts.db'}")
    monkeypatch.setenv("STS_CONFIG", str(tmp_path / "deploy" / "sts.yaml"))
    monkeypatch.setenv("STS_KEK_FILE", str(tmp_path / "deploy" / "kek"))
    monkeypatch.delenv("STS_DEV_MODE", raising=False)
    return tmp_path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_init_check_migrate_keys(cli_env: Path) -> None:
    code, out = run("init", "deploy", "--dev")
    assert code == 0 and "created deploy/sts.yaml" in out
    assert (cli_env / "deploy" / "kek").stat().st_mode & 0o777 == 0o600

    code, out = run("config", "check", "deploy/sts.yaml")
    assert code == 0 and out.strip().endswith(": ok")

    code, out = run("db", "current", "--json")
    assert code == 1 and json.loads(out)["up_to_date"] is False
    code, out = run("db", "upgrade")
    assert code == 0 and "-> " in out
    code, out = run("db", "current", "--json")
    assert code == 0 and json.loads(out)["up_to_date"] is True

    code, out = run("keys", "rotate", "--alg", "ES256", "--json")
    assert code == 0
    code, out = run("keys", "list", "--json")
    keys = json.loads(out)
    assert {k["state"] for k in keys} == {"active", "next"}
    code, out = run("keys", "rotate", "--json")
    assert code == 0 and json.loads(out)["ES256"]
    code, out = run("keys", "list")
    assert "retired" in out and "active" in out and "next" in out


def test_init_without_dev_is_a_valid_production_starter(cli_env: Path) -> None:
    assert run("init", "deploy")[0] == 0
    code, out = run("config", "check", "deploy/sts.yaml", "--json")
    assert code == 0, out
    config = yaml.safe_load((cli_env / "deploy" / "sts.yaml").read_text())
    assert all(not i.get("allow_insecure_http") for i in config["issuers"])


def test_config_check_reports_every_problem_with_location(cli_env: Path) -> None:
    bad = cli_env / "bad.yaml"
    bad.write_text(
        "issuer: https://sts.example.com\n"
        "issuers:\n"
        "  - name: gh\n"
        "    issuer: https://token.actions.githubusercontent.com\n"
        "    audiences: [https://sts.example.com]\n"
        "    algorithms: [HS256]\n"
        "    claim_mappings:\n"
        "      identity: 'claims.sub +'\n"
        "grants:\n"
        "  - name: g\n"
        "    match: {identity_pattern: 'no-anchors'}\n"
        "    targets: [{audience: x, scopes: [read], default_scopes: [write]}]\n"
    )
    code, out = run("config", "check", str(bad), "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    locations = " ".join(p["location"] for p in problems)
    assert len(problems) >= 4
    for fragment in ("algorithms", "claim_mappings.identity", "identity_pattern", "grants[0].targets[0]"):
        assert fragment in locations
    assert "line" in locations
    code, human = run("config", "check", str(bad))
    assert code == 1 and human.strip().endswith(f"{len(problems)} errors")


def test_clients_secret(cli_env: Path) -> None:
    code, out = run("clients", "secret", "--json")
    data = json.loads(out)
    assert code == 0 and len(data["client_secret"]) >= 40
    assert hashlib.sha256(data["client_secret"].encode()).hexdigest() == data["secret_sha256"]


def test_serve_refuses_without_kek_outside_dev_mode(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("init", "deploy")[0] == 0
    assert run("db", "upgrade")[0] == 0
    monkeypatch.delenv("STS_KEK_FILE")
    code, out = run("serve", "--config", "deploy/sts.yaml", "--port", "1")
    assert code == 2 and "key-encryption key" in out


def test_serve_refuses_dev_config_outside_dev_mode(cli_env: Path) -> None:
    assert run("init", "deploy", "--dev")[0] == 0
    assert run("db", "upgrade")[0] == 0
    code, out = run("serve", "--config", "deploy/sts.yaml", "--port", "1")
    assert code == 2 and "dev mode" in out
