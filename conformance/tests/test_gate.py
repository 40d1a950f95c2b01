"""No vacuous results: the sanity gates, ``--fail-on``, and reports that agree with the exit code.

The run that matters most here is the usual first-run mistake: a target that does not trust the
kit's issuer. It refuses every token, so every "must be refused" case would pass without testing
anything; the kit must call them INCONCLUSIVE and exit 3 instead.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conformance.cli import conformance_command
from conformance.gate import EXIT_INCONCLUSIVE, GATES, UNGATED, gate_of
from conformance.issuer import LocalIssuer, SpiffeBundleServer
from conformance.redact import describe_error, redact
from conformance.report import to_json, to_junit, to_markdown
from conformance.runner import CaseResult, RunReport, run
from conformance.tests.reference_target import ReferenceTarget
from conformance.verdict import SECURITY_PROPERTIES, counted, exit_code


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def standalone_target() -> Iterator[Callable[..., Path]]:
    """Writes profiles for a reference target that trusts the kit's issuer at a free port; the CLI
    starts that issuer itself. With ``trusted_issuer=False`` the kit's issuer listens elsewhere
    and a stranger issuer, whose keys the kit does not have, answers at the trusted port."""
    issuer_port, bundle_port = _free_port(), _free_port()
    target = ReferenceTarget(LocalIssuer(port=issuer_port, algorithms=()), SpiffeBundleServer(port=bundle_port)).start()
    stranger = LocalIssuer(port=issuer_port)

    def write(directory: Path, variant: str, *, trusted_issuer: bool = True) -> Path:
        data = target.profile(variant).model_dump(mode="json")
        if not trusted_issuer:
            stranger.start()
        data["issuer"]["port"] = issuer_port if trusted_issuer else _free_port()
        data["spiffe"]["port"] = bundle_port
        path = directory / f"{variant}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    try:
        yield write
    finally:
        stranger.stop()
        target.stop()


@pytest.fixture(scope="module")
def strangers() -> Iterator[tuple[LocalIssuer, SpiffeBundleServer]]:
    """An issuer and a bundle endpoint the reference target has never heard of."""
    with LocalIssuer(algorithms=("RS256", "ES256", "PS256")) as issuer, SpiffeBundleServer("conformance.test") as bundle:
        yield issuer, bundle


@pytest.fixture(scope="module")
def trusts_nothing(target: ReferenceTarget, strangers: tuple[LocalIssuer, SpiffeBundleServer]) -> RunReport:
    issuer, bundle = strangers
    return run(target.profile("reference"), issuer=issuer, spiffe=bundle)


def test_a_target_that_trusts_nothing_is_inconclusive_not_conformant(
        trusts_nothing: RunReport, strangers: tuple[LocalIssuer, SpiffeBundleServer]) -> None:
    report = trusts_nothing
    assert report.exit_code == EXIT_INCONCLUSIVE
    outcomes = {r.id: r.outcome for r in report.results}
    # The forgeries that "passed" in the first edition did not pass this time.
    for forged in ("rfc8725.alg.none-refused", "rfc8725.alg.hs256-with-public-key",
                   "rfc8693.error.subject-token-untrusted-signature", "spiffe.svid.untrusted-key",
                   "rfc8693.actor.invalid-token", "hardening.replay.refused"):
        assert outcomes[forged] == "inconclusive", forged
    # Nothing that sends an exchange passed: only cases reading published documents may pass.
    assert {r.id for r in report.results if r.outcome == "pass"} <= UNGATED
    assert outcomes["rfc8693.request.valid-exchange"] == "fail"
    assert outcomes["spiffe.svid.valid"] == "fail"
    assert outcomes["rfc8693.actor.delegation"] == "inconclusive"
    assert set(report.gate_failures) == {"exchange", "spiffe"}
    message = report.gate_failures["exchange"]
    assert f"does it trust {strangers[0].url}" in message and "HTTP 400 error=invalid_request" in message
    assert "trust domain 'conformance.test'" in report.gate_failures["spiffe"]


@pytest.mark.parametrize("variant", ["reference", "confidential"])
def test_against_the_reference_every_gate_opens(variant: str, target: ReferenceTarget, issuer: LocalIssuer,
                                                spiffe: SpiffeBundleServer) -> None:
    """Each negative case's positive twin is accepted by the reference target, so no case there is
    inconclusive and every one behind a gate concluded."""
    report = run(target.profile(variant), issuer=issuer, spiffe=spiffe)
    assert report.gate_failures == {} and report.inconclusive == []
    outcomes = {r.id: r.outcome for r in report.results}
    assert all(outcomes[g.twin] == "pass" for g in GATES.values())
    behind = {r.id for r in report.results if gate_of(r.id) is not None}
    assert len(behind) > 80 and all(outcomes[i] in ("pass", "skip") for i in behind)


def test_an_actor_gate_failure_leaves_other_cases_conclusive(target: ReferenceTarget, issuer: LocalIssuer,
                                                             spiffe: SpiffeBundleServer) -> None:
    profile = target.profile("reference")
    # The target's policy does not allow this actor, so no valid delegation can succeed.
    profile = profile.model_copy(update={"actor": profile.actor.model_copy(update={"subject": "intruder-agent"})})
    report = run(profile, issuer=issuer, spiffe=spiffe, only=["rfc8693.actor.*", "rfc8725.alg.none-refused"])
    outcomes = {r.id: r.outcome for r in report.results}
    assert outcomes == {"rfc8693.actor.delegation": "fail", "rfc8693.actor.not-allowed": "inconclusive",
                        "rfc8693.actor.invalid-token": "inconclusive", "rfc8693.actor.expired-token": "inconclusive",
                        "rfc8725.alg.none-refused": "pass"}
    assert set(report.gate_failures) == {"actor"} and "allow actor 'intruder-agent'" in report.gate_failures["actor"]
    assert report.exit_code == EXIT_INCONCLUSIVE


def test_the_gate_twin_runs_even_when_not_selected(target: ReferenceTarget, strangers: tuple[LocalIssuer,
                                                                                             SpiffeBundleServer]) -> None:
    issuer, bundle = strangers
    report = run(target.profile("reference"), issuer=issuer, spiffe=bundle, only=["rfc8725.alg.none-refused"])
    assert [(r.id, r.outcome) for r in report.results] == [("rfc8725.alg.none-refused", "inconclusive")]
    assert report.exit_code == EXIT_INCONCLUSIVE and "exchange" in report.gate_failures


@pytest.mark.parametrize(("case_id", "gate"), [
    ("rfc8693.request.valid-exchange", None), ("rfc8725.alg.none-refused", "exchange"),
    ("spiffe.svid.valid", None), ("spiffe.svid.expired", "spiffe"), ("rfc8693.actor.delegation", "exchange"),
    ("rfc8693.actor.expired-token", "actor"), ("rfc8414.metadata.reachable", None),
    ("some.future.case", "exchange"),
])
def test_gate_of(case_id: str, gate: str | None) -> None:
    assert gate_of(case_id) == gate


def test_every_gate_twin_is_a_registered_must_case() -> None:
    from conformance.cases import all_cases

    cases = {c.id: c for c in all_cases()}
    for gate in GATES.values():
        assert cases[gate.twin].level == "MUST"
    assert UNGATED <= set(cases) and SECURITY_PROPERTIES <= set(cases)


# --fail-on ------------------------------------------------------------------------------
def _result(level: str, outcome: str, case_id: str = "x.case") -> CaseResult:
    return CaseResult(case_id, "RFC 8693 §2.2.2", level, "t", outcome)  # type: ignore[arg-type]


@pytest.mark.parametrize(("level", "case_id", "expected"), [
    ("MUST", "x", {"must": True, "should": True, "hardening": True}),
    ("SHOULD", "x", {"must": False, "should": True, "hardening": True}),
    ("MAY", "x", {"must": False, "should": False, "hardening": True}),
    ("HARDENING", "hardening.request.oversized-body", {"must": False, "should": False, "hardening": True}),
    ("HARDENING", "hardening.replay.refused", {"must": True, "should": True, "hardening": True}),
    ("HARDENING", "hardening.error.no-token-echo", {"must": True, "should": True, "hardening": True}),
    ("HARDENING", "hardening.lifetime.capped-to-subject", {"must": True, "should": True, "hardening": True}),
])
def test_counted_by_fail_on(level: str, case_id: str, expected: dict[str, bool]) -> None:
    for fail_on, want in expected.items():
        assert counted(_result(level, "fail", case_id), fail_on) is want  # type: ignore[arg-type]
        assert counted(_result(level, "error", case_id), fail_on) is want  # type: ignore[arg-type]
        assert counted(_result(level, "skip", case_id), fail_on) is False  # type: ignore[arg-type]


def test_exit_code_precedence() -> None:
    assert exit_code([_result("MUST", "pass")], "must") == 0
    assert exit_code([_result("MUST", "fail")], "must") == 1
    assert exit_code([_result("MUST", "fail"), _result("MUST", "inconclusive")], "must") == EXIT_INCONCLUSIVE


# reports agree with the exit code -----------------------------------------------------------
def _check_agreement(report: RunReport) -> None:
    code = report.exit_code
    root = ET.fromstring(to_junit(report))
    bad = [tc.get("name") for tc in root.iter("testcase") if tc.find("failure") is not None or tc.find("error") is not None]
    assert bool(bad) == (code != 0)
    assert int(root.get("failures", "0")) + int(root.get("errors", "0")) == len(bad)
    assert set(bad) == {r.id for r in report.counted_failures} | {r.id for r in report.inconclusive}
    markdown = to_markdown(report)
    assert f"exit code {code}." in markdown
    verdict = {0: "**", 1: "NOT CONFORMANT", EXIT_INCONCLUSIVE: "INCONCLUSIVE ("}[code]
    assert verdict in markdown and (("CONFORMANT (no failure counted" in markdown) == (code == 0))
    failures = markdown.split("## Failures", 1)[1].split("\n#", 1)[0]
    assert ("None." in failures) == (not report.counted_failures)
    assert json.loads(to_json(report))["exit_code"] == code


@pytest.mark.parametrize(("variant", "only", "expected"), [
    ("reference", None, {"must": 0, "should": 0, "hardening": 0}),
    ("leaks-token", None, {"must": 1, "should": 1, "hardening": 1}),
    ("copies-audience", ["rfc8693.error.forbidden-audience-invalid-target"], {"must": 0, "should": 1, "hardening": 1}),
    ("copies-audience", ["hardening.audience.unknown-refused"], {"must": 0, "should": 0, "hardening": 1}),
])
def test_fail_on_and_reports_agree(variant: str, only: list[str] | None, expected: dict[str, int],
                                   target: ReferenceTarget, issuer: LocalIssuer, spiffe: SpiffeBundleServer) -> None:
    report = run(target.profile(variant), issuer=issuer, spiffe=spiffe, only=only)
    for fail_on, code in expected.items():
        report.fail_on = fail_on  # type: ignore[assignment]
        assert report.exit_code == code, fail_on
        _check_agreement(report)


def test_inconclusive_reports_agree(trusts_nothing: RunReport) -> None:
    for fail_on in ("must", "should", "hardening"):
        trusts_nothing.fail_on = fail_on  # type: ignore[assignment]
        _check_agreement(trusts_nothing)
    trusts_nothing.fail_on = "must"
    assert "Sanity gates that failed" in to_markdown(trusts_nothing)
    assert 'name="sanity-gate.exchange"' in to_junit(trusts_nothing)


# failure messages -----------------------------------------------------------------------------
def test_failure_messages_show_the_targets_answer_redacted(target: ReferenceTarget, issuer: LocalIssuer,
                                                           spiffe: SpiffeBundleServer) -> None:
    report = run(target.profile("leaks-token"), issuer=issuer, spiffe=spiffe, only=["hardening.error.*"])
    junit = to_junit(report)
    assert "eyJ" not in junit and "eyJ" not in to_markdown(report)
    # The RFC section rides along with the message in every format that shows a failure.
    echo = ET.fromstring(junit).find(".//testcase[@name='hardening.error.no-token-echo']/failure")
    assert echo is not None and echo.get("message", "").endswith("(RFC 6749 §5.2)")


def test_describe_error() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    text = describe_error(400, "invalid_request", f"Token {jwt} is expired;  opaque {'A' * 40}")
    assert text == 'HTTP 400 error=invalid_request error_description="Token [redacted] is expired; opaque [redacted]"'
    assert describe_error(401, None, None) == "HTTP 401"
    assert len(describe_error(400, "x", "word " * 100)) < 260
    assert redact("aud https://api.conformance.test refused") == "aud https://api.conformance.test refused"


# the command line -----------------------------------------------------------------------------
@pytest.mark.parametrize(("fail_on", "code"), [("must", 0), ("should", 1), ("hardening", 1)])
def test_cli_fail_on(tmp_path: Path, standalone_target: Callable[..., Path], fail_on: str, code: int) -> None:
    profile = standalone_target(tmp_path, "copies-audience")
    result = CliRunner().invoke(conformance_command, ["--target", str(profile), "--json", "--fail-on", fail_on,
                                                      "--only", "rfc8693.error.forbidden-audience-invalid-target"])
    assert result.exit_code == code, result.output
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == code and doc["fail_on"] == fail_on
    assert [r["counted"] for r in doc["results"]] == [code == 1]
    assert CliRunner().invoke(conformance_command, ["--target", str(profile), "--fail-on", "never"]).exit_code == 2


def test_cli_exits_3_with_advice_when_the_target_trusts_nothing(tmp_path: Path,
                                                                standalone_target: Callable[..., Path]) -> None:
    profile = standalone_target(tmp_path, "reference", trusted_issuer=False)
    junit = tmp_path / "r.xml"
    result = CliRunner().invoke(conformance_command, ["--target", str(profile), "--quiet", "--junit", str(junit),
                                                      "--only", "rfc8725.*", "--only", "rfc8693.request.valid-exchange"])
    assert result.exit_code == EXIT_INCONCLUSIVE, result.output
    assert re.search(r"sanity gate 'exchange' failed: the target refused a valid token from the kit's issuer "
                     r"\(.*HTTP 400 error=invalid_request.*\): does it trust http://127\.0\.0\.1:\d+", result.stderr)
    assert "INCONCLUSIVE (" in result.stdout
    assert ET.parse(junit).getroot().get("errors") != "0"
