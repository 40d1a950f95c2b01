"""Proof that the kit can pass and can fail: the reference target passes every case, and each
deliberately broken variant is caught by exactly the cases listed here."""

from __future__ import annotations

import pytest

from conformance.cases import all_cases
from conformance.issuer import LocalIssuer, SpiffeBundleServer
from conformance.runner import RunReport, run
from conformance.tests.reference_target import ReferenceTarget


def _run(target: ReferenceTarget, issuer: LocalIssuer, spiffe: SpiffeBundleServer, variant: str) -> RunReport:
    # The key-cache cases wait out cache lifetimes: only the correct targets declare the bounds
    # here; test_teeth runs them against the key-cache variants.
    return run(target.profile(variant, key_cache=variant in ("reference", "confidential", "dpop", "dpop-required")), issuer=issuer,
               spiffe=spiffe)


def _failed(report: RunReport) -> set[str]:
    return {r.id for r in report.results if r.failed}


@pytest.mark.parametrize("variant", ["reference", "confidential", "dpop", "dpop-required", "mtls"])
def test_correct_target_passes_every_case(variant: str, target: ReferenceTarget, issuer: LocalIssuer,
                                          spiffe: SpiffeBundleServer) -> None:
    report = _run(target, issuer, spiffe, variant)
    failures = {r.id: r.message for r in report.results if r.failed}
    assert failures == {}
    assert report.exit_code == 0
    skipped = {r.id for r in report.results if r.outcome == "skip"}
    # The dpop-required profile declares every capability; the others skip what they do not declare:
    # client authentication (reference) and DPoP (reference, confidential, mtls); the mtls run
    # leaves the key-cache bounds undeclared (they wait out cache lifetimes; the others cover them).
    client = {"rfc6749.client.wrong-secret", "rfc6749.client.missing-credentials"}
    dpop = {c.id for c in all_cases() if "dpop" in c.needs or "dpop_required" in c.needs}
    required = {c.id for c in all_cases() if "dpop_required" in c.needs}
    key_cache = {"policy.keys.removed-key-refused", "policy.keys.refetch-interval", "policy.keys.fail-fast"}
    expected_skips = {"reference": client | dpop, "confidential": dpop, "dpop": required,
                      "dpop-required": set(), "mtls": dpop | key_cache}[variant]
    assert skipped == expected_skips
    assert len(dpop) == 5 and len(required) == 1


BATTERY = {"rfc6749.error.status-400", "rfc6749.error.error-code-registered"}

CAUGHT_BY = [
    pytest.param("alg-none", {"rfc8725.alg.none-refused", "rfc8693.actor.invalid-token", "rfc7523.grant.alg-none"}, 1, id="accepts-alg-none"),
    pytest.param("no-audience-check", {"rfc8725.claims.wrong-audience", "rfc8725.claims.missing-audience",
                                       "rfc7519.claims.audience-exact", "rfc7519.claims.duplicate-names",
                                       "rfc7523.grant.wrong-audience", *BATTERY},
                 1, id="skips-audience-check"),
    pytest.param("ignores-exp", {"rfc7519.claims.expired", "rfc8693.actor.expired-token",
                                 "hardening.claims.missing-exp", "rfc7519.claims.exp-not-numeric",
                                 "rfc7519.claims.duplicate-names", "rfc7523.grant.expired", *BATTERY}, 1,
                 id="ignores-exp"),
    pytest.param("no-scope-narrowing", {"policy.scope.escalation", "policy.scope.all-forbidden",
                                        "hardening.scope.unknown-never-granted"}, 1, id="grants-any-scope"),
    pytest.param("copies-audience", {"rfc8693.error.forbidden-audience-refused", "rfc8707.resource.forbidden",
                                     "rfc8693.error.forbidden-audience-invalid-target",
                                     "hardening.audience.unknown-refused", *BATTERY}, 1, id="copies-any-audience"),
    # Echoing the token is a hardening case that is a security property: it fails the run.
    pytest.param("leaks-token", {"hardening.error.no-token-echo"}, 1, id="leaks-token-in-error"),
    pytest.param("no-cache-control", {"rfc6749.response.cache-control-no-store", "rfc6749.response.pragma-no-cache"},
                 1, id="missing-cache-control"),
]


@pytest.mark.parametrize(("variant", "expected", "exit_code"), CAUGHT_BY)
def test_broken_variant_is_caught(variant: str, expected: set[str], exit_code: int, target: ReferenceTarget,
                                  issuer: LocalIssuer, spiffe: SpiffeBundleServer) -> None:
    report = _run(target, issuer, spiffe, variant)
    assert _failed(report) == expected
    assert report.exit_code == exit_code
    for result in report.results:
        if result.failed:
            # Failure messages are publishable: they never carry a token.
            assert "eyJ" not in result.message
