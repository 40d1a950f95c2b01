"""``sts kill`` and ``sts revoke``: stop a workload now, everywhere (docs/operations.md#token-lifecycle).

A kill stops new exchanges for an identity, issuer, client or grant on every replica within the
documented bound (2 s); ``--revoke`` also revokes the still-valid tokens it already holds. A
revocation marks issued tokens revoked: they introspect inactive and are refused as subject or
actor tokens. Both are recorded with who (``--actor``, default the OS user) and why
(``--reason``), and every replica learns of them through the database.
"""

from __future__ import annotations

import getpass
import re
import sys
import time
from typing import Any

import click

from sts.cli.errors import UserError

_DURATION_RE = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_until(text: str, now: float) -> float:
    """``--until``: a duration from now (``30m``, ``2h``, ``1d``), ISO 8601 or epoch seconds."""
    from sts.ops.archive import BadTime, parse_time

    match = _DURATION_RE.fullmatch(text.strip())
    if match:
        return now + int(match.group(1)) * _UNITS[match.group(2)]
    try:
        moment = parse_time(text)
    except BadTime:
        raise UserError(f"--until {text!r} is not a time",
                        "give a duration (30m, 2h, 1d), an ISO 8601 time (2026-12-01T08:00:00Z) or epoch seconds") from None
    if moment <= now:
        raise UserError(f"--until {text!r} is in the past", "give a time in the future, or leave --until out to kill until lifted")
    return moment


