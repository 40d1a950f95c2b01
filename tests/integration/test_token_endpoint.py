"""The token endpoint end to end over real HTTP (RFC 8693 §2, RFC 6749 §5, RFC 8707, RFC 9068),
against a local OIDC issuer, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from conformance.issuer import LocalIssuer
from sts import jose
from sts.protocol import CLIENT_ASSERTION_TYPE_JWT_BEARER, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT
from broker_harness import BrokerServer, decode_issued
from integration_config import BROKER_AUDIENCE, CLIENT_KEY, CLIENT_SECRET

Mint = Callable[..., str]


def assert_error(resp: httpx.Response, status: int, error: str, *secrets_not_shown: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["pragma"] == "no-cache"
    body = resp.json()
    assert body["error"] == error
    assert set(body) <= {"error", "error_description", "error_uri"}
    for secret in secrets_not_shown:
        assert secret not in resp.text
    return body


# --- success -----------------------------------------------------------------------------------

def test_exchange_issues_audience_bound_token(broker: BrokerServer, mint: Mint) -> None:
    subject = mint("agent-7", team="search")
    resp = broker.exchange(subject, audience="https://vector.example.com", scope="read write")
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["pragma"] == "no-cache"
    body = resp.json()
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == TOKEN_TYPE_ACCESS_TOKEN
    assert body["scope"] == "read write"
    assert isinstance(body["expires_in"], int) and 0 < body["expires_in"] <= 600

    header, claims = decode_issued(broker, body["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256" and header["kid"]
    assert claims["iss"] == broker.url
    assert claims["sub"] == "wl:agent-7"
    assert claims["aud"] == "https://vector.example.com"
    assert claims["scope"] == "read write"
    assert claims["client_id"] == "wl:agent-7"
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert claims["workload"]["attributes"] == {"team": "search"}
    assert claims["workload"]["subject"] == "agent-7"


def test_default_target_and_default_scopes(broker: BrokerServer, mint: Mint) -> None:
    resp = broker.exchange(mint())
    assert resp.status_code == 200, resp.text
    assert resp.json()["scope"] == "read"
    _, claims = decode_issued(broker, resp.json()["access_token"])
    assert claims["aud"] == "https://vector.example.com"


def test_resource_prefix_target_is_issued_exactly(broker: BrokerServer, mint: Mint) -> None:
    resp = broker.exchange(mint(), resource="https://mcp.example.com/tools/search", scope="invoke")
    assert resp.status_code == 200, resp.text
    _, claims = decode_issued(broker, resp.json()["access_token"])
    assert claims["aud"] == "https://mcp.example.com/tools/search"
    assert resp.json()["scope"] == "invoke"


def test_lifetime_capped_by_subject_token(broker: BrokerServer, mint: Mint) -> None:
    resp = broker.exchange(mint(lifetime=120))
    assert resp.status_code == 200
    assert 100 <= resp.json()["expires_in"] <= 120


def test_per_target_algorithm(broker: BrokerServer, mint: Mint) -> None:
    resp = broker.exchange(mint(), audience="legacy-api")
    assert resp.status_code == 200, resp.text
    header, _ = decode_issued(broker, resp.json()["access_token"])
    assert header["alg"] == "RS256"


def test_es256_subject_and_whitespace_trimmed(broker: BrokerServer, mint: Mint) -> None:
    resp = broker.exchange(mint(alg="ES256") + "\n")
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("token_type", [TOKEN_TYPE_JWT, "urn:ietf:params:oauth:token-type:id_token", TOKEN_TYPE_ACCESS_TOKEN])
def test_subject_token_types(broker: BrokerServer, mint: Mint, token_type: str) -> None:
    assert broker.exchange(mint(), subject_token_type=token_type).status_code == 200


def test_requested_token_type_jwt(broker: BrokerServer, mint: Mint) -> None:
    resp = broker.exchange(mint(), requested_token_type=TOKEN_TYPE_JWT)
    assert resp.status_code == 200
    assert resp.json()["issued_token_type"] == TOKEN_TYPE_JWT


def test_delegation_adds_act_claim(broker: BrokerServer, mint: Mint) -> None:
    resp = broker.exchange(mint("agent-1"), actor_token=mint("gateway"), actor_token_type=TOKEN_TYPE_JWT)
    assert resp.status_code == 200, resp.text
    _, claims = decode_issued(broker, resp.json()["access_token"])
    assert claims["sub"] == "wl:agent-1"
    assert claims["act"] == {"sub": "wl:gateway"}


# --- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("params", "error"),
    [
        pytest.param({"audience": "https://other.example.com"}, "invalid_target", id="audience-not-granted"),
        pytest.param({"audience": ["https://vector.example.com", "legacy-api"]}, "invalid_target", id="two-targets"),
        pytest.param({"resource": "https://mcp.example.com/tools/../admin"}, "invalid_target", id="prefix-traversal"),
        pytest.param({"resource": "relative/path"}, "invalid_target", id="relative-resource"),
        pytest.param({"resource": "https://mcp.example.com/tools/x#frag"}, "invalid_target", id="resource-fragment"),
        pytest.param({"scope": "admin"}, "invalid_scope", id="scope-not-granted"),
        pytest.param({"scope": "read write", "audience": "legacy-api"}, "invalid_scope", id="scope-beyond-target"),
        pytest.param({"requested_token_type": "urn:ietf:params:oauth:token-type:saml2"}, "invalid_request", id="saml-requested"),
        pytest.param({"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}, "invalid_request", id="saml-subject"),
        pytest.param({"actor_token": "a.b.c"}, "invalid_request", id="actor-without-type"),
    ],
)
def test_request_refusals(broker: BrokerServer, mint: Mint, params: dict[str, Any], error: str) -> None:
    subject = mint()
    assert_error(broker.exchange(subject, **params), 400, error, subject)


def test_delegation_by_unlisted_actor_refused(broker: BrokerServer, mint: Mint) -> None:
    actor = mint("agent-2")
    assert_error(broker.exchange(mint(), actor_token=actor, actor_token_type=TOKEN_TYPE_JWT), 400, "invalid_request", actor)


def test_bad_subject_tokens(broker: BrokerServer, issuer: LocalIssuer, mint: Mint) -> None:
    now = int(time.time())
    attacker = jose.generate_private_key("RS256", kid="attacker")
    cases = {
        "expired": issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
        "not-yet-valid": issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE, "nbf": now + 3600}),
        "wrong-audience": issuer.mint({"sub": "agent-1", "aud": "someone-else"}),
        "no-exp": issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE, "exp": None}),
        "alg-none": issuer.mint_unsigned({"sub": "agent-1", "aud": BROKER_AUDIENCE}),
        "hs256-with-public-key": issuer.mint_hs256(issuer.public_pem(), {"sub": "agent-1", "aud": BROKER_AUDIENCE}),
        "forged-signature": issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, sign_with=attacker.key),
        "embedded-jwk": issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, kid="attacker", sign_with=attacker.key,
                                    header={"jwk": attacker.public_jwk()}),
        "untrusted-issuer": issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE, "iss": "https://evil.example.com"}),
        "unknown-crit": issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, header={"crit": ["exp-ext"], "exp-ext": 1}),
        "not-a-jwt": "definitely-not-a-jwt",
        "policy-refused-identity": mint("robot-1"),
        "claim-rule-refused": mint("agent-1", blocked=True),
    }
    for name, token in cases.items():
        body = assert_error(broker.exchange(token), 400, "invalid_request", token)
        assert "agent-1" not in body.get("error_description", ""), name


@pytest.mark.parametrize("typ", ["dpop+jwt", "logout+jwt", "application/secevent+jwt", "Token-Introspection+JWT"])
def test_other_kinds_of_jwt_from_a_trusted_issuer_are_refused(broker: BrokerServer, issuer: LocalIssuer, typ: str) -> None:
    # RFC 8725 §3.12: a logout token or a DPoP proof signed by a trusted issuer is no workload
    # credential, even when its claims would pass (this issuer sets no expected_typ).
    token = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, header={"typ": typ})
    assert_error(broker.exchange(token), 400, "invalid_request", token)
    with broker.broker.engine.connect() as conn:
        reason = conn.execute(sa.text("SELECT reason FROM audit_events WHERE subject_token_sha256 IS NULL "
                                      "AND issuer = 'local' ORDER BY id DESC LIMIT 1")).scalar()
    assert reason == "typ_other_kind"


def test_typed_identity_tokens_still_pass(broker: BrokerServer, issuer: LocalIssuer) -> None:
    for typ in ("JWT", "at+jwt", "application/jwt"):
        token = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, header={"typ": typ})
        assert broker.exchange(token).status_code == 200, typ


def test_replayed_jti_refused(broker: BrokerServer, replay_issuer: LocalIssuer) -> None:
    token = replay_issuer.mint({"sub": "w1", "aud": BROKER_AUDIENCE}, alg="ES256")
    target = {"audience": "https://vector.example.com"}
    assert broker.exchange(token, **target).status_code == 200
    assert_error(broker.exchange(token, **target), 400, "invalid_request")


def test_refused_request_does_not_spend_a_one_time_token(broker: BrokerServer, replay_issuer: LocalIssuer) -> None:
    token = replay_issuer.mint({"sub": "w-retry", "aud": BROKER_AUDIENCE}, alg="ES256")
    # Refused by the decision (a target no grant allows, then a scope beyond the grant): the
    # workload corrects its request and the same one-time token still works, once.
    assert_error(broker.exchange(token, audience="https://nope.example.com"), 400, "invalid_target")
    assert_error(broker.exchange(token, audience="https://vector.example.com", scope="admin"), 400, "invalid_scope")
    assert broker.exchange(token, audience="https://vector.example.com").status_code == 200
    assert_error(broker.exchange(token, audience="https://vector.example.com"), 400, "invalid_request")
    with broker.broker.engine.connect() as conn:
        reasons = [r[0] for r in conn.execute(sa.text(
            "SELECT reason FROM audit_events WHERE external_subject = 'w-retry' ORDER BY id"))]
    assert reasons == ["target_not_allowed", "scope_not_allowed", None, "jti_replayed"]


def test_concurrent_uses_of_a_one_time_token_issue_once(broker: BrokerServer, replay_issuer: LocalIssuer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    token = replay_issuer.mint({"sub": "w-race", "aud": BROKER_AUDIENCE}, alg="ES256")
    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(lambda _: broker.exchange(token, audience="https://vector.example.com").status_code, range(6)))
    assert statuses == [200, 400, 400, 400, 400, 400]


def test_unreachable_issuer_keys_give_503(broker: BrokerServer) -> None:
    cfg_issuer = next(i for i in broker.broker.runtime().verifier._issuers.values() if i.name == "dead")
    forged = jose.sign({"iss": cfg_issuer.rules.issuer, "sub": "x", "aud": BROKER_AUDIENCE, "exp": int(time.time()) + 60},
                       jose.generate_private_key("ES256", kid="k"))
    resp = broker.exchange(forged)
    assert_error(resp, 503, "temporarily_unavailable")
    assert int(resp.headers["retry-after"]) >= 1


def test_transport_refusals(broker: BrokerServer, mint: Mint) -> None:
    subject = mint()
    with broker.client() as c:
        resp = c.get("/token")
        assert resp.status_code == 405 and resp.headers["allow"] == "POST"
        assert_error(c.post("/token", json={"grant_type": "x"}), 400, "invalid_request")
        assert_error(c.post("/token", content=b"a=" + b"x" * 70_000, headers={"content-type": "application/x-www-form-urlencoded"}), 400, "invalid_request")
        assert_error(c.post("/token", data={"grant_type": "client_credentials"}), 400, "unsupported_grant_type")
        assert_error(c.post("/token", content=f"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={subject}&subject_token={subject}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt",
                            headers={"content-type": "application/x-www-form-urlencoded"}), 400, "invalid_request", subject)


# --- clients -----------------------------------------------------------------------------------

def test_client_secret_basic(broker: BrokerServer, mint: Mint) -> None:
    resp = broker.exchange(mint(), auth=("basic-client", CLIENT_SECRET))
    assert resp.status_code == 200, resp.text
    _, claims = decode_issued(broker, resp.json()["access_token"])
    assert claims["client_id"] == "basic-client"


def test_client_secret_post_and_wrong_secret(broker: BrokerServer, mint: Mint) -> None:
    assert broker.exchange(mint(), client_id="post-client", client_secret=CLIENT_SECRET).status_code == 200
    resp = broker.exchange(mint(), auth=("basic-client", "wrong"))
    assert_error(resp, 401, "invalid_client", "wrong")
    assert resp.headers["www-authenticate"].startswith("Basic")


def test_client_not_allowed_token_exchange(broker: BrokerServer, mint: Mint) -> None:
    assert_error(broker.exchange(mint(), client_id="no-exchange", client_secret=CLIENT_SECRET), 400, "unauthorized_client")


def test_private_key_jwt(broker: BrokerServer, mint: Mint) -> None:
    now = int(time.time())
    assertion = jose.sign({"iss": "jwt-client", "sub": "jwt-client", "aud": broker.url + "/token", "iat": now,
                           "exp": now + 60, "jti": f"a-{time.monotonic_ns()}"}, CLIENT_KEY)
    form = {"client_assertion_type": CLIENT_ASSERTION_TYPE_JWT_BEARER, "client_assertion": assertion}
    assert broker.exchange(mint(), **form).status_code == 200
    assert_error(broker.exchange(mint(), **form), 401, "invalid_client")  # jti replayed


# --- metadata, keys, health ----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"])
def test_metadata(broker: BrokerServer, path: str) -> None:
    with broker.client() as c:
        doc = c.get(path).json()
    assert doc["issuer"] == broker.url
    assert doc["token_endpoint"] == broker.url + "/token"
    assert doc["jwks_uri"] == broker.url + "/jwks"
    assert "urn:ietf:params:oauth:grant-type:token-exchange" in doc["grant_types_supported"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {"none", "client_secret_basic", "client_secret_post", "private_key_jwt"}


def test_jwks_has_public_keys_only(broker: BrokerServer) -> None:
    with broker.client() as c:
        jwks = c.get("/jwks").json()
    assert jwks["keys"]
    for key in jwks["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(key)
        assert key["kid"] and key["use"] == "sig"
    states = {r.state for r in broker.broker.keyring.rows()}
    assert {"active", "next"} <= states


def test_health(broker: BrokerServer) -> None:
    with broker.client() as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["database"] is True and ready.json()["signing_keys"] is True


# --- audit ---------------------------------------------------------------------------------------

def test_every_decision_is_audited_without_the_token(broker: BrokerServer, mint: Mint) -> None:
    subject = mint("agent-audit")
    ok = broker.exchange(subject, audience="https://vector.example.com")
    denied = broker.exchange(subject, audience="https://nope.example.com")
    assert ok.status_code == 200 and denied.status_code == 400
    issued_jti = decode_issued(broker, ok.json()["access_token"])[1]["jti"]
    engine = broker.broker.engine
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM audit_events WHERE identity = 'wl:agent-audit' ORDER BY id"))]
        issued = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM issued_tokens WHERE jti = :j"), {"j": issued_jti})]
    assert [r["outcome"] for r in rows] == ["issued", "denied"]
    assert rows[0]["issued_jti"] == issued_jti and rows[0]["grant"] == "agents"
    assert rows[1]["error"] == "invalid_target" and rows[1]["reason"] == "target_not_allowed"
    assert rows[0]["subject_token_sha256"] and len(rows[0]["subject_token_sha256"]) == 64
    assert "shadow" in (rows[0]["mode_notes"] or "")  # the audit-mode grant was evaluated and noted
    assert issued and issued[0]["audience"] == "https://vector.example.com"
    for row in rows + issued:
        for value in row.values():
            assert subject not in str(value)
            assert ok.json()["access_token"] not in str(value)


def test_basic_header_never_echoed(broker: BrokerServer, mint: Mint) -> None:
    header = "Basic " + base64.b64encode(b"basic-client:nope").decode()
    with broker.client() as c:
        resp = c.post("/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                                      "subject_token": mint(), "subject_token_type": TOKEN_TYPE_JWT},
                      headers={"authorization": header})
    assert_error(resp, 401, "invalid_client", "nope")


def test_control_characters_from_callers_are_audited_not_fatal(broker: BrokerServer, issuer: LocalIssuer) -> None:
    token = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE, "iss": "x\u0000y"})
    assert_error(broker.exchange(token), 400, "invalid_request")
    assert_error(broker.exchange(token, client_id="a\u0000b", client_secret="s"), 401, "invalid_client")
    assert_error(broker.exchange(issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}), audience="x\u001b[2Jy"), 400, "invalid_target")
    with broker.broker.engine.connect() as conn:
        details = [r[0] for r in conn.execute(sa.text("SELECT detail FROM audit_events WHERE detail LIKE 'x%' ORDER BY id DESC LIMIT 1"))]
    assert details and "\x00" not in details[0]


def test_delegated_subject_token_needs_its_actor(broker: BrokerServer, mint: Mint) -> None:
    assert_error(broker.exchange(mint("agent-1", act={"sub": "wl:gateway"})), 400, "invalid_request")


def test_actor_token_expiry_caps_the_issued_lifetime(broker: BrokerServer, mint: Mint) -> None:
    resp = broker.exchange(mint("agent-1"), actor_token=mint("gateway", lifetime=40), actor_token_type=TOKEN_TYPE_JWT)
    assert resp.status_code == 200, resp.text
    assert resp.json()["expires_in"] <= 40


# --- transport -----------------------------------------------------------------------------------

def _raw_exchange(broker: BrokerServer, body: bytes, *, half_close: bool, extra_headers: bytes = b"") -> bytes:
    """Send one request over a plain socket; with ``half_close`` the client shuts its sending
    side right after the request (HTTP/1.1 permits it), then reads until the server closes."""
    import socket

    request = (
        b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + extra_headers + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if not half_close and b"\r\n\r\n" in b"".join(chunks):
                head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
                if len(rest) >= length:
                    break
    return b"".join(chunks)


def _form(subject: str, **extra: str) -> bytes:
    from urllib.parse import urlencode

    return urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        **extra,
    }).encode()


def test_half_closed_request_gets_its_answer(broker: BrokerServer, mint: Mint) -> None:
    answer = _raw_exchange(broker, _form(mint("agent-half-close")), half_close=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"connection: close" in head.lower()  # the server ends the connection after answering
    import json

    token = json.loads(body)["access_token"]
    assert decode_issued(broker, token)[1]["sub"] == "wl:agent-half-close"


def test_half_closed_request_refusal_is_answered(broker: BrokerServer) -> None:
    answer = _raw_exchange(broker, b"grant_type=client_credentials", half_close=True)
    assert answer.startswith(b"HTTP/1.1 400") and b"unsupported_grant_type" in answer


def test_half_close_before_the_body_is_complete_is_audited_not_answered(broker: BrokerServer) -> None:
    import socket

    request_id = "half-body-" + str(time.time_ns())
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as sock:
        sock.sendall(b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"X-Request-Id: " + request_id.encode() + b"\r\nContent-Length: 100\r\n\r\ngrant_type=x")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""  # closed without an answer: the request never arrived whole
    deadline = time.monotonic() + 5
    while True:
        with broker.broker.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT outcome, reason FROM audit_events WHERE request_id = :r"), {"r": request_id}).all()
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [tuple(r) for r in rows] == [("denied", "client_disconnected")]


def test_keep_alive_connection_serves_several_exchanges(broker: BrokerServer, mint: Mint) -> None:
    with broker.client() as c:
        for i in range(3):
            resp = c.post("/token", content=_form(mint(f"agent-ka-{i}")), headers={"content-type": "application/x-www-form-urlencoded"})
            assert resp.status_code == 200, resp.text
            assert resp.headers.get("connection", "keep-alive").lower() != "close"


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        pytest.param(b"application/x-www-form-urlencoded; charset=UTF-8", 200, id="with-charset"),
        pytest.param(b"Application/X-WWW-Form-Urlencoded", 200, id="case-insensitive"),
        pytest.param(b"text/plain", 400, id="other-type"),
    ],
)
def test_content_type_forms(broker: BrokerServer, mint: Mint, content_type: bytes, status: int) -> None:
    with broker.client() as c:
        resp = c.post("/token", content=_form(mint()), headers={"content-type": content_type.decode()})
    assert resp.status_code == status, resp.text


def test_request_id_is_echoed_when_safe_and_replaced_when_not(broker: BrokerServer, mint: Mint) -> None:
    with broker.client() as c:
        ok = c.post("/token", data={"grant_type": "x"}, headers={"x-request-id": "trace-123"})
        bad = c.post("/token", data={"grant_type": "x"}, headers={"x-request-id": "bad id with spaces"})
    assert ok.headers["x-request-id"] == "trace-123"
    assert bad.headers["x-request-id"] != "bad id with spaces" and len(bad.headers["x-request-id"]) == 32


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405(broker: BrokerServer, method: str) -> None:
    with broker.client() as c:
        resp = c.request(method, "/token")
    assert_error(resp, 405, "invalid_request")
    assert resp.headers["allow"] == "POST"
