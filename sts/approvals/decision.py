"""The pure part of just-in-time approval: what needs approval, what exactly was asked, and
what the current approvals say about it.

"What was asked" is one canonical JSON value, ``{"target", "scopes"[, "authorization_details"]}``
(RFC 8693 §2.1 target, RFC 6749 §3.3 scopes, RFC 9396 §2 details), serialised with sorted keys
and no insignificant whitespace; scopes are a sorted set (RFC 6749 §3.3: "The strings are
order-independent") and details a sorted list of their own canonical forms. An approval holds
for exactly that value asked by exactly that party (identity, issuer, client, actor): the
fingerprint is the SHA-256 of both, so a wider, narrower or otherwise different request, or the
same request by another party, is another request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from sts.config.models import ApprovalConfig

APPROVED: Final = "approved"
PENDING: Final = "pending"
DENIED: Final = "denied"
REVOKED: Final = "revoked"
EXPIRED: Final = "expired"
STATUSES: Final = (PENDING, APPROVED, DENIED, REVOKED, EXPIRED)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text as is, no NaN: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def elevated(rule: ApprovalConfig, scopes: Iterable[str],
             authorization_details: Sequence[Mapping[str, Any]] | None = None) -> tuple[str, ...]:
    """What in a request needs approval under ``rule``: its marked scopes, and
    ``type.field=value`` for each marked authorization-detail value (sorted, unique). Empty:
    the request needs no approval."""
    marked = set(rule.scopes)
    found = {s for s in scopes if s in marked}
    if authorization_details and rule.authorization_details:
        for detail in authorization_details:
            if not isinstance(detail, Mapping):
                continue
            for r in rule.authorization_details:
                if detail.get("type") != r.type:
                    continue
                held = detail.get(r.field)
                values = held if isinstance(held, list) else [held]
                found.update(f"{r.type}.{r.field}={v}" for v in values if isinstance(v, str) and v in r.values)
    return tuple(sorted(found))


@dataclass(frozen=True, slots=True)
class Ask:
    """One request for a token that needs approval: who asked and exactly what.
    Invariant: ``scopes`` is sorted and unique; ``authorization_details`` is None or sorted by
    canonical form."""

    identity: str
    issuer: str
    client: str | None
    actor: str | None
    target: str
    scopes: tuple[str, ...]
    authorization_details: tuple[Mapping[str, Any], ...] | None = None
    grant: str | None = None  # recorded, not part of the fingerprint: the route, not the ask

    @classmethod
    def of(cls, *, identity: str, issuer: str, client: str | None, actor: str | None, target: str,
           scopes: Iterable[str], authorization_details: Sequence[Mapping[str, Any]] | None = None,
           grant: str | None = None) -> Ask:
        details = None
        if authorization_details:
            details = tuple(sorted(authorization_details, key=canonical_json))
        return cls(identity=identity, issuer=issuer, client=client, actor=actor, target=target,
                   scopes=tuple(sorted(set(scopes))), authorization_details=details, grant=grant)

    def what(self) -> dict[str, Any]:
        """The canonical "what was asked" value (the ``request`` the approver sees)."""
        value: dict[str, Any] = {"target": self.target, "scopes": list(self.scopes)}
        if self.authorization_details:
            value["authorization_details"] = [dict(d) for d in self.authorization_details]
        return value

    def who(self) -> dict[str, str | None]:
        return {"identity": self.identity, "issuer": self.issuer, "client": self.client, "actor": self.actor}

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(canonical_json({"who": self.who(), "what": self.what()}).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Standing:
    """What the approvals say about one fingerprint: ``status`` approved, pending or denied,
    holding until ``until``."""

    id: str
    status: Literal["approved", "pending", "denied"]
    until: float

    def holds(self, now: float) -> bool:
        return now < self.until


# When records disagree (a replica sees a denial and an approval of one request), the answer
# that refuses wins: fail closed.
_PRECEDENCE: Final = {DENIED: 0, APPROVED: 1, PENDING: 2}


@dataclass(frozen=True, slots=True)
class ApprovalSnapshot:
    """The approvals one replica holds in memory. Invariant: never mutated; ``standing`` maps
    a fingerprint to the one record that answers for it."""

    version: int = -1
    standing: Mapping[str, Standing] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(cls, records: Iterable[tuple[str, Standing]], version: int) -> ApprovalSnapshot:
        table: dict[str, Standing] = {}
        for fingerprint, s in records:
            held = table.get(fingerprint)
            if held is None or (_PRECEDENCE[s.status], -s.until) < (_PRECEDENCE[held.status], -held.until):
                table[fingerprint] = s
        return cls(version=version, standing=MappingProxyType(table))

    def lookup(self, fingerprint: str, now: float) -> Standing | None:
        """The standing that still holds for ``fingerprint``, or None (unknown here: the store
        is asked, and records a new request)."""
        s = self.standing.get(fingerprint)
        return s if s is not None and s.holds(now) else None


EMPTY: Final = ApprovalSnapshot()
