"""Run the kit as plain pytest against the target named by ``STS_CONFORMANCE_PROFILE``.

    STS_CONFORMANCE_PROFILE=conformance/profiles/sts-broker.toml pytest conformance/tests/test_target_profile.py

One test per case, with the case id as test id. A failure counted under ``--fail-on``
(``STS_CONFORMANCE_FAIL_ON``, default ``must``) fails the test, and so does an INCONCLUSIVE case
(its sanity gate failed); any other failure is reported as xfail with its message, so the run
stays green exactly when the CLI's exit code would be 0. ``STS_CONFORMANCE_ONLY``
(comma-separated globs) narrows the cases. Without ``STS_CONFORMANCE_PROFILE`` the module is
skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

PROFILE = os.environ.get("STS_CONFORMANCE_PROFILE")
if not PROFILE:
    pytest.skip("STS_CONFORMANCE_PROFILE is not set", allow_module_level=True)

from conformance.cases import Case, all_cases  # noqa: E402 - after the module-level skip
from conformance.profile import load_profile  # noqa: E402
from conformance.runner import Gatekeeper, select, session  # noqa: E402
from conformance.verdict import FAIL_ON_CHOICES, FailOn, counted  # noqa: E402

_ONLY = [p.strip() for p in os.environ.get("STS_CONFORMANCE_ONLY", "").split(",") if p.strip()]
_FAIL_ON = os.environ.get("STS_CONFORMANCE_FAIL_ON", "must")
if _FAIL_ON not in FAIL_ON_CHOICES:
    raise pytest.UsageError(f"STS_CONFORMANCE_FAIL_ON must be one of {', '.join(FAIL_ON_CHOICES)}")
FAIL_ON: FailOn = _FAIL_ON  # type: ignore[assignment]


@pytest.fixture(scope="module")
def gatekeeper() -> Iterator[Gatekeeper]:
    assert PROFILE is not None
    with session(load_profile(PROFILE)) as ctx:
        yield Gatekeeper(ctx)


@pytest.mark.parametrize("case", select(all_cases(), _ONLY or None), ids=lambda c: c.id)
def test_case(case: Case, gatekeeper: Gatekeeper) -> None:
    result = gatekeeper.run(case)
    label = f"[{case.level}] {case.source}: {case.title}"
    if result.outcome == "skip":
        pytest.skip(f"{label}: {result.message}")
    if result.outcome == "inconclusive":
        pytest.fail(f"{label}: INCONCLUSIVE, {result.message}: {'; '.join(gatekeeper.failures.values())}",
                    pytrace=False)
    if result.failed:
        if counted(result, FAIL_ON):
            pytest.fail(f"{label}: {result.message}", pytrace=False)
        pytest.xfail(f"{label}: {result.message}")
