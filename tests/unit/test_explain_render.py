"""sts.explain.render: the text of past requests' audit records (``sts explain --request-id``)."""

from __future__ import annotations

from typing import Any

from sts.explain.render import render_record

BASE: dict[str, Any] = {
    "request_id": "r-1", "time": 1_800_000_000.0, "outcome": "denied", "error": "invalid_request", "reason": "bad_signature",
    "detail": None, "config_version": "abc", "client_id": None, "issuer": "github", "external_subject": None,
    "identity": None, "actor_identity": None, "grant": None, "requested_targets": ["https://a"], "requested_scopes": None,
    "granted_target": None, "granted_scopes": [], "lifetime": None, "issued_jti": None, "subject_token_sha256": None,
    "mode_notes": [], "context": None,
}


def test_a_refused_signature_shows_digest_and_unverified_claims() -> None:
    text = render_record({**BASE, "context": {"explain": {
        "token": "subject", "token_sha256": "ab" * 32, "check": "signature", "verified": False,
        "iss": "https://token.actions.githubusercontent.com", "sub": "repo:o/r:ref:refs/heads/main\x1b[2J"}}})
    assert text.splitlines()[0] == "request r-1 at 2027-01-15T08:00:00Z: refused: invalid_request (bad_signature)"
    assert f"subject token refused at check signature: sha256 {'ab' * 32}" in text
    assert "  iss (UNVERIFIED): https://token.actions.githubusercontent.com" in text
    assert "\x1b" not in text and "\\x1b[2J" in text  # escape sequences never reach the terminal


def test_an_audience_mismatch_shows_the_token_audiences() -> None:
    text = render_record({**BASE, "reason": "aud_mismatch", "context": {"explain": {
        "token": "subject", "token_sha256": "cd" * 32, "check": "claims", "verified": True,
        "iss": "https://k8s", "sub": "system:serviceaccount:ai:x", "audiences": ["https://kubernetes.default.svc"]}}})
    assert "  sub (verified): system:serviceaccount:ai:x" in text
    assert "audiences the token carried: https://kubernetes.default.svc" in text


def test_a_policy_refusal_lists_the_grants_considered() -> None:
    text = render_record({**BASE, "reason": "scope_not_allowed", "error": "invalid_scope", "identity": "github:65/81",
                          "mode_notes": ["audit rule x failed: y"], "context": {"explain": {
                              "decision": "scope_not_allowed", "target": "https://a", "issuer_not_allowed": 3,
                              "grants": [{"grant": "g1", "mode": "enforce", "outcome": "stopped", "step": "match",
                                          "why": "condition is false"},
                                         {"grant": "g2", "mode": "enforce", "outcome": "stopped", "step": "scope",
                                          "why": "scope 'write' is outside the target's 'read'"}]}}})
    assert "grants considered (in file order; target https://a):" in text
    assert "   1. g1  stopped at match: condition is false" in text
    assert "   2. g2  stopped at scope: scope 'write' is outside the target's 'read'" in text
    assert "(3 more grant(s) do not admit this issuer)" in text
    assert "  - audit rule x failed: y" in text


def test_a_record_without_explain_details_says_so() -> None:
    assert "holds no explain details" in render_record(BASE)
    issued = render_record({**BASE, "outcome": "issued", "error": None, "reason": None, "granted_target": "https://a",
                            "granted_scopes": ["read"], "lifetime": 300, "issued_jti": "j"})
    assert "issued a token" in issued and "granted: https://a scope 'read', lifetime 300 s, jti j" in issued
