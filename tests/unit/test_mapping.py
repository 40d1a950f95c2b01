"""sts.trust.mapping: claim validation rules, identity and attribute mappings."""

from __future__ import annotations

from typing import Any

import pytest

from sts.config.models import ClaimMappings, IssuerConfig
from sts.subject.model import VerifiedSubject
from sts.trust.cel import ExpressionCompileError
from sts.trust.mapping import (
    CompiledIssuerMapping,
    MappingDenied,
    attribute_value_ok,
    identity_problem,
)
from sts.trust.presets import Preset

CLAIMS: dict[str, Any] = {
    "iss": "https://idp.example.com",
    "sub": "workload-7",
    "aud": "https://sts.example.com",
    "team": "search",
    "env": "prod",
    "groups": ["a", "b"],
    "level": 3,
    "ratio": 0.5,
    "flag": True,
    "nested": {"k": "v"},
    "blob": "c2VjcmV0",
    "secret_value": "s3cr3t-claim-value",
}


def compiled(**issuer: Any) -> CompiledIssuerMapping:
    cfg = IssuerConfig.model_validate(
        {
            "name": "idp",
            "issuer": "https://idp.example.com",
            "audiences": ["https://sts.example.com"],
            **issuer,
        }
    )
    return CompiledIssuerMapping.from_config(cfg, location="issuers[3]")


def subject(claims: dict[str, Any] | None = None, sub: str = "workload-7") -> VerifiedSubject:
    return VerifiedSubject("idp", "https://idp.example.com", sub, claims or CLAIMS, 2e9, "ab" * 32)


def rule(expression: str, mode: str = "enforce", message: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"expression": expression, "mode": mode}
    if message is not None:
        r["message"] = message
    return r


def test_default_identity_is_issuer_name_and_sub() -> None:
    result = compiled().map_identity(subject())
    assert result.identity.identity == "idp:workload-7"
    assert result.identity.issuer_name == "idp"
    assert result.identity.attributes == {}
    assert result.audit_notes == []


def test_identity_and_attribute_mappings() -> None:
    m = compiled(
        claim_mappings={
            "identity": '"team/" + claims.team + "/" + claims.sub',
            "attributes": {
                "team": "claims.team",
                "groups": "claims.groups",
                "level": "claims.level",
                "ratio": "claims.ratio",
                "flag": "claims.flag",
                "none": "null",
                "upper": "claims.env.upperAscii()",
            },
        }
    )
    ident = m.map_identity(subject()).identity
    assert ident.identity == "team/search/workload-7"
    assert ident.attributes == {
        "team": "search",
        "groups": ["a", "b"],
        "level": 3,
        "ratio": 0.5,
        "flag": True,
        "none": None,
        "upper": "PROD",
    }


def test_attribute_reading_an_absent_claim_is_left_out() -> None:
    m = compiled(
        claim_mappings={
            "attributes": {
                "environment": "claims.environment",
                "environment_or_empty": 'has(claims.environment) ? claims.environment : ""',
            }
        }
    )
    attrs = m.map_identity(subject()).identity.attributes
    assert attrs == {"environment_or_empty": ""}


