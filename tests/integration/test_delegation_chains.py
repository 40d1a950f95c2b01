"""Delegation chains of the broker's own tokens over real HTTP (SQLite and PostgreSQL): the
documented configuration of docs/agents.md, run as written (only the URLs point at the test's
issuer and broker), the happy paths of two and three hops with the decoded nested ``act``, and
the classic bypasses, each refused with its own audit reason (sts.trust.delegation)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from broker_harness import BrokerServer, decode_issued, free_port
from chains_support import (
    ACCESS_TOKEN,
    DOCS,
    ADMIN_TOOL,
    ARCHIVE,
    CACHE,
    DOCS_API,
    GATEWAY,
    IDP_AUDIENCE,
    JWT,
    MCP,
    PLANNER,
    TOOLS,
    STORAGE,
    TOOL_SECRET,
    chain_config,
)
from conformance.issuer import LocalIssuer
from sts import jose
from sts.cli.main import main
from sts.store.db import make_engine

FOLLOW = 10.0

@pytest.fixture(scope="module")
def live(issuer: LocalIssuer, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    server = BrokerServer(chain_config(port, issuer), workdir=tmp_path_factory.mktemp("chains"),
                          database_url=database_url, port=port, settings={"audit_coalesce_window": 0}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def idp(issuer: LocalIssuer) -> Callable[..., str]:
    def mint(sub: str, *, lifetime: int = 600, **claims: Any) -> str:
        return issuer.mint({"sub": sub, "aud": IDP_AUDIENCE, **claims}, alg="ES256", lifetime=lifetime)

    return mint


def ok(resp: httpx.Response) -> tuple[str, dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return body["access_token"], body


def refused(server: BrokerServer, resp: httpx.Response, error: str, reason: str) -> None:
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == error
    request_id = resp.headers["x-request-id"]
    row = audit_row(server, request_id=request_id)
    assert row["reason"] == reason, row


def audit_row(server: BrokerServer, *, request_id: str | None = None, jti: str | None = None) -> dict[str, Any]:
    engine = make_engine(server.database_url)
    try:
        with engine.connect() as conn:
            where, value = ("request_id", request_id) if request_id else ("issued_jti", jti)
            row = conn.execute(sa.text(f"SELECT reason, \"grant\" AS grant_name, context, issuer, identity FROM audit_events "
                                       f"WHERE {where} = :v ORDER BY id DESC LIMIT 1"), {"v": value}).mappings().first()
            assert row is not None, f"no audit row for {where}={value}"
            out = dict(row)
            if isinstance(out["context"], str):
                out["context"] = json.loads(out["context"])
            return out
    finally:
        engine.dispose()


def report_token(live: BrokerServer, idp: Callable[..., str], **params: Any) -> str:
    """Hop 0: the report job's own credential for a token of ours, for the gateway."""
    token, _ = ok(live.exchange(idp("report-job"), audience=GATEWAY, **params))
    return token


def hop(live: BrokerServer, subject: str, actor: str | None, audience: str, **params: Any) -> httpx.Response:
    extra = {"actor_token": actor, "actor_token_type": JWT} if actor is not None else {}
    return live.exchange(subject, subject_token_type=ACCESS_TOKEN,
                         audience=audience, **extra, **params)


def claims_of(live: BrokerServer, token: str) -> dict[str, Any]:
    return decode_issued(live, token)[1]


def documented_tokens() -> list[dict[str, Any]]:
    """The decoded tokens of docs/agents.md, in order (its JSON blocks with an ``iss``)."""
    blocks = [json.loads(b.split("```", 1)[0]) for b in DOCS.read_text().split("```json\n")[1:]]
    return [b for b in blocks if "iss" in b]


