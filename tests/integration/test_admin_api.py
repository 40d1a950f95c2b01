"""The admin API over real HTTP: its own listener, bearer-token authentication, audited
refusals with fixed text, and each resource's shape (docs/admin-api.md)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from admin_support import ADMIN_PREFIX, admin_broker, assert_no_store_json, audit_rows, write_token
from broker_harness import BrokerServer, free_port
from integration_config import BROKER_AUDIENCE, base_config
from sqlalchemy.exc import OperationalError

from conformance.issuer import LocalIssuer

PRIVATE_MARKERS = ("private_key", "PRIVATE KEY", '"d":', "ciphertext")


class Admin:
    def __init__(self, server: BrokerServer, url: str, token: str, workdir: Path) -> None:
        self.server, self.url, self.token, self.workdir = server, url, token, workdir

    def get(self, path: str, *, token: str | None = "default", request_id: str | None = None, **kw: Any) -> httpx.Response:
        return self.call("GET", path, token=token, request_id=request_id, **kw)

    def call(self, method: str, path: str, *, token: str | None = "default", request_id: str | None = None,
             headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        if request_id is not None:
            h["X-Request-Id"] = request_id
        with httpx.Client(base_url=self.url, timeout=30) as c:
            return c.request(method, path, headers=h, **kw)


@pytest.fixture(scope="module")
def admin(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("admin")
    server, url, token = admin_broker(base_config(port, issuer, replay_issuer, dead_port=free_port()), workdir=workdir,
                                      database_url=database_url, port=port)
    try:
        yield Admin(server, url, token, workdir)
    finally:
        server.stop()


@pytest.fixture()
def mint(issuer: LocalIssuer) -> Callable[..., str]:
    def _mint(sub: str = "agent-1", **claims: Any) -> str:
        return issuer.mint({"sub": sub, "aud": BROKER_AUDIENCE, **claims}, alg="RS256", lifetime=600)

    return _mint


def _rid() -> str:
    return f"admin-test-{uuid.uuid4().hex[:12]}"


def _refusal(admin: Admin, response: httpx.Response, rid: str, status: int, error: str, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert_no_store_json(response)
    assert response.json()["error"] == error
    assert set(response.json()) == {"error", "error_description"}
    assert response.headers["x-request-id"] == rid
    rows = audit_rows(admin.server.database_url, rid)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["outcome"] == "denied" and row["error"] == error and row["reason"] == reason
    assert "endpoint:admin" in row["mode_notes"]
    return row


# --- off by default; never on the token port ------------------------------------------------------
def test_off_by_default(broker: BrokerServer) -> None:
    assert broker.settings.admin_listen is None
    assert broker.broker.admin is None


@pytest.mark.parametrize("path", ["/keys", "/issuers", "/openapi.json", "/explain/some-request"])
def test_the_token_port_never_answers_admin_paths(admin: Admin, path: str) -> None:
    with admin.server.client() as c:
        response = c.get(ADMIN_PREFIX + path, headers={"Authorization": f"Bearer {admin.token}"})
    assert response.status_code == 404
    assert "kid" not in response.text and "served_by" not in response.text


# --- authentication -----------------------------------------------------------------------------------
def test_no_credentials_is_401_and_audited(admin: Admin) -> None:
    rid = _rid()
    response = admin.get(ADMIN_PREFIX + "/keys", token=None, request_id=rid)
    row = _refusal(admin, response, rid, 401, "unauthorized", "admin_credentials_missing")
    assert response.headers["www-authenticate"] == 'Bearer realm="sts-admin"'
    assert row["context"]["admin"] == {"method": "GET", "path": "/admin/v1/keys", "principal": None}


@pytest.mark.parametrize(("authorization", "reason"), [
    ("Bearer wrong-token-0123456789abcdef0123456789", "admin_token_invalid"),
    ("Basic YWRtaW46YWRtaW4=", "admin_authorization_not_bearer"),
    ("Bearer", "admin_authorization_not_bearer"),
], ids=["wrong-token", "basic", "empty-bearer"])
def test_bad_credentials_are_401_and_audited(admin: Admin, authorization: str, reason: str) -> None:
    rid = _rid()
    response = admin.get(ADMIN_PREFIX + "/keys", token=None, request_id=rid, headers={"Authorization": authorization})
    row = _refusal(admin, response, rid, 401, "unauthorized", reason)
    assert response.headers["www-authenticate"] == 'Bearer realm="sts-admin", error="invalid_token"'
    # The presented credential is nowhere in the record.
    assert authorization.split(" ", 1)[-1] not in str(row)


def test_a_token_differing_only_at_the_end_is_refused(admin: Admin) -> None:
    near = admin.token[:-1] + ("A" if admin.token[-1] != "A" else "B")
    assert admin.get(ADMIN_PREFIX + "/keys", token=near).status_code == 401
    assert admin.get(ADMIN_PREFIX + "/keys", token=admin.token + "x").status_code == 401
    assert admin.get(ADMIN_PREFIX + "/keys", headers={"Authorization": f"bearer {admin.token}"}, token=None).status_code == 200


def test_unknown_paths_are_401_before_authentication(admin: Admin) -> None:
    # Without credentials nothing tells which paths exist.
    rid = _rid()
    _refusal(admin, admin.get("/admin/v1/nothing-here", token=None, request_id=rid), rid, 401, "unauthorized",
             "admin_credentials_missing")


def test_unknown_path_is_404_and_audited(admin: Admin) -> None:
    rid = _rid()
    row = _refusal(admin, admin.get("/admin/v1/secrets?x=1", request_id=rid), rid, 404, "not_found", "admin_unknown_path")
    assert row["context"]["admin"]["principal"] == "bearer token"
    assert row["detail"] == "GET /admin/v1/secrets"  # the query string is never recorded


def test_wrong_method_is_405_and_audited(admin: Admin) -> None:
    rid = _rid()
    response = admin.call("DELETE", ADMIN_PREFIX + "/keys", request_id=rid)
    _refusal(admin, response, rid, 405, "method_not_allowed", "admin_method_not_allowed")
    assert response.headers["allow"] == "GET"
    rid = _rid()
    response = admin.get(ADMIN_PREFIX + "/explain", request_id=rid)
    _refusal(admin, response, rid, 405, "method_not_allowed", "admin_method_not_allowed")
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(("query", "reason"), [
    ("limit=0", "admin_parameter_invalid"),
    ("limit=51", "admin_parameter_invalid"),
    ("limit=abc", "admin_parameter_invalid"),
    ("limit=1&limit=2", "admin_parameter_repeated"),
    ("access_token=eyJhbGciOiJub25lIn0.e30.", "admin_parameter_unknown"),
    ("limit=" + "1" * 5000, "admin_query_too_long"),
], ids=["zero", "too-many", "not-a-number", "repeated", "unknown", "too-long"])
def test_bounded_query_parameters(admin: Admin, query: str, reason: str) -> None:
    rid = _rid()
    response = admin.get(f"{ADMIN_PREFIX}/explain/{rid}?{query}", request_id=rid)
    row = _refusal(admin, response, rid, 400, "invalid_request", reason)
    assert "eyJ" not in response.text and "eyJ" not in str(row)


def test_token_file_is_read_again_when_it_changes(admin: Admin) -> None:
    old = admin.token
    new = write_token(admin.workdir / "admin-token")
    try:
        admin.token = new
        assert admin.get(ADMIN_PREFIX + "/keys").status_code == 200
        assert admin.get(ADMIN_PREFIX + "/keys", token=old).status_code == 401
        # A broken file authenticates nobody (fail closed), not the last good token.
        (admin.workdir / "admin-token").write_text("short\n")
        rid = _rid()
        _refusal(admin, admin.get(ADMIN_PREFIX + "/keys", request_id=rid), rid, 401, "unauthorized", "admin_token_file_unusable")
    finally:
        (admin.workdir / "admin-token").write_text(new + "\n")
    assert admin.get(ADMIN_PREFIX + "/keys").status_code == 200


# --- resources ----------------------------------------------------------------------------------------
def test_openapi_document_is_served(admin: Admin) -> None:
    response = admin.get(ADMIN_PREFIX + "/openapi.json")
    assert response.status_code == 200
    assert_no_store_json(response)
    document = response.json()
    assert document["openapi"].startswith("3.")
    served = admin.get(ADMIN_PREFIX + "/openapi.yaml")
    assert served.headers["content-type"] == "application/yaml"
    assert served.headers["cache-control"] == "no-store"
    assert yaml.safe_load(served.text) == document
    # Every path the app routes is documented, and nothing else.
    from sts.admin.endpoints import routes

    assert set(document["paths"]) == {r.template for r in routes()}
    for route in routes():
        assert {m.lower() for m in route.operations} == set(document["paths"][route.template])


def test_signing_key_schedule(admin: Admin) -> None:
    response = admin.get(ADMIN_PREFIX + "/keys")
    assert response.status_code == 200, response.text
    assert_no_store_json(response)
    body = response.json()
    assert body["served_by"]["pid"] > 0
    assert body["key_lifetime"] == admin.server.settings.signing_key_lifetime
    with admin.server.client() as c:
        published = {k["kid"] for k in c.get("/jwks").json()["keys"]}
    es256 = next(a for a in body["algorithms"] if a["alg"] == "ES256")
    assert es256["signing_kid"] in published and es256["fallback"] is False and es256["degraded"] is None
    active = next(k for k in body["keys"] if k["kid"] == es256["signing_kid"])
    assert active["state"] == "active" and active["published"] is True
    assert es256["rotation_due_at"] == pytest.approx(active["not_after"] - body["key_lifetime"] / 4)
    assert es256["next_kids"] and all(k["kid"] in published for k in body["keys"] if k["kid"] in es256["next_kids"])
    assert {k["state"] for k in body["keys"]} >= {"active", "next"}
    assert set(body["keys"][0]) == {"kid", "alg", "state", "created_at", "activated_at", "retired_at", "not_after",
                                    "publish_until", "published", "kek_id"}
    for marker in PRIVATE_MARKERS:
        assert marker not in response.text


def test_issuer_key_status(admin: Admin, mint: Callable[..., str]) -> None:
    assert admin.server.exchange(mint()).status_code == 200  # the local issuer's keys are in use
    deadline = time.monotonic() + 10
    while True:
        response = admin.get(ADMIN_PREFIX + "/issuers")
        assert response.status_code == 200, response.text
        issuers = {i["name"]: i for i in response.json()["issuers"]}
        if issuers["dead"].get("last_error") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert_no_store_json(response)
    local = issuers["local"]
    assert local["registered"] and local["keys"] >= 1 and local["last_success"] and not local["stale"]
    assert local["source"].startswith("discovery http://127.0.0.1:")
    assert {k["kty"] for k in local["kids"]} >= {"RSA"} and all(k["kid"] for k in local["kids"])
    dead = issuers["dead"]
    assert dead["keys"] == 0 and dead["last_error"] and dead["last_error_at"] and dead["last_success"] is None
    assert sum(dead["fetch_failures"].values()) >= 1
    assert set(issuers) == {"local", "replay-guarded", "dead"}
    assert response.json()["trust_domains"] == []


def test_explain_a_past_request(admin: Admin, mint: Callable[..., str]) -> None:
    rid = _rid()
    with admin.server.client() as c:
        issued = c.post("/token", headers={"X-Request-Id": rid}, data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": mint(),
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"})
    assert issued.status_code == 200
    response = admin.get(f"{ADMIN_PREFIX}/explain/{rid}")
    assert response.status_code == 200, response.text
    assert_no_store_json(response)
    body = response.json()
    assert body["request_id"] == rid
    [record] = body["records"]
    assert record["outcome"] == "issued" and record["grant"] == "agents" and record["identity"] == "wl:agent-1"
    assert issued.json()["access_token"] not in response.text
    missing = _rid()
    _refusal(admin, admin.get(f"{ADMIN_PREFIX}/explain/{missing}-none", request_id=missing), missing, 404, "not_found",
             "admin_request_id_unknown")


def test_explain_a_posted_token(admin: Admin, mint: Callable[..., str]) -> None:
    token = mint()
    response = admin.call("POST", ADMIN_PREFIX + "/explain", json={"subject_token": token, "scope": "read"})
    assert response.status_code == 200, response.text
    assert_no_store_json(response)
    report = response.json()
    assert report["outcome"] == "would_issue"
    assert report["decision"]["grant"] == "agents"
    assert report["token"]["claims"]["sub"] == "wl:agent-1"
    # Neither the posted token nor any signed token is in the answer.
    assert token not in response.text and "eyJ" not in response.text
    assert report["config"]["version"] == admin.server.broker.runtime().version

    refused = admin.call("POST", ADMIN_PREFIX + "/explain", json={"subject_token": mint("stranger"),
                                                                  "audience": ["https://vector.example.com"]})
    assert refused.status_code == 200
    assert refused.json()["outcome"] == "would_refuse"
    assert refused.json()["refusal"]["answer"]["error"] == "invalid_request"


def test_explain_writes_nothing_and_spends_no_jti(admin: Admin, replay_issuer: LocalIssuer) -> None:
    token = replay_issuer.mint({"sub": "svc", "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=600)
    api = "https://vector.example.com"
    for _ in range(2):
        report = admin.call("POST", ADMIN_PREFIX + "/explain", json={"subject_token": token, "audience": api}).json()
        assert report["outcome"] == "would_issue", report
        assert [j["spent"] for j in report["one_time_jti"]] == [False]
    assert admin.server.exchange(token, audience=api).status_code == 200  # the jti was still unspent


@pytest.mark.parametrize(("body", "headers", "status", "reason"), [
    (b'{"subject_token": "x"', {"content-type": "application/json"}, 400, "admin_body_malformed"),
    (b'["x"]', {"content-type": "application/json"}, 400, "admin_body_malformed"),
    (b'{"audience": "a"}', {"content-type": "application/json"}, 400, "admin_body_invalid"),
    (b'{"subject_token": "x", "password": "y"}', {"content-type": "application/json"}, 400, "admin_body_invalid"),
    (b'{"subject_token": 7}', {"content-type": "application/json"}, 400, "admin_body_invalid"),
    (b"subject_token=x", {"content-type": "application/x-www-form-urlencoded"}, 415, "admin_bad_content_type"),
    (b'{"subject_token": "' + b"a" * 300_000 + b'"}', {"content-type": "application/json"}, 413, "admin_body_too_large"),
], ids=["truncated", "not-an-object", "no-token", "unknown-member", "not-a-string", "form", "too-large"])
def test_explain_refuses_bad_bodies(admin: Admin, body: bytes, headers: dict[str, str], status: int, reason: str) -> None:
    rid = _rid()
    response = admin.call("POST", ADMIN_PREFIX + "/explain", request_id=rid, content=body, headers=headers)
    error = {400: "invalid_request", 413: "request_too_large", 415: "unsupported_media_type"}[status]
    _refusal(admin, response, rid, status, error, reason)


# --- configuration versions -------------------------------------------------------------------------
def test_configuration_versions(admin: Admin) -> None:
    running = admin.server.broker.runtime().version
    response = admin.get(ADMIN_PREFIX + "/config/versions?limit=5")
    assert response.status_code == 200, response.text
    assert_no_store_json(response)
    body = response.json()
    assert body["running"] == running
    [current] = [v for v in body["versions"] if v["running"]]
    assert current["version"] == running and current["sha256"].startswith(running) and current["kind"] == "file"
    assert "document" not in current and len(body["versions"]) <= 5

    shown = admin.get(f"{ADMIN_PREFIX}/config/versions/{running}")
    assert shown.status_code == 200, shown.text
    assert_no_store_json(shown)
    stored = shown.json()
    assert stored["running"] is True and stored["sha256"] == current["sha256"]
    # The exact text that decided: the file the broker loaded, byte for byte.
    assert stored["files"] == {"sts.yaml": admin.server.config_path.read_text()}
    assert admin.get(f"{ADMIN_PREFIX}/config/versions/{current['sha256']}").json()["version"] == running


def test_unknown_or_malformed_configuration_version(admin: Admin) -> None:
    rid = _rid()
    _refusal(admin, admin.get(f"{ADMIN_PREFIX}/config/versions/ffff0000ffff", request_id=rid), rid, 404, "not_found",
             "admin_config_version_unknown")
    rid = _rid()
    _refusal(admin, admin.get(f"{ADMIN_PREFIX}/config/versions/not-hex", request_id=rid), rid, 400, "invalid_request",
             "admin_parameter_invalid")
    rid = _rid()
    _refusal(admin, admin.get(f"{ADMIN_PREFIX}/config/versions?limit=501", request_id=rid), rid, 400, "invalid_request",
             "admin_parameter_invalid")


def test_a_reloaded_configuration_is_a_new_running_version(admin: Admin) -> None:
    import asyncio

    config = yaml.safe_load(admin.server.config_path.read_text())
    old = admin.server.broker.runtime().version
    config["tokens"]["default_lifetime"] = 899
    admin.server.write_config(config)
    try:
        future = asyncio.run_coroutine_threadsafe(admin.server.broker.reload_config(), _loop_of(admin.server))
        assert future.result(timeout=20) is True
        body = admin.get(ADMIN_PREFIX + "/config/versions").json()
        new = admin.server.broker.runtime().version
        assert new != old and body["running"] == new
        assert body["versions"][0]["version"] == new and body["versions"][0]["latest"] is True
        assert any(v["version"] == old and not v["running"] for v in body["versions"])
        # Explain now decides with the reloaded configuration.
        assert admin.call("POST", ADMIN_PREFIX + "/explain", json={"subject_token": "x"}).json()["config"]["version"] == new
    finally:
        config["tokens"]["default_lifetime"] = 900
        admin.server.write_config(config)
        asyncio.run_coroutine_threadsafe(admin.server.broker.reload_config(), _loop_of(admin.server)).result(timeout=20)


def _loop_of(server: BrokerServer) -> Any:
    """The broker's event loop (uvicorn's), where its reload must run."""
    return server._server.servers[0].get_loop()


# --- audit queries and inventory ----------------------------------------------------------------------
def _exchange(admin: Admin, token: str, rid: str, **params: str) -> httpx.Response:
    with admin.server.client() as c:
        return c.post("/token", headers={"X-Request-Id": rid}, data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", **params})


def test_audit_query_is_sts_audit_list(admin: Admin, mint: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sts.cli.main import main

    who = f"agent-aq-{uuid.uuid4().hex[:6]}"
    issued_rid, denied_rid = _rid(), _rid()
    assert _exchange(admin, mint(who), issued_rid).status_code == 200
    assert _exchange(admin, mint(who), denied_rid, audience="https://nope.example.com").status_code == 400

    response = admin.get(f"{ADMIN_PREFIX}/audit?identity=wl:{who}&since=1h")
    assert response.status_code == 200, response.text
    assert_no_store_json(response)
    body = response.json()
    assert body["order"] == "newest_first" and body["last_id"] >= max(r["id"] for r in body["records"])
    assert [r["request_id"] for r in body["records"]] == [denied_rid, issued_rid]
    denied, issued = body["records"]
    assert issued["outcome"] == "issued" and issued["grant"] == "agents" and issued["time_utc"].endswith("Z")
    assert denied["outcome"] == "denied" and denied["reason"] == "target_not_allowed"

    # The same records, field for field, as `sts audit list --json` prints them.
    monkeypatch.setenv("STS_DATABASE_URL", admin.server.database_url)
    cli = CliRunner().invoke(main, ["audit", "list", "--identity", f"wl:{who}", "--json"], catch_exceptions=False)
    assert [json.loads(line) for line in cli.stdout.splitlines()] == body["records"][::-1]

    only = admin.get(f"{ADMIN_PREFIX}/audit?identity=wl:{who}&outcome=denied&reason=target_not_allowed").json()["records"]
    assert [r["request_id"] for r in only] == [denied_rid]
    assert admin.get(f"{ADMIN_PREFIX}/audit?request_id={issued_rid}&limit=1").json()["records"][0]["id"] == issued["id"]
    after = admin.get(f"{ADMIN_PREFIX}/audit?identity=wl:{who}&after_id={issued['id']}").json()
    assert after["order"] == "oldest_first" and [r["request_id"] for r in after["records"]] == [denied_rid]
    assert admin.get(f"{ADMIN_PREFIX}/audit?identity=wl:{who}&until=2000-01-01").json()["records"] == []
    for record in body["records"]:
        assert "eyJ" not in json.dumps(record)


@pytest.mark.parametrize(("query", "reason"), [
    ("since=yesterday", "admin_parameter_invalid"),
    ("since=1h&until=2h", "admin_parameter_invalid"),
    ("outcome=maybe", "admin_parameter_invalid"),
    ("limit=1001", "admin_parameter_invalid"),
    ("identity=", "admin_parameter_invalid"),
    ("client_id=x", "admin_parameter_unknown"),
], ids=["bad-time", "since-after-until", "outcome", "limit", "empty", "cli-spelling"])
def test_audit_query_bounds(admin: Admin, query: str, reason: str) -> None:
    rid = _rid()
    _refusal(admin, admin.get(f"{ADMIN_PREFIX}/audit?{query}", request_id=rid), rid, 400, "invalid_request", reason)


def test_inventory(admin: Admin, mint: Callable[..., str]) -> None:
    who = f"agent-inv-{uuid.uuid4().hex[:6]}"
    assert _exchange(admin, mint(who), _rid(), scope="read write").status_code == 200
    assert _exchange(admin, mint(who), _rid(), scope="admin").status_code == 400
    response = admin.get(f"{ADMIN_PREFIX}/inventory?identity=wl:{who}")
    assert response.status_code == 200, response.text
    assert_no_store_json(response)
    body = response.json()
    [entry] = body["identities"]
    assert body["total"] == 1 and body["truncated"] is False
    assert entry["identity"] == f"wl:{who}" and entry["issuer"] == "local" and entry["issued"] == 1 and entry["denied"] == 1
    assert entry["grants"] == ["agents"] and entry["denial_reasons"] == {"scope_not_allowed": 1}
    assert [(t["target"], t["scopes"]) for t in entry["targets"]] == [("https://vector.example.com", ["read", "write"])]
    everyone = admin.get(f"{ADMIN_PREFIX}/inventory?limit=1").json()
    assert everyone["total"] >= 1 and len(everyone["identities"]) == 1 and everyone["truncated"] is (everyone["total"] > 1)


def test_least_privilege_review(admin: Admin, mint: Callable[..., str]) -> None:
    assert admin.server.exchange(mint()).status_code == 200
    response = admin.get(f"{ADMIN_PREFIX}/inventory/unused?window=30d")
    assert response.status_code == 200, response.text
    assert_no_store_json(response)
    body = response.json()
    assert body["config_version"] == admin.server.broker.runtime().version
    assert body["until"] - body["since"] == pytest.approx(30 * 86400, abs=5)
    kinds = {(f["kind"], f["grant"]) for f in body["findings"]}
    assert ("grant", "gateway") in kinds  # nobody exchanged through it
    assert ("grant", "agents") not in kinds
    assert all(f["action"] for f in body["findings"])
    rid = _rid()
    _refusal(admin, admin.get(f"{ADMIN_PREFIX}/inventory/unused", request_id=rid), rid, 400, "invalid_request",
             "admin_parameter_missing")
    rid = _rid()
    _refusal(admin, admin.get(f"{ADMIN_PREFIX}/inventory/unused?window=forever", request_id=rid), rid, 400, "invalid_request",
             "admin_parameter_invalid")


def test_a_websocket_upgrade_is_an_ordinary_refused_request(admin: Admin) -> None:
    rid = _rid()
    response = admin.get(ADMIN_PREFIX + "/keys", token=None, request_id=rid, headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    _refusal(admin, response, rid, 401, "unauthorized", "admin_credentials_missing")


def test_explain_with_a_posted_key_set(admin: Admin, issuer: LocalIssuer, mint: Callable[..., str]) -> None:
    keys = httpx.get(issuer.jwks_uri, timeout=5).json()
    report = admin.call("POST", ADMIN_PREFIX + "/explain", json={"subject_token": mint(), "jwks": keys}).json()
    assert report["outcome"] == "would_issue" and report["keys"] == "the --jwks file"
    rid = _rid()
    response = admin.call("POST", ADMIN_PREFIX + "/explain", request_id=rid,
                          json={"subject_token": mint(), "jwks": {"keys": [{"kty": "EC", "crv": "P-256"}]}})
    _refusal(admin, response, rid, 400, "invalid_request", "admin_body_invalid")


@pytest.mark.parametrize(("failure", "status", "error", "reason"), [
    (lambda: OperationalError("SELECT", {}, Exception("down")), 503, "temporarily_unavailable", "database_unavailable"),
    (lambda: RuntimeError("a bug with a secret-looking detail"), 500, "server_error", "admin_internal_error"),
], ids=["database-down", "bug"])
def test_failures_are_fixed_text_and_audited(admin: Admin, monkeypatch: pytest.MonkeyPatch, failure: Callable[[], Exception],
                                             status: int, error: str, reason: str) -> None:
    def broken(self: Any) -> Any:
        raise failure()

    monkeypatch.setattr("sts.admin.endpoints.KeyRepository.list", broken)
    rid = _rid()
    response = admin.get(ADMIN_PREFIX + "/keys", request_id=rid)
    assert response.status_code == status
    assert_no_store_json(response)
    assert response.json()["error"] == error and "secret" not in response.text and "Traceback" not in response.text
    if status == 503:
        assert response.headers["retry-after"] == "5"
    [row] = audit_rows(admin.server.database_url, rid)
    assert row["outcome"] == "error" and row["reason"] == reason
