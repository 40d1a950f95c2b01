"""Every case forges one defect into an otherwise valid request: its valid twin (the same request
without the defect, ``Case.twin``) must be accepted by the reference target. A case whose twin
were refused would pass against any target that refuses, whatever the defect."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conformance.cases import Context, all_cases
from conformance.cases.base import REGISTRY, CaseSkip, missing_needs, no_twin
from conformance.gate import GATES
from conformance.issuer import LocalIssuer, SpiffeBundleServer
from conformance.runner import session
from conformance.tests.reference_target import ReferenceTarget

#: Cases with no valid twin, and why. Keep this list short: a case lands here only when it sends
#: no token request at all.
WITHOUT_TWIN = {c.id: reason for c in all_cases() if (reason := no_twin(c.id)) is not None}
WITH_TWIN = [c.id for c in all_cases() if c.id not in WITHOUT_TWIN]


@pytest.fixture(scope="module")
def ctx(target: ReferenceTarget, issuer: LocalIssuer, spiffe: SpiffeBundleServer) -> Iterator[Context]:
    # The dpop-required variant declares every capability, client authentication and DPoP included.
    with session(target.profile("dpop-required"), issuer=issuer, spiffe=spiffe) as context:
        yield context


@pytest.mark.parametrize("case_id", WITH_TWIN)
def test_valid_twin_is_accepted_by_the_reference_target(case_id: str, ctx: Context) -> None:
    c = REGISTRY[case_id]
    # A twin skipped for want of a capability would prove nothing: the profile declares them all.
    assert missing_needs(c, ctx.profile) is None
    reply = c.twin(ctx)
    assert reply.status == 200, f"{case_id}: valid twin refused: {reply.describe()}"
    assert reply.access_token is not None


def test_cases_without_a_twin_are_few_and_send_no_token_request() -> None:
    assert len(WITHOUT_TWIN) <= 10
    assert all(case_id.startswith(("rfc8414.metadata.", "hardening.jwks.")) for case_id in WITHOUT_TWIN)
    assert all("no token request" in reason for reason in WITHOUT_TWIN.values())
    with pytest.raises(CaseSkip):
        REGISTRY["rfc8414.metadata.reachable"].twin(Context.__new__(Context))


def test_gate_twins_are_their_own_cases_twins() -> None:
    assert all(g.twin in WITH_TWIN for g in GATES.values())


def test_a_parameter_defect_has_a_twin_with_the_allowed_value(ctx: Context) -> None:
    # The forbidden-audience case's twin asks for an allowed audience, not the forbidden one.
    sent: list[dict[str, object]] = []
    original = ctx.exchange

    def spy(subject_token: str | None = None, **params: object) -> object:
        sent.append(params)
        return original(subject_token, **params)  # type: ignore[arg-type]

    ctx.exchange = spy  # type: ignore[method-assign]
    try:
        REGISTRY["rfc8693.error.forbidden-audience-refused"].twin(ctx)
    finally:
        del ctx.exchange
    assert sent == [{"target": False, "audience": ctx.profile.allowed.audiences[0]}]
    assert ctx.profile.allowed.audiences[0] not in ctx.profile.forbidden.audiences
