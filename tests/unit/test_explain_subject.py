"""sts.subject.explain lists the verifier's checks in the verifier's own order.

The list takes each check's result from the real refusal, so what has to be pinned is the
order: a token with two defects is refused by ``validate_claims`` at the one listed first.
Also sts.subject.unverified: what a refusal's audit record says about the token.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest

from sts import jose
from sts.subject.claims import ClaimError, ClaimRules, validate_claims
from sts.subject.explain import CLAIM_CHECKS, TOKEN_CHECKS, claim_checks, failed_token_check, token_checks
from sts.subject.unverified import MAX_CLAIM_CHARS, rejected_token_facts

NOW = 1_800_000_000.0
RULES = ClaimRules(issuer="https://iss", audiences=frozenset({"https://sts"}), leeway=60, max_lifetime=3600,
                   require_sub=True, require_jti=True)
GOOD = {"iss": "https://iss", "aud": "https://sts", "exp": NOW + 300, "iat": NOW - 10, "nbf": NOW - 10,
        "sub": "s", "jti": "j"}

# One defect per check, keyed by the check's name.
DEFECTS: dict[str, dict[str, object]] = {
    "iss": {"iss": "https://other"},
    "exp present": {"exp": "soon"},
    "nbf type": {"nbf": "x"},
    "iat type": {"iat": "x"},
    "not expired": {"exp": NOW - 600, "iat": NOW - 900},
    "not before": {"nbf": NOW + 600},
    "issued in the past": {"iat": NOW + 600},
    "lifetime": {"exp": NOW + 7200},
    "aud": {"aud": "https://elsewhere"},
    "sub": {"sub": ""},
    "jti": {"jti": ""},
}


def reason_of(claims: dict[str, object]) -> str:
    with pytest.raises(ClaimError) as info:
        validate_claims(claims, RULES, NOW)
    err = info.value
    return f"{err.reason}:{err.detail}" if err.reason == "claim_type" else err.reason


def failed(reason: str) -> str:
    [name] = [c.name for c in claim_checks(reason, {}) if c.result == "failed"]
    return name


def test_every_check_has_a_defect() -> None:
    assert list(DEFECTS) == [name for name, _ in CLAIM_CHECKS]


@pytest.mark.parametrize("check", list(DEFECTS))
def test_one_defect_fails_its_own_check(check: str) -> None:
    assert failed(reason_of({**GOOD, **DEFECTS[check]})) == check


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(list(DEFECTS), 2)))
def test_two_defects_fail_at_the_one_listed_first(first: str, second: str) -> None:
    claims = {**GOOD, **DEFECTS[second], **DEFECTS[first]}
    if any(k in DEFECTS[first] and k in DEFECTS[second] for k in claims):
        pytest.skip("the two defects touch the same claim")
    checks = claim_checks(reason_of(claims), {})
    results = [c.result for c in checks]
    names = [c.name for c in checks]
    assert results[names.index(first)] == "failed"
    assert results[names.index(second)] == "not_checked"


def test_good_claims_pass_every_check() -> None:
    validate_claims(GOOD, RULES, NOW)
    assert {c.result for c in claim_checks(None, {})} == {"ok"}
    assert {c.result for c in claim_checks(None, {}, reached=False)} == {"not_checked"}


@pytest.mark.parametrize(("kind", "reason", "check"), [
    ("malformed", "not_jws", "structure"),
    ("untrusted_issuer", "issuer_not_trusted", "issuer"),
    ("header", "alg_not_allowed", "header"),
    ("signature", "unknown_kid", "key"),
    ("signature", "issuer_keys_unavailable", "key"),
    ("signature", "bad_signature", "signature"),
    ("claims", "expired", None),
    (None, None, None),
])
def test_token_checks_fail_where_the_verifier_refused(kind: str | None, reason: str | None, check: str | None) -> None:
    assert failed_token_check(kind, reason) == check
    results = {c.name: c.result for c in token_checks(kind, reason, {})}
    assert list(results) == list(TOKEN_CHECKS)
    if check is None:
        assert set(results.values()) == {"ok"}
    else:
        i = TOKEN_CHECKS.index(check)
        assert [results[n] for n in TOKEN_CHECKS] == ["ok"] * i + ["failed"] + ["not_checked"] * (len(TOKEN_CHECKS) - i - 1)


KEY = jose.generate_private_key("ES256", "k1")


def test_rejected_token_facts_hold_digest_and_truncated_unverified_claims_never_the_token() -> None:
    long_sub = "s" * 500
    token = jose.sign({"iss": "https://iss", "sub": long_sub, "aud": ["https://a", "https://b"]}, KEY)
    facts = rejected_token_facts(token, kind="signature", reason="bad_signature")
    assert facts["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert facts["verified"] is False and facts["token"] == "subject" and facts["check"] == "signature"
    assert facts["iss"] == "https://iss"
    assert len(facts["sub"]) == MAX_CLAIM_CHARS and facts["sub"].endswith("…")
    assert "audiences" not in facts  # only for an audience mismatch
    assert token not in str(facts) and token.split(".")[2] not in str(facts)

    facts = rejected_token_facts(token, kind="claims", reason="aud_mismatch", actor=True)
    assert facts["audiences"] == ["https://a", "https://b"]
    assert facts["verified"] is True and facts["token"] == "actor"


def test_rejected_token_facts_of_garbage_and_control_characters() -> None:
    assert set(rejected_token_facts("not a jwt", kind="malformed", reason="not_jws")) == {
        "token", "token_sha256", "check", "verified"}
    token = jose.sign({"iss": "https://iss\x1b[31m", "sub": "a\nb"}, KEY)
    facts = rejected_token_facts(token, kind="untrusted_issuer", reason="issuer_not_trusted")
    assert facts["iss"].isprintable() and facts["sub"].isprintable()
