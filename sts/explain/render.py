"""Human-readable text of an explain report and of a past request's audit record.

Plain text for a terminal: the verdict first (what the caller would be answered and why), then
the steps in pipeline order, each check with ``ok``, ``FAILED`` or ``-`` (not reached). Values
that came from a token or a request are printed with ``repr`` so that control characters and
escape sequences cannot reach the terminal as such.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

_MARK = {"ok": "ok", "failed": "FAILED", "error": "ERROR", "not_checked": "-", "not_reached": "-"}
_VERDICT = {"would_issue": "would issue a token", "would_refuse": "would refuse",
            "undecided": "could not decide (the server would answer 5xx)"}


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t is not None else "-"


def _safe(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _grants(lines: list[str], grants: Sequence[Mapping[str, Any]], target: str | None, heading: str = "grants") -> None:
    lines.append(f"{heading} (in file order" + (f"; target {_safe(target)}" if target else "") + "):")
    if not grants:
        lines.append("  (none)")
    width = max((len(g["grant"]) + (8 if g.get("mode") == "audit" else 0) for g in grants), default=0)
    for i, g in enumerate(grants, 1):
        name = g["grant"] + (" (audit)" if g.get("mode") == "audit" else "")
        outcome = g["outcome"]
        if outcome == "won":
            what = "WON"
        elif outcome == "stopped":
            what = f"stopped at {g.get('step')}"
        elif outcome == "not_reached":
            what = "not reached"
        else:
            what = "audit mode"
        why = f": {_safe(g['why'])}" if g.get("why") else ""
        lines.append(f"  {i:>2}. {name:<{width}}  {what}{why}")


def _checks(lines: list[str], checks: Sequence[Mapping[str, Any]]) -> None:
    width = max((len(c["check"]) for c in checks), default=0)
    for c in checks:
        detail = f"  {_safe(c['detail'])}" if c.get("detail") else ""
        lines.append(f"    {_MARK.get(c['result'], c['result']):<6} {c['check']:<{width}}{detail}")


def render_report(r: Mapping[str, Any]) -> str:
    """The text of an ``explain_exchange`` report."""
    lines: list[str] = []
    refusal = r.get("refusal")
    head = _VERDICT.get(r["outcome"], r["outcome"])
    if refusal is not None:
        head += f": {refusal['answer']['error']} ({refusal['reason']})"
    lines.append(head)
    if refusal is not None:
        lines.append(f"  the caller would see: HTTP {refusal['status']} {json.dumps(refusal['answer'])}")
        if refusal.get("detail"):
            lines.append(f"  detail (audit record only): {_safe(refusal['detail'])}")
    cfg = r["config"]
    lines.append(f"config: {cfg.get('path') or '-'} (version {cfg['version']}); keys: {r['keys']}; at {_when(r['at'])}")
    req = r["request"]
    targets = [*(f"audience {a}" for a in req["audiences"]), *(f"resource {x}" for x in req["resources"])]
    lines.append(f"request: {', '.join(_safe(t) for t in targets) or 'no target'}; scope "
                 f"{_safe(req['scope']) if req['scope'] is not None else '(default)'}; client "
                 f"{_safe(req['client_id']) if req['client_id'] else '(public)'}")
    if "client" in r:
        c = r["client"]
        lines.append(f"client {_safe(c['client_id'])}: " + ("may use token exchange" if c["may_exchange"] else "may NOT use token exchange"))
    for tok in r.get("tokens", []):
        lines.append("")
        lines.append(f"{tok['role']} token" + ("" if tok["verified"] else " (NOT verified: claims below are unverified)"))
        issuer = tok.get("issuer")
        if issuer is not None:
            lines.append(f"  issuer: {_safe(issuer['name']) if issuer['name'] else '(none)'}: {_safe(issuer['why'])}")
        key = tok.get("key") or {}
        lines.append(f"  key: kid {_safe(key.get('kid'))}, alg {_safe(key.get('alg'))}"
                     + (f" ({key['kty']})" if key.get("kty") else "") + (f"; {_safe(key['error'])}" if key.get("error") else ""))
        lines.append("  checks:")
        _checks(lines, tok.get("checks", []))
        mapping = tok.get("mapping")
        if mapping is not None:
            if mapping.get("rules") is not None:
                preset = f", preset {mapping['preset']}" if mapping.get("preset") else ""
                lines.append(f"  claim validation rules (issuer {mapping.get('issuer')}{preset}):")
                if not mapping["rules"]:
                    lines.append("    (none)")
                for rule in mapping["rules"]:
                    why = f" ({_safe(rule['why'])})" if rule.get("why") else ""
                    lines.append(f"    {_MARK.get(rule['result'], rule['result']):<6} {rule['mode']:<7} {rule['rule']}: "
                                 f"{_safe(rule['message'])}{why}")
            denied = mapping.get("denied")
            if denied is not None:
                lines.append(f"  mapping refused at {denied['rule']}: {_safe(denied['message'])} ({denied['reason']})")
        if "identity" in tok:
            source = f" (from {mapping['identity_source']})" if mapping and mapping.get("identity_source") else ""
            lines.append(f"  identity: {_safe(tok['identity'])}{source}")
            attrs = tok.get("attributes") or {}
            lines.append("  attributes: " + (", ".join(f"{k}={_safe(v)}" for k, v in attrs.items()) or "(none)"))
    if "grants" in r:
        lines.append("")
        _grants(lines, r["grants"], r.get("target"))
        if r.get("trace_agrees") is False:
            lines.append("  WARNING: the trace disagrees with the decision; this is a bug, please report it")
    for j in r.get("one_time_jti", []):
        lines.append(f"one-time jti {_safe(j['jti'])}: would be spent (namespace {j['namespace']}); not spent by explain")
    token = r.get("token")
    if token is not None:
        lines.append("")
        lines.append(f"token that would be issued: {token['token_type']} {token['algorithm']}, lifetime {token['lifetime']} s")
        for line in json.dumps(token["claims"], indent=2, default=str).splitlines():
            lines.append(f"  {_safe(line)}")
    if r.get("notes"):
        lines.append("")
        lines.append("notes (audit record):")
        lines.extend(f"  - {_safe(n)}" for n in r["notes"])
    lines.append("")
    lines.append("explain did not: " + "; ".join(r["not_done"]))
    return "\n".join(lines)


def render_record(record: Mapping[str, Any]) -> str:
    """The text of one audit record, with what its ``explain`` context says."""
    lines: list[str] = []
    verdict = {"issued": "issued a token", "denied": "refused", "error": "failed (5xx)"}.get(record["outcome"], record["outcome"])
    head = f"request {_safe(record['request_id'])} at {_when(record['time'])}: {verdict}"
    if record.get("error"):
        head += f": {record['error']} ({_safe(record.get('reason'))})"
    lines.append(head)
    if record.get("detail"):
        lines.append(f"  detail: {_safe(record['detail'])}")
    lines.append(f"config version: {record.get('config_version') or '-'}")
    fields = (("client", "client_id"), ("issuer", "issuer"), ("external subject", "external_subject"),
              ("identity", "identity"), ("actor", "actor_identity"), ("grant", "grant"))
    for label, key in fields:
        if record.get(key):
            lines.append(f"{label}: {_safe(record[key])}")
    lines.append("requested: " + (", ".join(_safe(t) for t in record.get("requested_targets") or []) or "no target")
                 + "; scope " + (" ".join(record["requested_scopes"]) if record.get("requested_scopes") is not None else "(default)"))
    if record["outcome"] == "issued":
        lines.append(f"granted: {_safe(record.get('granted_target'))} scope {' '.join(record.get('granted_scopes') or [])!r}"
                     f", lifetime {record.get('lifetime')} s, jti {_safe(record.get('issued_jti'))}")
    if record.get("subject_token_sha256"):
        lines.append(f"subject token sha256: {record['subject_token_sha256']}")
    explain = (record.get("context") or {}).get("explain")
    if isinstance(explain, Mapping):
        if "token_sha256" in explain:
            state = "verified" if explain.get("verified") else "UNVERIFIED"
            lines.append(f"{explain.get('token', 'subject')} token refused at check {explain.get('check')}: "
                         f"sha256 {explain['token_sha256']}")
            for name in ("iss", "sub"):
                if name in explain:
                    lines.append(f"  {name} ({state}): {_safe(explain[name])}")
            if "audiences" in explain:
                lines.append(f"  audiences the token carried: {', '.join(_safe(a) for a in explain['audiences'])}"
                             + (f" (+{explain['audiences_omitted']} more)" if explain.get("audiences_omitted") else ""))
        if "grants" in explain:
            lines.append("")
            _grants(lines, explain["grants"], explain.get("target"), heading="grants considered")
            if explain.get("issuer_not_allowed"):
                lines.append(f"  ({explain['issuer_not_allowed']} more grant(s) do not admit this issuer)")
            if explain.get("grants_omitted"):
                lines.append(f"  ({explain['grants_omitted']} more grant(s) left out of the record)")
    elif record["outcome"] == "denied":
        lines.append("(this record holds no explain details: it predates them, or the refusal came before the token was read)")
    if record.get("mode_notes"):
        lines.append("")
        lines.append("notes:")
        lines.extend(f"  - {_safe(n)}" for n in record["mode_notes"])
    return "\n".join(lines)
