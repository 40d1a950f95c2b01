"""The chain rules (sts.trust.delegation), table by table: RFC 8693 §4.1 depth of ``act``,
§4.4 ``may_act``, the audience binding, scopes within the parent's, revoked ancestors, the
chain record."""

from __future__ import annotations

from typing import Any

import pytest

from sts.trust.delegation import (
    CHAIN_CLAIM,
    ChainRules,
    GrantDelegation,
    Hop,
    Presenter,
    Presenters,
    Refusal,
    act_depth,
    check_chain,
    check_delegation,
    decide_hop,
    may_act_allows,
    next_record,
    parse_record,
)

GATEWAY = Presenter(identity="wl:gateway", iss="https://idp.example.com", sub="gateway")
TOOL_CLIENT = Presenter(client_id="search-tool")
RULES = GrantDelegation(chain=True, max_depth=3, clients=frozenset({"search-tool"}))
RECORD = ({"jti": "j0", "grant": "g0", "origin": "cluster"}, {"jti": "j1", "grant": "g1", "actor": "wl:gateway"})


@pytest.mark.parametrize(("act", "depth"), [
    pytest.param(None, 0, id="none"),
    pytest.param({"sub": "a"}, 1, id="one"),
    pytest.param({"sub": "a", "act": {"sub": "b", "act": {"sub": "c"}}}, 3, id="three"),
    pytest.param("a", -1, id="not-an-object"),
    pytest.param({"sub": "a", "act": ["b"]}, -1, id="nested-not-an-object"),
])
def test_act_depth(act: Any, depth: int) -> None:
    assert act_depth(act) == depth


def test_act_depth_stops_walking_a_hostile_nesting() -> None:
    act: dict[str, Any] = {"sub": "x"}
    for _ in range(10_000):
        act = {"sub": "x", "act": act}
    assert act_depth(act) == -1


@pytest.mark.parametrize(("may_act", "presenter", "allowed"), [
    pytest.param({"sub": "wl:gateway"}, GATEWAY, True, id="identity"),
    pytest.param({"iss": "https://idp.example.com", "sub": "gateway"}, GATEWAY, True, id="iss-and-sub"),
    pytest.param({"sub": "wl:gateway", "email": "gw@example.com"}, GATEWAY, True, id="informative-member-ignored"),
    pytest.param({"sub": "gateway"}, GATEWAY, False, id="raw-sub-without-iss-is-ambiguous"),
    pytest.param({"iss": "https://other.example.com", "sub": "gateway"}, GATEWAY, False, id="other-issuer"),
    pytest.param({"sub": "wl:other"}, GATEWAY, False, id="someone-else"),
    pytest.param({"client_id": "search-tool"}, TOOL_CLIENT, True, id="client"),
    pytest.param({"client_id": "search-tool"}, GATEWAY, False, id="client-named-actor-presents"),
    pytest.param({"sub": "wl:gateway"}, TOOL_CLIENT, False, id="actor-named-client-presents"),
    pytest.param({"iss": "https://idp.example.com"}, GATEWAY, False, id="no-identifying-member"),
    pytest.param({}, GATEWAY, False, id="empty"),
    pytest.param("wl:gateway", GATEWAY, False, id="not-an-object"),
])
def test_may_act(may_act: Any, presenter: Presenter, allowed: bool) -> None:
    assert may_act_allows(may_act, presenter) is allowed


@pytest.mark.parametrize(("claims", "rules", "expected"), [
    pytest.param({}, RULES, 1, id="first-actor"),
    pytest.param({"act": {"sub": "a", "act": {"sub": "b"}}}, RULES, 3, id="at-the-cap"),
    pytest.param({"act": {"sub": "a", "act": {"sub": "b", "act": {"sub": "c"}}}}, RULES, "chain_too_deep", id="over-the-cap"),
    pytest.param({"act": "x"}, RULES, "chain_too_deep", id="malformed-act"),
    pytest.param({"may_act": {"sub": "wl:other"}}, RULES, "may_act_mismatch", id="may-act-mismatch"),
    pytest.param({"may_act": {"sub": "wl:gateway"}}, RULES, 1, id="may-act-match"),
    pytest.param({}, GrantDelegation(chain=False, max_depth=4, require_may_act=True), "may_act_missing", id="may-act-required"),
])
def test_check_delegation(claims: dict[str, Any], rules: GrantDelegation, expected: int | str) -> None:
    result = check_delegation(claims, GATEWAY, rules)
    if isinstance(expected, str):
        assert isinstance(result, Refusal) and result.reason == expected
    else:
        assert result == expected


