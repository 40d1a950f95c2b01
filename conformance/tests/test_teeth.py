"""The kit's teeth: each deliberately broken variant of the reference target (one known
vulnerability class each, see broken_targets) fails the kit on the cases of its class, and the
correct reference passes those same cases (test_kit_against_reference)."""

from __future__ import annotations

import pytest

from conformance.cases import all_cases
from conformance.issuer import LocalIssuer, SpiffeBundleServer
from conformance.runner import run
from conformance.tests.broken_targets import BROKEN
from conformance.tests.reference_target import ReferenceTarget
from conformance.verdict import SECURITY_PROPERTIES

LEVEL = {c.id: c.level for c in all_cases()}


def _params() -> list[object]:
    out = []
    for name, variant in BROKEN.items():
        # Key-cache variants wait out declared cache lifetimes and fail-fast bounds: a few seconds.
        marks = [pytest.mark.slow] if variant.flaws.touches_key_cache else []
        out.append(pytest.param(name, id=name, marks=marks))
    return out


def test_catalogue_names_registered_cases_of_the_declared_level() -> None:
    for name, variant in BROKEN.items():
        assert variant.caught_by, name
        assert variant.caught_by <= set(LEVEL), (name, variant.caught_by - set(LEVEL))
        assert variant.fails_run == any(LEVEL[c] == "MUST" or c in SECURITY_PROPERTIES for c in variant.caught_by), name


@pytest.mark.parametrize("name", _params())
def test_broken_variant_fails_on_its_class(name: str, target: ReferenceTarget, issuer: LocalIssuer,
                                           spiffe: SpiffeBundleServer) -> None:
    variant = BROKEN[name]
    profile = target.profile(name, key_cache=variant.flaws.touches_key_cache)
    report = run(profile, issuer=issuer, spiffe=spiffe)
    failed = {r.id for r in report.results if r.failed}
    assert variant.caught_by <= failed, f"{name} ({variant.vulnerability}) escaped {variant.caught_by - failed}"
    assert report.exit_code == (1 if variant.fails_run else 0)
    for result in report.results:
        if result.failed:
            assert "eyJ" not in result.message


def test_key_cache_cases_skip_when_nothing_is_declared(target: ReferenceTarget, issuer: LocalIssuer,
                                                       spiffe: SpiffeBundleServer) -> None:
    report = run(target.profile("reference", key_cache=False), issuer=issuer, spiffe=spiffe,
                 only=["policy.keys.*"])
    assert {r.id: r.outcome for r in report.results} == {
        "policy.keys.removed-key-refused": "skip", "policy.keys.refetch-interval": "skip",
        "policy.keys.fail-fast": "skip"}
