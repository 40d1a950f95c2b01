"""``sts approvals``: decide just-in-time approval requests (docs/approvals.md).

A request for a scope that a target marks as needing approval is refused with
``approval_required`` and an approval request id; an approver lists the requests, looks at one,
and approves it for a window (``--for``), denies it, or later revokes the approval. Every
decision is recorded on the request with who (``--actor``, default the OS user), when and why
(``--reason``), and every replica follows it within 2 s.

Exit codes: 0 done; 2 a user error (unknown id, a request not in a state that allows the
change, a window beyond the target's ``max_window``), one line on stderr.
"""

from __future__ import annotations

import re
import time
from typing import Any

import click

from sts.cli.errors import UserError
from sts.cli.lifecycle import _who

_DURATION_RE = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_WINDOW = 3600


def parse_window(text: str) -> int:
    """``--for``: a duration (``90s``, ``30m``, ``1h``, ``2d``, or plain seconds)."""
    match = _DURATION_RE.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UserError(f"--for {text!r} is not a duration", "give a positive duration: 90s, 30m, 1h, 2d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"


def _repository() -> Any:
    from sts.cli.main import _open_database, _settings
    from sts.store.approvals import ApprovalRepository

    return ApprovalRepository(_open_database(_settings().database_url))


def _emit(data: Any, as_json: bool, human: str) -> None:
    from sts.cli.main import emit

    emit(data, as_json, human)


def _user_errors(call: Any) -> Any:
    from sts.store.approvals import ApprovalNotFound, ApprovalStateError

    try:
        return call()
    except (ApprovalNotFound, ApprovalStateError) as exc:
        raise UserError(str(exc).strip("'\""), exc.fix) from None


def _describe(r: Any, now: float) -> str:
    what = r.request
    lines = [
        f"approval request {r.id}: {r.state(now)}",
        f"  identity   {r.identity}",
        f"  issuer     {r.issuer_name}",
        f"  client     {r.client_id or '-'}",
        f"  actor      {r.actor_identity or '-'}",
        f"  grant      {r.grant or '-'}",
        f"  target     {what.get('target')}",
        f"  scopes     {' '.join(what.get('scopes', []))}",
    ]
    if what.get("authorization_details"):
        from sts.approvals.decision import canonical_json

        lines.append(f"  details    {canonical_json(what['authorization_details'])}")
    lines += [
        f"  elevated   {' '.join(r.elevated)}",
        f"  requested  {_when(r.requested_at)} (request id {r.request_id})",
    ]
    if r.decided_at is not None:
        lines.append(f"  {r.status if r.status != 'revoked' else 'approved':<10} {_when(r.decided_at)} by {r.decided_by}"
                     + (f": {r.decision_reason}" if r.decision_reason else ""))
    if r.revoked_at is not None:
        lines.append(f"  revoked    {_when(r.revoked_at)} by {r.revoked_by}" + (f": {r.revoke_reason}" if r.revoke_reason else ""))
    until_label = {"pending": "waits until", "approved": "valid until", "denied": "held until"}.get(r.status)
    if until_label:
        lines.append(f"  {until_label} {_when(r.expires_at)}")
    return "\n".join(lines)


@click.group("approvals")
def approvals() -> None:
    """Just-in-time approvals: grant, deny or revoke requests for scopes that need approval."""


@approvals.command("list")
@click.option("--all", "show_all", is_flag=True, help="also decided, revoked and expired requests (the history), newest first")
@click.option("--identity", help="only the requests of this workload identity")
@click.option("--json", "as_json", is_flag=True)
def approvals_list(show_all: bool, identity: str | None, as_json: bool) -> None:
    """List the approval requests that still count: pending, approved within their window,
    denied and still held (with --all: every request ever recorded)."""
    now = time.time()
    records = _repository().list(now=now, include_all=show_all, identity=identity)
    header = f"{'ID':<21} {'STATE':<9} {'IDENTITY':<32} {'TARGET':<32} {'ELEVATED':<20} {'REQUESTED':<21} UNTIL"
    lines = [header] + [
        f"{r.id:<21} {r.state(now):<9} {r.identity:<32} {r.target:<32} {' '.join(r.elevated):<20} "
        f"{_when(r.requested_at):<21} {_when(r.expires_at) if r.status in ('pending', 'approved', 'denied') else '-'}"
        for r in records]
    _emit([r.as_dict(now) for r in records], as_json, "\n".join(lines) if records else "(no approval requests)")


@approvals.command("show")
@click.argument("approval_id")
@click.option("--json", "as_json", is_flag=True)
def approvals_show(approval_id: str, as_json: bool) -> None:
    """Show one approval request: who asked for exactly what, and what was decided."""
    now = time.time()
    record = _user_errors(lambda: _repository().get(approval_id))
    _emit(record.as_dict(now), as_json, _describe(record, now))


@approvals.command("approve")
@click.argument("approval_id")
@click.option("--for", "window_text", help="how long the approval holds from now: 30m, 1h, 2d (default 1h, at most the target's max_window)")
@click.option("--reason", default="", help="why (recorded with the approval)")
@click.option("--actor", help="who approves (recorded; default: the OS user)")
@click.option("--json", "as_json", is_flag=True)
def approvals_approve(approval_id: str, window_text: str | None, reason: str, actor: str | None, as_json: bool) -> None:
    """Approve a pending request: exactly what it asked is issued to exactly who asked, until
    the window ends (every replica within 2 s)."""
    repo = _repository()
    current = _user_errors(lambda: repo.get(approval_id))
    window = parse_window(window_text) if window_text else min(DEFAULT_WINDOW, current.max_window)
    if window > current.max_window:
        raise UserError(f"--for {window_text} is longer than this target allows ({current.max_window} s)",
                        f"give at most {current.max_window}s, or raise approval.max_window in the configuration")
    now = time.time()
    record = _user_errors(lambda: repo.approve(approval_id, by=_who(actor), window=window, reason=reason, now=now))
    _emit(record.as_dict(now), as_json,
          f"approved {record.id} until {_when(record.expires_at)}: {record.identity} may obtain "
          f"{' '.join(record.request.get('scopes', []))} for {record.target}; every replica follows within 2 s")


@approvals.command("deny")
@click.argument("approval_id")
@click.option("--reason", default="", help="why (recorded with the denial)")
@click.option("--actor", help="who denies (recorded; default: the OS user)")
@click.option("--json", "as_json", is_flag=True)
def approvals_deny(approval_id: str, reason: str, actor: str | None, as_json: bool) -> None:
    """Deny a pending request: the same request is answered access_denied, not asked again,
    for as long as it could have waited (the target's request_ttl)."""
    now = time.time()
    record = _user_errors(lambda: _repository().deny(approval_id, by=_who(actor), reason=reason, now=now))
    _emit(record.as_dict(now), as_json, f"denied {record.id}; the same request is refused until {_when(record.expires_at)}")


@approvals.command("revoke")
@click.argument("approval_id")
@click.option("--revoke-tokens", is_flag=True, help="also revoke the still-valid tokens issued under this approval")
@click.option("--reason", default="", help="why (recorded with the revocation)")
@click.option("--actor", help="who revokes (recorded; default: the OS user)")
@click.option("--json", "as_json", is_flag=True)
def approvals_revoke(approval_id: str, revoke_tokens: bool, reason: str, actor: str | None, as_json: bool) -> None:
    """End an approval before its window does (every replica within 2 s). Tokens already
    issued under it stay valid until they expire, unless --revoke-tokens revokes them too."""
    from sts.store.lifecycle import LifecycleRepository, jti_selector

    now = time.time()
    who = _who(actor)
    repo = _repository()
    record = _user_errors(lambda: repo.revoke(approval_id, by=who, reason=reason, now=now))
    data = record.as_dict(now)
    human = f"revoked {record.id}; new requests for it are refused again within 2 s"
    if revoke_tokens:
        lifecycle = LifecycleRepository(repo.engine)
        valid = [r["jti"] for r in lifecycle.revocable(jti_selector(repo.issued_under(approval_id)), now)]
        why = f"{who}: approval {approval_id} revoked" + (f": {reason}" if reason else "")
        data["revoked_tokens"] = {"jtis": valid, "revoked": lifecycle.revoke(valid, now=now, reason=why)}
        human += f"\nrevoked {data['revoked_tokens']['revoked']} still-valid tokens issued under it"
    _emit(data, as_json, human)
