"""RFC 9068 claim building and the issued lifetime rule, table-driven."""

from __future__ import annotations

import pytest

from sts.exchange import issued_lifetime
from sts.tokens.claims import AccessTokenSpec, build_access_token_claims

SPEC = AccessTokenSpec(
    issuer="https://sts.example.com",
    subject="github:1/2",
    audience="https://vector.example.com",
    client_id="github:1/2",
    scopes=("read", "write"),
    issued_at=1000,
    expires_at=1900,
    jti="j1",
    workload_claim="workload",
    external_issuer="https://token.actions.githubusercontent.com",
    external_subject="repo:acme/app:ref:refs/heads/main",
    attributes={"repository": "acme/app"},
)


def test_rfc9068_required_claims() -> None:
    claims = build_access_token_claims(SPEC)
    # RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat, jti are REQUIRED.
    for name in ("iss", "exp", "aud", "sub", "client_id", "iat", "jti"):
        assert name in claims
    assert claims["aud"] == "https://vector.example.com"
    assert claims["scope"] == "read write"
    assert claims["nbf"] == claims["iat"] == 1000
    assert claims["workload"] == {
        "issuer": "https://token.actions.githubusercontent.com",
        "subject": "repo:acme/app:ref:refs/heads/main",
        "attributes": {"repository": "acme/app"},
    }
    assert "act" not in claims


@pytest.mark.parametrize(
    ("actor", "prior", "expected"),
    [
        pytest.param("k8s:ai/gateway", None, {"sub": "k8s:ai/gateway"}, id="single-actor"),
        pytest.param("k8s:ai/gateway", {"sub": "k8s:ai/planner"}, {"sub": "k8s:ai/gateway", "act": {"sub": "k8s:ai/planner"}}, id="nested-chain"),
    ],
)
def test_act_claim(actor: str, prior: dict[str, str] | None, expected: dict[str, object]) -> None:
    from dataclasses import replace

    claims = build_access_token_claims(replace(SPEC, actor=actor, prior_act=prior))
    assert claims["act"] == expected


def test_client_actor_and_chain_record() -> None:
    from dataclasses import replace

    # A client presenting a chained token alone is named by RFC 8693 §4.3 client_id.
    claims = build_access_token_claims(replace(SPEC, actor_client="search-tool", prior_act={"sub": "wl:gateway"},
                                               chain=({"jti": "a", "grant": "g", "origin": "o"},)))
    assert claims["act"] == {"client_id": "search-tool", "act": {"sub": "wl:gateway"}}
    assert claims["sts_chain"] == [{"jti": "a", "grant": "g", "origin": "o"}]
    assert "sts_chain" not in build_access_token_claims(SPEC)


def test_empty_scope_is_sent_as_empty_string() -> None:
    from dataclasses import replace

    assert build_access_token_claims(replace(SPEC, scopes=()))["scope"] == ""


@pytest.mark.parametrize(
    ("granted", "subject_exp", "key_not_after", "expected"),
    [
        pytest.param(900, 10_000.0, 1e12, 900, id="grant-wins"),
        pytest.param(900, 1_300.5, 1e12, 300, id="subject-remaining-wins"),
        pytest.param(900, None, 1e12, 900, id="subject-cap-disabled"),
        pytest.param(900, 10_000.0, 1_120.0, 120, id="key-remaining-wins"),
        pytest.param(900, 999.0, 1e12, 0, id="subject-already-expired"),
    ],
)
def test_issued_lifetime(granted: int, subject_exp: float | None, key_not_after: float, expected: int) -> None:
    assert issued_lifetime(granted=granted, now=1000.0, subject_expires_at=subject_exp, key_not_after=key_not_after) == expected
