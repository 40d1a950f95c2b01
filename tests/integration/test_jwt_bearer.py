"""The RFC 7523 JWT-bearer grant, ID-JAGs and ignored foreign scopes over real HTTP (docs/jwt-bearer.md).

RFC 7521 §4.1.1 and RFC 7523 §3.1: every unacceptable assertion answers ``invalid_grant``; the
same credential refused through token exchange answers ``invalid_request`` (RFC 8693 §2.2.2).
Each refusal is also checked in the audit record, by its own reason.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from broker_harness import BrokerServer, decode_issued, free_port
from conformance.issuer import LocalIssuer
from dpop_support import dpop_key, make_proof
from integration_config import BROKER_AUDIENCE, CLIENT_SECRET
from sts import jose

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ID_JAG_TYP = "oauth-id-jag+jwt"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
MCP = "https://mcp.example.com/"
CHAT = "https://chat.example.com/"


@pytest.fixture(scope="module")
def idp() -> Iterator[LocalIssuer]:
    with LocalIssuer(algorithms=("ES256",)) as iss:
        yield iss


@pytest.fixture(scope="module")
def plain_idp() -> Iterator[LocalIssuer]:
    with LocalIssuer(algorithms=("ES256",)) as iss:
        yield iss


@pytest.fixture(scope="module")
def stranger() -> Iterator[LocalIssuer]:
    with LocalIssuer(algorithms=("RS256",)) as iss:
        yield iss


def _config(port: int, issuer: LocalIssuer, idp: LocalIssuer, plain_idp: LocalIssuer) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    secret = hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()
    client = {"auth_method": "client_secret_basic", "secret_sha256": secret}
    return {
        "issuer": url,
        "tokens": {"default_lifetime": 900, "max_lifetime": 3600, "algorithm": "ES256"},
        "clients": {
            "allow_public": True,
            "registered": [
                {"client_id": "agent-app", **client, "jwt_bearer": True},
                {"client_id": "other-app", **client, "jwt_bearer": True},
                {"client_id": "te-client", **client},
            ],
        },
        "issuers": [
            {"name": "local", "issuer": issuer.url, "audiences": [BROKER_AUDIENCE], "keys": {"discovery": True},
             "allow_insecure_http": True, "claim_mappings": {"identity": '"wl:" + claims.sub'}},
            {"name": "corp-idp", "issuer": idp.url, "audiences": [url], "keys": {"jwks_uri": idp.jwks_uri},
             "allow_insecure_http": True, "id_jag": True, "algorithms": ["ES256"],
             "claim_mappings": {"identity": '"user:" + claims.sub'}},
            {"name": "plain-idp", "issuer": plain_idp.url, "audiences": [url], "keys": {"jwks_uri": plain_idp.jwks_uri},
             "allow_insecure_http": True, "algorithms": ["ES256"]},
        ],
        "grants": [
            {
                "name": "mcp-workloads",
                "issuers": ["local"],
                "match": {"identity_pattern": "^wl:agent-[a-z0-9-]+$"},
                "grant_types": ["jwt_bearer", "token_exchange"],
                "targets": [
                    {"resource": MCP, "scopes": ["mcp:read", "mcp:write"], "default_scopes": ["mcp:read"]},
                    {"audience": "https://vertex.example.com", "scopes": ["predict"], "default_scopes": ["predict"],
                     "ignore_scopes": [CLOUD_PLATFORM]},
                    {"audience": "https://bare.example.com", "scopes": ["x"], "ignore_scopes": [CLOUD_PLATFORM]},
                ],
            },
            {
                "name": "exchange-only",
                "issuers": ["local"],
                "match": {"identity": "wl:exchange-only"},
                "targets": [{"resource": MCP, "scopes": ["mcp:read"]}],
            },
            {
                "name": "enterprise-chat",
                "issuers": ["corp-idp"],
                # The user, acting through the client: the policy sees both.
                "match": {"condition": 'identity.startsWith("user:") && claims.client_id == "agent-app"'},
                "grant_types": ["jwt_bearer"],
                "targets": [{"resource": CHAT, "scopes": ["chat.read", "chat.history"], "default_scopes": ["chat.read"]}],
            },
            {
                "name": "plain-idp-users",
                "issuers": ["plain-idp"],
                "match": {"identity_pattern": "^plain-idp:.*$"},
                "grant_types": ["jwt_bearer"],
                "targets": [{"resource": CHAT, "scopes": ["chat.read"]}],
            },
        ],
    }


@pytest.fixture(scope="module")
def jb(issuer: LocalIssuer, idp: LocalIssuer, plain_idp: LocalIssuer, database_url: str,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    server = BrokerServer(_config(port, issuer, idp, plain_idp), workdir=tmp_path_factory.mktemp("jb"),
                          database_url=database_url, port=port, settings={"audit_coalesce_window": 0}).start()
    try:
        yield server
    finally:
        server.stop()


def post(server: BrokerServer, data: dict[str, Any], *, auth: Any = None, headers: dict[str, str] | None = None) -> tuple[httpx.Response, str]:
    request_id = secrets.token_hex(8)
    with server.client() as c:
        resp = c.post("/token", data={k: v for k, v in data.items() if v is not None}, auth=auth,
                      headers={"X-Request-Id": request_id, **(headers or {})})
    return resp, request_id


def grant(server: BrokerServer, assertion: str, *, auth: Any = None, headers: dict[str, str] | None = None,
          **params: Any) -> tuple[httpx.Response, str]:
    return post(server, {"grant_type": JWT_BEARER, "assertion": assertion, **params}, auth=auth, headers=headers)


def audit(server: BrokerServer, request_id: str) -> dict[str, Any]:
    with server.broker.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT outcome, error, reason, identity, client_id, context FROM audit_events "
                                   "WHERE request_id = :r"), {"r": request_id}).one()
    out = dict(row._mapping)
    if isinstance(out["context"], str):
        out["context"] = json.loads(out["context"])
    return out


def refused(server: BrokerServer, resp: httpx.Response, request_id: str, error: str, reason: str, *secrets_not_shown: str) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    assert resp.headers["cache-control"] == "no-store"
    assert resp.json()["error"] == error, resp.text
    for secret in secrets_not_shown:
        assert secret not in resp.text
    record = audit(server, request_id)
    assert (record["outcome"], record["error"], record["reason"]) == ("denied", error, reason)
    return record


def workload(issuer: LocalIssuer, server: BrokerServer, sub: str = "agent-1", **claims: Any) -> str:
    """A workload JWT as MCP SEP-1933 describes it: the token endpoint as audience, a jti."""
    return issuer.mint({"sub": sub, "aud": f"{server.url}/token", **claims})


def id_jag(idp: LocalIssuer, server: BrokerServer, *, sub: str = "alice", client_id: str = "agent-app",
           header: dict[str, Any] | None = None, **claims: Any) -> str:
    return idp.mint({"sub": sub, "aud": server.url, "client_id": client_id, "resource": CHAT,
                     "scope": "chat.read chat.history", **claims},
                    alg="ES256", header={"typ": ID_JAG_TYP, **(header or {})}, lifetime=300)


AGENT = ("agent-app", CLIENT_SECRET)


# --- JWT-bearer (MCP workload identity federation) ------------------------------------------------

def test_workload_assertion_gets_a_token_without_client_registration(jb: BrokerServer, issuer: LocalIssuer) -> None:
    resp, rid = grant(jb, workload(issuer, jb, team="search"), resource=MCP)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "mcp:read"
    _, claims = decode_issued(jb, body["access_token"])
    assert (claims["sub"], claims["aud"], claims["scope"]) == ("wl:agent-1", MCP, "mcp:read")
    record = audit(jb, rid)
    assert record["outcome"] == "issued" and record["identity"] == "wl:agent-1"
    assert record["context"]["assertion"] == {"profile": "jwt-bearer"}


@pytest.mark.parametrize("aud", ["issuer", "token_endpoint", "configured"])
def test_assertion_audience_names_the_broker(jb: BrokerServer, issuer: LocalIssuer, aud: str) -> None:
    # RFC 7523 §3 item 3: the issuer identifier or the token endpoint URL; the issuer's
    # configured audiences name the broker too.
    value = {"issuer": jb.url, "token_endpoint": f"{jb.url}/token", "configured": BROKER_AUDIENCE}[aud]
    resp, _ = grant(jb, issuer.mint({"sub": "agent-aud", "aud": value}), resource=MCP, scope="mcp:write")
    assert resp.status_code == 200, resp.text
    assert resp.json()["scope"] == "mcp:write"


def test_registered_client_with_the_grant_may_use_it(jb: BrokerServer, issuer: LocalIssuer) -> None:
    resp, _ = grant(jb, workload(issuer, jb), auth=AGENT, resource=MCP)
    assert resp.status_code == 200, resp.text
    _, claims = decode_issued(jb, resp.json()["access_token"])
    assert claims["client_id"] == "agent-app"


def _bad_assertions(issuer: LocalIssuer, stranger: LocalIssuer, jb: BrokerServer) -> dict[str, tuple[str, str]]:
    now = int(time.time())
    forger = jose.generate_private_key("RS256")
    return {
        "bad_signature": (issuer.mint({"sub": "agent-1", "aud": jb.url}, sign_with=forger.key), "bad_signature"),
        "expired": (issuer.mint({"sub": "agent-1", "aud": jb.url, "iat": now - 900, "nbf": now - 900, "exp": now - 600}), "expired"),
        "wrong_aud": (issuer.mint({"sub": "agent-1", "aud": "https://elsewhere.example.com/token"}), "aud_mismatch"),
        "no_aud": (issuer.mint({"sub": "agent-1", "aud": None}), "aud_mismatch"),
        "untrusted_issuer": (stranger.mint({"sub": "agent-1", "aud": jb.url}), "issuer_not_trusted"),
        "missing_jti": (issuer.mint({"sub": "agent-1", "aud": jb.url, "jti": None}), "jti_missing"),
        "alg_none": (issuer.mint_unsigned({"sub": "agent-1", "aud": jb.url}), "alg_not_allowed"),
        "hs256_key_confusion": (issuer.mint_hs256(issuer.public_pem(), {"sub": "agent-1", "aud": jb.url}), "alg_not_allowed"),
        "not_a_jwt": ("not-a-jwt", "malformed"),
        "delegated": (issuer.mint({"sub": "agent-1", "aud": jb.url, "act": {"sub": "someone"}}), "assertion_delegated"),
        "not_yet_valid": (issuer.mint({"sub": "agent-1", "aud": jb.url, "nbf": now + 900}), "not_yet_valid"),
    }


@pytest.mark.parametrize("kind", ["bad_signature", "expired", "wrong_aud", "no_aud", "untrusted_issuer", "missing_jti",
                                  "alg_none", "hs256_key_confusion", "not_a_jwt", "delegated", "not_yet_valid"])
def test_each_bad_assertion_is_invalid_grant(jb: BrokerServer, issuer: LocalIssuer, stranger: LocalIssuer, kind: str) -> None:
    assertion, reason = _bad_assertions(issuer, stranger, jb)[kind]
    resp, rid = grant(jb, assertion, resource=MCP)
    refused(jb, resp, rid, "invalid_grant", reason, assertion)


def test_the_same_credential_through_token_exchange_is_invalid_request(jb: BrokerServer, issuer: LocalIssuer) -> None:
    # Each grant answers by its own RFC: RFC 8693 §2.2.2 for a refused subject token.
    forged = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, sign_with=jose.generate_private_key("RS256").key)
    resp, rid = post(jb, {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": forged,
                          "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "resource": MCP})
    refused(jb, resp, rid, "invalid_request", "bad_signature")


def test_an_assertion_is_one_time(jb: BrokerServer, issuer: LocalIssuer) -> None:
    # The issuer does not set require_jti: the grant itself makes every assertion one-time.
    assertion = workload(issuer, jb, "agent-replay")
    first, _ = grant(jb, assertion, resource=MCP)
    assert first.status_code == 200, first.text
    again, rid = grant(jb, assertion, resource=MCP)
    refused(jb, again, rid, "invalid_grant", "jti_replayed", assertion)


def test_a_refused_assertion_stays_usable(jb: BrokerServer, issuer: LocalIssuer) -> None:
    assertion = workload(issuer, jb, "agent-retry")
    resp, rid = grant(jb, assertion, resource=MCP, scope="admin")
    refused(jb, resp, rid, "invalid_scope", "scope_not_allowed")
    ok, _ = grant(jb, assertion, resource=MCP)
    assert ok.status_code == 200, ok.text


def test_policy_refusals_keep_their_codes(jb: BrokerServer, issuer: LocalIssuer) -> None:
    resp, rid = grant(jb, workload(issuer, jb), resource="https://unknown.example.com/")
    refused(jb, resp, rid, "invalid_target", "target_not_allowed")
    resp, rid = grant(jb, workload(issuer, jb, "stranger-workload"), resource=MCP)
    refused(jb, resp, rid, "invalid_grant", "no_grant")


def test_a_grant_answers_only_the_grant_types_it_lists(jb: BrokerServer, issuer: LocalIssuer) -> None:
    resp, rid = grant(jb, workload(issuer, jb, "exchange-only"), resource=MCP)
    refused(jb, resp, rid, "invalid_grant", "grant_type_not_allowed")
    ok = jb.exchange(issuer.mint({"sub": "exchange-only", "aud": BROKER_AUDIENCE}), resource=MCP, scope="mcp:read")
    assert ok.status_code == 200, ok.text


def test_a_client_not_registered_for_the_grant_is_unauthorized(jb: BrokerServer, issuer: LocalIssuer) -> None:
    resp, rid = grant(jb, workload(issuer, jb), auth=("te-client", CLIENT_SECRET), resource=MCP)
    refused(jb, resp, rid, "unauthorized_client", "client_not_allowed_jwt_bearer")


def test_missing_assertion_is_a_malformed_request(jb: BrokerServer) -> None:
    resp, rid = post(jb, {"grant_type": JWT_BEARER, "resource": MCP})
    refused(jb, resp, rid, "invalid_request", "missing_assertion")


# --- ID-JAG (enterprise-managed authorization) ----------------------------------------------------

def test_id_jag_gives_the_user_acting_through_the_client(jb: BrokerServer, idp: LocalIssuer) -> None:
    # The draft's own request: grant_type and assertion only; resource and scope come from it.
    resp, rid = grant(jb, id_jag(idp, jb), auth=AGENT)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["scope"] == "chat.read chat.history"
    _, claims = decode_issued(jb, body["access_token"])
    assert (claims["sub"], claims["client_id"], claims["aud"]) == ("user:alice", "agent-app", CHAT)
    record = audit(jb, rid)
    assert record["identity"] == "user:alice" and record["client_id"] == "agent-app"
    assert record["context"]["assertion"] == {"profile": "id-jag", "client_id": "agent-app", "resource": [CHAT],
                                              "scope": ["chat.read", "chat.history"]}


def test_id_jag_request_may_narrow_the_scope(jb: BrokerServer, idp: LocalIssuer) -> None:
    resp, _ = grant(jb, id_jag(idp, jb), auth=AGENT, resource=CHAT, scope="chat.read")
    assert resp.status_code == 200, resp.text
    assert resp.json()["scope"] == "chat.read"


def test_id_jag_request_may_not_widen_it(jb: BrokerServer, idp: LocalIssuer) -> None:
    resp, rid = grant(jb, id_jag(idp, jb, scope="chat.read"), auth=AGENT, scope="chat.history")
    refused(jb, resp, rid, "invalid_scope", "idjag_scope_beyond_assertion")
    resp, rid = grant(jb, id_jag(idp, jb), auth=AGENT, resource="https://other.example.com/")
    refused(jb, resp, rid, "invalid_target", "idjag_target_beyond_assertion")


@pytest.mark.parametrize("aud", ["token_endpoint", "two_audiences", "configured_only"])
def test_id_jag_wrong_audience(jb: BrokerServer, idp: LocalIssuer, aud: str) -> None:
    # §4.4.1: exactly the broker's issuer identifier, as a string or a one-element array.
    value: Any = {"token_endpoint": f"{jb.url}/token", "two_audiences": [jb.url, "https://other.example.com"],
                  "configured_only": BROKER_AUDIENCE}[aud]
    reason = "idjag_aud_not_exact" if aud == "two_audiences" else "aud_mismatch"
    resp, rid = grant(jb, id_jag(idp, jb, aud=value), auth=AGENT)
    refused(jb, resp, rid, "invalid_grant", reason)


def test_id_jag_audience_as_one_element_array(jb: BrokerServer, idp: LocalIssuer) -> None:
    resp, _ = grant(jb, id_jag(idp, jb, aud=[jb.url]), auth=AGENT)
    assert resp.status_code == 200, resp.text


def test_id_jag_for_another_client(jb: BrokerServer, idp: LocalIssuer) -> None:
    resp, rid = grant(jb, id_jag(idp, jb, client_id="other-app"), auth=AGENT)
    refused(jb, resp, rid, "invalid_grant", "idjag_client_mismatch")


def test_id_jag_needs_client_authentication(jb: BrokerServer, idp: LocalIssuer) -> None:
    resp, rid = grant(jb, id_jag(idp, jb))
    refused(jb, resp, rid, "invalid_grant", "idjag_client_not_authenticated")


def test_policy_sees_the_client(jb: BrokerServer, idp: LocalIssuer) -> None:
    # A valid ID-JAG for other-app, presented by other-app: the grant admits agent-app only.
    resp, rid = grant(jb, id_jag(idp, jb, client_id="other-app"), auth=("other-app", CLIENT_SECRET))
    refused(jb, resp, rid, "invalid_grant", "no_grant")


def test_id_jag_replay(jb: BrokerServer, idp: LocalIssuer) -> None:
    assertion = id_jag(idp, jb, sub="bob")
    first, _ = grant(jb, assertion, auth=AGENT)
    assert first.status_code == 200, first.text
    again, rid = grant(jb, assertion, auth=AGENT)
    refused(jb, again, rid, "invalid_grant", "jti_replayed", assertion)


def test_id_jag_without_jti_or_iat(jb: BrokerServer, idp: LocalIssuer) -> None:
    resp, rid = grant(jb, id_jag(idp, jb, jti=None), auth=AGENT)
    refused(jb, resp, rid, "invalid_grant", "jti_missing")
    resp, rid = grant(jb, id_jag(idp, jb, iat=None), auth=AGENT)
    refused(jb, resp, rid, "invalid_grant", "idjag_iat_missing")


def test_id_jag_from_an_issuer_not_trusted_for_id_jags(jb: BrokerServer, plain_idp: LocalIssuer, stranger: LocalIssuer) -> None:
    resp, rid = grant(jb, id_jag(plain_idp, jb), auth=AGENT)
    refused(jb, resp, rid, "invalid_grant", "idjag_issuer_not_trusted")
    foreign = stranger.mint({"sub": "alice", "aud": jb.url, "client_id": "agent-app"}, header={"typ": ID_JAG_TYP})
    resp, rid = grant(jb, foreign, auth=AGENT)
    refused(jb, resp, rid, "invalid_grant", "issuer_not_trusted")


def test_id_jag_is_never_a_subject_token(jb: BrokerServer, idp: LocalIssuer) -> None:
    resp, rid = post(jb, {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": id_jag(idp, jb),
                          "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}, auth=AGENT)
    refused(jb, resp, rid, "invalid_request", "typ_other_kind")


def test_id_jag_bound_to_a_dpop_key(jb: BrokerServer, idp: LocalIssuer) -> None:
    key = dpop_key("ES256")
    jwk = key.public_jwk()
    jwk.pop("kid", None)
    bound = id_jag(idp, jb, cnf={"jkt": jose.jwk_thumbprint(jwk)})
    resp, rid = grant(jb, bound, auth=AGENT)
    refused(jb, resp, rid, "invalid_grant", "idjag_dpop_required")
    other = make_proof(f"{jb.url}/token", key=jose.generate_private_key("ES256"))
    resp, rid = grant(jb, bound, auth=AGENT, headers={"DPoP": other})
    refused(jb, resp, rid, "invalid_grant", "idjag_dpop_key_mismatch")
    resp, _ = grant(jb, bound, auth=AGENT, headers={"DPoP": make_proof(f"{jb.url}/token", key=key)})
    assert resp.status_code == 200, resp.text
    assert resp.json()["token_type"] == "DPoP"


# --- foreign scopes (Google client libraries) -----------------------------------------------------

def test_google_cloud_platform_scope_is_ignored(jb: BrokerServer, issuer: LocalIssuer) -> None:
    # RFC 6749 §3.3: the server may ignore requested scope; the answer says what was granted.
    resp, rid = post(jb, {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                          "subject_token": issuer.mint({"sub": "agent-g", "aud": BROKER_AUDIENCE}),
                          "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                          "audience": "https://vertex.example.com", "scope": CLOUD_PLATFORM})
    assert resp.status_code == 200, resp.text
    assert resp.json()["scope"] == "predict"  # nothing else was asked for: the defaults
    assert audit(jb, rid)["context"]["scope"] == {"ignored": [CLOUD_PLATFORM]}
    resp, _ = grant(jb, workload(issuer, jb, "agent-g"), audience="https://vertex.example.com", scope=f"{CLOUD_PLATFORM} predict")
    assert resp.status_code == 200, resp.text
    assert resp.json()["scope"] == "predict"


def test_foreign_scope_elsewhere_is_still_refused(jb: BrokerServer, issuer: LocalIssuer) -> None:
    resp, rid = grant(jb, workload(issuer, jb), resource=MCP, scope=CLOUD_PLATFORM)
    refused(jb, resp, rid, "invalid_scope", "scope_not_allowed")


def test_nothing_granted_means_no_scope_member(jb: BrokerServer, issuer: LocalIssuer) -> None:
    # Never "scope": "": the target has no default scopes, so the answer has no scope at all.
    resp, _ = grant(jb, workload(issuer, jb), audience="https://bare.example.com", scope=CLOUD_PLATFORM)
    assert resp.status_code == 200, resp.text
    assert "scope" not in resp.json()


# --- metadata ---------------------------------------------------------------------------------------

def test_metadata_lists_the_grant_and_the_id_jag_profile(jb: BrokerServer) -> None:
    with jb.client() as c:
        meta = c.get("/.well-known/oauth-authorization-server").json()
    assert meta["grant_types_supported"] == ["urn:ietf:params:oauth:grant-type:token-exchange", JWT_BEARER]
    assert meta["authorization_grant_profiles_supported"] == ["urn:ietf:params:oauth:grant-profile:id-jag"]
    # No authorization endpoint, so no authorization response to carry RFC 9207's iss.
    assert "authorization_response_iss_parameter_supported" not in meta
    assert meta["issuer"] == jb.url


def test_without_a_jwt_bearer_grant_the_grant_is_not_offered(broker: BrokerServer, issuer: LocalIssuer) -> None:
    with broker.client() as c:
        meta = c.get("/.well-known/oauth-authorization-server").json()
    assert meta["grant_types_supported"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    assert "authorization_grant_profiles_supported" not in meta
    # Deny by default: the broker of the other tests has grants for these workloads, none
    # listing jwt_bearer.
    resp, rid = grant(broker, issuer.mint({"sub": "agent-1", "aud": f"{broker.url}/token"}),
                      audience="https://vector.example.com")
    refused(broker, resp, rid, "invalid_grant", "grant_type_not_allowed")

