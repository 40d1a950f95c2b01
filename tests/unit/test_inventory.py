"""The inventory and the least-privilege review (sts/ops/inventory.py): pure, over usage rows
and a configuration."""

from __future__ import annotations

from typing import Any

import pytest

from sts.config.models import BrokerConfig
from sts.ops.inventory import Finding, inventory, target_covers, unused
from sts.store.usage import AUDIT_ALLOW, UsageRow

DAY = 86400.0
NOW = 1_800_000_000.0
OLD = NOW - 90 * DAY  # outside a 30-day window
RECENT = NOW - 2 * DAY


def row(identity: str = "wl:agent-1", *, grant: str = "agents", target: str = "https://vector.example.com",
        scopes: tuple[str, ...] = ("read",), outcome: str = "issued", reason: str = "", issuer: str = "local",
        client: str = "", count: int = 1, first: float = RECENT, last: float | None = None) -> UsageRow:
    if outcome != "issued" and outcome != AUDIT_ALLOW:
        target, scopes = "", ()
    return UsageRow(identity, issuer, client, grant, target, scopes, outcome, reason, count, first, first if last is None else last)


def config(**extra: Any) -> BrokerConfig:
    doc: dict[str, Any] = {
        "issuer": "https://sts.example.com",
        "issuers": [
            {"name": "local", "issuer": "https://issuer.example.com", "audiences": ["sts"]},
            {"name": "gitlab", "issuer": "https://gitlab.example.com", "audiences": ["sts"]},
        ],
        "grants": [
            {"name": "agents", "issuers": ["local", "gitlab"], "match": {"identity_pattern": "^wl:agent-[0-9]+$"},
             "targets": [
                 {"audience": "https://vector.example.com", "scopes": ["read", "write"]},
                 {"resource_prefix": "https://mcp.example.com/tools/", "scopes": ["invoke"]},
                 {"audience": "legacy-api", "scopes": ["read"]},
             ]},
            {"name": "gateway", "match": {"identity": "wl:gateway"}, "targets": [{"audience": "https://vector.example.com"}]},
            {"name": "shadow", "mode": "audit", "match": {"identity_pattern": "^wl:.*$"},
             "targets": [{"audience": "https://billing.example.com", "scopes": ["charge", "refund"]}]},
        ],
    }
    doc.update(extra)
    return BrokerConfig.model_validate(doc)


def test_inventory_sums_what_each_identity_obtained_and_was_refused() -> None:
    rows = [
        row(count=3, first=OLD, last=RECENT),
        row(scopes=("read", "write"), count=2),
        row(target="https://mcp.example.com/tools/search", scopes=("invoke",), client="ci", last=RECENT + 5),
        row(outcome="denied", reason="scope_not_allowed", count=4, last=RECENT + 9),
        row(grant="", outcome="denied", reason="no_grant"),
        row(outcome="error", reason="signing_key_unavailable"),
        row(grant="shadow", target="https://billing.example.com", scopes=("charge",), outcome=AUDIT_ALLOW),
        row("wl:agent-1", issuer="gitlab", first=RECENT - 1),  # the same name from another issuer
    ]
    entries = inventory(rows)
    assert [(e.identity, e.issuer) for e in entries] == [("wl:agent-1", "gitlab"), ("wl:agent-1", "local")]
    e = entries[1]
    assert (e.first_seen, e.last_seen, e.last_issued) == (OLD, RECENT + 9, RECENT + 5)
    assert (e.issued, e.denied, e.errors) == (6, 5, 1)
    assert [(t.target, t.scopes, t.count) for t in e.targets] == [
        ("https://mcp.example.com/tools/search", ["invoke"], 1),
        ("https://vector.example.com", ["read", "write"], 5),
    ]
    assert e.grants == ["agents"]  # a would-be audit-mode grant is not something obtained
    assert e.clients == ["ci"]
    assert e.denial_reasons == {"no_grant": 1, "scope_not_allowed": 4, "signing_key_unavailable": 1}
    assert e.as_dict()["targets"][0]["target"] == "https://mcp.example.com/tools/search"
    assert inventory([]) == []


def kinds(findings: list[Finding]) -> list[tuple[str, str, str | None]]:
    return [(f.kind, f.grant, f.identity if f.kind == "identity" else f.scope or f.target or f.issuer) for f in findings]