def test_two_and_three_hops_nest_act_and_never_widen(live: BrokerServer, idp: Callable[..., str]) -> None:
    t0 = report_token(live, idp)
    c0 = claims_of(live, t0)
    assert c0["aud"] == GATEWAY and c0["scope"] == "docs.read docs.write" and "act" not in c0

    # hop 1: the gateway, with its own token, for the MCP tool; narrowed to docs.read
    t1, body1 = ok(hop(live, t0, idp("gateway"), MCP, scope="docs.read"))
    c1 = claims_of(live, t1)
    assert c1["sub"] == "wl:report-job" and c1["aud"] == MCP and c1["scope"] == body1["scope"] == "docs.read"
    assert c1["act"] == {"sub": "wl:gateway"}
    assert c1["exp"] <= c0["exp"]
    assert c1["workload"] == c0["workload"]  # where the identity came from is carried, never rewritten

    # hop 2: the MCP tool for the documents API (no scope asked: the grant's defaults the parent holds)
    t2, _ = ok(hop(live, t1, idp("search-tool"), DOCS_API))
    c2 = claims_of(live, t2)
    assert c2["aud"] == DOCS_API and c2["scope"] == "docs.read"
    assert c2["act"] == {"sub": "wl:search-tool", "act": {"sub": "wl:gateway"}}
    assert c2["exp"] <= c1["exp"]

    # hop 3: the documents API for storage
    t3, _ = ok(hop(live, t2, idp("docs-api"), STORAGE))
    c3 = claims_of(live, t3)
    assert c3["act"] == {"sub": "wl:docs-api", "act": {"sub": "wl:search-tool", "act": {"sub": "wl:gateway"}}}
    assert c3["sub"] == "wl:report-job" and c3["scope"] == "docs.read" and c3["exp"] <= c2["exp"]

    # The decoded tokens shown in docs/agents.md are these, but for times, ids and URLs.
    for documented, real in zip(documented_tokens(), (c0, c1, c2), strict=True):
        assert set(documented) == set(real)
        assert {k: documented[k] for k in ("sub", "aud", "scope")} == {k: real[k] for k in ("sub", "aud", "scope")}
        assert documented.get("act") == real.get("act")
        assert [{k: v for k, v in h.items() if k != "jti"} for h in documented["sts_chain"]] == [
            {k: v for k, v in h.items() if k != "jti"} for h in real["sts_chain"]]

    # Every token records its chain; the audit record of the last hop names all of it.
    chain = [{"jti": c0["jti"], "grant": "report-to-gateway", "origin": "cluster"},
             {"jti": c1["jti"], "grant": "gateway-to-tools", "actor": "wl:gateway"},
             {"jti": c2["jti"], "grant": "tools-to-apis", "actor": "wl:search-tool"},
             {"jti": c3["jti"], "grant": "apis-to-storage", "actor": "wl:docs-api"}]
    assert c3["sts_chain"] == chain
    row = audit_row(live, jti=c3["jti"])
    assert row["context"]["chain"] == chain
    assert row["issuer"] == "cluster" and row["identity"] == "wl:report-job" and row["grant_name"] == "apis-to-storage"
    # ... and the issued-token rows link each token to its parent, for lineage revocation.
    engine = make_engine(live.database_url)
    try:
        with engine.connect() as conn:
            parents = dict(conn.execute(sa.text("SELECT jti, parent_jti FROM issued_tokens WHERE jti IN (:a, :b, :c)"),
                                        {"a": c1["jti"], "b": c2["jti"], "c": c3["jti"]}).all())
    finally:
        engine.dispose()
    assert parents == {c1["jti"]: c0["jti"], c2["jti"]: c1["jti"], c3["jti"]: c2["jti"]}


def test_lifetime_stays_within_the_parent(live: BrokerServer, idp: Callable[..., str]) -> None:
    t0, _ = ok(live.exchange(idp("report-job", lifetime=60), audience=GATEWAY))
    c0 = claims_of(live, t0)
    t1, body = ok(hop(live, t0, idp("gateway"), MCP))
    assert claims_of(live, t1)["exp"] <= c0["exp"] and body["expires_in"] <= 60
    # Even a grant that does not cap by the subject token's lifetime cannot extend a chain.
    t2, body2 = ok(hop(live, t1, idp("search-tool"), CACHE))
    assert claims_of(live, t2)["exp"] <= c0["exp"] and body2["expires_in"] <= 60


def test_reexchanging_a_narrowed_token_cannot_get_the_wider_scope_back(live: BrokerServer, idp: Callable[..., str]) -> None:
    t0 = report_token(live, idp)
    t1, _ = ok(hop(live, t0, idp("gateway"), MCP, scope="docs.read"))
    # The grant allows docs.write for the documents API, but the parent carries docs.read only.
    refused(live, hop(live, t1, idp("search-tool"), DOCS_API, scope="docs.read docs.write"),
            "invalid_scope", "chain_scope_widening")
    refused(live, hop(live, t1, idp("search-tool"), DOCS_API, scope="docs.write"), "invalid_scope", "chain_scope_widening")
    # Nor by presenting it again for its own audience: the MCP tool is not a gateway grant's actor,
    # and the gateway is not the token's audience.
    refused(live, hop(live, t1, idp("gateway"), MCP, scope="docs.read docs.write"), "invalid_request", "chain_audience_mismatch")


