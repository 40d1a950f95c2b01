"""The native forms of simple CEL expressions answer exactly as the CEL engine, or not at all.

Every expression below is evaluated both ways over the same inputs (strings, numbers, missing
entries, lists, maps, nulls). Whenever the native form answers, its result equals the CEL
result; wherever CEL fails (a missing claim, a type error), the native form declines.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from sts.config.models import BrokerConfig, IssuerConfig
from sts.subject.model import VerifiedSubject, WorkloadIdentity
from sts.trust.cel import (
    CONDITION_VARIABLES,
    MAPPING_VARIABLES,
    CompiledExpression,
    ExpressionError,
    compile_expression,
)
from sts.trust.mapping import CompiledIssuerMapping, MappingDenied
from sts.trust.native import NOT_NATIVE, native_form
from sts.trust.policy import CompiledPolicy

NATIVE_SHAPES = [
    "claims.sub",
    " claims.sub ",
    "claims",
    'claims.owner == "acme"',
    "claims.owner != 'acme'",
    '"acme" == claims.owner',
    'claims.owner == "acme" && claims.ref == "refs/heads/main"',
    'claims.owner == "" && claims.ref != "x" && "é" == claims.sub',
]

NOT_NATIVE_SHAPES = [
    "claims.a.b",  # nested: a sibling value CEL cannot convert would change the answer
    'claims["sub"]',
    "has(claims.sub)",
    'claims.sub + "x"',
    'claims.owner == "a" || claims.ref == "b"',
    'claims.owner == "a" &&',
    'claims.owner == "a\\"b"',  # escapes are CEL's to interpret
    'claims.owner == r"a"',
    "claims.owner == claims.ref",
    'claims.owner == 1',
    "claims.sub.startsWith('x')",
    "true",
    'claims.true == "x"',
]

VALUES: list[Any] = ["acme", "refs/heads/main", "", "é", 1, 0, True, None, 1.5, ["acme"], {"acme": "x"}]


@pytest.mark.parametrize("src", NATIVE_SHAPES)
def test_shapes_with_a_native_form(src: str) -> None:
    compile_expression(src, location="t")  # CEL accepts it too
    assert native_form(src, MAPPING_VARIABLES) is not None


@pytest.mark.parametrize("src", NOT_NATIVE_SHAPES)
def test_shapes_left_to_cel(src: str) -> None:
    assert native_form(src, MAPPING_VARIABLES) is None


def test_only_declared_variables_are_references() -> None:
    assert native_form('team == "x"', MAPPING_VARIABLES) is None
    assert native_form('attributes.team == "x"', CONDITION_VARIABLES) is not None
    assert native_form('identity == "x"', CONDITION_VARIABLES) is not None


def _cel(expr: Any, values: dict[str, Any]) -> tuple[str, Any]:
    try:
        return ("value", expr.evaluate(values))
    except ExpressionError as exc:
        return ("error", exc.reason)


@pytest.mark.parametrize("expect", [None, str, bool])
@pytest.mark.parametrize("src", NATIVE_SHAPES[:1] + NATIVE_SHAPES[3:])
def test_native_answers_equal_cel_answers(src: str, expect: type | None) -> None:
    expr = compile_expression(src, location="t", expect=expect)
    answered = 0
    names = ("sub", "owner", "ref")
    for picked in itertools.product([*VALUES, "<absent>"], repeat=3):
        claims = {k: v for k, v in zip(names, picked, strict=True) if v != "<absent>"}
        native = expr.evaluate_native({"claims": claims})
        if native is NOT_NATIVE:
            continue
        answered += 1
        assert _cel(expr, {"claims": claims}) == ("value", native), (src, claims)
    result_type = str if src == "claims.sub" else bool
    if expect in (None, result_type):
        assert answered > 0  # the shortcut is actually taken


def test_condition_variables_natively() -> None:
    expr = compile_expression(
        'identity == "w1" && issuer == "gh" && attributes.team == "ml"',
        location="t",
        expect=bool,
        variables=CONDITION_VARIABLES,
    )
    for team in ("ml", "web"):
        values = {"identity": "w1", "issuer": "gh", "attributes": {"team": team}, "claims": {}}
        assert expr.evaluate_native(values) == (team == "ml") == expr.evaluate(values)
    assert expr.evaluate_native({"identity": "w1", "issuer": "gh", "attributes": {}, "claims": {}}) is NOT_NATIVE


def _mapping(**doc: Any) -> CompiledIssuerMapping:
    issuer = IssuerConfig.model_validate(
        {"name": "gh", "issuer": "https://issuer.example", "audiences": ["https://sts.example.com"], **doc}
    )
    return CompiledIssuerMapping.from_config(issuer, location="issuers[0]")


def _subject(claims: dict[str, Any]) -> VerifiedSubject:
    return VerifiedSubject("gh", "https://issuer.example", str(claims.get("sub", "s")), claims, 2e9, "ab" * 32)


MAPPING = {
    "claim_validation_rules": [{"expression": 'claims.owner == "acme"', "message": "owner must be acme"}],
    "claim_mappings": {"identity": "claims.sub", "attributes": {"ref": "claims.ref"}},
}


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "repo:acme/app", "owner": "acme", "ref": "main"},
        {"sub": "repo:acme/app", "owner": "other", "ref": "main"},
        {"sub": "repo:acme/app", "owner": "acme"},  # optional attribute absent
        {"sub": 7, "owner": "acme", "ref": "main"},  # identity of the wrong type
        {"sub": "repo:acme/app", "owner": ["acme"], "ref": "main"},
        {"sub": "", "owner": "acme", "ref": "main"},
        {"sub": "repo:acme/app", "owner": "acme", "ref": {1, 2}},  # a value CEL cannot convert
    ],
)
def test_mapping_outcome_is_the_same_with_and_without_native_forms(claims: dict[str, Any]) -> None:
    fast = _mapping(**MAPPING)
    slow = _mapping(**MAPPING)
    slow._native_keys = None  # the CEL-only path, as before native forms existed

    def outcome(m: CompiledIssuerMapping) -> Any:
        try:
            r = m.map_identity(_subject(claims))
        except MappingDenied as exc:
            return ("denied", exc.reason, exc.rule_location, exc.message, exc.audit_notes)
        return ("mapped", r.identity, r.audit_notes)

    assert fast._native_keys is not None
    assert outcome(fast) == outcome(slow)


def test_mapping_of_string_claims_never_converts_to_cel(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cel(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the native path should not build a CEL activation")

    mapping = _mapping(**MAPPING)
    monkeypatch.setattr("sts.trust.mapping.Activation", no_cel)
    result = mapping.map_identity(_subject({"sub": "repo:acme/app", "owner": "acme", "ref": "main"}))
    assert result.identity.identity == "repo:acme/app"
    assert result.identity.attributes == {"ref": "main"}


def _policy(*conditions: str) -> CompiledPolicy:
    config: dict[str, Any] = {
        "issuer": "https://sts.example.com",
        "issuers": [{"name": "gh", "issuer": "https://gh.example.com", "audiences": ["https://sts.example.com"]}],
        "grants": [
            {
                "name": f"cond-{i}",
                "match": {"condition": condition},
                "targets": [{"audience": f"https://api-{i}.example.com", "scopes": ["read"]}],
            }
            for i, condition in enumerate(conditions)
        ],
    }
    return CompiledPolicy.from_config(BrokerConfig.model_validate(config))


@pytest.mark.parametrize(
    ("attributes", "claims", "matched"),
    [
        pytest.param({"team": "ml"}, {"env": "prod"}, ("cond-0", "cond-1"), id="strings"),
        pytest.param({"team": "web"}, {"env": "prod"}, ("cond-1",), id="one-false"),
        pytest.param({}, {"env": "prod"}, ("cond-1",), id="absent-attribute"),
        pytest.param({"team": "ml"}, {"env": 3}, ("cond-0",), id="number-claim"),
        # A claim CEL cannot convert fails every condition, as it did before native forms.
        pytest.param({"team": "ml"}, {"env": "prod", "big": {1, 2}}, (), id="unconvertible"),
    ],
)
def test_policy_conditions_match_as_with_cel(
    attributes: dict[str, Any], claims: dict[str, Any], matched: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    conditions = ('attributes.team == "ml"', 'claims.env == "prod" || claims.big > 0')
    fast = _policy(*conditions).match_grants(WorkloadIdentity("gh:x", "gh", attributes), claims)
    monkeypatch.setattr(CompiledExpression, "evaluate_native", lambda self, values: NOT_NATIVE)
    slow = _policy(*conditions).match_grants(WorkloadIdentity("gh:x", "gh", attributes), claims)
    assert fast.grants == slow.grants == matched
    assert fast.notes == slow.notes
