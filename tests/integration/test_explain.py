"""``sts explain`` against a real broker over HTTP: same verdict, no effects, and the refusal
audit records that ``sts explain --request-id`` reads.

The broker and ``sts explain`` are handed the same configuration file and the same requests;
explain fetches the issuer's keys as the broker does (OIDC discovery on loopback, dev mode).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from broker_harness import BrokerServer
from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE
from sts.cli.main import main
from sts.config.loader import load_config
from sts.explain.record import records_for_request
from sts.explain.run import ExplainInput, explain_exchange
from sts.store.db import make_engine
from sts.store.models import audit_events, replay_guard

VECTOR = "https://vector.example.com"


def _record(broker: BrokerServer, request_id: str) -> dict[str, Any]:
    engine = make_engine(broker.database_url, create=False)
    try:
        [record] = records_for_request(engine, request_id)
    finally:
        engine.dispose()
    return record


def _count(broker: BrokerServer, table: Any) -> int:
    engine = make_engine(broker.database_url, create=False)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


async def _explain(broker: BrokerServer, token: str, **kwargs: Any) -> dict[str, Any]:
    return await explain_exchange(load_config(broker.config_path), ExplainInput(token, **kwargs), dev_mode=True)


REQUESTS: list[Any] = [
    pytest.param({"sub": "agent-1"}, {}, id="allowed-default-target"),
    pytest.param({"sub": "agent-1"}, {"audiences": (VECTOR,), "scope": "read write"}, id="allowed-scopes"),
    pytest.param({"sub": "agent-1"}, {"audiences": (VECTOR,), "scope": "admin"}, id="scope-refused"),
    pytest.param({"sub": "agent-1"}, {"audiences": ("https://nowhere.example.com",)}, id="target-refused"),
    pytest.param({"sub": "agent-1"}, {"audiences": (VECTOR, "legacy-api")}, id="two-targets"),
    pytest.param({"sub": "nobody"}, {"audiences": (VECTOR,)}, id="no-grant"),
    pytest.param({"sub": "agent-1", "blocked": True}, {}, id="claim-rule-refused"),
    pytest.param({"sub": "agent-1", "aud": "someone-else"}, {}, id="audience-mismatch"),
]


@pytest.mark.parametrize(("claims", "request_args"), REQUESTS)
async def test_explain_agrees_with_the_broker(broker: BrokerServer, issuer: LocalIssuer, claims: dict[str, Any],
                                              request_args: dict[str, Any]) -> None:
    token = issuer.mint({"aud": BROKER_AUDIENCE, **claims})
    report = await _explain(broker, token, **request_args)
    answer = broker.exchange(token, audience=list(request_args.get("audiences", ())) or None,
                             scope=request_args.get("scope"))
    record = _record(broker, answer.headers["x-request-id"])
    if answer.status_code == 200:
        assert report["outcome"] == "would_issue"
        assert report["token"]["claims"]["aud"] == record["granted_target"]
        assert report["token"]["claims"]["scope"] == " ".join(record["granted_scopes"])
        assert report["decision"]["grant"] == record["grant"]
        # Both capped by the subject token's remaining life, read a moment apart.
        assert abs(report["token"]["lifetime"] - record["lifetime"]) <= 2
    else:
        assert report["outcome"] == "would_refuse"
        assert report["refusal"]["status"] == answer.status_code
        assert report["refusal"]["answer"] == answer.json()
        assert report["refusal"]["reason"] == record["reason"]
        assert report["refusal"]["detail"] == record["detail"]
    assert report["audit"]["identity"] == record["identity"]
    assert report["audit"]["mode_notes"] == record["mode_notes"]
    if report.get("grants") is not None:
        assert report["trace_agrees"] is True


async def test_a_bad_signature_is_explained_and_recorded_without_the_token(broker: BrokerServer, issuer: LocalIssuer) -> None:
    token = issuer.mint({"aud": BROKER_AUDIENCE, "sub": "agent-1"})
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}AAAA"
    report = await _explain(broker, forged)
    assert report["outcome"] == "would_refuse"
    checks = {c["check"]: c["result"] for c in report["tokens"][0]["checks"]}
    assert checks["structure"] == checks["issuer"] == checks["header"] == checks["key"] == "ok"
    assert checks["signature"] == "failed" and checks["aud"] == "not_checked"
    assert report["tokens"][0]["verified"] is False

    answer = broker.exchange(forged)
    assert answer.status_code == 400
    # The caller still gets only the fixed RFC text and the request id.
    assert answer.json() == {"error": "invalid_request", "error_description": "The subject token's signature is invalid."}
    request_id = answer.headers["x-request-id"]
    record = _record(broker, request_id)
    facts = record["context"]["explain"]
    assert facts == {"token": "subject", "token_sha256": hashlib.sha256(forged.encode()).hexdigest(), "check": "signature",
                     "verified": False, "iss": issuer.url, "sub": "agent-1"}
    assert forged not in json.dumps(record) and signature not in json.dumps(record)


async def test_refusal_records_carry_what_explaining_needs(broker: BrokerServer, mint: Callable[..., str], issuer: LocalIssuer) -> None:
    # no_grant: the grants considered, each with its step; grants of other issuers counted.
    answer = broker.exchange(mint("nobody"), audience=VECTOR)
    assert answer.json() == {"error": "invalid_request", "error_description": "The subject is not allowed to exchange this token."}
    ctx = _record(broker, answer.headers["x-request-id"])["context"]["explain"]
    assert ctx["decision"] == "no_grant" and ctx["target"] == VECTOR
    steps = {g["grant"]: (g["outcome"], g.get("step")) for g in ctx["grants"]}
    assert steps == {"agents": ("stopped", "match"), "gateway": ("stopped", "match"), "shadow": ("audit", None)}
    assert ctx["issuer_not_allowed"] == 2  # replayed, dead-grant

    # An audience mismatch: the audiences the token carried.
    token = issuer.mint({"aud": ["https://a.example.com", "https://b.example.com"], "sub": "agent-1"})
    answer = broker.exchange(token)
    assert answer.json()["error"] == "invalid_request"
    record = _record(broker, answer.headers["x-request-id"])
    assert record["reason"] == "aud_mismatch"
    assert record["context"]["explain"]["audiences"] == ["https://a.example.com", "https://b.example.com"]
    assert record["context"]["explain"]["verified"] is True

    # The allowed path records no trace.
    answer = broker.exchange(mint("agent-1"))
    assert answer.status_code == 200
    assert "explain" not in (_record(broker, answer.headers["x-request-id"])["context"] or {})


async def test_explain_spends_no_one_time_jti_and_writes_nothing(broker: BrokerServer, replay_issuer: LocalIssuer) -> None:
    token = replay_issuer.mint({"aud": BROKER_AUDIENCE, "sub": "job-1", "jti": "explain-once-1"}, alg="ES256")
    audits, guards = _count(broker, audit_events), _count(broker, replay_guard)
    for _ in range(2):
        report = await _explain(broker, token, audiences=(VECTOR,))
        assert report["outcome"] == "would_issue", report.get("refusal")
        assert report["one_time_jti"][0]["spent"] is False
    assert (_count(broker, audit_events), _count(broker, replay_guard)) == (audits, guards)
    # The broker still takes the token once, and only once.
    assert broker.exchange(token, audience=VECTOR).status_code == 200
    assert broker.exchange(token, audience=VECTOR).json()["error"] == "invalid_request"


def test_explain_request_id_shows_the_recorded_refusal(broker: BrokerServer, mint: Callable[..., str]) -> None:
    answer = broker.exchange(mint("nobody"), audience=VECTOR)
    request_id = answer.headers["x-request-id"]
    runner = CliRunner()
    result = runner.invoke(main, ["explain", "--request-id", request_id, "--database-url", broker.database_url])
    assert result.exit_code == 1, result.output
    assert f"request {request_id}" in result.stdout
    assert "refused: invalid_request (no_grant)" in result.stdout
    assert "agents" in result.stdout and "stopped at match" in result.stdout
    assert "2 more grant(s) do not admit this issuer" in result.stdout

    result = runner.invoke(main, ["explain", "--request-id", request_id, "--database-url", broker.database_url, "--json"])
    assert result.exit_code == 1
    [data] = json.loads(result.stdout)
    assert data["request_id"] == request_id and data["context"]["explain"]["decision"] == "no_grant"

    answer = broker.exchange(mint("agent-1"))
    result = runner.invoke(main, ["explain", "--request-id", answer.headers["x-request-id"], "--database-url", broker.database_url])
    assert result.exit_code == 0 and "issued a token" in result.stdout

    result = runner.invoke(main, ["explain", "--request-id", "no-such-request", "--database-url", broker.database_url])
    assert result.exit_code == 2
    assert result.stderr.startswith("sts: no audit record has request id")