PARENT = {"aud": "wl:gateway", "scope": "docs.read docs.write", "jti": "j1"}


@pytest.mark.parametrize(("kwargs", "expected"), [
    pytest.param({}, ("docs.read",), id="narrowed-request"),
    pytest.param({"requested_scopes": None, "granted_scopes": ("docs.read", "docs.admin")}, ("docs.read",), id="defaults-intersected"),
    pytest.param({"requested_scopes": None, "granted_scopes": ("docs.admin",)}, "chain_scope_widening", id="no-common-default"),
    pytest.param({"requested_scopes": ("docs.read", "docs.admin")}, "chain_scope_widening", id="widening"),
    pytest.param({"rules": GrantDelegation(chain=False, max_depth=4)}, "chain_not_allowed", id="grant-without-chain"),
    pytest.param({"record": None}, "chain_record_invalid", id="no-record"),
    pytest.param({"presenter": None}, "chain_presenter_unknown", id="nobody-presents"),
    pytest.param({"presenter": Presenter(client_id="other")}, "chain_client_not_allowed", id="client-not-listed"),
    pytest.param({"presenter": TOOL_CLIENT}, "chain_audience_mismatch", id="client-not-the-audience"),
    pytest.param({"presenter": Presenter(identity="wl:tool")}, "chain_audience_mismatch", id="actor-not-the-audience"),
    pytest.param({"parent": {**PARENT, "aud": ["wl:gateway"]}}, "chain_audience_mismatch", id="audience-list"),
    pytest.param({"revoked": frozenset({"j0"})}, "chain_ancestor_revoked", id="ancestor-revoked"),
    pytest.param({"revoked": frozenset({"j1"})}, ("docs.read",), id="parent-revoked-is-the-lifecycle-step"),
    pytest.param({"presenters": Presenters({"wl:gateway": (frozenset({"wl:tool"}), frozenset())}),
                  "presenter": Presenter(identity="wl:tool")}, ("docs.read",), id="mapped-presenter"),
    pytest.param({"presenters": Presenters({"wl:gateway": (frozenset({"wl:tool"}), frozenset())})},
                 "chain_audience_mismatch", id="mapping-replaces-the-default"),
])
def test_check_chain(kwargs: dict[str, Any], expected: tuple[str, ...] | str) -> None:
    args: dict[str, Any] = {"parent": PARENT, "record": RECORD, "presenter": GATEWAY, "rules": RULES,
                            "presenters": Presenters(), "requested_scopes": ("docs.read",), "granted_scopes": ("docs.read",)}
    args.update(kwargs)
    result = check_chain(**args)
    if isinstance(expected, str):
        assert isinstance(result, Refusal) and result.reason == expected, result
        assert result.error == ("invalid_scope" if expected == "chain_scope_widening" else "invalid_request")
    else:
        assert result == expected


@pytest.mark.parametrize(("value", "valid"), [
    pytest.param(list(RECORD), True, id="valid"),
    pytest.param([], False, id="empty"),
    pytest.param([{"jti": "j0", "grant": "g0"}], False, id="no-origin"),
    pytest.param([{"jti": "j0", "grant": "g0", "origin": "o"}, {"jti": "j1", "grant": "g1", "origin": "o"}], False, id="origin-later"),
    pytest.param([{"jti": "j0", "grant": "g0", "origin": "o", "extra": "x"}], False, id="unknown-member"),
    pytest.param([{"jti": "j0", "grant": "g0", "origin": "o", "actor": "a", "client": "c"}], False, id="actor-and-client"),
    pytest.param([{"jti": 1, "grant": "g0", "origin": "o"}], False, id="not-a-string"),
    pytest.param({"jti": "j0"}, False, id="not-a-list"),
])
def test_parse_record(value: Any, valid: bool) -> None:
    assert (parse_record(value) is not None) is valid


