"""Run the kit as plain pytest against the target named by ``STS_CONFORMANCE_PROFILE``.

    STS_CONFORMANCE_PROFILE=conformance/profiles/sts-broker.toml pytest conformance/tests/test_target_profile.py

One test per case, with the case id as test id. A failed MUST case fails the test; a failed
SHOULD, MAY or HARDENING case is reported as xfail with its message, so the run stays green
exactly when the CLI's exit code would be 0. ``STS_CONFORMANCE_ONLY`` (comma-separated globs)
narrows the cases. Without ``STS_CONFORMANCE_PROFILE`` the module is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

PROFILE = os.environ.get("STS_CONFORMANCE_PROFILE")
if not PROFILE:
    pytest.skip("STS_CONFORMANCE_PROFILE is not set", allow_module_level=True)

from conformance.cases import Case, Context, all_cases  # noqa: E402 - after the module-level skip
from conformance.profile import load_profile  # noqa: E402
from conformance.runner import run_case, select, session  # noqa: E402

_ONLY = [p.strip() for p in os.environ.get("STS_CONFORMANCE_ONLY", "").split(",") if p.strip()]


@pytest.fixture(scope="module")
def conformance_context() -> Iterator[Context]:
    assert PROFILE is not None
    with session(load_profile(PROFILE)) as ctx:
        yield ctx


@pytest.mark.parametrize("case", select(all_cases(), _ONLY or None), ids=lambda c: c.id)
def test_case(case: Case, conformance_context: Context) -> None:
    result = run_case(case, conformance_context)
    label = f"[{case.level}] {case.source}: {case.title}"
    if result.outcome == "skip":
        pytest.skip(f"{label}: {result.message}")
    if result.failed:
        if case.level == "MUST":
            pytest.fail(f"{label}: {result.message}", pytrace=False)
        pytest.xfail(f"{label}: {result.message}")
