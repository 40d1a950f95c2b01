"""RFC 9396 authorization details and transaction tokens (draft-ietf-oauth-transaction-tokens-10)
over real HTTP, on SQLite and PostgreSQL: what is granted, narrowed and refused, what the tokens
say (verified against the published JWKS), and the audit record of each."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from broker_harness import BrokerServer, free_port
from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE, CLIENT_SECRET, base_config
from sts import jose
from sts.store.db import make_engine

MCP = "https://mcp.example.com/tools/search"
VECTOR = "https://vector.example.com"
TD = "trust-domain.example"
TXN = "urn:ietf:params:oauth:token-type:txn_token"
GATEWAY = httpx.BasicAuth("basic-client", CLIENT_SECRET)  # may ask for transaction tokens
WORKER = {"client_id": "post-client", "client_secret": CLIENT_SECRET}  # may replace them

MCP_TOOL = {
    "type": "mcp_tool",
    "narrow": True,
    "schema": {
        "type": "object",
        "required": ["type", "tools", "actions"],
        "properties": {
            "type": {"const": "mcp_tool"},
            "locations": {"type": "array", "items": {"type": "string", "pattern": "^https://"}},
            "tools": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 8},
            "actions": {"type": "array", "items": {"type": "string"}},
            "max_results": {"type": "integer", "minimum": 1},
        },
    },
    "fields": {
        "locations": {"values": ["https://mcp.example.com/"]},
        "tools": {"values": ["search", "fetch"], "patterns": ["^docs\\.[a-z]+$"]},
        "actions": {"values": ["invoke"]},
        "max_results": {"condition": "value <= 10 && identity.startsWith('wl:agent-')"},
    },
}


def rar_txn_config(port: int, issuer: LocalIssuer, replay_issuer: LocalIssuer) -> dict[str, Any]:
    config = copy.deepcopy(base_config(port, issuer, replay_issuer, dead_port=free_port()))
    agents = config["grants"][0]
    agents["targets"][0]["scopes"].append("trade.read")
    agents["targets"][1]["authorization_details"] = [MCP_TOOL]
    # Just-in-time approval (docs/approvals.md) of the `fetch` tool, judged on the granted details.
    agents["targets"][1]["approval"] = {"authorization_details": [{"type": "mcp_tool", "field": "tools", "values": ["fetch"]}]}
    # The broker trusts its own access tokens (a second hop), so they can become transaction tokens.
    config["issuers"].append({"name": "self", "issuer": f"http://127.0.0.1:{port}", "audiences": [VECTOR],
                              "keys": {"jwks_uri": f"http://127.0.0.1:{port}/jwks"}, "allow_insecure_http": True,
                              "claim_mappings": {"identity": "claims.sub"}})
    config["clients"]["registered"].append({"client_id": "inspector", "auth_method": "client_secret_post",
                                            "secret_sha256": config["clients"]["registered"][1]["secret_sha256"],
                                            "token_exchange": False, "introspection": True})
    config["transaction_tokens"] = {"trust_domain": TD, "lifetime": 300, "replacement_clients": ["post-client"]}
    config["grants"].append({
        "name": "trading", "issuers": ["local", "self"], "match": {"identity_pattern": "^wl:agent-[a-z0-9-]+$"},
        "transaction_tokens": {
            "scopes": ["trade.stocks", "trade.read"], "clients": ["basic-client"],
            "request_details_schema": {
                "type": "object", "additionalProperties": False, "required": ["action"],
                "properties": {"action": {"enum": ["BUY", "SELL"]}, "ticker": {"type": "string", "maxLength": 8}},
            },
        },
    })
    return config


@pytest.fixture(scope="module")
def live(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    server = BrokerServer(rar_txn_config(port, issuer, replay_issuer), workdir=tmp_path_factory.mktemp("rar"),
                          database_url=database_url, port=port, settings={"audit_coalesce_window": 0}).start()
    try:
        yield server
    finally:
        server.stop()


def subject(issuer: LocalIssuer, sub: str = "agent-1", lifetime: int = 600, **claims: Any) -> str:
    return issuer.mint({"sub": sub, "aud": BROKER_AUDIENCE, **claims}, alg="ES256", lifetime=lifetime)


def verified(server: BrokerServer, token: str, typ: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a token the broker issued, checked against its published JWKS."""
    with server.client() as c:
        keys = jose.parse_jwks(c.get("/jwks").json())
    decoded = jose.unsafe_decode(token)
    alg = jose.check_header(decoded.header, allowed_algorithms=("ES256",), expected_typ=typ)
    key = keys.find(decoded.header.get("kid"), alg)
    assert key is not None
    jose.verify_signature(decoded, key, alg)
    return decoded.header, decoded.claims


