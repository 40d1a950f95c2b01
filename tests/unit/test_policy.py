"""sts.trust.policy: the pure grant decision, table-tested branch by branch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from sts.config.models import BrokerConfig
from sts.subject.model import WorkloadIdentity
from sts.trust.policy import Allow, CompiledPolicy, Deny, _Matcher, resource_prefix_matches

VECTOR = "https://vector.example.com"
SEARCH = "https://search.example.com"
NEW = "https://new.example.com"
MCP_SEARCH = "https://mcp.example.com/tools/search"
MCP_PREFIX = "https://mcp.example.com/tools/"

CONFIG: dict[str, Any] = {
    "issuer": "https://sts.example.com",
    "tokens": {"default_lifetime": 900, "max_lifetime": 3600, "algorithm": "ES256"},
    "issuers": [
        {"name": n, "issuer": f"https://{n}.example.com", "audiences": ["https://sts.example.com"]}
        for n in ("gh", "k8s", "other")
    ],
    "grants": [
        {
            "name": "vector-rw",
            "issuers": ["gh"],
            "match": {"identity": "github:1/2"},
            "targets": [
                {"audience": VECTOR, "scopes": ["read", "write"], "default_scopes": ["read"]},
                {"resource": MCP_SEARCH, "scopes": ["invoke"], "algorithm": "RS256"},
            ],
            "default_target": VECTOR,
            "lifetime": 600,
            "delegation": {
                "actors": [
                    {"identity": "k8s:ai/gateway"},
                    {"condition": 'attributes.role == "agent" && claims.tier == "gold"'},
                ]
            },
        },
        {
            "name": "github-1-readers",
            "issuers": ["gh"],
            "match": {"identity_pattern": "^github:1/.*$"},
            "targets": [
                {"audience": VECTOR, "scopes": ["read"], "default_scopes": ["read"]},
                {"resource_prefix": MCP_PREFIX, "scopes": ["invoke", "list"]},
            ],
        },
        {
            "name": "search-team",
            "match": {"condition": 'attributes.team == "search"'},
            "targets": [
                {"audience": SEARCH, "scopes": ["q"], "default_scopes": ["q"], "algorithm": "EdDSA"}
            ],
            "default_target": SEARCH,
            "cap_to_subject_lifetime": False,
        },
        {
            "name": "audit-new",
            "mode": "audit",
            "issuers": ["gh"],
            "match": {"identity": "github:1/2"},
            "targets": [{"audience": NEW, "scopes": ["x"]}],
            "default_target": NEW,
        },
        {
            "name": "audit-k8s",
            "mode": "audit",
            "issuers": ["k8s"],
            "match": {"identity_pattern": "^k8s:.*$"},
            "targets": [{"audience": SEARCH, "scopes": ["q"]}],
        },
        {
            "name": "audit-env",
            "mode": "audit",
            "issuers": ["other"],
            "match": {"condition": 'claims.env == "prod"'},
            "targets": [{"audience": SEARCH, "scopes": ["q"]}],
        },
    ],
}
POLICY = CompiledPolicy.from_config(BrokerConfig.model_validate(CONFIG))

A = WorkloadIdentity("github:1/2", "gh", {"team": "search"})  # vector-rw, readers, search-team
B = WorkloadIdentity("github:1/3", "gh", {})  # readers only
C = WorkloadIdentity("k8s:ns/x", "k8s", {"team": "search"})  # search-team only
D = WorkloadIdentity("github:9/9", "gh", {})  # nothing (and search-team's condition errors)
E = WorkloadIdentity("other:1", "other", {"team": "search"})
GATEWAY = WorkloadIdentity("k8s:ai/gateway", "k8s", {})
AGENT = WorkloadIdentity("k8s:ai/agent", "k8s", {"role": "agent"})
STRANGER = WorkloadIdentity("k8s:ai/other", "k8s", {})


@dataclass(frozen=True)
class Case:
    identity: WorkloadIdentity
    audiences: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    scopes: tuple[str, ...] | None = None
    actor: WorkloadIdentity | None = None
    actor_claims: dict[str, Any] | None = None
    claims: dict[str, Any] = field(default_factory=dict)


def decide(case: Case) -> Allow | Deny:
    return POLICY.decide(
        identity=case.identity,
        claims=case.claims,
        request_audiences=case.audiences,
        request_resources=case.resources,
        requested_scopes=case.scopes,
        actor=case.actor,
        actor_claims=case.actor_claims,
    )


def allow(
    grant: str,
    target: str,
    scopes: tuple[str, ...],
    *,
    lifetime: int = 900,
    cap: bool = True,
    alg: str = "ES256",
) -> tuple[Any, ...]:
    return ("allow", grant, target, scopes, lifetime, cap, alg)


def deny(error: str, reason: str, grant: str | None = None) -> tuple[Any, ...]:
    return ("deny", error, reason, grant)


def summary(d: Allow | Deny) -> tuple[Any, ...]:
    if isinstance(d, Allow):
        return (
            "allow",
            d.grant,
            d.target,
            d.scopes,
            d.lifetime,
            d.cap_to_subject_lifetime,
            d.algorithm,
        )
    return ("deny", d.error, d.reason, d.grant)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # 1. candidates
        pytest.param(Case(D, (VECTOR,)), deny("invalid_request", "no_grant"), id="no-grant"),
        pytest.param(
            Case(WorkloadIdentity("github:1/2", "k8s", {})),
            deny("invalid_request", "no_grant"),
            id="issuer-filter-excludes-literal",
        ),
        # 2. the target
        pytest.param(
            Case(A, (VECTOR,), (MCP_SEARCH,)),
            deny("invalid_target", "multiple_targets"),
            id="two-targets",
        ),
        pytest.param(
            Case(A, (VECTOR, SEARCH)),
            deny("invalid_target", "multiple_targets"),
            id="two-audiences",
        ),
        pytest.param(
            Case(A, (VECTOR,), (VECTOR,)),
            allow("vector-rw", VECTOR, ("read",), lifetime=600),
            id="same-string-as-audience-and-resource-is-one-target",
        ),
        pytest.param(
            Case(A, (VECTOR, VECTOR)),
            allow("vector-rw", VECTOR, ("read",), lifetime=600),
            id="repeated-audience-is-one-target",
        ),
        pytest.param(
            Case(A), deny("invalid_target", "no_target"), id="no-target-two-distinct-defaults"
        ),
        pytest.param(Case(B), deny("invalid_target", "no_target"), id="no-target-no-default"),
        pytest.param(
            Case(C),
            allow("search-team", SEARCH, ("q",), cap=False, alg="EdDSA"),
            id="no-target-single-default",
        ),
        # 3. target and scopes
        pytest.param(
            Case(A, (VECTOR,)),
            allow("vector-rw", VECTOR, ("read",), lifetime=600),
            id="default-scopes",
        ),
        pytest.param(
            Case(A, (VECTOR,), scopes=("write",)),
            allow("vector-rw", VECTOR, ("write",), lifetime=600),
            id="requested-scope",
        ),
        pytest.param(
            Case(A, (VECTOR,), scopes=("read", "write", "read")),
            allow("vector-rw", VECTOR, ("read", "write"), lifetime=600),
            id="duplicate-scopes-once",
        ),
        pytest.param(
            Case(A, (VECTOR,), scopes=()),
            allow("vector-rw", VECTOR, (), lifetime=600),
            id="empty-scope-request",
        ),
        pytest.param(
            Case(A, (VECTOR,), scopes=("admin",)),
            deny("invalid_scope", "scope_not_allowed", "vector-rw"),
            id="scope-refused-names-first-grant",
        ),
        pytest.param(
            Case(B, (VECTOR,), scopes=("write",)),
            deny("invalid_scope", "scope_not_allowed", "github-1-readers"),
            id="scope-refused-second-grant",
        ),
        pytest.param(
            Case(A, resources=(MCP_SEARCH,)),
            allow("vector-rw", MCP_SEARCH, (), lifetime=600, alg="RS256"),
            id="exact-resource-target-alg-override",
        ),
        pytest.param(
            Case(A, resources=(MCP_SEARCH,), scopes=("list",)),
            allow("github-1-readers", MCP_SEARCH, ("list",)),
            id="first-grant-scope-refused-next-wins",
        ),
        pytest.param(
            Case(B, resources=(MCP_PREFIX + "fetch",), scopes=("invoke",)),
            allow("github-1-readers", MCP_PREFIX + "fetch", ("invoke",)),
            id="prefix-target",
        ),
        pytest.param(
            Case(B, resources=(MCP_PREFIX + "../admin",)),
            deny("invalid_target", "target_not_allowed"),
            id="prefix-dotdot",
        ),
        pytest.param(
            Case(B, resources=(MCP_PREFIX,)),
            deny("invalid_target", "target_not_allowed"),
            id="prefix-itself",
        ),
        pytest.param(
            Case(A, (MCP_SEARCH,)),
            deny("invalid_target", "target_not_allowed"),
            id="resource-target-not-matched-by-audience",
        ),
        pytest.param(
            Case(A, resources=(VECTOR,)),
            deny("invalid_target", "target_not_allowed"),
            id="audience-target-not-matched-by-resource",
        ),
        pytest.param(
            Case(A, ("https://unknown.example.com",)),
            deny("invalid_target", "target_not_allowed"),
            id="unknown-target",
        ),
        pytest.param(
            Case(C, (VECTOR,)),
            deny("invalid_target", "target_not_allowed"),
            id="condition-grant-other-target",
        ),
        # 4. delegation
        pytest.param(
            Case(A, (VECTOR,), actor=GATEWAY),
            allow("vector-rw", VECTOR, ("read",), lifetime=600),
            id="actor-literal",
        ),
        pytest.param(
            Case(A, (VECTOR,), actor=AGENT, actor_claims={"tier": "gold"}),
            allow("vector-rw", VECTOR, ("read",), lifetime=600),
            id="actor-condition-with-actor-claims",
        ),
        pytest.param(
            Case(A, (VECTOR,), actor=AGENT, actor_claims={"tier": "tin"}),
            deny("invalid_request", "actor_not_allowed", "vector-rw"),
            id="actor-condition-false",
        ),
        pytest.param(
            Case(A, (VECTOR,), actor=STRANGER),
            deny("invalid_request", "actor_not_allowed", "vector-rw"),
            id="actor-not-listed",
        ),
        pytest.param(
            Case(B, resources=(MCP_SEARCH,), actor=GATEWAY),
            deny("invalid_request", "actor_not_allowed", "github-1-readers"),
            id="winner-without-delegation",
        ),
    ],
)
def test_decide(case: Case, expected: tuple[Any, ...]) -> None:
    assert summary(decide(case)) == expected


@pytest.mark.parametrize(
    ("case", "notes"),
    [
        pytest.param(
            Case(A, (VECTOR,)),
            ["audit grant 'audit-new' would deny: target_not_allowed"],
            id="audit-target-not-allowed",
        ),
        pytest.param(
            Case(A, (NEW,)),
            ["audit grant 'audit-new' would allow target 'https://new.example.com' with scopes ''"],
            id="audit-would-allow-while-enforce-denies",
        ),
        pytest.param(
            Case(A),
            ["audit grant 'audit-new' would allow target 'https://new.example.com' with scopes ''"],
            id="audit-uses-its-own-default",
        ),
        pytest.param(
            Case(A, (NEW,), scopes=("y",)),
            ["audit grant 'audit-new' would deny: scope_not_allowed"],
            id="audit-scope",
        ),
        pytest.param(
            Case(A, (NEW, VECTOR)),
            ["audit grant 'audit-new' would deny: multiple_targets"],
            id="audit-multiple",
        ),
        pytest.param(
            Case(C), ["audit grant 'audit-k8s' would deny: no_target"], id="audit-no-target"
        ),
        pytest.param(
            Case(C, (SEARCH,), actor=GATEWAY),
            ["audit grant 'audit-k8s' would deny: actor_not_allowed"],
            id="audit-actor",
        ),
        pytest.param(
            Case(D, (VECTOR,)),
            ["grant 'search-team' match condition failed (missing_field)"],
            id="enforce-condition-error-noted",
        ),
        pytest.param(
            Case(E, (SEARCH,)),
            ["audit grant 'audit-env' match condition failed (missing_field)"],
            id="audit-condition-error-noted",
        ),
        pytest.param(
            Case(E, (SEARCH,), claims={"env": "prod"}),
            [
                "audit grant 'audit-env' would allow target 'https://search.example.com' with scopes ''"
            ],
            id="audit-condition-on-claims",
        ),
        pytest.param(
            Case(A, (VECTOR,), actor=STRANGER),
            [
                "audit grant 'audit-new' would deny: target_not_allowed",
                "grant 'vector-rw' actor condition grants[0].delegation.actors[1] failed (missing_field)",
            ],
            id="actor-condition-error-noted",
        ),
    ],
)
def test_audit_notes(case: Case, notes: list[str]) -> None:
    assert list(decide(case).audit_notes) == notes


def test_audit_grants_never_change_the_decision() -> None:
    with_audit = decide(Case(A, (NEW,)))
    assert isinstance(with_audit, Deny) and with_audit.reason == "target_not_allowed"
    cfg = dict(CONFIG, grants=[g for g in CONFIG["grants"] if g.get("mode") != "audit"])
    plain = CompiledPolicy.from_config(BrokerConfig.model_validate(cfg))
    without = plain.decide(
        identity=A,
        claims={},
        request_audiences=(NEW,),
        request_resources=(),
        requested_scopes=None,
        actor=None,
    )
    assert summary(without) == summary(with_audit)
    assert without.audit_notes == ()


def test_lifetime_capped_by_max() -> None:
    cfg = {
        "issuer": "https://sts.example.com",
        "tokens": {"default_lifetime": 300, "max_lifetime": 600},
        "issuers": CONFIG["issuers"][:1],
        "grants": [
            {
                "name": "a",
                "match": {"identity": "x"},
                "targets": [{"audience": "t1"}],
                "lifetime": 600,
            },
            {"name": "b", "match": {"identity": "y"}, "targets": [{"audience": "t1"}]},
        ],
    }
    policy = CompiledPolicy.from_config(BrokerConfig.model_validate(cfg))
    got = [
        policy.decide(
            identity=WorkloadIdentity(i, "gh", {}),
            claims={},
            request_audiences=("t1",),
            request_resources=(),
            requested_scopes=None,
            actor=None,
        )
        for i in ("x", "y")
    ]
    assert [g.lifetime for g in got if isinstance(g, Allow)] == [600, 300]


def test_first_grant_in_file_order_wins() -> None:
    cfg = {
        "issuer": "https://sts.example.com",
        "issuers": CONFIG["issuers"][:1],
        "grants": [
            {
                "name": "late-literal",
                "match": {"identity_pattern": "^x$"},
                "targets": [{"audience": "t", "scopes": ["a"]}],
            },
            {
                "name": "early-literal",
                "match": {"identity": "x"},
                "targets": [{"audience": "t", "scopes": ["a", "b"]}],
            },
        ],
    }
    policy = CompiledPolicy.from_config(BrokerConfig.model_validate(cfg))

    def run(scopes: tuple[str, ...]) -> str:
        d = policy.decide(
            identity=WorkloadIdentity("x", "gh", {}),
            claims={},
            request_audiences=("t",),
            request_resources=(),
            requested_scopes=scopes,
            actor=None,
        )
        assert isinstance(d, Allow)
        return d.grant

    assert run(("a",)) == "late-literal"  # file order, whatever the matcher kind
    assert run(("b",)) == "early-literal"


def test_prefix_longest_and_exact_first() -> None:
    cfg = {
        "issuer": "https://sts.example.com",
        "issuers": CONFIG["issuers"][:1],
        "grants": [
            {
                "name": "g",
                "match": {"identity": "x"},
                "targets": [
                    {"resource_prefix": "https://api.example.com/", "scopes": ["short"]},
                    {"resource_prefix": "https://api.example.com/v1/", "scopes": ["long"]},
                    {"resource": "https://api.example.com/v1/exact", "scopes": ["exact"]},
                ],
            }
        ],
    }
    policy = CompiledPolicy.from_config(BrokerConfig.model_validate(cfg))

    # Requesting the scope each target owns tells which target matched.
    def matched(resource: str, scope: str) -> bool:
        d = policy.decide(
            identity=WorkloadIdentity("x", "gh", {}),
            claims={},
            request_audiences=(),
            request_resources=(resource,),
            requested_scopes=(scope,),
            actor=None,
        )
        return isinstance(d, Allow)

    assert matched("https://api.example.com/v1/exact", "exact")
    assert not matched("https://api.example.com/v1/exact", "long")
    assert matched("https://api.example.com/v1/other", "long")
    assert not matched("https://api.example.com/v1/other", "short")
    assert matched("https://api.example.com/v2/other", "short")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        pytest.param(MCP_PREFIX + "search", True, id="child"),
        pytest.param(MCP_PREFIX + "a/b/c", True, id="deep"),
        pytest.param(MCP_PREFIX + "v1.2/x", True, id="dots-in-names"),
        pytest.param(MCP_PREFIX, False, id="prefix-itself"),
        pytest.param("https://mcp.example.com/tools", False, id="shorter"),
        pytest.param("https://mcp.example.com/toolsX/a", False, id="sibling"),
        pytest.param("https://MCP.example.com/tools/a", False, id="no-case-folding"),
        pytest.param(MCP_PREFIX + "../admin", False, id="dotdot"),
        pytest.param(MCP_PREFIX + "a/../../admin", False, id="dotdot-deep"),
        pytest.param(MCP_PREFIX + "a..b", False, id="dotdot-anywhere"),
        pytest.param(MCP_PREFIX + "./a", False, id="dot-segment"),
        pytest.param(MCP_PREFIX + "a/.", False, id="dot-segment-end"),
        pytest.param(MCP_PREFIX + "%2e%2e/admin", False, id="encoded-dots"),
        pytest.param(MCP_PREFIX + "%2E./admin", False, id="encoded-dot-upper"),
        pytest.param(MCP_PREFIX + "a%2Fb", False, id="encoded-slash"),
        pytest.param(MCP_PREFIX + "a%5cb", False, id="encoded-backslash"),
        pytest.param(MCP_PREFIX + "a\\b", False, id="backslash"),
        pytest.param(MCP_PREFIX + "a?x=1", False, id="query"),
        pytest.param(MCP_PREFIX + "a#f", False, id="fragment"),
        pytest.param(MCP_PREFIX + "a b", False, id="space"),
        pytest.param(MCP_PREFIX + "a\nb", False, id="newline"),
    ],
)
def test_resource_prefix_matches(value: str, ok: bool) -> None:
    assert resource_prefix_matches(MCP_PREFIX, value) is ok


def test_conditions_convert_only_what_they_read() -> None:
    # search-team's condition reads attributes.team only; an unread value that CEL could not
    # even represent is never converted.
    ident = WorkloadIdentity("k8s:ns/x", "k8s", {"team": "search", "unread": {1, 2}})
    d = POLICY.decide(
        identity=ident,
        claims={"unread": {3}},
        request_audiences=(SEARCH,),
        request_resources=(),
        requested_scopes=None,
        actor=None,
    )
    assert isinstance(d, Allow) and d.grant == "search-team"


def test_match_grants_reports_both_modes() -> None:
    m = POLICY.match_grants(A, {})
    assert m.grants == ("vector-rw", "github-1-readers", "search-team")
    assert m.audit_grants == ("audit-new",)
    # readers' pattern + search-team's condition; literals are looked up, not evaluated.
    assert m.matchers_evaluated == 2
    assert POLICY.grant_names[:3] == ("vector-rw", "github-1-readers", "search-team")


# --- scale ----------------------------------------------------------------------------------------

N_ISSUERS = 500
PER_ISSUER = 20  # 18 literal identities, 1 pattern, 1 condition
UNFILTERED = 5  # patterns without an issuer filter


@pytest.fixture(scope="module")
def big_policy() -> CompiledPolicy:
    issuers = [
        {"name": f"i{k}", "issuer": f"https://i{k}.example.com", "audiences": ["sts"]}
        for k in range(N_ISSUERS)
    ]
    grants: list[dict[str, Any]] = []
    target = [{"audience": "https://api.example.com", "scopes": ["r"]}]
    for k in range(N_ISSUERS):
        for j in range(PER_ISSUER - 2):
            grants.append(
                {
                    "name": f"lit-{k}-{j}",
                    "issuers": [f"i{k}"],
                    "match": {"identity": f"id-{k}-{j}"},
                    "targets": target,
                }
            )
        grants.append(
            {
                "name": f"pat-{k}",
                "issuers": [f"i{k}"],
                "match": {"identity_pattern": f"^pat-{k}-.*$"},
                "targets": target,
            }
        )
        grants.append(
            {
                "name": f"cond-{k}",
                "issuers": [f"i{k}"],
                "match": {"condition": f"attributes.n == {k}"},
                "targets": target,
            }
        )
    for u in range(UNFILTERED):
        grants.append(
            {"name": f"any-{u}", "match": {"identity_pattern": f"^any-{u}$"}, "targets": target}
        )
    cfg = BrokerConfig.model_validate(
        {"issuer": "https://sts.example.com", "issuers": issuers, "grants": grants}
    )
    assert len(cfg.grants) == N_ISSUERS * PER_ISSUER + UNFILTERED >= 10_000
    return CompiledPolicy.from_config(cfg)


def test_scale_only_relevant_bucket_is_evaluated(
    big_policy: CompiledPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    ident = WorkloadIdentity("id-417-3", "i417", {"n": 417})
    m = big_policy.match_grants(ident, {})
    assert m.grants == ("lit-417-3", "cond-417")
    # One pattern and one condition of issuer i417, plus the 5 unfiltered patterns: 7 of 10,005.
    assert m.matchers_evaluated == 2 + UNFILTERED

    calls: list[str] = []
    original = _Matcher.matches

    def counting(self: _Matcher, identity: str, activation: Any) -> bool:
        calls.append(self.location)
        return original(self, identity, activation)

    monkeypatch.setattr(_Matcher, "matches", counting)
    d = big_policy.decide(
        identity=ident,
        claims={},
        request_audiences=("https://api.example.com",),
        request_resources=(),
        requested_scopes=None,
        actor=None,
    )
    assert isinstance(d, Allow) and d.grant == "lit-417-3"
    assert len(calls) == 2 + UNFILTERED


def test_scale_unknown_issuer_evaluates_only_unfiltered(big_policy: CompiledPolicy) -> None:
    m = big_policy.match_grants(WorkloadIdentity("any-3", "nobody", {}), {})
    assert m.grants == ("any-3",)
    assert m.matchers_evaluated == UNFILTERED


@pytest.mark.parametrize(("grant", "target", "expected"), [
    (None, None, "none"),
    ("dpop", None, "dpop"),
    ("dpop", "none", "none"),
    (None, "mtls", "mtls"),
    ("mtls", "required", "required"),
], ids=["default", "grant", "target_relaxes", "target_sets", "target_overrides"])
def test_sender_constraint_from_target_or_grant(grant: str | None, target: str | None, expected: str) -> None:
    grant_cfg: dict[str, Any] = {"name": "a", "match": {"identity": "x"},
                                 "targets": [{"audience": "t1", **({"sender_constraint": target} if target else {})}]}
    if grant is not None:
        grant_cfg["sender_constraint"] = grant
    cfg = {"issuer": "https://sts.example.com", "issuers": CONFIG["issuers"][:1], "grants": [grant_cfg]}
    policy = CompiledPolicy.from_config(BrokerConfig.model_validate(cfg))
    got = policy.decide(identity=WorkloadIdentity("x", "gh", {}), claims={}, request_audiences=("t1",),
                        request_resources=(), requested_scopes=None, actor=None)
    assert isinstance(got, Allow) and got.sender_constraint == expected


def test_sender_constraint_values_are_checked() -> None:
    cfg = {"issuer": "https://sts.example.com", "issuers": CONFIG["issuers"][:1],
           "grants": [{"name": "a", "match": {"identity": "x"}, "targets": [{"audience": "t1"}], "sender_constraint": "always"}]}
    with pytest.raises(ValueError, match="sender_constraint"):
        BrokerConfig.model_validate(cfg)


@pytest.mark.parametrize(("grant", "target", "expected"), [
    (None, None, False),
    (True, None, True),
    (True, False, False),
    (None, True, True),
], ids=["default", "grant", "target_turns_off", "target_sets"])
def test_status_list_from_target_or_grant(grant: bool | None, target: bool | None, expected: bool) -> None:
    grant_cfg: dict[str, Any] = {"name": "a", "match": {"identity": "x"},
                                 "targets": [{"audience": "t1", **({"status_list": target} if target is not None else {})}]}
    if grant is not None:
        grant_cfg["status_list"] = grant
    cfg = {"issuer": "https://sts.example.com", "issuers": CONFIG["issuers"][:1], "grants": [grant_cfg]}
    policy = CompiledPolicy.from_config(BrokerConfig.model_validate(cfg))
    got = policy.decide(identity=WorkloadIdentity("x", "gh", {}), claims={}, request_audiences=("t1",),
                        request_resources=(), requested_scopes=None, actor=None)
    assert isinstance(got, Allow) and got.status_list is expected


def test_status_list_must_be_a_boolean() -> None:
    cfg = {"issuer": "https://sts.example.com", "issuers": CONFIG["issuers"][:1],
           "grants": [{"name": "a", "match": {"identity": "x"}, "targets": [{"audience": "t1"}], "status_list": "yes"}]}
    with pytest.raises(ValueError, match="status_list"):
        BrokerConfig.model_validate(cfg)


def test_own_subject_tokens_only_through_chain_grants() -> None:
    from sts.trust.delegation import GrantDelegation

    grant = {"issuers": ["gh"], "match": {"identity": "github:9/9"},
             "targets": [{"audience": VECTOR, "scopes": ["read"], "default_scopes": ["read"]}]}
    cfg = {**CONFIG, "chains": {"max_depth": 6}, "grants": [
        {**grant, "name": "plain"},
        {**grant, "name": "chained", "delegation": {"chain": True, "actors": [{"identity": "k8s:ai/gateway"}],
                                                    "require_may_act": True}},
    ]}
    policy = CompiledPolicy.from_config(BrokerConfig.model_validate(cfg))
    who = WorkloadIdentity("github:9/9", "gh", {})
    args: dict[str, Any] = {"identity": who, "claims": {}, "request_audiences": (VECTOR,), "request_resources": (),
                            "requested_scopes": None, "actor": None}
    # The first grant in file order wins for an external subject token ...
    first = policy.decide(**args)
    assert isinstance(first, Allow) and first.grant == "plain"
    assert first.delegation == GrantDelegation(chain=False, max_depth=6)
    # ... but only grants with delegation.chain see one of our own tokens.
    own = policy.decide(**args, own_subject=True)
    assert isinstance(own, Allow) and own.grant == "chained"
    assert own.delegation == GrantDelegation(chain=True, max_depth=6, require_may_act=True)
    cfg["grants"] = cfg["grants"][:1]
    none = CompiledPolicy.from_config(BrokerConfig.model_validate(cfg)).decide(**args, own_subject=True)
    assert isinstance(none, Deny) and none.reason == "chain_not_allowed"