def test_next_record_appends_this_hop_and_starts_with_the_origin() -> None:
    assert next_record(None, jti="a", grant="g", presenter=None, origin="cluster") == [
        {"jti": "a", "grant": "g", "origin": "cluster"}]
    assert next_record(None, jti="a", grant="g", presenter=GATEWAY, origin="cluster") == [
        {"jti": "a", "grant": "g", "actor": "wl:gateway", "origin": "cluster"}]
    assert next_record(RECORD, jti="b", grant="g2", presenter=TOOL_CLIENT, origin="ignored") == [
        *RECORD, {"jti": "b", "grant": "g2", "client": "search-tool"}]


def test_decide_hop_runs_the_chain_rules_then_may_act_and_depth() -> None:
    chains = ChainRules(max_depth=4, presenters=Presenters())
    parent = {**PARENT, CHAIN_CLAIM: list(RECORD), "act": {"sub": "wl:x"}}
    hop = decide_hop(subject_claims=parent, own=True, presenter=GATEWAY, rules=RULES, chains=chains,
                     requested_scopes=None, granted_scopes=("docs.read",))
    assert hop == Hop(depth=2, presenter=GATEWAY, record=RECORD, scopes=("docs.read",))
    too_deep = decide_hop(subject_claims=parent, own=True, presenter=GATEWAY,
                          rules=GrantDelegation(chain=True, max_depth=1), chains=chains,
                          requested_scopes=None, granted_scopes=("docs.read",))
    assert isinstance(too_deep, Refusal) and too_deep.reason == "chain_too_deep"
    # chains off: our own token is never a subject token
    off = decide_hop(subject_claims=parent, own=True, presenter=GATEWAY, rules=RULES, chains=None,
                     requested_scopes=None, granted_scopes=("docs.read",))
    assert isinstance(off, Refusal) and off.reason == "chain_not_allowed"
    # an external subject with an actor: only may_act and the depth
    external = decide_hop(subject_claims={"sub": "x"}, own=False, presenter=GATEWAY, rules=RULES, chains=None,
                          requested_scopes=None, granted_scopes=("docs.read",))
    assert external == Hop(depth=1, presenter=GATEWAY)



PARENT_DETAILS = [{"type": "mcp_tool", "tools": ["search", "fetch"], "actions": ["invoke"]},
                  {"type": "db", "table": "docs"}]


@pytest.mark.parametrize(("granted", "parent", "within"), [
    pytest.param([], None, True, id="none-asked"),
    pytest.param([{"type": "mcp_tool", "tools": ["search"], "actions": ["invoke"]}], PARENT_DETAILS, True, id="subset"),
    pytest.param([{"type": "mcp_tool", "tools": ["fetch", "search"], "actions": ["invoke"]}, {"type": "db", "table": "docs"}],
                 PARENT_DETAILS, True, id="all-of-it"),
    pytest.param([{"type": "mcp_tool", "tools": ["shell"], "actions": ["invoke"]}], PARENT_DETAILS, False, id="other-element"),
    pytest.param([{"type": "mcp_tool", "tools": ["search"]}], PARENT_DETAILS, False, id="constraint-dropped"),
    pytest.param([{"type": "mcp_tool", "tools": ["search"], "actions": ["invoke"], "x": 1}], PARENT_DETAILS, False,
                 id="field-added"),
    pytest.param([{"type": "db", "table": "users"}], PARENT_DETAILS, False, id="other-scalar"),
    pytest.param([{"type": "db", "table": "docs"}], None, False, id="parent-has-none"),
    pytest.param([{"type": "db", "table": "docs"}], "not-a-list", False, id="parent-malformed"),
])
def test_details_within(granted: list[dict[str, Any]], parent: Any, within: bool) -> None:
    from sts.trust.delegation import details_within

    assert details_within(granted, parent) is within
