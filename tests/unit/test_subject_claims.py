"""Registered-claim validation (sts.subject.claims), with a frozen clock."""

from __future__ import annotations

from typing import Any

import pytest

from sts.subject.claims import ClaimError, ClaimRules, validate_claims

NOW = 1_700_000_000
ISS = "https://token.actions.githubusercontent.com"
AUD = "https://sts.example.com"
RULES = ClaimRules(issuer=ISS, audiences=frozenset({AUD, "https://other.example"}))
BASE: dict[str, Any] = {
    "iss": ISS,
    "aud": AUD,
    "sub": "repo:acme/app:ref:refs/heads/main",
    "iat": NOW - 10,
    "nbf": NOW - 10,
    "exp": NOW + 300,
    "jti": "j-1",
}
MISSING = object()


def claims_with(**changes: Any) -> dict[str, Any]:
    out = dict(BASE)
    for name, value in changes.items():
        if value is MISSING:
            out.pop(name, None)
        else:
            out[name] = value
    return out


CASES = [
    # --- accepted
    pytest.param({}, {}, None, id="valid"),
    pytest.param({"aud": [AUD]}, {}, None, id="aud-list"),
    pytest.param({"aud": ["https://x", "https://other.example"]}, {}, None, id="aud-list-one-match"),
    pytest.param({"exp": NOW + 300.5, "iat": NOW - 0.5}, {}, None, id="float-dates"),
    pytest.param({"iat": MISSING, "nbf": MISSING, "jti": MISSING}, {}, None, id="optional-claims-absent"),
    pytest.param({"exp": NOW - 59}, {}, None, id="exp-within-leeway"),
    pytest.param({"nbf": NOW + 60}, {}, None, id="nbf-at-leeway-edge"),
    pytest.param({"iat": NOW + 60}, {}, None, id="iat-at-leeway-edge"),
    pytest.param({"sub": MISSING}, {"require_sub": False}, None, id="sub-not-required"),
    pytest.param({"iat": NOW - 1000, "exp": NOW + 86400 - 1000}, {}, None, id="lifetime-at-cap"),
    pytest.param({"exp": NOW + 86400 + 60, "iat": MISSING}, {}, None, id="remaining-at-cap-plus-leeway"),
    pytest.param({"iat": NOW - 10**6, "exp": NOW + 10**6}, {"max_lifetime": None}, None, id="no-lifetime-cap"),
    pytest.param({}, {"require_jti": True}, None, id="jti-required-present"),
    # --- iss
    pytest.param({"iss": MISSING}, {}, "iss_mismatch", id="iss-missing"),
    pytest.param({"iss": ISS + "/"}, {}, "iss_mismatch", id="iss-trailing-slash"),
    pytest.param({"iss": ISS.upper()}, {}, "iss_mismatch", id="iss-case"),
    pytest.param({"iss": [ISS]}, {}, "claim_type", id="iss-not-string"),
    # --- exp
    pytest.param({"exp": MISSING}, {}, "exp_missing", id="exp-missing"),
    pytest.param({"exp": str(NOW + 300)}, {}, "exp_invalid", id="exp-string"),
    pytest.param({"exp": True}, {}, "exp_invalid", id="exp-bool"),
    pytest.param({"exp": None}, {}, "exp_invalid", id="exp-null"),
    pytest.param({"exp": float("inf")}, {}, "exp_invalid", id="exp-infinite"),
    pytest.param({"exp": float("nan")}, {}, "exp_invalid", id="exp-nan"),
    pytest.param({"exp": NOW - 60}, {}, "expired", id="expired-at-leeway-edge"),
    pytest.param({"exp": NOW - 3600, "iat": NOW - 7200, "nbf": NOW - 7200}, {}, "expired", id="expired"),
    pytest.param({"exp": NOW}, {"leeway": 0}, "expired", id="expired-now-without-leeway"),
    # --- nbf / iat
    pytest.param({"nbf": NOW + 61}, {}, "not_yet_valid", id="nbf-future"),
    pytest.param({"nbf": "0"}, {}, "claim_type", id="nbf-string"),
    pytest.param({"nbf": False}, {}, "claim_type", id="nbf-bool"),
    pytest.param({"iat": NOW + 61}, {}, "iat_in_future", id="iat-future"),
    pytest.param({"iat": None}, {}, "claim_type", id="iat-null"),
    pytest.param({"iat": [NOW]}, {}, "claim_type", id="iat-array"),
    # --- lifetime
    pytest.param({"iat": NOW - 1000, "exp": NOW + 86400 - 999}, {}, "lifetime_too_long", id="exp-minus-iat"),
    pytest.param({"exp": NOW + 86400 + 61, "iat": MISSING}, {}, "lifetime_too_long", id="exp-minus-now"),
    pytest.param({"exp": NOW + 3600}, {"max_lifetime": 600}, "lifetime_too_long", id="custom-cap"),
    # --- aud
    pytest.param({"aud": MISSING}, {}, "aud_mismatch", id="aud-missing"),
    pytest.param({"aud": "https://evil.example"}, {}, "aud_mismatch", id="aud-other"),
    pytest.param({"aud": ["https://evil.example"]}, {}, "aud_mismatch", id="aud-list-other"),
    pytest.param({"aud": AUD + "/"}, {}, "aud_mismatch", id="aud-trailing-slash"),
    pytest.param({"aud": []}, {}, "claim_type", id="aud-empty-list"),
    pytest.param({"aud": [AUD, 1]}, {}, "claim_type", id="aud-list-non-string"),
    pytest.param({"aud": {"x": AUD}}, {}, "claim_type", id="aud-object"),
    pytest.param({"aud": 1}, {}, "claim_type", id="aud-number"),
    # --- sub / jti
    pytest.param({"sub": MISSING}, {}, "sub_missing", id="sub-missing"),
    pytest.param({"sub": ""}, {}, "sub_missing", id="sub-empty"),
    pytest.param({"sub": 42}, {}, "claim_type", id="sub-number"),
    pytest.param({"sub": 42}, {"require_sub": False}, "claim_type", id="sub-number-not-required"),
    pytest.param({"jti": MISSING}, {"require_jti": True}, "jti_missing", id="jti-missing"),
    pytest.param({"jti": ""}, {"require_jti": True}, "jti_missing", id="jti-empty"),
    pytest.param({"jti": 7}, {}, "claim_type", id="jti-number"),
]