def test_unused_names_each_grant_issuer_target_scope_and_identity_to_remove() -> None:
    window = [
        row(),
        row(target="https://mcp.example.com/tools/search", scopes=("invoke",)),
    ]
    history = [
        *window,
        row("wl:agent-2", scopes=("read", "write"), first=OLD),  # used the grant, but not lately
        row("wl:agent-3", outcome="denied", reason="scope_not_allowed", first=RECENT),  # matched, refused
        row("wl:agent-4", grant="", outcome="denied", reason="no_grant"),  # never matched a grant
        row("wl:gateway", grant="gateway", first=OLD),
        row("legacy", target="legacy-api", first=OLD),  # the only use of that target, long ago
    ]
    findings = unused(config(), window, history, days=30)
    assert kinds(findings) == [
        ("issuer", "agents", "gitlab"),
        ("scope", "agents", "write"),
        ("target", "agents", "legacy-api"),
        ("identity", "agents", "legacy"),
        ("identity", "agents", "wl:agent-2"),
        ("identity", "agents", "wl:agent-3"),
        ("grant", "gateway", None),
        ("grant", "shadow", None),
    ]
    by = {(kind, name or grant): f for f, (kind, grant, name) in zip(findings, kinds(findings), strict=True)}
    assert by[("scope", "write")].action == (
        "remove scope write from target https://vector.example.com of grant agents: not granted in 30 days "
        f"(last used {_day(OLD)})")
    assert by[("scope", "write")].last_used == OLD
    assert by[("target", "legacy-api")].action.startswith("remove target legacy-api from grant agents: issued no token for it in 30 days")
    assert by[("issuer", "gitlab")].action == "remove issuer gitlab from grant agents: no token of it in 30 days (never used)"
    assert by[("identity", "wl:agent-2")].last_used == OLD
    assert by[("identity", "wl:agent-3")].last_used is None
    assert "matched grant agents but did not exchange through it in 30 days (never used)" in by[("identity", "wl:agent-3")].action
    gateway = by[("grant", "gateway")]
    assert gateway.action == f"remove grant gateway (match: identity wl:gateway): it issued nothing in 30 days (last used {_day(OLD)})"
    assert gateway.identity == "wl:gateway"
    assert by[("grant", "shadow")].action == "remove grant shadow: it would have allowed nothing in 30 days (never used)"


def test_an_audit_mode_grant_is_used_when_it_would_have_allowed() -> None:
    shadow = row(grant="shadow", target="https://billing.example.com", scopes=("charge",), outcome=AUDIT_ALLOW)
    window = [row(), row(target="https://mcp.example.com/tools/x", scopes=("invoke",)), row(scopes=("write",)),
              row(target="legacy-api"), row(issuer="gitlab"), shadow]
    findings = unused(config(), window, window, days=30)
    assert kinds(findings) == [("grant", "gateway", None), ("scope", "shadow", "refund")]
    assert findings[1].action.endswith("not granted in 30 days (never used)")


def test_nothing_used_means_every_grant_is_reported_once() -> None:
    findings = unused(config(), [], [], days=7)
    assert kinds(findings) == [("grant", "agents", None), ("grant", "gateway", None), ("grant", "shadow", None)]
    assert "in 7 days" in findings[0].action
    assert unused(config(), [], [], days=1)[0].action.endswith("it issued nothing in 1 day (never used)")


@pytest.mark.parametrize(
    ("target", "requested", "covered"),
    [
        ({"audience": "a"}, "a", True),
        ({"audience": "a"}, "b", False),
        ({"resource": "https://r.example.com/x"}, "https://r.example.com/x", True),
        ({"resource_prefix": "https://r.example.com/tools/"}, "https://r.example.com/tools/search", True),
        ({"resource_prefix": "https://r.example.com/tools/"}, "https://r.example.com/tools/", False),
        ({"resource_prefix": "https://r.example.com/tools/"}, "https://r.example.com/other", False),
    ],
)
def test_target_covers(target: dict[str, str], requested: str, covered: bool) -> None:
    from sts.config.models import TargetConfig

    assert target_covers(TargetConfig.model_validate(target), requested) is covered


def _day(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d")