def audit(server: BrokerServer, response: httpx.Response) -> dict[str, Any]:
    engine = make_engine(server.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT outcome, error, reason, context FROM audit_events WHERE request_id = :r"),
                               {"r": response.headers["x-request-id"]}).one()
    finally:
        engine.dispose()
    return {"outcome": row[0], "error": row[1], "reason": row[2], "context": json.loads(row[3]) if row[3] else None}


def rar(server: BrokerServer, issuer: LocalIssuer, details: Any, *, raw: str | None = None, **params: Any) -> httpx.Response:
    text = raw if raw is not None else json.dumps(details)
    return server.exchange(subject(issuer), resource=params.pop("resource", MCP), scope=params.pop("scope", "invoke"),
                           authorization_details=text, **params)


DETAIL = {"type": "mcp_tool", "locations": ["https://mcp.example.com/"], "tools": ["search"], "actions": ["invoke"]}

# --- authorization details -------------------------------------------------------------------------


def test_metadata_advertises_types_and_transaction_tokens(live: BrokerServer) -> None:
    with live.client() as c:
        meta = c.get("/.well-known/oauth-authorization-server").json()
    assert meta["authorization_details_types_supported"] == ["mcp_tool"]
    assert TXN in meta["issued_token_types_supported"]
    assert TXN in meta["subject_token_types_supported"]


def test_details_allowed_go_in_the_token_the_response_and_the_audit(live: BrokerServer, issuer: LocalIssuer) -> None:
    r = rar(live, issuer, [DETAIL, {**DETAIL, "tools": ["docs.python"], "max_results": 5}])
    assert r.status_code == 200, r.text
    granted = [DETAIL, {**DETAIL, "tools": ["docs.python"], "max_results": 5}]
    assert r.json()["authorization_details"] == granted
    _, claims = verified(live, r.json()["access_token"], "at+jwt")
    assert claims["authorization_details"] == granted
    assert (claims["aud"], claims["scope"]) == (MCP, "invoke")
    record = audit(live, r)
    assert record["outcome"] == "issued"
    assert record["context"]["authorization_details"] == {"granted": granted, "narrowed": False}


def test_details_narrowed_to_what_is_allowed(live: BrokerServer, issuer: LocalIssuer) -> None:
    r = rar(live, issuer, [{**DETAIL, "tools": ["search", "shell", "docs.rust"]}])
    assert r.status_code == 200, r.text
    granted = [{**DETAIL, "tools": ["search", "docs.rust"]}]
    assert r.json()["authorization_details"] == granted
    assert verified(live, r.json()["access_token"], "at+jwt")[1]["authorization_details"] == granted
    assert audit(live, r)["context"]["authorization_details"]["narrowed"] is True


