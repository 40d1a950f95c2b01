"""Kill switches and operator revocation through the command line, against a running broker
over real HTTP (SQLite and PostgreSQL): the refusal, its audit reason, the lift, and lineage
revocation of tokens re-exchanged through the broker itself."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from broker_harness import BrokerServer, free_port
from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE, base_config
from sts import jose
from sts.cli.main import main
from sts.lifecycle.decision import KILLED_TEXT
from sts.store.db import make_engine

DOWNSTREAM = "https://downstream.example.com"
VECTOR = "https://vector.example.com"
# The broker's default poll (1 s) plus a margin for a busy test machine; a replica that never
# follows fails.
FOLLOW = 10.0


def self_exchange_config(port: int, issuer: LocalIssuer, replay_issuer: LocalIssuer) -> dict[str, Any]:
    """The integration configuration plus the broker trusting its own tokens for a second hop
    (an agent passing its token on to a tool), which is what gives tokens a lineage."""
    config = copy.deepcopy(base_config(port, issuer, replay_issuer, dead_port=free_port()))
    config["issuers"].append({"name": "self", "issuer": f"http://127.0.0.1:{port}", "audiences": ["https://vector.example.com"],
                              "keys": {"jwks_uri": f"http://127.0.0.1:{port}/jwks"}, "allow_insecure_http": True,
                              "claim_mappings": {"identity": "claims.sub"}})
    config["grants"].append({"name": "second-hop", "issuers": ["self"], "match": {"identity_pattern": "^wl:agent-[a-z0-9-]+$"},
                             "targets": [{"audience": DOWNSTREAM, "scopes": ["read"], "default_scopes": ["read"]}],
                             "default_target": DOWNSTREAM, "lifetime": 300})
    return config


@pytest.fixture(scope="module")
def live(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    server = BrokerServer(self_exchange_config(port, issuer, replay_issuer), workdir=tmp_path_factory.mktemp("lifecycle"),
                          database_url=database_url, port=port, settings={"audit_coalesce_window": 0}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def sts(live: BrokerServer, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("STS_DATABASE_URL", live.database_url)
    monkeypatch.setenv("STS_CONFIG", str(live.config_path))
    monkeypatch.setenv("STS_DEV_MODE", "true")

    def run(*args: str, code: int = 0) -> Any:
        result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return json.loads(result.output) if result.output.strip().startswith(("{", "[")) else result.output

    return run


def wait_for(predicate: Callable[[], bool], timeout: float = FOLLOW) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def audit_reason(server: BrokerServer, identity: str) -> str | None:
    engine = make_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT reason FROM audit_events WHERE identity = :i ORDER BY id DESC LIMIT 1"),
                                {"i": identity}).scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize(("kind", "value_of"), [
    pytest.param("identity", lambda sub: f"wl:{sub}", id="identity"),
    pytest.param("grant", lambda sub: "agents", id="grant"),
    pytest.param("issuer", lambda sub: "local", id="issuer"),
    pytest.param("client", lambda sub: "post-client", id="client"),
])
def test_kill_refuses_at_once_and_lift_restores(live: BrokerServer, sts: Callable[..., Any], issuer: LocalIssuer,
                                                kind: str, value_of: Callable[[str], str]) -> None:
    sub = f"agent-kill-{kind}"
    subject = issuer.mint({"sub": sub, "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=600)
    from integration_config import CLIENT_SECRET

    creds = {"client_id": "post-client", "client_secret": CLIENT_SECRET}
    assert live.exchange(subject, **creds).status_code == 200
    killed = sts("kill", kind, value_of(sub), "--reason", "incident 42", "--actor", "alice")
    assert killed["kill"]["actor"] == "alice" and killed["kill"]["reason"] == "incident 42"

    def refused() -> bool:
        r = live.exchange(subject, **creds)
        return r.status_code == 400 and r.json()["error"] == "invalid_request"

    assert wait_for(refused)
    body = live.exchange(subject, **creds).json()
    assert body["error_description"] == KILLED_TEXT  # fixed text: neither the kind nor the reason
    assert audit_reason(live, f"wl:{sub}") == f"killed_{kind}"
    assert [k["value"] for k in sts("kill", "list")] == [value_of(sub)]

    lifted = sts("kill", "lift", kind, value_of(sub), "--reason", "fixed", "--actor", "bob")
    assert lifted[0]["lifted_by"] == "bob"
    assert wait_for(lambda: live.exchange(subject, **creds).status_code == 200)
    sts("kill", "lift", kind, value_of(sub), code=1)  # nothing left to lift
    history = sts("kill", "list", "--all")
    assert any(k["value"] == value_of(sub) and k["lift_reason"] == "fixed" for k in history)


def test_kill_with_revoke_and_lineage_revocation(live: BrokerServer, sts: Callable[..., Any], issuer: LocalIssuer) -> None:
    subject = issuer.mint({"sub": "agent-lineage", "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=600)
    first = live.exchange(subject)
    assert first.status_code == 200, first.text
    hop1 = first.json()["access_token"]
    second = live.exchange(hop1)
    assert second.status_code == 200, second.text  # the broker's own token, re-exchanged
    hop2 = second.json()["access_token"]
    jti1, jti2 = (jose.unsafe_decode(t).claims["jti"] for t in (hop1, hop2))

    dry = sts("revoke", "--lineage", jti1, "--dry-run")
    assert {t["jti"] for t in dry["tokens"]} == {jti1, jti2} and dry["revoked"] == 0
    again = live.exchange(hop1)  # a dry run changes nothing
    assert again.status_code == 200

    done = sts("revoke", "--lineage", jti1, "--reason", "leaked", "--actor", "alice")
    # hop1, hop2 and the token just obtained from hop1 again.
    assert {t["jti"] for t in done["tokens"]} == {jti1, jti2, jose.unsafe_decode(again.json()["access_token"]).claims["jti"]}
    assert done["revoked"] == 3

    def hop1_refused() -> bool:
        r = live.exchange(hop1)
        return r.status_code == 400 and r.json()["error"] == "invalid_request"

    assert wait_for(hop1_refused)
    assert audit_reason(live, "wl:agent-lineage") == "subject_revoked"
    # The original subject token was not the broker's: it still exchanges.
    assert live.exchange(subject).status_code == 200

    # kill --revoke: the identity is stopped and what it holds is revoked.
    fresh = live.exchange(subject).json()["access_token"]
    result = sts("kill", "identity", "wl:agent-lineage", "--revoke", "--reason", "compromised")
    assert result["revocation"]["revoked"] >= 2
    assert sts("revoke", "--jti", jose.unsafe_decode(fresh).claims["jti"], "--dry-run")["matched"] == 0  # already revoked
    sts("kill", "lift", "identity", "wl:agent-lineage")


def test_revoke_needs_exactly_one_selector(sts: Callable[..., Any]) -> None:
    result = CliRunner().invoke(main, ["revoke", "--identity", "a", "--client", "b"])
    assert result.exit_code == 2 and "exactly one" in result.output


def test_a_killed_request_does_not_spend_a_one_time_token(live: BrokerServer, sts: Callable[..., Any],
                                                          replay_issuer: LocalIssuer) -> None:
    # The kill is checked before the one-time jti is claimed: once lifted, the same token works.
    once = replay_issuer.mint({"sub": "w-killed", "aud": BROKER_AUDIENCE}, alg="ES256")
    sts("kill", "grant", "replayed", "--reason", "one-time test")
    try:
        # Probe with throwaway tokens until the kill is in force, then send the one that matters.
        assert wait_for(lambda: live.exchange(replay_issuer.mint({"sub": "w-probe", "aud": BROKER_AUDIENCE}, alg="ES256"),
                                              audience=VECTOR).status_code == 400)
        assert live.exchange(once, audience=VECTOR).status_code == 400
        assert audit_reason(live, "replay-guarded:w-killed") == "killed_grant"
    finally:
        sts("kill", "lift", "grant", "replayed")
    assert wait_for(lambda: live.exchange(once, audience=VECTOR).status_code == 200)
    assert live.exchange(once, audience=VECTOR).json()["error"] == "invalid_request"  # now it is spent


@pytest.mark.parametrize("selector", ["jti", "identity", "issuer", "grant", "subject-sha256", "client"])
def test_each_revocation_kind_refuses_the_revoked_token_over_http(live: BrokerServer, sts: Callable[..., Any],
                                                                  issuer: LocalIssuer, selector: str) -> None:
    """Revoked through each operator selector, a token issued before is refused as a subject
    token, while a token of another workload issued at the same time still works."""
    import hashlib

    from integration_config import CLIENT_SECRET

    sub, other_sub = f"agent-rv-{selector}", f"agent-keep-{selector}"
    subject = issuer.mint({"sub": sub, "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=600)
    auth = {"client_id": "post-client", "client_secret": CLIENT_SECRET} if selector == "client" else {}
    issued = live.exchange(subject, **auth)
    assert issued.status_code == 200, issued.text
    token = issued.json()["access_token"]
    kept = live.exchange(issuer.mint({"sub": other_sub, "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=600)).json()["access_token"]
    value = {
        "jti": jose.unsafe_decode(token).claims["jti"],
        "identity": f"wl:{sub}",
        "issuer": "local",
        "grant": "agents",
        "subject-sha256": hashlib.sha256(subject.encode()).hexdigest(),
        "client": "post-client",
    }[selector]
    result = sts("revoke", f"--{selector}", value, "--reason", f"test {selector}")
    assert jose.unsafe_decode(token).claims["jti"] in {t["jti"] for t in result["tokens"]}

    def refused() -> bool:
        r = live.exchange(token)
        return r.status_code == 400 and r.json()["error"] == "invalid_request"

    assert wait_for(refused), selector
    if selector in ("jti", "identity", "subject-sha256", "client"):  # narrow selectors leave the other workload alone
        assert live.exchange(kept).status_code == 200
