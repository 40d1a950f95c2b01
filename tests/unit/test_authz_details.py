"""RFC 9396 authorization details: parsing the parameter and deciding per target (tables)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sts.config.models import AuthorizationDetailTypeConfig
from sts.errors import InvalidAuthorizationDetails, InvalidRequest
from sts.trust.authz_details import (
    MAX_DETAILS,
    MAX_DETAILS_CHARS,
    DetailsGranted,
    DetailsRefused,
    DetailTypes,
    check_schema,
    parse_authorization_details,
)

MCP_SCHEMA = {
    "type": "object",
    "required": ["type", "tools", "actions"],
    "properties": {
        "type": {"const": "mcp_tool"},
        "locations": {"type": "array", "items": {"type": "string", "pattern": "^https://"}},
        "tools": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "actions": {"type": "array", "items": {"type": "string"}},
        "limit": {"type": "integer"},
        "note": {"type": "string"},
    },
}


def types(*, narrow: bool = False) -> DetailTypes:
    cfg = AuthorizationDetailTypeConfig.model_validate({
        "type": "mcp_tool",
        "schema": MCP_SCHEMA,
        "narrow": narrow,
        "fields": {
            "locations": {"values": ["https://mcp.example.com/"]},
            "tools": {"values": ["search", "fetch"], "patterns": ["^docs\\.[a-z]+$"]},
            "actions": {"values": ["invoke"]},
            "limit": {"condition": "value <= 10 && attributes.team == 'search'"},
            "note": {"condition": "target.startsWith('https://mcp.example.com/') && 'invoke' in scopes"},
        },
    })
    return DetailTypes.compile([cfg], "grants[0].targets[0]")


def decide(requested: list[dict[str, Any]], *, narrow: bool = False, team: str = "search") -> DetailsGranted | DetailsRefused:
    return types(narrow=narrow).grant(
        requested, identity="wl:agent-1", issuer="local", attributes={"team": team}, claims={"sub": "agent-1"},
        target="https://mcp.example.com/tools/search", scopes=("invoke",),
    )


OK = {"type": "mcp_tool", "tools": ["search"], "actions": ["invoke"]}


@pytest.mark.parametrize(
    ("requested", "narrow", "granted"),
    [
        pytest.param([OK], False, [OK], id="literals"),
        pytest.param([{**OK, "tools": ["docs.python"]}], False, [{**OK, "tools": ["docs.python"]}], id="pattern"),
        pytest.param([{**OK, "locations": ["https://mcp.example.com/"]}], False,
                     [{**OK, "locations": ["https://mcp.example.com/"]}], id="location"),
        pytest.param([{**OK, "limit": 5}], False, [{**OK, "limit": 5}], id="cel-over-value-and-identity"),
        pytest.param([{**OK, "note": "x"}], False, [{**OK, "note": "x"}], id="cel-over-request"),
        pytest.param([OK, {**OK, "tools": ["fetch"]}], False, [OK, {**OK, "tools": ["fetch"]}], id="two-objects"),
        pytest.param([{**OK, "tools": ["search", "delete"]}], True, [OK], id="narrowed"),
    ],
)
def test_granted(requested: list[dict[str, Any]], narrow: bool, granted: list[dict[str, Any]]) -> None:
    result = decide(requested, narrow=narrow)
    assert isinstance(result, DetailsGranted), result
    assert list(result.details) == granted
    assert result.narrowed == (requested != granted)


@pytest.mark.parametrize(
    ("requested", "narrow", "team", "reason"),
    [
        pytest.param([{**OK, "type": "payment"}], False, "search", "unknown_type", id="unknown-type"),
        pytest.param([{**OK, "tools": "search"}], False, "search", "schema_violation", id="wrong-field-type"),
        pytest.param([{"type": "mcp_tool", "tools": ["search"]}], False, "search", "schema_violation", id="missing-required"),
        pytest.param([{**OK, "datatypes": ["x"]}], False, "search", "unknown_field", id="unknown-field"),
        pytest.param([{**OK, "tools": ["delete"]}], False, "search", "value_not_allowed", id="value-not-allowed"),
        pytest.param([{**OK, "tools": ["search", "delete"]}], False, "search", "value_not_allowed", id="no-narrowing"),
        pytest.param([{**OK, "tools": ["delete"]}], True, "search", "nothing_left", id="narrowed-to-nothing"),
        pytest.param([{**OK, "tools": ["docs.python/../x"]}], False, "search", "value_not_allowed", id="pattern-is-anchored"),
        pytest.param([{**OK, "limit": 11}], False, "search", "value_not_allowed", id="cel-false"),
        pytest.param([{**OK, "limit": 5}], False, "billing", "value_not_allowed", id="cel-identity"),
        pytest.param([{**OK, "locations": ["https://evil.example/"]}], True, "search", "nothing_left", id="location"),
        pytest.param([OK, {**OK, "actions": ["admin"]}], False, "search", "value_not_allowed", id="second-object"),
        pytest.param([{**OK, "actions": [True]}], False, "search", "schema_violation", id="bool-not-string"),
    ],
)
def test_refused(requested: list[dict[str, Any]], narrow: bool, team: str, reason: str) -> None:
    result = decide(requested, narrow=narrow, team=team)
    assert isinstance(result, DetailsRefused), result
    assert result.reason == reason
    # The audit detail never quotes a requested value.
    assert "delete" not in result.detail and "evil" not in result.detail


def test_literals_keep_json_types_apart() -> None:
    cfg = AuthorizationDetailTypeConfig.model_validate(
        {"type": "t", "schema": {"type": "object"}, "fields": {"n": {"values": [1]}}})
    t = DetailTypes.compile([cfg], "x")
    grant = lambda v: t.grant([{"type": "t", "n": v}], identity="i", issuer="s", attributes={}, claims={},  # noqa: E731
                              target="a", scopes=())
    assert isinstance(grant(1), DetailsGranted)
    assert isinstance(grant(True), DetailsRefused)
    assert isinstance(grant(1.0), DetailsRefused)
    assert isinstance(grant("1"), DetailsRefused)


def test_cel_failure_is_a_refusal_with_a_note() -> None:
    result = decide([{**OK, "limit": 5}], team="search")
    assert isinstance(result, DetailsGranted)
    t = types()
    result = t.grant([{**OK, "limit": 5}], identity="i", issuer="s", attributes={}, claims={}, target="a", scopes=())
    assert isinstance(result, DetailsRefused) and result.reason == "value_not_allowed"
    assert any("failed" in n for n in result.notes)


@pytest.mark.parametrize(
    ("raw", "error", "reason"),
    [
        pytest.param("{", InvalidRequest, "authorization_details_malformed", id="not-json"),
        pytest.param('[{"type":"a","type":"b"}]', InvalidRequest, "authorization_details_malformed", id="duplicate-member"),
        pytest.param('[{"type":"a","n":NaN}]', InvalidRequest, "authorization_details_malformed", id="nan"),
        pytest.param(json.dumps([{"type": "a", "x": "y" * MAX_DETAILS_CHARS}]), InvalidRequest,
                     "authorization_details_too_large", id="too-large"),
        pytest.param("[" * 40 + "]" * 40, InvalidRequest, "authorization_details_too_deep", id="too-deep"),
        pytest.param('{"type":"a"}', InvalidRequest, "authorization_details_not_array", id="object"),
        pytest.param("[]", InvalidRequest, "authorization_details_not_array", id="empty"),
        pytest.param(json.dumps([{"type": "a"}] * (MAX_DETAILS + 1)), InvalidRequest, "authorization_details_too_many",
                     id="too-many"),
        pytest.param('["a"]', InvalidAuthorizationDetails, "authorization_details_no_type", id="not-object"),
        pytest.param('[{"actions":["x"]}]', InvalidAuthorizationDetails, "authorization_details_no_type", id="no-type"),
        pytest.param('[{"type":7}]', InvalidAuthorizationDetails, "authorization_details_no_type", id="type-not-string"),
    ],
)
def test_parse_refuses(raw: str, error: type[Exception], reason: str) -> None:
    with pytest.raises(error) as exc:
        parse_authorization_details(raw)
    assert exc.value.reason == reason  # type: ignore[attr-defined]


def test_parse_accepts() -> None:
    assert parse_authorization_details(json.dumps([OK])) == (OK,)


def test_schema_checked_at_load() -> None:
    assert check_schema({"type": "object"}) is None
    assert check_schema({"type": "no-such-type"}) is not None
    with pytest.raises(ValueError, match="JSON Schema"):
        AuthorizationDetailTypeConfig.model_validate({"type": "t", "schema": {"type": 5}})
    with pytest.raises(ValueError, match="anchored"):
        AuthorizationDetailTypeConfig.model_validate({"type": "t", "schema": {}, "fields": {"a": {"patterns": ["x"]}}})
    with pytest.raises(ValueError, match="allow something"):
        AuthorizationDetailTypeConfig.model_validate({"type": "t", "schema": {}, "fields": {"a": {}}})
    with pytest.raises(ValueError, match="unknown variable"):
        AuthorizationDetailTypeConfig.model_validate({"type": "t", "schema": {}, "fields": {"a": {"condition": "nope == 1"}}})
    with pytest.raises(ValueError, match="not a field rule"):
        AuthorizationDetailTypeConfig.model_validate({"type": "t", "schema": {}, "fields": {"type": {"values": ["t"]}}})