@pytest.mark.parametrize(
    ("details", "reason"),
    [
        pytest.param([{**DETAIL, "type": "payment_initiation"}], "authorization_details_unknown_type", id="unknown-type"),
        pytest.param([{**DETAIL, "datatypes": ["contacts"]}], "authorization_details_unknown_field", id="unknown-field"),
        pytest.param([{**DETAIL, "actions": ["delete"]}], "authorization_details_nothing_left", id="unknown-value"),
        pytest.param([{**DETAIL, "max_results": 50}], "authorization_details_value_not_allowed", id="cel-refuses"),
        pytest.param([{**DETAIL, "tools": "search"}], "authorization_details_schema_violation", id="wrong-type"),
        pytest.param([{"type": "mcp_tool", "tools": ["search"]}], "authorization_details_schema_violation",
                     id="missing-required"),
        pytest.param([{"tools": ["search"]}], "authorization_details_no_type", id="no-type"),
    ],
)
def test_details_refused(live: BrokerServer, issuer: LocalIssuer, details: Any, reason: str) -> None:
    r = rar(live, issuer, details)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_authorization_details"
    assert "delete" not in r.text and "contacts" not in r.text
    record = audit(live, r)
    assert (record["outcome"], record["error"], record["reason"]) == ("denied", "invalid_authorization_details", reason)


def test_approval_is_judged_on_the_granted_details(live: BrokerServer, issuer: LocalIssuer) -> None:
    """A marked value that is granted needs approval; one that narrowing dropped does not."""
    r = rar(live, issuer, [{**DETAIL, "tools": ["fetch"]}])
    assert (r.status_code, r.json()["error"]) == (400, "approval_required")
    approval_id = r.headers["x-approval-request"]
    assert approval_id in r.json()["error_description"]
    r = rar(live, issuer, [{**DETAIL, "tools": ["search", "shell"]}])
    assert r.status_code == 200, r.text
    assert r.json()["authorization_details"] == [DETAIL]


def test_details_for_a_target_that_declares_none(live: BrokerServer, issuer: LocalIssuer) -> None:
    r = rar(live, issuer, [DETAIL], resource=None, audience=VECTOR, scope="read")
    assert (r.status_code, r.json()["error"]) == (400, "invalid_authorization_details")
    assert audit(live, r)["context"]["authorization_details"]["requested_types"] == ["mcp_tool"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param('[{"type": "mcp_tool",', "authorization_details_malformed", id="malformed-json"),
        pytest.param('{"type": "mcp_tool"}', "authorization_details_not_array", id="not-an-array"),
        pytest.param(json.dumps([{**DETAIL, "tools": ["search"] * 2000}]), "authorization_details_too_large",
                     id="oversized"),
    ],
)
def test_details_malformed(live: BrokerServer, issuer: LocalIssuer, raw: str, reason: str) -> None:
    r = rar(live, issuer, None, raw=raw)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    assert audit(live, r)["reason"] == reason


def test_no_details_no_claim(live: BrokerServer, issuer: LocalIssuer) -> None:
    r = live.exchange(subject(issuer), resource=MCP, scope="invoke")
    assert r.status_code == 200
    assert "authorization_details" not in r.json()
    assert "authorization_details" not in verified(live, r.json()["access_token"], "at+jwt")[1]


# --- transaction tokens ----------------------------------------------------------------------------


def txn_request(server: BrokerServer, token: str, *, auth: Any = GATEWAY, subject_type: str | None = None,
                **params: Any) -> httpx.Response:
    data = {"requested_token_type": TXN, "audience": TD, "scope": "trade.stocks", **params}
    if subject_type is not None:
        data["subject_token_type"] = subject_type
    return server.exchange(token, auth=auth, **data)


def first_txn(live: BrokerServer, issuer: LocalIssuer, **params: Any) -> httpx.Response:
    return txn_request(live, subject(issuer), scope="trade.stocks trade.read",
                       request_context=json.dumps({"req_ip": "69.151.72.123", "authn": "face"}),
                       request_details=json.dumps({"action": "BUY", "ticker": "MSFT"}), **params)


