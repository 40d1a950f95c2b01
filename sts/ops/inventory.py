"""The inventory of workload identities and the least-privilege review (`sts inventory`).

Pure functions over the usage counters (sts/store/usage.py) and the trust configuration
(sts/config/models.py): no I/O, no clock (the review window is passed in).

* :func:`inventory`: every identity the broker has seen, per issuer, with first and last seen,
  the targets and scopes it obtained, and its refusals.
* :func:`unused`: what the configuration allows that nobody used within a window: grants,
  issuers of a grant, targets of a grant, scopes of a target, and identities that matched a
  grant but did not exchange through it. Each finding says what to remove. A grant in audit
  mode (it issues nothing) counts as used when it *would* have allowed a request, so a grant
  can be trimmed before it is enforced.

What it cannot know: a grant added to the configuration during the window looks unused for the
part of the window before it existed; counters are per UTC day, so the first day of the
window counts whole once one of its requests is inside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from sts.config.models import BrokerConfig, GrantConfig, TargetConfig
from sts.store.usage import AUDIT_ALLOW, UsageRow
from sts.trust.policy import resource_prefix_matches


@dataclass(slots=True)
class TargetUse:
    """A target an identity obtained tokens for: the union of the scopes granted for it."""

    target: str
    scopes: list[str]
    count: int
    last_seen: float


@dataclass(slots=True)
class IdentityEntry:
    """One workload identity as seen from one issuer (identities are only unique per issuer)."""

    identity: str
    issuer: str
    first_seen: float
    last_seen: float
    issued: int = 0
    denied: int = 0
    errors: int = 0
    last_issued: float | None = None
    targets: list[TargetUse] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)
    denial_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def inventory(rows: Iterable[UsageRow]) -> list[IdentityEntry]:
    """Every identity in ``rows`` (counters summed over any period), sorted by identity."""
    entries: dict[tuple[str, str], IdentityEntry] = {}
    targets: dict[tuple[str, str], dict[str, TargetUse]] = {}
    for r in rows:
        key = (r.identity, r.issuer)
        e = entries.get(key)
        if e is None:
            e = entries[key] = IdentityEntry(r.identity, r.issuer, r.first_seen, r.last_seen)
            targets[key] = {}
        e.first_seen = min(e.first_seen, r.first_seen)
        e.last_seen = max(e.last_seen, r.last_seen)
        if r.outcome == AUDIT_ALLOW:
            continue  # what an audit-mode grant would have done: not something obtained
        if r.client_id and r.client_id not in e.clients:
            e.clients.append(r.client_id)
        if r.outcome == "issued":
            e.issued += r.count
            e.last_issued = r.last_seen if e.last_issued is None else max(e.last_issued, r.last_seen)
            if r.grant and r.grant not in e.grants:
                e.grants.append(r.grant)
            use = targets[key].get(r.target)
            if use is None:
                use = targets[key][r.target] = TargetUse(r.target, [], 0, r.last_seen)
            use.count += r.count
            use.last_seen = max(use.last_seen, r.last_seen)
            use.scopes.extend(s for s in r.scopes if s not in use.scopes)
        else:
            if r.outcome == "denied":
                e.denied += r.count
            else:
                e.errors += r.count
            reason = r.reason or r.outcome
            e.denial_reasons[reason] = e.denial_reasons.get(reason, 0) + r.count
    for key, e in entries.items():
        e.targets = sorted(targets[key].values(), key=lambda t: t.target)
        for t in e.targets:
            t.scopes.sort()
        e.grants.sort()
        e.clients.sort()
        e.denial_reasons = dict(sorted(e.denial_reasons.items()))
    return [entries[k] for k in sorted(entries)]


# --- the least-privilege review ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """Something the configuration allows that was not used within the window. ``action`` is
    the one-line instruction (what to remove, where); ``last_used`` is the last time it was
    used at all, as far as the counters go back (None: never)."""

    kind: str  # grant | issuer | target | scope | identity
    grant: str
    action: str
    last_used: float | None
    issuer: str | None = None
    target: str | None = None
    scope: str | None = None
    identity: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _date(t: float | None) -> str:
    if t is None:
        return "never used"
    return "last used " + datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d")


def target_covers(target: TargetConfig, requested: str) -> bool:
    """Whether a token granted for ``requested`` (the audited target) came through ``target``."""
    if target.resource_prefix is not None:
        return resource_prefix_matches(target.resource_prefix, requested)
    return requested == target.value


def _uses(grant: GrantConfig, rows: Sequence[UsageRow]) -> list[UsageRow]:
    outcome = AUDIT_ALLOW if grant.mode == "audit" else "issued"
    return [r for r in rows if r.grant == grant.name and r.outcome == outcome]


def _last(rows: Iterable[UsageRow]) -> float | None:
    return max((r.last_seen for r in rows), default=None)


def unused(config: BrokerConfig, window: Sequence[UsageRow], history: Sequence[UsageRow], *, days: float) -> list[Finding]:
    """The review: ``window`` holds the counters of the review window, ``history`` every
    counter kept (for "last used"); ``days`` is the window's length, for the messages.
    Findings come in the configuration's grant order."""
    span = f"{days:g} days" if days != 1 else "1 day"
    found: list[Finding] = []
    for g in config.grants:
        used, ever = _uses(g, window), _uses(g, history)
        verb = "would have allowed" if g.mode == "audit" else "issued"
        if not used:
            who = f" (match: identity {g.match.identity})" if g.match.identity is not None else ""
            found.append(Finding("grant", g.name, f"remove grant {g.name}{who}: it {verb} nothing in {span} ({_date(_last(ever))})",
                                 _last(ever), identity=g.match.identity))
            continue  # removing the grant covers its issuers, targets and scopes
        for issuer in g.issuers or ():
            if not any(r.issuer == issuer for r in used):
                last = _last(r for r in ever if r.issuer == issuer)
                found.append(Finding("issuer", g.name, f"remove issuer {issuer} from grant {g.name}: no token of it in {span} ({_date(last)})",
                                     last, issuer=issuer))
        for t in g.targets:
            through = [r for r in used if target_covers(t, r.target)]
            if not through:
                last = _last(r for r in ever if target_covers(t, r.target))
                found.append(Finding("target", g.name, f"remove target {t.value} from grant {g.name}: {verb} no token for it in {span} ({_date(last)})",
                                     last, target=t.value))
                continue
            obtained = {s for r in through for s in r.scopes}
            for scope in t.scopes:
                if scope not in obtained:
                    last = _last(r for r in ever if target_covers(t, r.target) and scope in r.scopes)
                    found.append(Finding("scope", g.name,
                                         f"remove scope {scope} from target {t.value} of grant {g.name}: not granted in {span} ({_date(last)})",
                                         last, target=t.value, scope=scope))
        # Identities that matched this grant (it issued them a token before, or refused them a
        # target or scope it has) but did not exchange through it in the window.
        active = {(r.identity, r.issuer) for r in used}
        seen: dict[tuple[str, str], float | None] = {}
        for r in history:
            if r.grant != g.name or (r.identity, r.issuer) in active or r.outcome == AUDIT_ALLOW and g.mode != "audit":
                continue
            key = (r.identity, r.issuer)
            issued_at = r.last_seen if r.outcome in ("issued", AUDIT_ALLOW) else None
            previous = seen.get(key)
            seen[key] = max((t for t in (previous, issued_at) if t is not None), default=None)
        for (identity, issuer), last in sorted(seen.items()):
            found.append(Finding("identity", g.name,
                                 f"identity {identity} ({issuer}) matched grant {g.name} but did not exchange through it in {span} "
                                 f"({_date(last)}): narrow the grant's match to leave it out, or retire the workload",
                                 last, issuer=issuer, identity=identity))
    return found