def test_a_token_presented_by_a_service_that_is_not_its_audience(live: BrokerServer, idp: Callable[..., str]) -> None:
    t0 = report_token(live, idp)
    t1, _ = ok(hop(live, t0, idp("gateway"), MCP))
    # The documents API got hold of the MCP tool's token: it is not the token's audience.
    refused(live, hop(live, t1, idp("docs-api"), STORAGE), "invalid_request", "chain_audience_mismatch")
    # The report job itself cannot skip the gateway either: T0 was issued to the gateway.
    refused(live, hop(live, t0, idp("report-job"), MCP), "invalid_request", "actor_not_allowed")


def test_an_actor_cannot_swap_itself_out_of_the_chain(live: BrokerServer, idp: Callable[..., str]) -> None:
    t0 = report_token(live, idp)
    t1, _ = ok(hop(live, t0, idp("gateway"), MCP))
    # The MCP tool presents its token with the gateway's credential, so that the next token
    # would name the gateway as the actor and the tool nowhere: the gateway is an actor the
    # grant allows, but the token was not issued to the gateway.
    refused(live, hop(live, t1, idp("gateway"), MCP), "invalid_request", "chain_audience_mismatch")
    refused(live, hop(live, t1, idp("gateway"), DOCS_API), "invalid_request", "actor_not_allowed")
    # ... or with no credential at all: nobody would be the actor.
    refused(live, hop(live, t1, None, DOCS_API), "invalid_request", "chain_presenter_unknown")
    # A registered client that is not one of the grant's clients cannot present it alone either.
    with live.client() as c:
        r = c.post("/token", auth=("search-tool", TOOL_SECRET), data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": t0,
            "subject_token_type": ACCESS_TOKEN, "audience": MCP})
    refused(live, r, "invalid_request", "chain_client_not_allowed")

def test_the_audience_client_presents_alone_and_becomes_the_actor(live: BrokerServer, idp: Callable[..., str]) -> None:
    t0 = report_token(live, idp)
    t1, _ = ok(hop(live, t0, idp("gateway"), MCP))
    with live.client() as c:
        r = c.post("/token", auth=("search-tool", TOOL_SECRET), data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": t1,
            "subject_token_type": ACCESS_TOKEN, "audience": DOCS_API})
    t2, _ = ok(r)
    assert claims_of(live, t2)["act"] == {"client_id": "search-tool", "act": {"sub": "wl:gateway"}}


def test_a_chain_longer_than_the_cap_is_refused(live: BrokerServer, idp: Callable[..., str]) -> None:
    t0 = report_token(live, idp)
    t1, _ = ok(hop(live, t0, idp("gateway"), MCP))
    t2, _ = ok(hop(live, t1, idp("search-tool"), DOCS_API))
    # apis-to-archive caps the chain at two actors; this hop would be the third.
    refused(live, hop(live, t2, idp("docs-api"), ARCHIVE), "invalid_request", "chain_too_deep")
    ok(hop(live, t2, idp("docs-api"), STORAGE))  # apis-to-storage allows three


def test_may_act_names_who_may_act(live: BrokerServer, idp: Callable[..., str], issuer: LocalIssuer) -> None:
    # The identity provider says only the gateway may act for this token (RFC 8693 §4.4), by
    # its own issuer and subject, or by its workload identity in this broker.
    by_iss = idp("report-job", may_act={"iss": issuer.url, "sub": "gateway"})
    by_identity = idp("report-job", may_act={"sub": "wl:gateway"})
    for subject in (by_iss, by_identity):
        t, _ = ok(hop(live, subject, idp("gateway"), ADMIN_TOOL))
        assert claims_of(live, t)["act"] == {"sub": "wl:gateway"}
    # The grant lists the gateway as an actor, but may_act names someone else.
    other = idp("report-job", may_act={"sub": "wl:other-agent"})
    refused(live, hop(live, other, idp("gateway"), ADMIN_TOOL), "invalid_request", "may_act_mismatch")
    refused(live, hop(live, other, idp("gateway"), MCP), "invalid_request", "may_act_mismatch")
    # gateway-to-admin requires may_act: a subject token without one is refused.
    refused(live, hop(live, idp("report-job"), idp("gateway"), ADMIN_TOOL), "invalid_request", "may_act_missing")


def test_own_tokens_only_through_chain_grants(live: BrokerServer, idp: Callable[..., str]) -> None:
    t0 = report_token(live, idp)
    # report-to-gateway does not set delegation.chain: our own token is not a subject token there.
    refused(live, hop(live, t0, idp("gateway"), GATEWAY), "invalid_target", "target_not_allowed")
    # A token that claims our issuer but is not signed by our keys is refused without any fetch.
    _, payload, _ = t0.split(".")
    other = jose.generate_private_key("ES256", kid=jose.unsafe_decode(t0).header["kid"])
    forged = jose.sign(claims_of(live, t0), other, typ="at+jwt")
    assert forged.split(".")[1] == payload
    refused(live, hop(live, forged, idp("gateway"), MCP), "invalid_request", "own_token_bad_signature")


