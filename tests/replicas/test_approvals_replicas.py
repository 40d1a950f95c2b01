"""Just-in-time approval across two broker processes on one PostgreSQL database
(docs/approvals.md#replicas): a request refused on replica A with an approval request id is
approved through the command line (`sts approvals approve ID --for 1h`), then issued by
replica B; a wider request is refused; after `sts approvals revoke` both refuse again."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conformance.issuer import LocalIssuer
from replica_support import STS, AUDIENCE, BrokerProcess, broker_config, wait_until, write_config

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DB = "https://db.example.com"
# The documented bound is 2 s (1 s poll plus one read; NOTIFY is faster). Generous for a busy
# machine; the measured times are printed.
FOLLOW_DEADLINE = 15.0


def sts(env: dict[str, str], *args: str) -> dict[str, object]:
    done = subprocess.run([STS, *args, "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def ask(replica: BrokerProcess, subject: str, scope: str) -> httpx.Response:
    return replica.exchange(subject, audience=DB, scope=scope)


def refusal(response: httpx.Response) -> tuple[str, str | None]:
    assert response.status_code == 400, response.text
    return response.json()["error"], response.headers.get("x-approval-request")


def test_approval_made_on_one_replica_is_honoured_by_the_other(issuer: LocalIssuer, replay_issuer: LocalIssuer,
                                                              postgres_url: str, kek: str, tmp_path: Path) -> None:
    config = broker_config(issuer, replay_issuer)
    config["grants"][0]["targets"].append({"audience": DB, "scopes": ["read", "admin", "delete"], "default_scopes": ["read"],
                                           "approval": {"scopes": ["admin", "delete"], "max_window": 7200}})
    path = tmp_path / "sts.yaml"
    write_config(path, config)
    a = BrokerProcess(config=path, database_url=postgres_url, kek=kek, log_path=tmp_path / "a.log").start()
    try:
        b = BrokerProcess(config=path, database_url=postgres_url, kek=kek, log_path=tmp_path / "b.log").start()
        try:
            operator = {**a.env}
            subject = issuer.mint({"sub": "agent-r1", "aud": AUDIENCE}, alg="ES256", lifetime=1200)

            # 1. Refused on A with an id; B, asked the same, names the same request.
            error, approval_id = refusal(ask(a, subject, "read admin"))
            assert error == "approval_required" and approval_id
            assert refusal(ask(b, subject, "admin read")) == ("approval_required", approval_id)

            # 2. Approved through the command line; B issues exactly that request.
            approved = sts(operator, "approvals", "approve", approval_id, "--for", "1h", "--actor", "alice")
            assert approved["status"] == "approved"
            started = time.monotonic()
            assert wait_until(lambda: ask(b, subject, "read admin").status_code == 200, FOLLOW_DEADLINE, 0.05)
            print(f"approval honoured by replica B after {time.monotonic() - started:.2f} s")
            issued = ask(b, subject, "read admin").json()
            assert sorted(issued["scope"].split()) == ["admin", "read"]
            assert wait_until(lambda: ask(a, subject, "read admin").status_code == 200, FOLLOW_DEADLINE, 0.05)

            # 3. Wider is another request, refused by both with one new id.
            error, wider = refusal(ask(b, subject, "read admin delete"))
            assert error == "approval_required" and wider not in (None, approval_id)
            assert refusal(ask(a, subject, "read admin delete")) == ("approval_required", wider)

            # 4. Revoked through the command line: both refuse the approved request again.
            sts(operator, "approvals", "revoke", approval_id, "--reason", "done")
            started = time.monotonic()
            for replica in (a, b):
                assert wait_until(lambda r=replica: ask(r, subject, "read admin").status_code == 400, FOLLOW_DEADLINE, 0.05)
                print(f"revocation enforced by {replica.url} after {time.monotonic() - started:.2f} s")
            error, renewed = refusal(ask(b, subject, "read admin"))
            assert error == "approval_required" and renewed not in (None, approval_id)
            assert refusal(ask(a, subject, "read admin")) == ("approval_required", renewed)
        finally:
            b.stop()
    finally:
        a.stop()
    assert "approvals could not be read" not in a.log_path.read_text() + b.log_path.read_text()
