"""sts.trust.explain: the per-grant trace reaches exactly decide's decision, and says why.

The trace is what ``sts explain`` and refusal audit records show; if it ever reached another
decision than ``CompiledPolicy.decide`` it would lie about the server. Pinned over the policy
test table and over generated requests.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import test_policy as tp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sts.config.models import BrokerConfig, IssuerConfig
from sts.subject.model import VerifiedSubject, WorkloadIdentity
from sts.trust.explain import MAX_AUDIT_GRANTS, explain_decision, explain_mapping
from sts.trust.mapping import CompiledIssuerMapping, MappingDenied
from sts.trust.policy import CompiledPolicy

CASES = [p.values[0] for p in tp.test_decide.pytestmark[0].args[1]]  # type: ignore[attr-defined]
IDS = [p.id for p in tp.test_decide.pytestmark[0].args[1]]  # type: ignore[attr-defined]


def trace(case: tp.Case, policy: CompiledPolicy = tp.POLICY) -> Any:
    return explain_decision(
        policy,
        identity=case.identity,
        claims=case.claims,
        request_audiences=case.audiences,
        request_resources=case.resources,
        requested_scopes=case.scopes,
        actor=case.actor,
        actor_claims=case.actor_claims,
    )


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_trace_reaches_decides_decision_on_the_policy_table(case: tp.Case) -> None:
    t = trace(case)
    assert t.decision == tp.decide(case)  # grant, target, scopes, lifetime, algorithm and notes
    won = [g.name for g in t.grants if g.outcome == "won"]
    if t.decision.__class__.__name__ == "Allow":
        assert won == [t.decision.grant]
    else:
        assert won == []
    # Every grant appears once, in file order.
    assert [g.name for g in t.grants] == list(tp.POLICY.grant_names)


IDENTITIES = [tp.A, tp.B, tp.C, tp.D, tp.E, tp.GATEWAY, tp.AGENT, tp.STRANGER,
              WorkloadIdentity("github:1/2", "k8s", {}), WorkloadIdentity("other:1", "other", {"team": 3})]
TARGETS = [tp.VECTOR, tp.SEARCH, tp.NEW, tp.MCP_SEARCH, tp.MCP_PREFIX + "list", tp.MCP_PREFIX + "../x", "https://else"]
SCOPES = ["read", "write", "invoke", "list", "q", "x", "admin"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    identity=st.sampled_from(IDENTITIES),
    audiences=st.lists(st.sampled_from(TARGETS), max_size=2).map(tuple),
    resources=st.lists(st.sampled_from(TARGETS), max_size=2).map(tuple),
    scopes=st.none() | st.lists(st.sampled_from(SCOPES), max_size=3).map(tuple),
    actor=st.none() | st.sampled_from([tp.GATEWAY, tp.AGENT, tp.STRANGER]),
    tier=st.sampled_from(["gold", "silver", None]),
    env=st.sampled_from(["prod", "dev", None]),
)
def test_trace_reaches_decides_decision_on_generated_requests(
    identity: WorkloadIdentity, audiences: tuple[str, ...], resources: tuple[str, ...],
    scopes: tuple[str, ...] | None, actor: WorkloadIdentity | None, tier: str | None, env: str | None,
) -> None:
    case = tp.Case(identity, audiences, resources, scopes, actor,
                   {"tier": tier} if tier else {}, {"env": env} if env else {})
    t = trace(case)
    assert t.decision == tp.decide(case)
    # The audit summary is JSON and bounded.
    json.dumps(t.refusal_context())


def test_trace_carries_every_field_of_the_allow() -> None:
    # A target with an approval rule (sts.approvals): the Allow must carry it as decide's does.
    cfg = {**tp.CONFIG, "grants": [{"name": "admin", "match": {"identity": "github:1/2"}, "targets": [
        {"audience": tp.VECTOR, "scopes": ["read", "admin"], "approval": {"scopes": ["admin"], "max_window": 600},
         "sender_constraint": "dpop", "status_list": True}]}]}
    policy = CompiledPolicy.from_config(BrokerConfig.model_validate(cfg))
    case = tp.Case(tp.A, (tp.VECTOR,), scopes=("admin",))
    t = trace(case, policy)
    decided = policy.decide(identity=case.identity, claims={}, request_audiences=case.audiences, request_resources=(),
                            requested_scopes=case.scopes, actor=None)
    assert t.decision == decided and t.agrees_with(decided)
    assert decided.approval is not None  # type: ignore[union-attr]


def by_name(t: Any) -> dict[str, Any]:
    return {g.name: g for g in t.grants}


def test_each_step_is_named_with_its_reason() -> None:
    # B (github:1/3) asks for a target only vector-rw has, with a scope nobody gives.
    g = by_name(trace(tp.Case(tp.B, (tp.VECTOR,), scopes=("write",))))
    assert (g["vector-rw"].step, g["vector-rw"].why) == ("match", "identity is not 'github:1/2'")
    assert g["github-1-readers"].step == "scope"
    assert "'write'" in g["github-1-readers"].why
    assert g["search-team"].step == "match" and g["search-team"].why.startswith("condition")
    assert (g["audit-k8s"].outcome, g["audit-k8s"].step) == ("stopped", "issuer")
    assert g["audit-env"].step == "issuer"

    g = by_name(trace(tp.Case(tp.A, (tp.SEARCH,))))
    assert g["vector-rw"].step == "target" and "'https://search.example.com'" in g["vector-rw"].why
    assert g["search-team"].outcome == "won"
    assert g["audit-new"].outcome == "audit" and "would deny: target_not_allowed" in g["audit-new"].why

    g = by_name(trace(tp.Case(tp.A, (tp.VECTOR,), actor=tp.STRANGER)))
    assert g["vector-rw"].step == "delegation"
    assert g["github-1-readers"].outcome == "not_reached"

    g = by_name(trace(tp.Case(tp.A, (tp.VECTOR,), (tp.SEARCH,))))
    assert {g[n].step for n in ("vector-rw", "github-1-readers", "search-team")} == {"target"}
    assert "2 targets" in g["vector-rw"].why


def test_refusal_context_keeps_considered_grants_bounded_and_without_claims() -> None:
    grants = [{"name": f"g{i}", "match": {"condition": f'claims.n == "{i}"'},
               "targets": [{"audience": "https://a"}]} for i in range(MAX_AUDIT_GRANTS + 10)]
    grants.append({"name": "elsewhere", "issuers": ["other"], "match": {"identity": "x"},
                   "targets": [{"audience": "https://a"}]})
    cfg = {**tp.CONFIG, "grants": grants}
    policy = CompiledPolicy.from_config(BrokerConfig.model_validate(cfg))
    secret = "claim-value-never-recorded"
    t = trace(tp.Case(WorkloadIdentity("github:5/5", "gh", {}), ("https://a",), claims={"n": secret}), policy)
    ctx = t.refusal_context()
    assert ctx["decision"] == "no_grant"
    assert len(ctx["grants"]) == MAX_AUDIT_GRANTS
    assert ctx["grants_omitted"] == 10
    assert ctx["issuer_not_allowed"] == 1
    assert all(g["step"] == "match" and g["why"] == "condition is false" for g in ctx["grants"])
    assert secret not in json.dumps(ctx)


def test_refusal_context_fits_the_audit_context_with_long_patterns() -> None:
    from sts.audit import MAX_CONTEXT_CHARS

    grants = [{"name": f"grant-{i}-" + "n" * 100, "match": {"identity_pattern": f"^{i}" + "x" * 900 + "$"},
               "targets": [{"audience": "https://a"}]} for i in range(40)]
    policy = CompiledPolicy.from_config(BrokerConfig.model_validate({**tp.CONFIG, "grants": grants}))
    ctx = trace(tp.Case(WorkloadIdentity("github:5/5", "gh", {}), ("https://a" + "/p" * 300,)), policy).refusal_context()
    assert len(json.dumps({"explain": ctx})) < MAX_CONTEXT_CHARS
    assert all(len(g["why"]) <= 160 for g in ctx["grants"])


# --- step 5 ----------------------------------------------------------------------------------

ISSUER = IssuerConfig.model_validate({
    "name": "gh", "issuer": "https://token.actions.githubusercontent.com", "audiences": ["https://sts"],
    "preset": "github-actions",
    "claim_validation_rules": [
        {"expression": 'claims.repository_owner_id == "65"', "message": "only octo-org"},
        {"expression": 'claims.runner_environment == "github-hosted"', "message": "hosted only", "mode": "audit"},
        {"expression": 'claims.ref.startsWith("refs/heads/")', "message": "branches only"},
    ],
})
MAPPING = CompiledIssuerMapping.from_config(ISSUER, location="issuers[0]")
GOOD = {"sub": "repo:octo-org/r:ref:refs/heads/main", "repository_owner_id": "65", "repository_id": "74",
        "runner_environment": "github-hosted", "ref": "refs/heads/main"}


def subject(claims: dict[str, Any]) -> VerifiedSubject:
    return VerifiedSubject("gh", ISSUER.issuer, str(claims.get("sub", "")), claims, 0.0, "0" * 64)


@pytest.mark.parametrize(("claims", "first_failed", "results"), [
    pytest.param(GOOD, None, ["ok"] * 6, id="all-pass"),
    pytest.param({**GOOD, "runner_environment": "self-hosted"}, None, ["ok"] * 4 + ["failed", "ok"], id="audit-fails-only"),
    pytest.param({**GOOD, "repository_owner_id": "66"}, "issuers[0].claim_validation_rules[0]",
                 ["ok"] * 3 + ["failed", "not_reached", "not_reached"], id="enforce-fails"),
    pytest.param({**GOOD, "repository_id": "x"}, "issuers[0].preset[github-actions].repository_id",
                 ["failed"] + ["not_reached"] * 5, id="preset-fails"),
    pytest.param({k: v for k, v in GOOD.items() if k != "ref"}, "issuers[0].claim_validation_rules[2]",
                 ["ok"] * 5 + ["error"], id="evaluation-error"),
])
def test_mapping_trace_matches_map_identity(claims: dict[str, Any], first_failed: str | None, results: list[str]) -> None:
    t = explain_mapping(MAPPING, subject(claims))
    assert [r.result for r in t.rules] == results
    try:
        identity = MAPPING.map_identity(subject(claims)).identity
    except MappingDenied as exc:
        assert first_failed == exc.rule_location
        assert t.denied is not None and t.denied.rule_location == exc.rule_location
        # The first enforced rule that is not ok is where map_identity refused.
        first = next(r for r in t.rules if r.mode == "enforce" and r.result != "ok")
        assert first.location == exc.rule_location
        assert t.identity is None
    else:
        assert first_failed is None and t.denied is None
        assert t.identity == identity.identity == "github:65/74"
        assert t.attributes == identity.attributes
    assert [r.message for r in t.rules][3:] == ["only octo-org", "hosted only", "branches only"]


def test_trace_of_our_own_token_reaches_decides_decision() -> None:
    # Delegation chains: a token of ours is a candidate only for grants with delegation.chain.
    grant = {"issuers": ["gh"], "match": {"identity": "github:9/9"},
             "targets": [{"audience": tp.VECTOR, "scopes": ["read"], "default_scopes": ["read"]}]}
    cfg = {**tp.CONFIG, "grants": [
        {**grant, "name": "plain"},
        {**grant, "name": "chained", "delegation": {"chain": True, "actors": [{"identity": "k8s:ai/gateway"}]}},
    ]}
    who = WorkloadIdentity("github:9/9", "gh", {})
    for grants in (cfg["grants"], cfg["grants"][:1]):
        policy = CompiledPolicy.from_config(BrokerConfig.model_validate({**cfg, "grants": grants}))
        args: dict[str, Any] = {"identity": who, "claims": {}, "request_audiences": (tp.VECTOR,), "request_resources": (),
                                "requested_scopes": None, "actor": None, "own_subject": True}
        t = explain_decision(policy, **args)
        assert t.decision == policy.decide(**args)
        assert t.grants[0].outcome == "stopped" and t.grants[0].step == "delegation"
    assert t.decision.reason == "chain_not_allowed"  # type: ignore[union-attr]