def test_revoking_an_ancestor_stops_the_chain(live: BrokerServer, idp: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = report_token(live, idp)
    t1, _ = ok(hop(live, t0, idp("gateway"), MCP))
    t2, _ = ok(hop(live, t1, idp("search-tool"), DOCS_API))
    monkeypatch.setenv("STS_DATABASE_URL", live.database_url)
    monkeypatch.setenv("STS_CONFIG", str(live.config_path))
    monkeypatch.setenv("STS_DEV_MODE", "true")
    jti0 = claims_of(live, t0)["jti"]
    result = CliRunner().invoke(main, ["revoke", "--jti", jti0, "--reason", "leaked", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    # T2's parent (T1) is not revoked, but T0 earlier in its chain is.
    deadline = time.monotonic() + FOLLOW
    while True:
        resp = hop(live, t2, idp("docs-api"), STORAGE)
        if resp.status_code == 400 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    refused(live, resp, "invalid_request", "chain_ancestor_revoked")
    # T0 itself, presented again by the gateway, is refused as a revoked subject token.
    refused(live, hop(live, t0, idp("gateway"), MCP), "invalid_request", "subject_revoked")
    # Lineage revocation walks the same links: T1 and T2 are revoked with T0.
    result = CliRunner().invoke(main, ["revoke", "--lineage", jti0, "--dry-run", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    listed = {t["jti"] for t in json.loads(result.output)["tokens"]}
    assert {claims_of(live, t1)["jti"], claims_of(live, t2)["jti"]} <= listed
    assert re.fullmatch(r"[A-Za-z0-9_-]+", jti0)


def test_killing_the_origin_issuer_stops_the_chains_that_began_there(live: BrokerServer, idp: Callable[..., str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = report_token(live, idp)
    t1, _ = ok(hop(live, t0, idp("gateway"), MCP))
    monkeypatch.setenv("STS_DATABASE_URL", live.database_url)
    monkeypatch.setenv("STS_CONFIG", str(live.config_path))
    monkeypatch.setenv("STS_DEV_MODE", "true")

    def sts(*args: str) -> None:
        result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    # A chain hop's subject is one of our tokens, but its issuer is where the chain began.
    sts("kill", "issuer", "cluster", "--reason", "idp compromised")
    try:
        deadline = time.monotonic() + FOLLOW
        while (resp := hop(live, t1, idp("search-tool"), DOCS_API)).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        refused(live, resp, "invalid_request", "killed_issuer")
    finally:
        sts("kill", "lift", "issuer", "cluster", "--reason", "test over")
    deadline = time.monotonic() + FOLLOW
    while (resp := hop(live, t1, idp("search-tool"), DOCS_API)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    ok(resp)


def test_authorization_details_of_a_hop_stay_within_the_parents(live: BrokerServer, idp: Callable[..., str]) -> None:
    # RFC 9396 details are permissions too: a hop may keep or narrow the parent's, never add.
    parent_details = [{"type": "mcp_tool", "tools": ["search", "fetch"], "actions": ["invoke"]}]
    t0, _ = ok(live.exchange(idp("report-job"), audience=PLANNER, authorization_details=json.dumps(parent_details)))
    assert claims_of(live, t0)["authorization_details"] == parent_details
    narrower = [{"type": "mcp_tool", "tools": ["search"], "actions": ["invoke"]}]
    t1, _ = ok(hop(live, t0, idp("planner"), TOOLS, authorization_details=json.dumps(narrower)))
    assert claims_of(live, t1)["authorization_details"] == narrower
    # A tool the parent does not carry (though the target allows it), or a constraint dropped.
    for wider in ([{"type": "mcp_tool", "tools": ["search", "shell"], "actions": ["invoke"]}],
                  [{"type": "mcp_tool", "tools": ["search"]}]):
        refused(live, hop(live, t0, idp("planner"), TOOLS, authorization_details=json.dumps(wider)),
                "invalid_authorization_details", "chain_details_widening")
    # A parent without details admits none in the hop.
    t0_plain, _ = ok(live.exchange(idp("report-job"), audience=PLANNER))
    refused(live, hop(live, t0_plain, idp("planner"), TOOLS, authorization_details=json.dumps(narrower)),
            "invalid_authorization_details", "chain_details_widening")
    ok(hop(live, t0_plain, idp("planner"), TOOLS))