def test_transaction_token_issued(live: BrokerServer, issuer: LocalIssuer) -> None:
    before = int(time.time())
    r = first_txn(live, issuer)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["token_type"], body["issued_token_type"], body["expires_in"]) == ("N_A", TXN, 300)
    assert "refresh_token" not in body
    header, claims = verified(live, body["access_token"], "txntoken+jwt")
    assert header["typ"] == "txntoken+jwt"
    assert claims["aud"] == TD and claims["sub"] == "wl:agent-1" and claims["scope"] == "trade.stocks trade.read"
    assert str(uuid.UUID(claims["txn"])) == claims["txn"]
    assert claims["tctx"] == {"action": "BUY", "ticker": "MSFT"}
    assert claims["rctx"] == {"req_ip": "69.151.72.123", "authn": "face"}
    assert claims["req_wl"] == "basic-client"
    assert before <= claims["iat"] <= int(time.time()) and claims["exp"] - claims["iat"] == 300
    record = audit(live, r)
    assert record["outcome"] == "issued"
    assert record["context"]["txn"]["txn"] == claims["txn"] and record["context"]["txn"]["replacement"] is False


def test_transaction_token_never_outlives_its_subject(live: BrokerServer, issuer: LocalIssuer) -> None:
    r = txn_request(live, subject(issuer, lifetime=60))
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] <= 60


def test_replacement_narrows_and_keeps_the_transaction(live: BrokerServer, issuer: LocalIssuer) -> None:
    first = first_txn(live, issuer).json()["access_token"]
    _, prior = verified(live, first, "txntoken+jwt")
    r = txn_request(live, first, auth=None, subject_type=TXN, scope="trade.read", **WORKER)
    assert r.status_code == 200, r.text
    _, claims = verified(live, r.json()["access_token"], "txntoken+jwt")
    for name in ("txn", "sub", "aud", "tctx", "rctx"):
        assert claims[name] == prior[name], name
    assert claims["scope"] == "trade.read"
    assert (claims["req_wl"], claims["req_wl_chain"]) == ("post-client", ["basic-client"])
    assert claims["exp"] <= prior["exp"] and claims["jti"] != prior["jti"]
    assert audit(live, r)["context"]["txn"]["replacement"] is True


@pytest.mark.parametrize(
    ("params", "status", "error", "reason"),
    [
        pytest.param({"scope": "trade.stocks trade.options"}, 400, "invalid_scope", "txn_replacement_widens_scope",
                     id="widen-scope"),
        pytest.param({"request_details": json.dumps({"action": "SELL"})}, 400, "invalid_request",
                     "txn_replacement_adds_context", id="rewrite-tctx"),
        pytest.param({"audience": "other-domain.example"}, 400, "invalid_target", "txn_audience_not_trust_domain",
                     id="other-trust-domain"),
    ],
)
def test_replacement_that_widens_is_refused(live: BrokerServer, issuer: LocalIssuer, params: dict[str, Any], status: int,
                                            error: str, reason: str) -> None:
    first = txn_request(live, subject(issuer), request_details=json.dumps({"action": "BUY"})).json()["access_token"]
    r = txn_request(live, first, auth=None, subject_type=TXN, **{**WORKER, **params})
    assert (r.status_code, r.json()["error"]) == (status, error)
    assert audit(live, r)["reason"] == reason


def test_replacement_needs_an_allowed_client(live: BrokerServer, issuer: LocalIssuer) -> None:
    first = txn_request(live, subject(issuer)).json()["access_token"]
    r = txn_request(live, first, subject_type=TXN)  # the gateway may ask, not replace
    assert (r.status_code, r.json()["error"]) == (400, "unauthorized_client")


def test_a_transaction_token_is_not_a_credential_for_access_tokens(live: BrokerServer, issuer: LocalIssuer) -> None:
    first = txn_request(live, subject(issuer)).json()["access_token"]
    r = live.exchange(first, subject_token_type=TXN, audience=VECTOR, auth=GATEWAY)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    # ... and an access token of ours does not pass for a transaction token (typ differs).
    access = live.exchange(subject(issuer), audience=VECTOR).json()["access_token"]
    r = txn_request(live, access, auth=None, subject_type=TXN, **WORKER)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    assert audit(live, r)["reason"] == "txn_subject_typ_mismatch"


