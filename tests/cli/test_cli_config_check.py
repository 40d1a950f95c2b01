"""``sts config check``: every problem of every grant and issuer at once, each with file, line
and column; warnings for near misses of well-known issuer URLs; ``--for-production``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_support import Run, new_kek

from sts.config.lint import well_known_issuer_near_miss

GITHUB = "https://token.actions.githubusercontent.com"

# grants[0] has a field error (an unknown key); grants[1] is valid on its own but names an
# unknown issuer and exceeds the lifetime cap; issuers[1] has a field error and yet shares a
# preset with issuers[0] and their URL, which grants[2] must not ignore.
TWO_GRANTS = f"""\
issuer: https://sts.example.com
tokens: {{default_lifetime: 300, max_lifetime: 600}}
issuers:
  - name: gh
    issuer: {GITHUB}
    preset: github-actions
    audiences: [https://sts.example.com]
  - name: gh-copy
    issuer: {GITHUB}
    preset: github-actions
    audiences: [https://sts.example.com]
    algorithms: [HS256]
grants:
  - name: deploy
    issuers: [gh]
    colour: blue
    match: {{identity: "github:1/2"}}
    targets: [{{audience: https://api.example.com}}]
  - name: read
    issuers: [gitlab]
    lifetime: 7200
    match: {{identity: "github:1/3"}}
    targets: [{{audience: https://api.example.com}}]
  - name: any
    match: {{identity: "github:1/4"}}
    targets: [{{audience: https://api.example.com}}]
"""


def check(run: Callable[..., Run], *args: str) -> tuple[int, dict[str, Any]]:
    result = run("config", "check", *args, "--json")
    return result.code, json.loads(result.stdout)


def test_problems_of_every_grant_and_issuer_at_once_with_lines_and_columns(cli: Path, run: Callable[..., Run]) -> None:
    (cli / "sts.yaml").write_text(TWO_GRANTS)
    code, data = check(run, "sts.yaml")
    assert code == 1 and data["ok"] is False and data["errors"] == 6 and data["warnings"] == 0
    got = {(p["path"], p["line"], p["column"]) for p in data["problems"]}
    assert got == {
        ("issuers[1].issuer", 9, 5),        # duplicate issuer URL (issuers[1] also has a field error)
        ("issuers[1].algorithms", 12, 5),   # the field error itself
        ("grants[0].colour", 16, 5),        # grants[0]: unknown key
        ("grants[1].issuers[0]", 20, 15),   # grants[1]: unknown issuer
        ("grants[1].lifetime", 21, 5),      # grants[1]: above tokens.max_lifetime
        ("grants[2].issuers", 24, 5),       # grants[2]: must name its issuers (shared preset)
    }
    for p in data["problems"]:
        assert set(p) >= {"file", "line", "column", "path", "message", "severity"}
        assert p["file"] == "sts.yaml" and p["severity"] == "error"
        assert isinstance(p["line"], int) and isinstance(p["column"], int)
    assert [p["line"] for p in data["problems"]] == sorted(p["line"] for p in data["problems"])


def test_human_output_is_one_line_per_problem_in_compiler_form(cli: Path, run: Callable[..., Run]) -> None:
    (cli / "sts.yaml").write_text(TWO_GRANTS)
    result = run("config", "check", "sts.yaml")
    lines = result.stdout.splitlines()
    assert result.code == 1 and lines[-1] == "6 errors"
    assert "sts.yaml:20:15: error: grants[1].issuers[0]: unknown issuer 'gitlab'" in lines
    assert "sts.yaml:16:5: error: grants[0].colour: unknown key (not part of the schema)" in lines


@pytest.mark.parametrize(
    ("url", "how"),
    [
        (GITHUB + "/", ["a trailing slash"]),
        ("https://Token.Actions.GitHubUserContent.com", ["letter case"]),
        ("https://token.actions.githubusercontent.com:443", ["an explicit default port"]),
        ("HTTPS://token.actions.githubusercontent.com:443/", ["a trailing slash", "letter case", "an explicit default port"]),
        ("https://gitlab.com/", ["a trailing slash"]),
    ],
    ids=["slash", "case", "port", "all", "gitlab"],
)
def test_near_misses_of_well_known_issuers(url: str, how: list[str]) -> None:
    miss = well_known_issuer_near_miss(url)
    assert miss is not None and miss[2] == how


@pytest.mark.parametrize(
    "url",
    [GITHUB, "https://gitlab.com", "https://gitlab.example.com/", GITHUB + "/other", "https://token.actions.githubusercontent.com:8443",
     "https://issuer.example.com/", "not a url"],
)
def test_exact_or_unrelated_issuers_are_not_near_misses(url: str) -> None:
    assert well_known_issuer_near_miss(url) is None


def test_trailing_slash_on_github_is_a_warning(cli: Path, run: Callable[..., Run]) -> None:
    (cli / "sts.yaml").write_text(TWO_GRANTS.split("  - name: gh-copy")[0].replace(f"issuer: {GITHUB}", f"issuer: {GITHUB}/")
                                  + "grants: []\n")
    code, data = check(run, "sts.yaml")
    assert code == 0 and data["ok"] is True and (data["errors"], data["warnings"]) == (0, 1)
    [warning] = data["problems"]
    assert (warning["path"], warning["line"], warning["column"], warning["severity"]) == ("issuers[0].issuer", 5, 5, "warning")
    assert f"differs from the GitHub Actions issuer {GITHUB} only by a trailing slash" in warning["message"]
    human = run("config", "check", "sts.yaml")
    assert human.code == 0 and human.stdout.splitlines()[-1] == "1 warning"
    assert human.stdout.startswith("sts.yaml:5:5: warning: issuers[0].issuer: ")
    assert run("config", "check", "sts.yaml", "--strict").code == 1


def test_warnings_come_with_errors_too(cli: Path, run: Callable[..., Run]) -> None:
    (cli / "sts.yaml").write_text(TWO_GRANTS.replace(f"issuer: {GITHUB}\n    preset: github-actions\n    audiences: [https://sts.example.com]\n  - name: gh-copy",
                                                     f"issuer: {GITHUB}/\n    preset: github-actions\n    audiences: [https://sts.example.com]\n  - name: gh-copy"))
    code, data = check(run, "sts.yaml")
    assert code == 1 and data["warnings"] == 1 and data["errors"] >= 5


def test_for_production_reports_what_serve_refuses(cli: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("init", "dev", "--dev").code == 0
    assert run("config", "check", "dev/sts.yaml").code == 0  # fine for dev mode
    code, data = check(run, "dev/sts.yaml", "--for-production")
    assert code == 1
    by_path = {p["path"]: p for p in data["problems"]}
    assert set(by_path) == {"issuer", "issuers[0].allow_insecure_http", "STS_KEK/STS_KEK_FILE"}
    assert by_path["issuer"]["line"] is not None and "plain http" in by_path["issuer"]["message"]
    insecure = by_path["issuers[0].allow_insecure_http"]
    text = (cli / "dev" / "sts.yaml").read_text().splitlines()
    assert text[insecure["line"] - 1][insecure["column"] - 1:].startswith("allow_insecure_http")
    assert "refuses this outside dev mode" in insecure["message"]
    kek = by_path["STS_KEK/STS_KEK_FILE"]
    assert kek["file"] is None and kek["line"] is None and kek["severity"] == "error"

    monkeypatch.setenv("STS_DEV_MODE", "true")
    monkeypatch.setenv("STS_KEK", "too-short")
    monkeypatch.setenv("STS_WORKERS", "2")
    code, data = check(run, "dev/sts.yaml", "--for-production")
    by_path = {p["path"]: p for p in data["problems"]}
    assert by_path["STS_DEV_MODE"]["severity"] == "error"
    assert "32 bytes" in by_path["STS_KEK"]["message"] or "base64url" in by_path["STS_KEK"]["message"]
    assert by_path["STS_DATABASE_URL"]["severity"] == "warning" and "PostgreSQL" in by_path["STS_DATABASE_URL"]["message"]
    assert not (cli / "var").exists()  # checking never generates a dev KEK


def test_for_production_accepts_the_production_starter_with_a_kek(cli: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("init", "deploy").code == 0
    monkeypatch.setenv("STS_KEK", new_kek())
    result = run("config", "check", "deploy/sts.yaml", "--for-production")
    assert result.code == 0 and result.stdout.strip() == "deploy/sts.yaml: ok (for production)"


def test_for_production_on_an_invalid_file_still_names_dev_only_parts(cli: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STS_KEK", new_kek())
    (cli / "sts.yaml").write_text(
        "issuer: http://127.0.0.1:8080\n"
        "issuers:\n"
        "  - name: local\n"
        "    issuer: http://127.0.0.1:9000\n"
        "    allow_insecure_http: true\n"
        "    audiences: []\n"
    )
    code, data = check(run, "sts.yaml", "--for-production")
    assert code == 1
    assert {(p["path"], p["line"]) for p in data["problems"]} == {
        ("issuer", 1), ("issuers[0].allow_insecure_http", 5), ("issuers[0].audiences", 6)}


def test_a_missing_file_is_a_problem_not_a_crash(cli: Path, run: Callable[..., Run]) -> None:
    code, data = check(run, "absent.yaml")
    assert code == 1 and data["problems"][0]["message"] == "configuration file not found"
    assert data["problems"][0]["line"] is None


def test_for_production_reports_an_unusable_setting_as_a_problem(cli: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("init", "deploy").code == 0
    monkeypatch.setenv("STS_PORT", "abc")
    assert run("config", "check", "deploy/sts.yaml").code == 0  # the file alone does not read settings
    code, data = check(run, "deploy/sts.yaml", "--for-production")
    assert code == 1
    [setting] = data["problems"]
    assert setting["path"] == "(settings)" and setting["file"] is None
    assert setting["message"] == "STS_PORT: value is not a valid integer ('abc'); set it to a port number (0-65535)"
