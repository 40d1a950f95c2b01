"""Exchanges over real HTTP, then `sts audit list`, `sts inventory` and `sts inventory --unused`
against the broker's database (SQLite and PostgreSQL): the counters are written with the
audit records, by the running broker's group commit."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner

from broker_harness import BrokerServer
from sts.cli.main import main

VECTOR = "https://vector.example.com"
BILLING = "https://billing.example.com"


@pytest.fixture()
def sts(broker: BrokerServer, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("STS_DATABASE_URL", broker.database_url)
    monkeypatch.setenv("STS_CONFIG", str(broker.config_path))

    def run(*args: str) -> Any:
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    return run


def test_exchanges_show_up_in_the_audit_list_the_inventory_and_the_review(broker: BrokerServer, mint: Callable[..., str],
                                                                            sts: Callable[..., Any]) -> None:
    issued = broker.exchange(mint("agent-inv-1"))
    assert issued.status_code == 200, issued.text
    scope = broker.exchange(mint("agent-inv-1"), audience=VECTOR, scope="admin")
    assert scope.json()["error"] == "invalid_scope"
    # Refused by the enforced grant, but the audit-mode grant `shadow` would have allowed it.
    billing = broker.exchange(mint("agent-inv-2"), audience=BILLING, scope="charge")
    assert billing.json()["error"] == "invalid_target"

    records = [json.loads(line) for line in sts("audit", "list", "--identity", "wl:agent-inv-1", "--json").splitlines()]
    assert [(r["outcome"], r["reason"]) for r in records] == [("issued", None), ("denied", "scope_not_allowed")]
    [refused] = [json.loads(line) for line in sts("audit", "list", "--identity", "wl:agent-inv-2", "--json").splitlines()]
    assert refused["reason"] == "target_not_allowed"
    by_reason = [json.loads(line)["request_id"] for line in sts("audit", "list", "--reason", "target_not_allowed", "--json").splitlines()]
    assert by_reason[-1] == refused["request_id"]
    assert refused["request_id"] in sts("audit", "list", "--request-id", refused["request_id"])

    entries = {e["identity"]: e for e in json.loads(sts("inventory", "--json"))["identities"]}
    one = entries["wl:agent-inv-1"]
    assert (one["issuer"], one["issued"], one["denied"], one["grants"]) == ("local", 1, 1, ["agents"])
    assert [(t["target"], t["scopes"]) for t in one["targets"]] == [(VECTOR, ["read"])]
    assert one["denial_reasons"] == {"scope_not_allowed": 1}
    two = entries["wl:agent-inv-2"]
    assert (two["issued"], two["denied"], two["targets"]) == (0, 1, [])
    assert "wl:agent-inv-1" in sts("inventory")

    review = json.loads(sts("inventory", "--unused", "30d", "--json"))
    found = {(f["kind"], f["grant"], f["scope"] or f["target"] or f["issuer"]) for f in review["findings"]}
    assert ("grant", "gateway", None) in found  # allowed, never used: remove it
    assert ("target", "agents", "legacy-api") in found
    assert ("scope", "agents", "write") in found
    assert not any(grant == "shadow" for _, grant, _ in found)  # it would have allowed agent-inv-2
    human = sts("inventory", "--unused", "30d")
    assert "remove grant gateway (match: identity wl:gateway): it issued nothing in 30 days (never used)" in human.splitlines()