@pytest.mark.parametrize(
    ("rules", "denied_at", "reason", "notes"),
    [
        pytest.param([rule('claims.env == "prod"')], None, None, [], id="enforce-passes"),
        pytest.param(
            [rule('claims.env == "dev"', message="env must be dev")],
            "issuers[3].claim_validation_rules[0]",
            "claim_validation_failed",
            [],
            id="enforce-false",
        ),
        pytest.param(
            [rule("claims.missing == 1")],
            "issuers[3].claim_validation_rules[0]",
            "claim_validation_error",
            [],
            id="enforce-errors",
        ),
        pytest.param(
            [rule("claims.team", message="x")],
            "issuers[3].claim_validation_rules[0]",
            "claim_validation_error",
            [],
            id="enforce-non-bool",
        ),
        pytest.param(
            [rule('claims.env == "dev"', mode="audit", message="env must be dev")],
            None,
            None,
            ["audit rule issuers[3].claim_validation_rules[0] failed: env must be dev"],
            id="audit-false-only-notes",
        ),
        pytest.param(
            [rule("claims.missing == 1", mode="audit")],
            None,
            None,
            ["audit rule issuers[3].claim_validation_rules[0] errored (missing_field)"],
            id="audit-error-only-notes",
        ),
        pytest.param(
            [rule('claims.env == "dev"', mode="audit"), rule("false", message="no")],
            "issuers[3].claim_validation_rules[1]",
            "claim_validation_failed",
            [
                "audit rule issuers[3].claim_validation_rules[0] failed: claim validation rule 0 failed"
            ],
            id="audit-then-enforce",
        ),
        pytest.param(
            [rule("true", mode="audit"), rule("true")],
            None,
            None,
            [],
            id="all-pass",
        ),
    ],
)
def test_validation_rules(
    rules: list[dict[str, Any]], denied_at: str | None, reason: str | None, notes: list[str]
) -> None:
    m = compiled(claim_validation_rules=rules)
    if denied_at is None:
        assert m.map_identity(subject()).audit_notes == notes
        return
    with pytest.raises(MappingDenied) as info:
        m.map_identity(subject())
    assert info.value.rule_location == denied_at
    assert info.value.reason == reason
    assert list(info.value.audit_notes) == notes


def test_denial_carries_configured_message_not_claims() -> None:
    m = compiled(
        claim_validation_rules=[rule('claims.secret_value == "x"', message="wrong secret")]
    )
    with pytest.raises(MappingDenied) as info:
        m.map_identity(subject())
    assert info.value.message == "wrong secret"
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    ("identity_src", "sub", "reason", "problem"),
    [
        pytest.param("claims.level", "w", "identity_mapping_error", None, id="non-string"),
        pytest.param("claims.nope", "w", "identity_mapping_error", None, id="missing-claim"),
        pytest.param('""', "w", "identity_invalid", "identity is empty", id="empty"),
        pytest.param(
            'claims.sub + "x"', "w", "identity_invalid", "longer than 255", id="too-long-from-cel"
        ),
        pytest.param('"a\\nb"', "w", "identity_invalid", "control or format", id="newline"),
        pytest.param(
            '"a\\u202eb"', "w", "identity_invalid", "control or format", id="bidi-override"
        ),
        pytest.param(None, "x" * 252, "identity_invalid", "longer than 255", id="default-too-long"),
        pytest.param(None, "evil\x00", "identity_invalid", "control or format", id="default-nul"),
        pytest.param(None, "", "identity_invalid", None, id="default-empty-sub-still-ok-prefix"),
    ],
)
def test_identity_failures(
    identity_src: str | None, sub: str, reason: str, problem: str | None
) -> None:
    mappings = {"identity": identity_src} if identity_src else {}
    m = compiled(claim_mappings=mappings)
    claims = dict(CLAIMS, sub=sub if identity_src is None else "s" * 255)
    if identity_src is None and sub == "":
        # "idp:" is a valid identity: the issuer name prefix keeps it non-empty.
        assert m.map_identity(subject(claims, sub=sub)).identity.identity == "idp:"
        return
    with pytest.raises(MappingDenied) as info:
        m.map_identity(subject(claims, sub=sub))
    assert info.value.reason == reason
    if problem is not None:
        assert problem in info.value.message
    assert info.value.rule_location.startswith("issuers[3].")


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        pytest.param("claims.nested", "attribute_invalid", id="dict"),
        pytest.param('b"abc"', "attribute_invalid", id="bytes"),
        pytest.param("[1, 2]", "attribute_invalid", id="list-of-ints"),
        pytest.param('duration("1s")', "attribute_invalid", id="duration"),
        pytest.param("claims.team + 1", "attribute_mapping_error", id="type-error"),
        pytest.param("claims.groups[9]", "attribute_mapping_error", id="index-error"),
    ],
)
def test_attribute_failures(src: str, reason: str) -> None:
    m = compiled(claim_mappings={"attributes": {"bad": src}})
    with pytest.raises(MappingDenied) as info:
        m.map_identity(subject())
    assert info.value.reason == reason
    assert info.value.rule_location == "issuers[3].claim_mappings.attributes.bad"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        pytest.param("s", True, id="str"),
        pytest.param(1, True, id="int"),
        pytest.param(True, True, id="bool"),
        pytest.param(None, True, id="null"),
        pytest.param(1.5, True, id="float"),
        pytest.param(float("nan"), False, id="nan"),
        pytest.param(["a"], True, id="list-str"),
        pytest.param(("a",), True, id="tuple-str"),
        pytest.param(["a", 1], False, id="list-mixed"),
        pytest.param(["a"] * 257, False, id="list-too-long"),
        pytest.param({"a": 1}, False, id="dict"),
        pytest.param(b"a", False, id="bytes"),
    ],
)
def test_attribute_value_ok(value: object, ok: bool) -> None:
    assert attribute_value_ok(value) is ok


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param("github:1/2", None, id="ok"),
        pytest.param("x" * 255, None, id="max-length"),
        pytest.param("ünïcode:名前", None, id="unicode-letters"),
        pytest.param(3, "not a string", id="int"),
        pytest.param("", "empty", id="empty"),
        pytest.param("x" * 256, "longer", id="too-long"),
        pytest.param("a\tb", "control", id="tab"),
        pytest.param("a\u200bb", "control", id="zero-width"),
        pytest.param("a\u2028b", "control", id="line-separator"),
    ],
)
def test_identity_problem(value: object, problem: str | None) -> None:
    got = identity_problem(value)
    assert (got is None) if problem is None else (got is not None and problem in got)


