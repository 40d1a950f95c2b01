"""The pure part of just-in-time approval (sts.approvals.decision), its errors, the gate's
answers from a snapshot, and the configuration that marks scopes as needing approval."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from sts.approvals.decision import ApprovalSnapshot, Ask, Standing, canonical_json, elevated
from sts.approvals.errors import APPROVAL_HEADER, ApprovalDenied, ApprovalRequired
from sts.approvals.gate import ApprovalGate, NoApprovals
from sts.audit import AuditEvent
from sts.config.models import ApprovalConfig, TargetConfig
from sts.errors import ServerError
from sts.store.approvals import Recorded
from sts.trust.policy import Allow

NOW = 1_000.0
RULE = ApprovalConfig(scopes=("admin", "delete"),
                      authorization_details=({"type": "mcp_tool", "field": "actions", "values": ("drop",)},))  # type: ignore[arg-type]


@pytest.mark.parametrize(("scopes", "details", "expected"), [
    pytest.param(("read",), None, (), id="unmarked-scope"),
    pytest.param(("read", "admin"), None, ("admin",), id="one-marked"),
    pytest.param(("delete", "admin", "admin"), None, ("admin", "delete"), id="sorted-unique"),
    pytest.param((), [{"type": "mcp_tool", "actions": ["invoke"]}], (), id="unmarked-detail"),
    pytest.param((), [{"type": "mcp_tool", "actions": ["invoke", "drop"]}], ("mcp_tool.actions=drop",), id="detail-array"),
    pytest.param((), [{"type": "mcp_tool", "actions": "drop"}], ("mcp_tool.actions=drop",), id="detail-string"),
    pytest.param((), [{"type": "other", "actions": ["drop"]}], (), id="other-type"),
    pytest.param((), [{"type": "mcp_tool", "actions": [{"drop": 1}]}], (), id="non-string-value"),
    pytest.param((), ["not an object"], (), id="malformed-detail"),
])
def test_elevated(scopes: tuple[str, ...], details: Any, expected: tuple[str, ...]) -> None:
    assert elevated(RULE, scopes, details) == expected


def ask(**over: Any) -> Ask:
    values: dict[str, Any] = {"identity": "wl:agent-1", "issuer": "local", "client": "worker", "actor": None,
                              "target": "https://db.example.com", "scopes": ("read", "admin")}
    values.update(over)
    return Ask.of(**values)


def test_what_was_asked_is_canonical() -> None:
    a = ask(scopes=("read", "admin", "read"))
    assert a.what() == {"target": "https://db.example.com", "scopes": ["admin", "read"]}
    assert canonical_json(a.what()) == '{"scopes":["admin","read"],"target":"https://db.example.com"}'
    # Scope order and repeats do not make another request (RFC 6749 §3.3), nor does detail order.
    assert a.fingerprint == ask(scopes=("admin", "read")).fingerprint
    d1, d2 = {"type": "mcp_tool", "tools": ["a"]}, {"type": "mcp_tool", "tools": ["b"]}
    assert ask(authorization_details=[d1, d2]).fingerprint == ask(authorization_details=[d2, d1]).fingerprint
    assert ask(authorization_details=[d1]).what()["authorization_details"] == [d1]
    # The grant is recorded but is not part of what was asked.
    assert ask(grant="a").fingerprint == ask(grant="b").fingerprint


@pytest.mark.parametrize("change", [
    pytest.param({"scopes": ("read", "admin", "write")}, id="wider"),
    pytest.param({"scopes": ("admin",)}, id="narrower"),
    pytest.param({"target": "https://other.example.com"}, id="target"),
    pytest.param({"identity": "wl:agent-2"}, id="identity"),
    pytest.param({"issuer": "other"}, id="issuer"),
    pytest.param({"client": None}, id="client"),
    pytest.param({"actor": "wl:gateway"}, id="actor"),
    pytest.param({"authorization_details": [{"type": "mcp_tool"}]}, id="details"),
])
def test_any_difference_is_another_request(change: dict[str, Any]) -> None:
    assert ask(**change).fingerprint != ask().fingerprint


def test_snapshot_lookup_and_precedence() -> None:
    snap = ApprovalSnapshot.build([
        ("f1", Standing("apr_1", "approved", NOW + 60)),
        ("f2", Standing("apr_2", "pending", NOW + 60)),
        ("f3", Standing("apr_3", "approved", NOW + 60)),
        ("f3", Standing("apr_4", "denied", NOW + 10)),  # a denial beats an approval: fail closed
        ("f4", Standing("apr_5", "approved", NOW + 10)),
        ("f4", Standing("apr_6", "approved", NOW + 90)),  # the later window answers
    ], version=3)
    assert snap.lookup("f1", NOW) == Standing("apr_1", "approved", NOW + 60)
    assert snap.lookup("f1", NOW + 60) is None  # the window ends on time, without a reload
    assert snap.lookup("f2", NOW).status == "pending"  # type: ignore[union-attr]
    assert snap.lookup("f3", NOW).id == "apr_4"  # type: ignore[union-attr]
    assert snap.lookup("f4", NOW).id == "apr_6"  # type: ignore[union-attr]
    assert snap.lookup("nothing", NOW) is None


def test_errors_carry_the_id_in_header_and_text() -> None:
    required = ApprovalRequired("apr_x")
    assert required.body() == {"error": "approval_required",
                               "error_description": "Approval is required for the requested scopes. Approval request: apr_x."}
    assert required.headers == {APPROVAL_HEADER: "apr_x"} and required.status == 400
    limit = ApprovalRequired(None, reason="approval_pending_limit")
    assert APPROVAL_HEADER not in limit.headers and "too many" in limit.description and "apr_" not in limit.description
    denied = ApprovalDenied("apr_y")
    assert denied.error == "access_denied" and denied.headers == {APPROVAL_HEADER: "apr_y"}
    assert denied.description.endswith("Approval request: apr_y.")


def test_config_marks_scopes_of_the_target() -> None:
    target = TargetConfig.model_validate({"audience": "https://db.example.com", "scopes": ["read", "admin"],
                                          "approval": {"scopes": ["admin"], "maxWindow": 600}})
    assert target.approval is not None and target.approval.max_window == 600 and target.approval.request_ttl == 86400
    with pytest.raises(ValidationError, match="subset of scopes"):
        TargetConfig.model_validate({"audience": "x", "scopes": ["read"], "approval": {"scopes": ["admin"]}})
    with pytest.raises(ValidationError, match="at least one"):
        TargetConfig.model_validate({"audience": "x", "scopes": ["read"], "approval": {}})
    with pytest.raises(ValidationError):
        TargetConfig.model_validate({"audience": "x", "scopes": ["admin"], "approval": {"scopes": ["admin"], "max_window": 0}})


# --- the gate, over a snapshot and a repository twin ---------------------------------------------
class Repository:
    """Records calls; answers what the test tells it to."""

    def __init__(self, answer: Recorded) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def request(self, **kw: Any) -> Recorded:
        self.calls.append(kw)
        return self.answer


def allow(scopes: tuple[str, ...], approval: ApprovalConfig | None = RULE) -> Allow:
    return Allow(grant="agents", target="https://db.example.com", scopes=scopes, lifetime=600, cap_to_subject_lifetime=True,
                 algorithm="ES256", audit_notes=(), approval=approval)


def event() -> AuditEvent:
    e = AuditEvent(time=NOW, request_id="req-1", config_version="v")
    e.identity, e.issuer, e.client_id = "wl:agent-1", "local", "worker"
    return e


def gate(snapshot: ApprovalSnapshot, repo: Repository, woken: list[int] | None = None) -> ApprovalGate:
    return ApprovalGate(lambda: snapshot, repo, max_pending=3, clock=lambda: NOW,  # type: ignore[arg-type]
                        recorded=lambda: (woken if woken is not None else []).append(1))


def fingerprint(scopes: tuple[str, ...]) -> str:
    return ask(scopes=scopes).fingerprint


def test_gate_passes_requests_without_marked_scopes_untouched() -> None:
    repo = Repository(Recorded("pending", "apr_n", NOW + 1, created=True))
    e = event()
    unmarked = allow(("read",))
    assert asyncio.run(gate(ApprovalSnapshot(), repo).check(unmarked, e)) is unmarked
    unruled = allow(("admin",), approval=None)
    assert asyncio.run(gate(ApprovalSnapshot(), repo).check(unruled, e)) is unruled
    assert repo.calls == [] and e.context is None


def test_gate_allows_an_approved_request_from_memory() -> None:
    repo = Repository(Recorded("pending", "apr_n", NOW + 1, created=True))
    snap = ApprovalSnapshot.build([(fingerprint(("read", "admin")), Standing("apr_ok", "approved", NOW + 60))], 1)
    e = event()
    issued = asyncio.run(gate(snap, repo).check(allow(("read", "admin")), e))
    assert repo.calls == []  # no database read for a request the snapshot answers
    # The token never outlives the approval: the grant's 600 s become the window's last 60 s.
    assert issued.lifetime == 60 and issued.scopes == ("read", "admin") and issued.target == "https://db.example.com"
    assert e.context == {"approval": {"id": "apr_ok", "status": "approved", "until": NOW + 60, "elevated": ["admin"],
                                      "recorded": False}}
    # A wider request is another request: recorded, refused with its own id.
    with pytest.raises(ApprovalRequired) as refused:
        asyncio.run(gate(snap, repo).check(allow(("read", "admin", "delete")), event()))
    assert refused.value.approval_id == "apr_n" and refused.value.reason == "approval_requested"


def test_gate_answers_pending_and_denied_from_memory() -> None:
    repo = Repository(Recorded("pending", "apr_n", NOW + 1, created=True))
    snap = ApprovalSnapshot.build([(fingerprint(("admin",)), Standing("apr_p", "pending", NOW + 60)),
                                   (fingerprint(("delete",)), Standing("apr_d", "denied", NOW + 60))], 1)
    with pytest.raises(ApprovalRequired) as pending:
        asyncio.run(gate(snap, repo).check(allow(("admin",)), event()))
    assert (pending.value.approval_id, pending.value.reason) == ("apr_p", "approval_pending")
    with pytest.raises(ApprovalDenied) as denied:
        asyncio.run(gate(snap, repo).check(allow(("delete",)), event()))
    assert (denied.value.approval_id, denied.value.reason) == ("apr_d", "approval_denied")
    assert repo.calls == []


def test_gate_records_an_unknown_request_with_who_and_what() -> None:
    repo = Repository(Recorded("pending", "apr_new", NOW + 86400, created=True))
    woken: list[int] = []
    e = event()
    e.actor_identity = "wl:gateway"
    with pytest.raises(ApprovalRequired) as refused:
        asyncio.run(gate(ApprovalSnapshot(), repo, woken).check(allow(("admin", "read")), e))
    assert refused.value.headers == {APPROVAL_HEADER: "apr_new"} and woken == [1]
    (call,) = repo.calls
    assert {k: call[k] for k in ("identity", "issuer_name", "client_id", "actor_identity", "grant", "target", "request",
                                 "elevated", "request_id", "request_ttl", "max_window", "max_pending")} == {
        "identity": "wl:agent-1", "issuer_name": "local", "client_id": "worker", "actor_identity": "wl:gateway",
        "grant": "agents", "target": "https://db.example.com",
        "request": {"target": "https://db.example.com", "scopes": ["admin", "read"]}, "elevated": ["admin"],
        "request_id": "req-1", "request_ttl": 86400, "max_window": 86400, "max_pending": 3}
    assert e.context is not None and e.context["approval"]["recorded"] is True


@pytest.mark.parametrize(("answer", "error", "reason"), [
    pytest.param(Recorded("approved", "apr_a", NOW + 5), None, None, id="approved-meanwhile"),
    pytest.param(Recorded("denied", "apr_d", NOW + 5), ApprovalDenied, "approval_denied", id="denied-meanwhile"),
    pytest.param(Recorded("pending", "apr_p", NOW + 5), ApprovalRequired, "approval_pending", id="pending-elsewhere"),
    pytest.param(Recorded("limit", None, None), ApprovalRequired, "approval_pending_limit", id="too-many"),
])
def test_gate_follows_the_store_when_memory_is_stale(answer: Recorded, error: type[Exception] | None, reason: str | None) -> None:
    repo = Repository(answer)
    woken: list[int] = []
    check = gate(ApprovalSnapshot(), repo, woken).check(allow(("admin",)), event())
    if error is None:
        assert asyncio.run(check).lifetime == 5
    else:
        with pytest.raises(error) as refused:
            asyncio.run(check)
        assert refused.value.reason == reason  # type: ignore[attr-defined]
    assert woken == []  # nothing new was recorded


def test_without_a_gate_a_marked_request_fails_closed() -> None:
    asyncio.run(NoApprovals().check(allow(("read",)), event()))
    with pytest.raises(ServerError):
        asyncio.run(NoApprovals().check(allow(("admin",)), event()))


def test_a_read_only_gate_answers_from_memory_and_never_records() -> None:
    repo = Repository(Recorded("pending", "apr_n", NOW + 1, created=True))
    snap = ApprovalSnapshot.build([(fingerprint(("admin",)), Standing("apr_ok", "approved", NOW + 60))], 1)
    twin = ApprovalGate(lambda: snap, repo, clock=lambda: NOW, record=False)  # type: ignore[arg-type]
    assert asyncio.run(twin.check(allow(("admin",)), event())).lifetime == 60
    with pytest.raises(ApprovalRequired) as refused:
        asyncio.run(twin.check(allow(("delete",)), event()))
    assert refused.value.reason == "approval_would_be_requested" and refused.value.approval_id is None
    assert refused.value.description == "Approval is required for the requested scopes."
    assert repo.calls == []
