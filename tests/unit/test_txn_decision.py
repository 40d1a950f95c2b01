"""Transaction tokens (draft-ietf-oauth-transaction-tokens-10): issue and replacement (tables)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sts.config.models import BrokerConfig
from sts.txn.decision import CompiledTransactionTokens, TxnAllow, TxnDeny, build_txn_claims

TD = "trust-domain.example"
SECRET = "0" * 64


def compiled(**grant_txn: Any) -> CompiledTransactionTokens:
    cfg = BrokerConfig.model_validate({
        "issuer": "https://sts.example.com",
        "clients": {"registered": [
            {"client_id": "gateway", "auth_method": "client_secret_basic", "secret_sha256": SECRET},
            {"client_id": "worker", "auth_method": "client_secret_basic", "secret_sha256": SECRET},
        ]},
        "transaction_tokens": {"trust_domain": TD, "replacement_clients": ["worker"]},
        "issuers": [{"name": "idp", "issuer": "https://idp.example.com", "audiences": ["sts"]}],
        "grants": [
            {"name": "no-txn", "match": {"identity": "wl:a"}, "targets": [{"audience": "x", "scopes": ["read"]}]},
            {"name": "trading", "match": {"identity_pattern": "^wl:.*$"}, "transaction_tokens": {
                "scopes": ["trade.stocks", "trade.read"], "clients": ["gateway"],
                "request_details_schema": {"type": "object", "properties": {"action": {"enum": ["BUY", "SELL"]}},
                                           "additionalProperties": False},
                **grant_txn}},
        ],
    })
    txn = CompiledTransactionTokens.from_config(cfg)
    assert txn is not None
    return txn


def issue(txn: CompiledTransactionTokens, **kw: Any) -> TxnAllow | TxnDeny:
    args: dict[str, Any] = {
        "matched_grants": ("no-txn", "trading"), "identity": "wl:a", "client_id": "gateway", "audiences": (TD,),
        "resources": (), "scopes": ("trade.stocks",), "subject_claims": {}, "request_context": None,
        "request_details": None,
    }
    args.update(kw)
    return txn.issue(**args)


@pytest.mark.parametrize(
    ("kw", "error", "reason"),
    [
        pytest.param({"client_id": None}, "invalid_request", "txn_client_unauthenticated", id="public-client"),
        pytest.param({"client_id": "worker"}, "unauthorized_client", "txn_client_not_allowed", id="client-not-listed"),
        pytest.param({"audiences": ()}, "invalid_target", "txn_audience_missing", id="no-audience"),
        pytest.param({"audiences": ("other",)}, "invalid_target", "txn_audience_not_trust_domain", id="other-audience"),
        pytest.param({"audiences": (TD, "x")}, "invalid_target", "txn_audience_not_trust_domain", id="two-audiences"),
        pytest.param({"scopes": None}, "invalid_request", "txn_scope_missing", id="no-scope"),
        pytest.param({"scopes": ("trade.options",)}, "invalid_scope", "txn_scope_not_allowed", id="scope-beyond-grant"),
        pytest.param({"matched_grants": ("no-txn",)}, "invalid_request", "txn_no_grant", id="grant-without-txn"),
        pytest.param({"subject_claims": {"scope": "trade.read"}}, "invalid_scope", "txn_scope_beyond_subject",
                     id="scope-beyond-subject-token"),
        pytest.param({"subject_claims": {"scope": ["trade.stocks"]}}, "invalid_scope", "txn_subject_scope_unusable",
                     id="subject-scope-not-string"),
        pytest.param({"request_context": {"req_ip": "not-an-ip"}}, "invalid_request", "txn_request_context_invalid",
                     id="bad-req-ip"),
        pytest.param({"request_context": {"other": "x"}}, "invalid_request", "txn_request_context_invalid",
                     id="unknown-context-key"),
        pytest.param({"request_details": {"action": "SHORT"}}, "invalid_request", "txn_request_details_invalid",
                     id="details-schema"),
    ],
)
def test_issue_refused(kw: dict[str, Any], error: str, reason: str) -> None:
    result = issue(compiled(), **kw)
    assert isinstance(result, TxnDeny), result
    assert (result.error, result.reason) == (error, reason)


def test_details_refused_without_schema() -> None:
    result = issue(compiled(request_details_schema=None), request_details={"action": "BUY"})
    assert isinstance(result, TxnDeny) and result.reason == "txn_request_details_not_allowed"


def test_issue_allowed() -> None:
    result = issue(compiled(), subject_claims={"scope": "trade.stocks openid"},
                   request_context={"req_ip": "69.151.72.123", "authn": "face"}, request_details={"action": "BUY"},
                   new_txn="t-1")
    assert isinstance(result, TxnAllow), result
    assert (result.grant, result.sub, result.txn, result.scopes, result.req_wl) == (
        "trading", "wl:a", "t-1", ("trade.stocks",), "gateway")
    claims = build_txn_claims(result, issuer="https://sts.example.com", trust_domain=TD, issued_at=100, expires_at=400,
                              jti="j")
    assert claims == {
        "iss": "https://sts.example.com", "aud": TD, "iat": 100, "exp": 400, "jti": "j", "txn": "t-1", "sub": "wl:a",
        "scope": "trade.stocks", "req_wl": "gateway", "tctx": {"action": "BUY"},
        "rctx": {"req_ip": "69.151.72.123", "authn": "face"},
    }


PRIOR = {"txn": "t-1", "sub": "wl:a", "scope": "trade.stocks trade.read", "req_wl": "gateway",
         "tctx": {"action": "BUY"}, "rctx": {"req_ip": "10.0.0.1"}, "aud": TD}


def replace(prior: dict[str, Any] = PRIOR, **kw: Any) -> TxnAllow | TxnDeny:
    args: dict[str, Any] = {"client_id": "worker", "audiences": (), "resources": (), "scopes": ("trade.read",),
                            "request_context": None, "request_details": None}
    args.update(kw)
    return compiled().replace(prior, **args)


def test_replacement_narrows_and_keeps_the_transaction() -> None:
    result = replace()
    assert isinstance(result, TxnAllow)
    assert (result.txn, result.sub, result.tctx, result.rctx, result.scopes) == (
        "t-1", "wl:a", {"action": "BUY"}, {"req_ip": "10.0.0.1"}, ("trade.read",))
    assert (result.req_wl, result.req_wl_chain, result.replacement, result.grant) == ("worker", ("gateway",), True, None)
    again = replace({**PRIOR, "req_wl": "worker", "req_wl_chain": ["gateway"]}, scopes=None)
    assert isinstance(again, TxnAllow)
    assert again.scopes == ("trade.stocks", "trade.read") and again.req_wl_chain == ("gateway", "worker")


@pytest.mark.parametrize(
    ("prior", "kw", "error", "reason"),
    [
        pytest.param(PRIOR, {"scopes": ("trade.options",)}, "invalid_scope", "txn_replacement_widens_scope", id="widen"),
        pytest.param(PRIOR, {"scopes": ("trade.read", "admin")}, "invalid_scope", "txn_replacement_widens_scope",
                     id="widen-partly"),
        pytest.param(PRIOR, {"client_id": "gateway"}, "unauthorized_client", "txn_replacement_client_not_allowed",
                     id="client-not-allowed"),
        pytest.param(PRIOR, {"client_id": None}, "invalid_request", "txn_client_unauthenticated", id="public"),
        pytest.param(PRIOR, {"audiences": ("elsewhere",)}, "invalid_target", "txn_audience_not_trust_domain",
                     id="other-trust-domain"),
        pytest.param(PRIOR, {"request_details": {"action": "SELL"}}, "invalid_request", "txn_replacement_adds_context",
                     id="change-tctx"),
        pytest.param(PRIOR, {"request_context": {"req_ip": "10.0.0.2"}}, "invalid_request",
                     "txn_replacement_adds_context", id="change-rctx"),
        pytest.param({**PRIOR, "scope": 5}, {}, "invalid_request", "txn_subject_claims_invalid", id="bad-claims"),
        pytest.param({**PRIOR, "req_wl_chain": ["w"] * 16}, {}, "invalid_request", "txn_replacement_chain_too_long",
                     id="chain-cap"),
    ],
)
def test_replacement_refused(prior: dict[str, Any], kw: dict[str, Any], error: str, reason: str) -> None:
    result = replace(prior, **kw)
    assert isinstance(result, TxnDeny), result
    assert (result.error, result.reason) == (error, reason)


def test_deny_by_default_without_configuration() -> None:
    cfg = BrokerConfig.model_validate({
        "issuer": "https://sts.example.com",
        "issuers": [{"name": "idp", "issuer": "https://idp.example.com", "audiences": ["sts"]}],
    })
    assert CompiledTransactionTokens.from_config(cfg) is None


def test_grant_needs_the_section_and_known_clients() -> None:
    with pytest.raises(ValueError, match="needs the top-level transaction_tokens"):
        BrokerConfig.model_validate({
            "issuer": "https://sts.example.com",
            "issuers": [{"name": "idp", "issuer": "https://idp.example.com", "audiences": ["sts"]}],
            "grants": [{"name": "g", "match": {"identity": "a"}, "transaction_tokens": {"scopes": ["s"]}}],
        })
    with pytest.raises(ValueError, match="unknown client"):
        BrokerConfig.model_validate({
            "issuer": "https://sts.example.com",
            "transaction_tokens": {"trust_domain": TD, "replacement_clients": ["ghost"]},
            "issuers": [{"name": "idp", "issuer": "https://idp.example.com", "audiences": ["sts"]}],
        })


def test_config_check_reports_every_reference_problem(tmp_path: Any) -> None:
    from sts.config.loader import ConfigInvalid, load_config

    path = tmp_path / "sts.yaml"
    path.write_text(
        "issuer: https://sts.example.com\n"
        "issuers: [{name: idp, issuer: 'https://idp.example.com', audiences: [sts]}]\n"
        "grants:\n"
        "  - {name: g, match: {identity: a}, transaction_tokens: {scopes: [s], clients: [ghost]}}\n"
    )
    with pytest.raises(ConfigInvalid) as info:
        load_config(path)
    assert sorted(p.path for p in info.value.problems) == [
        "grants[0].transaction_tokens", "grants[0].transaction_tokens.clients[0]"]
    path.write_text(path.read_text() + f"transaction_tokens: {{trust_domain: {TD}, replacement_clients: [nobody]}}\n")
    with pytest.raises(ConfigInvalid) as info:
        load_config(path)
    assert sorted(p.path for p in info.value.problems) == [
        "grants[0].transaction_tokens.clients[0]", "transaction_tokens.replacement_clients[0]"]


def test_explain_runs_the_transaction_token_steps(tmp_path: Any) -> None:
    """`sts explain` runs the same pipeline: a transaction token offered as the subject of an
    ordinary exchange is refused there as by the server, never a crash."""
    from sts.config.loader import load_config
    from sts.explain.run import ExplainInput, explain_exchange_sync

    path = tmp_path / "sts.yaml"
    path.write_text(
        "issuer: https://sts.example.com\n"
        "clients: {registered: [{client_id: worker, auth_method: client_secret_basic, secret_sha256: '" + SECRET + "'}]}\n"
        f"transaction_tokens: {{trust_domain: {TD}, replacement_clients: [worker]}}\n"
        "issuers: [{name: idp, issuer: 'https://idp.example.com', audiences: [sts]}]\n"
    )
    report = explain_exchange_sync(load_config(path), ExplainInput(
        subject_token="e30.e30.e30", subject_token_type="urn:ietf:params:oauth:token-type:txn_token", client_id="worker"))
    assert report["refusal"]["reason"] == "txn_not_available"
    assert json.dumps(report)