@pytest.mark.parametrize(("changes", "rule_changes", "reason"), CASES)
def test_validate_claims(changes: dict[str, Any], rule_changes: dict[str, Any], reason: str | None) -> None:
    rules = ClaimRules(
        issuer=RULES.issuer,
        audiences=RULES.audiences,
        **{"leeway": RULES.leeway, "max_lifetime": RULES.max_lifetime, **rule_changes},
    )
    claims = claims_with(**changes)
    if reason is None:
        validate_claims(claims, rules, NOW)
    else:
        with pytest.raises(ClaimError) as info:
            validate_claims(claims, rules, NOW)
        assert info.value.reason == reason


def test_error_message_never_carries_claim_values() -> None:
    secret = "repo:acme/secret-project"
    with pytest.raises(ClaimError) as info:
        validate_claims(claims_with(aud=secret), RULES, NOW)
    assert secret not in str(info.value)


def test_rules_normalise_audiences() -> None:
    rules = ClaimRules(issuer=ISS, audiences=[AUD, AUD])  # type: ignore[arg-type]
    assert rules.audiences == frozenset({AUD})
    validate_claims(BASE, rules, NOW)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"issuer": "", "audiences": frozenset({AUD})}, id="empty-issuer"),
        pytest.param({"issuer": ISS, "audiences": frozenset()}, id="no-audiences"),
        pytest.param({"issuer": ISS, "audiences": AUD}, id="audiences-string"),
        pytest.param({"issuer": ISS, "audiences": frozenset({""})}, id="empty-audience"),
        pytest.param({"issuer": ISS, "audiences": frozenset({AUD}), "leeway": -1}, id="negative-leeway"),
        pytest.param({"issuer": ISS, "audiences": frozenset({AUD}), "max_lifetime": 0}, id="zero-lifetime"),
    ],
)
def test_rules_refuse_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ClaimRules(**kwargs)