def test_transaction_token_from_one_of_our_tokens(live: BrokerServer, issuer: LocalIssuer) -> None:
    ours = live.exchange(subject(issuer), audience=VECTOR, scope="trade.read").json()["access_token"]
    r = txn_request(live, ours, scope="trade.read")
    assert r.status_code == 200, r.text
    assert verified(live, r.json()["access_token"], "txntoken+jwt")[1]["sub"] == "wl:agent-1"
    # Its scope is what the subject token had, never more (draft §"Scope Processing").
    r = txn_request(live, ours, scope="trade.stocks")
    assert (r.status_code, r.json()["error"]) == (400, "invalid_scope")
    assert audit(live, r)["reason"] == "txn_scope_beyond_subject"


@pytest.mark.parametrize(
    ("params", "auth", "error", "reason"),
    [
        pytest.param({}, None, "invalid_request", "txn_client_unauthenticated", id="public-client"),
        pytest.param(WORKER, None, "unauthorized_client", "txn_client_not_allowed", id="client-not-in-grant"),
        pytest.param({"audience": VECTOR}, GATEWAY, "invalid_target", "txn_audience_not_trust_domain", id="audience"),
        pytest.param({"scope": "trade.options"}, GATEWAY, "invalid_scope", "txn_scope_not_allowed", id="scope"),
        pytest.param({"request_details": json.dumps({"action": "SHORT"})}, GATEWAY, "invalid_request",
                     "txn_request_details_invalid", id="details-schema"),
        pytest.param({"request_context": "not json"}, GATEWAY, "invalid_request", "request_context_malformed",
                     id="context-malformed"),
    ],
)
def test_transaction_token_refused(live: BrokerServer, issuer: LocalIssuer, params: dict[str, Any], auth: Any,
                                   error: str, reason: str) -> None:
    r = txn_request(live, subject(issuer), auth=auth, **params)
    assert (r.status_code, r.json()["error"]) == (400, error)
    assert audit(live, r)["reason"] == reason


def test_no_grant_for_transaction_tokens(live: BrokerServer, issuer: LocalIssuer) -> None:
    r = txn_request(live, subject(issuer, sub="gateway"))  # wl:gateway matches no grant with transaction_tokens
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    assert audit(live, r)["reason"] == "txn_no_grant"


def test_a_delegated_subject_token_is_refused(live: BrokerServer, issuer: LocalIssuer) -> None:
    delegated = subject(issuer, act={"sub": "wl:gateway"})
    r = txn_request(live, delegated)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    assert audit(live, r)["reason"] == "txn_delegated_subject"


def test_introspection(live: BrokerServer, issuer: LocalIssuer) -> None:
    """RFC 9396 §9.2: introspection returns the granted details; a transaction token is not an
    access token, so it introspects as inactive."""
    with_details = rar(live, issuer, [DETAIL]).json()["access_token"]
    txn_token = txn_request(live, subject(issuer)).json()["access_token"]
    creds = {"client_id": "inspector", "client_secret": CLIENT_SECRET}
    with live.client() as c:
        body = c.post("/introspect", data={"token": with_details, **creds}).json()
        assert body["active"] is True and body["authorization_details"] == [DETAIL]
        assert c.post("/introspect", data={"token": txn_token, **creds}).json() == {"active": False}


def test_nothing_without_configuration(broker: BrokerServer, issuer: LocalIssuer) -> None:
    """Deny by default: a broker without transaction_tokens issues none, and one whose targets
    declare no types refuses authorization_details; its metadata advertises neither."""
    r = txn_request(broker, subject(issuer), auth=GATEWAY)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    assert audit(broker, r)["reason"] == "txn_not_available"
    r = broker.exchange(subject(issuer), resource=MCP, scope="invoke", authorization_details=json.dumps([DETAIL]))
    assert (r.status_code, r.json()["error"]) == (400, "invalid_authorization_details")
    with broker.client() as c:
        meta = c.get("/.well-known/oauth-authorization-server").json()
    assert "authorization_details_types_supported" not in meta
    assert TXN not in meta["issued_token_types_supported"] and TXN not in meta["subject_token_types_supported"]