def test_unsupported_claim_values_deny() -> None:
    m = compiled(claim_mappings={"attributes": {"team": "claims.team"}})
    with pytest.raises(MappingDenied) as info:
        m.map_identity(subject(dict(CLAIMS, team={1, 2})))
    assert info.value.reason == "claims_unsupported"


def test_only_needed_claims_are_converted() -> None:
    m = compiled(
        claim_validation_rules=[rule('claims.env == "prod"')],
        claim_mappings={"identity": "claims.sub", "attributes": {"team": "claims.team"}},
    )
    assert m.claim_keys == frozenset({"env", "sub", "team"})
    # A claim no expression reads may even hold a value CEL cannot represent.
    assert m.map_identity(subject(dict(CLAIMS, unused={1, 2}))).identity.identity == "workload-7"


def test_from_config_reports_compile_errors_for_unchecked_configs() -> None:
    # model_construct skips validation, as a configuration built in code might.
    cfg = IssuerConfig.model_construct(
        name="idp",
        preset=None,
        claim_validation_rules=(),
        claim_mappings=ClaimMappings.model_construct(identity="claims.", attributes={}),
    )
    with pytest.raises(ExpressionCompileError) as info:
        CompiledIssuerMapping.from_config(cfg, location="issuers[0]")
    assert info.value.location == "issuers[0].claim_mappings.identity"


def test_preset_identity_failure_denies() -> None:
    broken = Preset(
        name="broken", rules=(), identity=lambda c: c["absent"], attributes=lambda c: {}
    )
    m = CompiledIssuerMapping(
        issuer_name="idp",
        location="issuers[0]",
        preset=broken,
        rules=(),
        identity=None,
        attributes={},
    )
    with pytest.raises(MappingDenied) as info:
        m.map_identity(subject())
    assert (info.value.reason, info.value.rule_location) == (
        "identity_mapping_error",
        "issuers[0].preset[broken].identity",
    )


def test_preset_attribute_of_wrong_type_denies() -> None:
    odd = Preset(
        name="odd", rules=(), identity=lambda c: "x", attributes=lambda c: {"nested": {"a": 1}}
    )
    m = CompiledIssuerMapping(
        issuer_name="idp", location="issuers[0]", preset=odd, rules=(), identity=None, attributes={}
    )
    with pytest.raises(MappingDenied) as info:
        m.map_identity(subject())
    assert info.value.reason == "attribute_invalid"