def _who(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:  # no login name in a bare container
        return "unknown"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"


def _repository() -> Any:
    from sts.cli.main import _open_database, _settings
    from sts.store.lifecycle import LifecycleRepository

    return LifecycleRepository(_open_database(_settings().database_url))


def _emit(data: Any, as_json: bool, human: str) -> None:
    from sts.cli.main import emit

    emit(data, as_json, human)


def _revoke_where(repo: Any, where: Any, *, reason: str, dry_run: bool) -> dict[str, Any]:
    now = time.time()
    rows = repo.revocable(where, now)
    revoked = 0 if dry_run else repo.revoke([r["jti"] for r in rows], now=now, reason=reason)
    return {"dry_run": dry_run, "matched": len(rows), "revoked": revoked, "tokens": rows}


# --- sts kill ------------------------------------------------------------------------------
@click.group("kill")
def kill() -> None:
    """Kill switches: stop new exchanges for an identity, issuer, client or grant on every replica."""


def _kill_command(kind: str, help_text: str) -> click.Command:
    @click.command(kind, help=help_text)
    @click.argument("value")
    @click.option("--until", "until_text", help="lift automatically at this time: 30m, 2h, 1d, ISO 8601 or epoch seconds")
    @click.option("--reason", default="", help="why (recorded with the kill)")
    @click.option("--actor", help="who (recorded; default: the OS user)")
    @click.option("--revoke", is_flag=True, help="also revoke the still-valid tokens already issued to it")
    @click.option("--json", "as_json", is_flag=True)
    def command(value: str, until_text: str | None, reason: str, actor: str | None, revoke: bool, as_json: bool) -> None:
        from sts.store.lifecycle import selector

        now = time.time()
        until = parse_until(until_text, now) if until_text else None
        who = _who(actor)
        repo = _repository()
        record = repo.kill(kind=kind, value=value, now=now, until=until, reason=reason, actor=who)
        data: dict[str, Any] = {"kill": record.as_dict()}
        human = f"killed {kind} {value} (kill {record.id}, until {_when(until) if until else 'lifted'}); every replica enforces it within 2 s"
        if revoke:
            data["revocation"] = _revoke_where(repo, selector(kind, value), reason=f"kill {record.id}: {reason}", dry_run=False)
            human += f"\nrevoked {data['revocation']['revoked']} still-valid tokens"
        _emit(data, as_json, human)

    return command


for _kind, _help in (("identity", "Stop exchanges for a workload identity (as mapped, e.g. spiffe://example.org/agent)."),
                     ("issuer", "Stop exchanges of subject tokens from a configured issuer (its name in the configuration)."),
                     ("client", "Stop exchanges requested by an OAuth client (client_id)."),
                     ("grant", "Stop exchanges allowed by a grant (its name in the configuration).")):
    kill.add_command(_kill_command(_kind, _help))


@kill.command("list")
@click.option("--all", "show_all", is_flag=True, help="also lifted and expired kills (the history)")
@click.option("--json", "as_json", is_flag=True)
def kill_list(show_all: bool, as_json: bool) -> None:
    """List the active kill switches (with --all: every kill ever recorded, newest first)."""
    repo = _repository()
    now = time.time()
    records = repo.all_kills() if show_all else repo.active_kills(now)
    data = [r.as_dict() for r in records]
    lines = [f"{'ID':>5} {'KIND':<9} {'VALUE':<40} {'SINCE':<21} {'UNTIL':<21} {'BY':<12} REASON"]
    for r in records:
        until = _when(r.until) if r.until else "lifted" if r.lifted_at else "-"
        if r.lifted_at:
            until = f"lifted {_when(r.lifted_at)}"
        lines.append(f"{r.id:>5} {r.kind:<9} {r.value:<40} {_when(r.created_at):<21} {until:<21} {r.actor:<12} {r.reason}")
    _emit(data, as_json, "\n".join(lines) if records else "(no active kill switches)")


@kill.command("lift")
@click.argument("kind", type=click.Choice(["identity", "issuer", "client", "grant"]))
@click.argument("value")
@click.option("--reason", default="", help="why (recorded with the lift)")
@click.option("--actor", help="who (recorded; default: the OS user)")
@click.option("--json", "as_json", is_flag=True)
def kill_lift(kind: str, value: str, reason: str, actor: str | None, as_json: bool) -> None:
    """Lift the active kills of KIND VALUE. Exit 1 when none was active. Revoked tokens stay revoked."""
    lifted = _repository().lift(kind=kind, value=value, now=time.time(), reason=reason, actor=_who(actor))
    _emit([r.as_dict() for r in lifted], as_json,
          f"lifted {len(lifted)} kill(s) of {kind} {value}" if lifted else f"no active kill of {kind} {value}")
    sys.exit(0 if lifted else 1)


# --- sts revoke ----------------------------------------------------------------------------
@click.command("revoke")
@click.option("--jti", help="one issued token")
@click.option("--identity", help="every token issued to this workload identity")
@click.option("--issuer", help="every token issued from subject tokens of this configured issuer")
@click.option("--trust-domain", help="every token issued to SPIFFE workloads of this trust domain")
@click.option("--grant", help="every token issued under this grant")
@click.option("--client", help="every token issued to this OAuth client")
@click.option("--subject-sha256", help="every token issued from the subject token with this SHA-256 (hex, as in the audit)")
@click.option("--lineage", help="this token and every token obtained by re-exchanging it, transitively")
@click.option("--reason", default="", help="why (recorded on each token)")
@click.option("--actor", help="who (recorded; default: the OS user)")
@click.option("--dry-run", is_flag=True, help="list what would be revoked, change nothing")
@click.option("--json", "as_json", is_flag=True)
def revoke(jti: str | None, identity: str | None, issuer: str | None, trust_domain: str | None, grant: str | None,
           client: str | None, subject_sha256: str | None, lineage: str | None, reason: str, actor: str | None,
           dry_run: bool, as_json: bool) -> None:
    """Revoke issued tokens that are still valid: they introspect inactive and are refused as
    subject or actor tokens by every replica within 2 s. Give exactly one selector."""
    from sts.store.lifecycle import jti_selector, selector

    chosen = {k: v for k, v in (("jti", jti), ("identity", identity), ("issuer", issuer), ("trust_domain", trust_domain),
                                ("grant", grant), ("client", client), ("subject_sha256", subject_sha256),
                                ("lineage", lineage)) if v is not None}
    if len(chosen) != 1:
        raise UserError("give exactly one of --jti, --identity, --issuer, --trust-domain, --grant, --client, "
                        "--subject-sha256, --lineage", "for example: sts revoke --identity spiffe://example.org/agent --dry-run")
    (kind, value), = chosen.items()
    repo = _repository()
    who = _who(actor)
    why = f"{who}: {reason}" if reason else who
    if kind == "lineage":
        where = jti_selector(repo.lineage(value, time.time()))
    else:
        where = selector(kind, value)
    result = _revoke_where(repo, where, reason=why, dry_run=dry_run)
    result["selector"] = {kind: value}
    lines = [f"{r['jti']}  {r['identity']}  -> {r['audience']}  expires {_when(r['expires_at'])}" for r in result["tokens"]]
    summary = (f"would revoke {result['matched']} still-valid tokens" if dry_run
               else f"revoked {result['revoked']} tokens; every replica refuses them within 2 s")
    _emit(result, as_json, "\n".join([*lines, summary]))
