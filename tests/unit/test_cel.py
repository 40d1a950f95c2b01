"""sts.trust.cel: compile-time checks, evaluation errors, claim pruning, activations."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sts.trust.cel import (
    CONDITION_VARIABLES,
    MAPPING_VARIABLES,
    Activation,
    ExpressionCompileError,
    ExpressionError,
    claim_keys_read,
    compile_expression,
    union_claim_keys,
    union_keys_read,
)

CLAIMS: dict[str, Any] = {
    "sub": "repo:octo-org/octo-repo:ref:refs/heads/main",
    "repository": "octo-org/octo-repo",
    "repository_owner": "octo-org",
    "run_number": 7,
    "groups": ["dev", "ops"],
    "kubernetes.io": {"namespace": "ai", "serviceaccount": {"name": "agent", "uid": "u-1"}},
    "secret_value": "s3cr3t-claim-value",
}


@pytest.mark.parametrize(
    ("src", "expect", "result"),
    [
        pytest.param('claims.repository_owner == "octo-org"', bool, True, id="bool-rule"),
        pytest.param('claims.sub.startsWith("repo:octo-org/")', bool, True, id="startsWith"),
        pytest.param(
            'claims.sub.matches("^repo:[^:]+:ref:refs/heads/main$")', bool, True, id="matches"
        ),
        pytest.param('"gh:" + claims.repository', str, "gh:octo-org/octo-repo", id="concat"),
        pytest.param('claims["kubernetes.io"].serviceaccount.uid', str, "u-1", id="index-literal"),
        pytest.param("has(claims.environment)", bool, False, id="has-missing"),
        pytest.param('"ops" in claims.groups', bool, True, id="in-list"),
        pytest.param("claims.groups.all(g, g.size() > 1)", bool, True, id="comprehension"),
        pytest.param('claims.sub.split(":")[1]', str, "octo-org/octo-repo", id="ext-split"),
        pytest.param("claims.repository_owner.upperAscii()", str, "OCTO-ORG", id="ext-upper"),
        pytest.param("claims.run_number + 1", int, 8, id="int"),
        pytest.param("claims.groups", None, ["dev", "ops"], id="list-any-type"),
        pytest.param("type(claims.run_number) == int", bool, True, id="type-names"),
    ],
)
def test_evaluate_ok(src: str, expect: type | None, result: Any) -> None:
    expr = compile_expression(src, location="t", expect=expect)
    assert expr.evaluate({"claims": CLAIMS}) == result
    # The shared, converted-once activation gives the same answer.
    assert expr.evaluate(Activation({"claims": CLAIMS}, claim_keys=expr.claim_keys)) == result


@pytest.mark.parametrize(
    ("src", "variables", "needle"),
    [
        pytest.param(
            "claims.sub ==",
            MAPPING_VARIABLES,
            "syntax error at expression line 1, column 14",
            id="syntax",
        ),
        pytest.param("", MAPPING_VARIABLES, "non-empty", id="empty"),
        pytest.param("   ", MAPPING_VARIABLES, "non-empty", id="blank"),
        pytest.param(
            'identity == "x"',
            MAPPING_VARIABLES,
            "unknown variable 'identity'",
            id="condition-var-in-mapping",
        ),
        pytest.param(
            'clams.sub == "x"', MAPPING_VARIABLES, "unknown variable 'clams'", id="typo-var"
        ),
        pytest.param(
            'attributes.x == "y"', MAPPING_VARIABLES, "available here: claims", id="lists-available"
        ),
        pytest.param(
            "claims.sub.frobnicate()",
            MAPPING_VARIABLES,
            "unknown function 'frobnicate'",
            id="unknown-fn",
        ),
        pytest.param(
            "max(1, 2) == 2", MAPPING_VARIABLES, "unknown function 'max'", id="not-in-rust-stdlib"
        ),
        pytest.param(
            "optional.of(1) != null",
            MAPPING_VARIABLES,
            "unknown variable 'optional'",
            id="namespaced",
        ),
        pytest.param("claims.?x", CONDITION_VARIABLES, "syntax error", id="unsupported-syntax"),
    ],
)
def test_compile_errors(src: str, variables: frozenset[str], needle: str) -> None:
    with pytest.raises(ExpressionCompileError) as info:
        compile_expression(src, location="grants[0].match.condition", variables=variables)
    assert info.value.location == "grants[0].match.condition"
    assert needle in info.value.message
    # The library's echo of the source is not repeated in the message.
    assert "|" not in info.value.message


def test_condition_variables_compile() -> None:
    expr = compile_expression(
        'identity.startsWith("github:") && issuer == "gh" && attributes.ref == claims.ref',
        location="c",
        expect=bool,
        variables=CONDITION_VARIABLES,
    )
    assert expr.evaluate(
        {
            "identity": "github:1/2",
            "issuer": "gh",
            "attributes": {"ref": "m"},
            "claims": {"ref": "m"},
        }
    )


@pytest.mark.parametrize(
    ("src", "expect", "reason"),
    [
        pytest.param("claims.environment", None, "missing_field", id="missing"),
        pytest.param('claims.run_number + "x"', None, "type_error", id="type"),
        pytest.param("claims.groups[5]", None, "index_out_of_range", id="index"),
        pytest.param("claims.run_number / 0", None, "division_by_zero", id="div0"),
        pytest.param('int("x") == 1', bool, "function_error", id="conversion"),
        pytest.param("timestamp(1) == 1", bool, "no_such_overload", id="overload"),
        pytest.param("claims.repository", bool, "wrong_result_type", id="want-bool"),
        pytest.param("claims.run_number", str, "wrong_result_type", id="want-str"),
        pytest.param(
            'claims.secret_value.substring(5, 99) == ""', bool, "function_error", id="ext-raises"
        ),
        pytest.param(
            'claims[claims.secret_value] == "x"', bool, "missing_field", id="value-as-key"
        ),
    ],
)
def test_evaluation_errors_never_leak_values(
    src: str, expect: type | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    expr = compile_expression(src, location="t", expect=expect)
    with caplog.at_level(logging.DEBUG), pytest.raises(ExpressionError) as info:
        expr.evaluate({"claims": CLAIMS})
    assert info.value.reason == reason
    assert str(info.value) == reason
    assert "s3cr3t" not in str(info.value)
    # The evaluator logs failing extension callbacks; their text must not quote the input.
    assert "s3cr3t" not in caplog.text
    assert "out of range for string of length" not in caplog.text


def test_extension_failures_do_not_quote_arguments(caplog: pytest.LogCaptureFixture) -> None:
    expr = compile_expression('claims.secret_value.charAt(99) == ""', location="t", expect=bool)
    with caplog.at_level(logging.DEBUG), pytest.raises(ExpressionError):
        expr.evaluate(Activation({"claims": CLAIMS}))
    assert "s3cr3t" not in caplog.text


@pytest.mark.parametrize(
    ("expect", "value", "ok"),
    [
        pytest.param(bool, True, True, id="bool"),
        pytest.param(bool, 1, False, id="int-is-not-bool"),
        pytest.param(int, True, False, id="bool-is-not-int"),
        pytest.param(int, 3, True, id="int"),
        pytest.param(float, 1.5, True, id="float"),
        pytest.param(float, float("inf"), False, id="inf"),
        pytest.param(str, "x", True, id="str"),
        pytest.param(list, ["x"], True, id="list"),
    ],
)
def test_expected_types(expect: type, value: Any, ok: bool) -> None:
    expr = compile_expression("claims.v", location="t", expect=expect)
    if ok:
        assert expr.evaluate({"claims": {"v": value}}) == value
    else:
        with pytest.raises(ExpressionError, match="wrong_result_type"):
            expr.evaluate({"claims": {"v": value}})


@pytest.mark.parametrize(
    ("src", "keys"),
    [
        pytest.param('claims.a == "x"', frozenset({"a"}), id="field"),
        pytest.param('claims.a.b == claims["c.d"]', frozenset({"a", "c.d"}), id="field-and-index"),
        pytest.param("claims['k'] == 1", frozenset({"k"}), id="single-quotes"),
        pytest.param(
            "has(claims.a) && claims.b.startsWith('x')", frozenset({"a", "b"}), id="has-and-method"
        ),
        pytest.param('"x" == "y"', frozenset(), id="no-claims"),
        pytest.param("claims.size() > 0", None, id="method-on-claims"),
        pytest.param('claims.all(k, k != "x")', None, id="iteration"),
        pytest.param("size(claims) > 1", None, id="passed-whole"),
        pytest.param("claims[attributes.k] == 1", None, id="computed-index"),
        pytest.param('claims[r"raw"] == 1', None, id="raw-string-index"),
        pytest.param("attributes.claims == 1", frozenset(), id="field-named-claims"),
    ],
)
def test_claim_keys(src: str, keys: frozenset[str] | None) -> None:
    expr = compile_expression(src, location="t", variables=CONDITION_VARIABLES)
    assert expr.claim_keys == keys
    if "claims" in src and keys is not None and keys:
        assert claim_keys_read(src) == keys


def test_attribute_keys_are_found_like_claim_keys() -> None:
    expr = compile_expression(
        'attributes.a == "x" && attributes["b.c"] == claims.d',
        location="t",
        variables=CONDITION_VARIABLES,
    )
    assert expr.keys_read() == {"claims": frozenset({"d"}), "attributes": frozenset({"a", "b.c"})}
    assert expr.uses == frozenset({"attributes", "claims"})
    everything = compile_expression(
        "size(attributes) > 0", location="t", variables=CONDITION_VARIABLES
    )
    assert everything.attribute_keys is None
    assert union_keys_read([expr, everything]) == {"claims": frozenset({"d"}), "attributes": None}
    act = Activation(
        {"attributes": {"a": "x", "b.c": 1, "unread": {1, 2}}, "claims": {"d": 1}},
        keys={"attributes": expr.attribute_keys},
    )
    assert expr.evaluate(act) is True


def test_pruned_activation_still_evaluates_every_expression() -> None:
    exprs = [
        compile_expression('claims.repository == "octo-org/octo-repo"', location="a", expect=bool),
        compile_expression('claims["kubernetes.io"].namespace', location="b", expect=str),
    ]
    keys = union_claim_keys(exprs)
    assert keys == frozenset({"repository", "kubernetes.io"})
    act = Activation({"claims": CLAIMS}, claim_keys=keys)
    assert [e.evaluate(act) for e in exprs] == [True, "ai"]


def test_union_claim_keys_none_is_absorbing() -> None:
    exprs = [
        compile_expression("claims.a == 1", location="a"),
        compile_expression("size(claims) == 1", location="b"),
    ]
    assert union_claim_keys(exprs) is None
    assert union_claim_keys([]) == frozenset()


def test_activation_rejects_values_cel_cannot_hold() -> None:
    with pytest.raises(ExpressionError, match="unsupported_value"):
        Activation({"claims": {"a": {1, 2}}})


def test_activation_prunes_claims() -> None:
    act = Activation({"claims": CLAIMS}, claim_keys=frozenset({"sub", "absent"}))
    assert act.context.variables["claims"] == {"sub": CLAIMS["sub"]}


def test_compiled_expression_is_reusable_and_keeps_its_source() -> None:
    expr = compile_expression("claims.a == 1", location="loc", expect=bool)
    assert expr.source == "claims.a == 1"
    assert expr.location == "loc"
    assert [expr.evaluate({"claims": {"a": i}}) for i in (1, 2, 1)] == [True, False, True]
