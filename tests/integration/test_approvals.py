"""Just-in-time approval end to end over real HTTP (SQLite and PostgreSQL): a request for a
scope that needs approval is refused with ``approval_required`` and an approval request id;
`sts approvals approve ID --for 1h` lets exactly that request through, nothing wider or
different; revocation and denial take effect; the audit records name the approval."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from broker_harness import BrokerServer, decode_issued, free_port
from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE, CLIENT_SECRET, base_config
from sts.cli.main import main
from sts.store.db import make_engine

DB = "https://db.example.com"
FOLLOW = 10.0  # the 2 s bound plus room for a busy machine
CREDS = {"client_id": "post-client", "client_secret": CLIENT_SECRET}


def approval_config(port: int, issuer: LocalIssuer, replay_issuer: LocalIssuer) -> dict[str, Any]:
    config = copy.deepcopy(base_config(port, issuer, replay_issuer, dead_port=free_port()))
    config["grants"].insert(0, {
        "name": "dba", "issuers": ["local"], "match": {"identity_pattern": "^wl:agent-[a-z0-9-]+$"},
        "targets": [{"audience": DB, "scopes": ["read", "admin", "delete"], "default_scopes": ["read"],
                     "approval": {"scopes": ["admin", "delete"], "max_window": 7200, "request_ttl": 600}}],
        "lifetime": 600,
    })
    return config


@pytest.fixture(scope="module")
def live(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    server = BrokerServer(approval_config(port, issuer, replay_issuer), workdir=tmp_path_factory.mktemp("approvals"),
                          database_url=database_url, port=port,
                          settings={"audit_coalesce_window": 0, "approval_max_pending": 4}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def sts(live: BrokerServer, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("STS_DATABASE_URL", live.database_url)
    monkeypatch.setenv("STS_CONFIG", str(live.config_path))
    monkeypatch.setenv("STS_DEV_MODE", "true")

    def run(*args: str, code: int = 0, as_json: bool = True) -> Any:
        result = CliRunner().invoke(main, [*args, *(["--json"] if as_json else [])], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return json.loads(result.output) if as_json and code == 0 else result.output

    return run


def wait_for(predicate: Callable[[], bool], timeout: float = FOLLOW) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def audit(server: BrokerServer, request_id: str) -> dict[str, Any]:
    engine = make_engine(server.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT outcome, error, reason, identity, context FROM audit_events"
                                       " WHERE request_id = :r"), {"r": request_id}).one()
    finally:
        engine.dispose()
    return {**row._mapping, "context": json.loads(row.context) if row.context else None}


def ask(live: BrokerServer, subject: str, scope: str, **extra: str) -> httpx.Response:
    return live.exchange(subject, audience=DB, scope=scope, **{**CREDS, **extra})


def approval_id(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "approval_required", body
    found = response.headers.get("x-approval-request")
    assert found, body
    assert body["error_description"].endswith(f"Approval request: {found}.")
    return found


def test_approve_then_exactly_that_request_is_issued(live: BrokerServer, sts: Callable[..., Any], issuer: LocalIssuer) -> None:
    subject = issuer.mint({"sub": "agent-jit", "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=1200)
    # Scopes that need no approval pass untouched.
    assert ask(live, subject, "read").status_code == 200

    refused = ask(live, subject, "read admin")
    first = approval_id(refused)
    record = audit(live, refused.headers["x-request-id"])
    assert (record["outcome"], record["error"], record["reason"]) == ("denied", "approval_required", "approval_requested")
    assert record["context"]["approval"]["id"] == first and record["context"]["approval"]["elevated"] == ["admin"]
    # Asking again while pending gives the same id (scope order does not matter) and records nothing new.
    again = ask(live, subject, "admin read")
    assert approval_id(again) == first
    assert audit(live, again.headers["x-request-id"])["reason"] in ("approval_pending", "approval_requested")

    listed = sts("approvals", "list")
    mine = [r for r in listed if r["id"] == first]
    assert mine and mine[0]["state"] == "pending" and mine[0]["identity"] == "wl:agent-jit"
    assert mine[0]["request"] == {"target": DB, "scopes": ["admin", "read"]} and mine[0]["client_id"] == "post-client"
    human = sts("approvals", "show", first, as_json=False)
    assert f"approval request {first}: pending" in human and "wl:agent-jit" in human

    approved = sts("approvals", "approve", first, "--for", "1h", "--reason", "change 42", "--actor", "alice")
    assert approved["status"] == "approved" and approved["decided_by"] == "alice"
    assert 3590 < approved["expires_at"] - time.time() <= 3600

    assert wait_for(lambda: ask(live, subject, "read admin").status_code == 200)
    issued = ask(live, subject, "admin read")
    assert issued.status_code == 200
    _, claims = decode_issued(live, issued.json()["access_token"])
    assert sorted(claims["scope"].split()) == ["admin", "read"] and claims["aud"] == DB
    record = audit(live, issued.headers["x-request-id"])
    assert record["outcome"] == "issued" and record["context"]["approval"]["id"] == first
    assert record["context"]["approval"]["status"] == "approved"

    # Anything else is another request: wider, narrower, or through another client.
    wider = approval_id(ask(live, subject, "read admin delete"))
    narrower = approval_id(ask(live, subject, "admin"))
    public = approval_id(live.exchange(subject, audience=DB, scope="read admin"))
    assert len({first, wider, narrower, public}) == 4

    # A revocation ends it on every path: the same request waits for a new approval.
    revoked = sts("approvals", "revoke", first, "--revoke-tokens", "--reason", "done", "--actor", "carol")
    assert (revoked["status"], revoked["revoked_by"], revoked["revoke_reason"]) == ("revoked", "carol", "done")
    # The tokens issued under it are revoked too (and only those: not the `read` token).
    assert claims["jti"] in revoked["revoked_tokens"]["jtis"]
    assert revoked["revoked_tokens"]["revoked"] == len(revoked["revoked_tokens"]["jtis"])
    engine = make_engine(live.database_url)
    try:
        with engine.connect() as conn:
            revoked_at = dict(conn.execute(sa.text("SELECT scopes, revoked_at FROM issued_tokens WHERE identity = :i"),
                                           {"i": "wl:agent-jit"}).all())
    finally:
        engine.dispose()
    assert revoked_at["read"] is None and revoked_at["read admin"] is not None
    assert wait_for(lambda: ask(live, subject, "read admin").status_code == 400)
    renewed = approval_id(ask(live, subject, "read admin"))
    assert renewed != first
    history = {r["id"]: r["state"] for r in sts("approvals", "list", "--all", "--identity", "wl:agent-jit")}
    assert history[first] == "revoked" and history[renewed] == "pending"


def test_denied_request_is_answered_access_denied(live: BrokerServer, sts: Callable[..., Any], issuer: LocalIssuer) -> None:
    subject = issuer.mint({"sub": "agent-deny", "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=1200)
    wanted = approval_id(ask(live, subject, "delete"))
    denied = sts("approvals", "deny", wanted, "--reason", "not today", "--actor", "bob")
    assert (denied["status"], denied["decided_by"], denied["decision_reason"]) == ("denied", "bob", "not today")

    def answered_denied() -> bool:
        r = ask(live, subject, "delete")
        return r.status_code == 400 and r.json()["error"] == "access_denied"

    assert wait_for(answered_denied)
    response = ask(live, subject, "delete")
    assert response.headers["x-approval-request"] == wanted
    assert audit(live, response.headers["x-request-id"])["reason"] == "approval_denied"
    sts("approvals", "approve", wanted, code=2)  # a denied request cannot be approved afterwards


def test_pending_requests_per_identity_are_bounded(live: BrokerServer, issuer: LocalIssuer) -> None:
    subject = issuer.mint({"sub": "agent-flood", "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=1200)
    ids = {approval_id(ask(live, subject, scope)) for scope in ("admin", "delete", "admin delete", "read admin")}
    assert len(ids) == 4
    flood = ask(live, subject, "read delete")
    assert flood.status_code == 400 and flood.json()["error"] == "approval_required"
    assert "x-approval-request" not in flood.headers
    assert audit(live, flood.headers["x-request-id"])["reason"] == "approval_pending_limit"
    assert approval_id(ask(live, subject, "admin")) in ids  # known requests are still answered


def test_cli_user_errors_are_one_line(live: BrokerServer, sts: Callable[..., Any], issuer: LocalIssuer) -> None:
    subject = issuer.mint({"sub": "agent-cli", "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=1200)
    wanted = approval_id(ask(live, subject, "admin"))
    for args, needle in ((("approve", "apr_unknown"), "no approval request"),
                         (("approve", wanted, "--for", "3d"), "longer than this target allows"),
                         (("approve", wanted, "--for", "soon"), "not a duration"),
                         (("revoke", wanted), "pending, not approved"),
                         (("show", "apr_unknown"), "no approval request")):
        output = sts("approvals", *args, code=2, as_json=False)
        assert output.startswith("sts: ") and needle in output and "Traceback" not in output
    approved = sts("approvals", "approve", wanted)  # default window: 1 h (within max_window)
    assert 3590 < approved["expires_at"] - time.time() <= 3600



def test_a_token_never_outlives_its_approval(live: BrokerServer, sts: Callable[..., Any], issuer: LocalIssuer) -> None:
    subject = issuer.mint({"sub": "agent-short", "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=1200)
    wanted = approval_id(ask(live, subject, "admin"))
    approved = sts("approvals", "approve", wanted, "--for", "30s")
    assert wait_for(lambda: ask(live, subject, "admin").status_code == 200)
    issued = ask(live, subject, "admin").json()
    # The grant says 600 s; the approval ends in at most 30 s, and so does the token.
    assert 0 < issued["expires_in"] <= 30
    _, claims = decode_issued(live, issued["access_token"])
    assert claims["exp"] <= approved["expires_at"] + 1
