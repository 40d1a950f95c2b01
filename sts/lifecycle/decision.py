"""The pure lifecycle decision: is this exchange stopped by a kill switch or a revocation?

A snapshot is immutable and replaced whole by ``sts.lifecycle.view``; a request reads the one
reference once, so it sees one consistent state. The lookups are dict and set membership tests:
no database read happens on the request path (cost measured in docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

# Fixed public text: the caller learns that the exchange is stopped, not by what or why (the
# kind, kill id and reason go to the audit record only).
KILLED_TEXT: Final = "The subject is not allowed to exchange tokens at this time."
REVOKED_TEXT: Final = "The subject token was revoked."
REVOKED_ACTOR_TEXT: Final = "The actor token was revoked."


@dataclass(frozen=True, slots=True)
class KillSwitch:
    """One active kill: ``kind`` is identity, issuer (configured issuer name), client or grant.
    ``until`` None means until lifted."""

    id: int
    kind: str
    value: str
    until: float | None = None
    reason: str = ""

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an exchange is stopped: ``reason`` is the audit reason (``killed_identity``,
    ``subject_revoked``...), ``text`` the fixed public text, ``detail`` private."""

    reason: str
    text: str
    detail: str


@dataclass(frozen=True, slots=True)
class LifecycleSnapshot:
    """The kill switches and revoked jtis one replica enforces. Invariant: never mutated;
    ``kills`` maps (kind, value) to the kill with the latest ``until`` for it."""

    kills_version: int = -1
    revocations_version: int = -1
    kills: Mapping[tuple[str, str], KillSwitch] = field(default_factory=lambda: MappingProxyType({}))
    revoked: frozenset[str] = frozenset()

    @classmethod
    def build(cls, *, kills: Iterable[KillSwitch], revoked: Iterable[str], kills_version: int,
              revocations_version: int) -> LifecycleSnapshot:
        table: dict[tuple[str, str], KillSwitch] = {}
        for kill in kills:
            key = (kill.kind, kill.value)
            held = table.get(key)
            # Two kills of one target: the longer one wins (None is forever).
            if held is None or (held.until is not None and (kill.until is None or kill.until > held.until)):
                table[key] = kill
        return cls(kills_version=kills_version, revocations_version=revocations_version,
                   kills=MappingProxyType(table), revoked=frozenset(revoked))

    def is_killed(self, identity: str | None, issuer: str | None, client: str | None, grant: str | None,
                  now: float) -> KillSwitch | None:
        """The active kill that stops an exchange by these, or None."""
        kills = self.kills
        if not kills:
            return None
        for key in (("identity", identity), ("issuer", issuer), ("client", client), ("grant", grant)):
            if key[1] is not None:
                kill = kills.get(key)  # type: ignore[call-overload]
                if kill is not None and kill.active(now):
                    return kill
        return None

    def check(self, *, identity: str, actor: str | None, issuer: str, client: str | None, grant: str | None,
              subject_jti: str | None, actor_jti: str | None, now: float) -> Refusal | None:
        """The one question the pipeline asks once identity and grant are known. ``subject_jti``
        and ``actor_jti`` are given only for tokens this broker issued (others cannot be in
        ``revoked``)."""
        if self.revoked:
            if subject_jti is not None and subject_jti in self.revoked:
                return Refusal("subject_revoked", REVOKED_TEXT, f"jti {subject_jti}")
            if actor_jti is not None and actor_jti in self.revoked:
                return Refusal("actor_revoked", REVOKED_ACTOR_TEXT, f"jti {actor_jti}")
        if not self.kills:
            return None
        kill = self.is_killed(identity, issuer, client, grant, now)
        if kill is None and actor is not None:
            kill = self.is_killed(actor, None, None, None, now)
            if kill is not None:
                return Refusal("killed_actor_identity", KILLED_TEXT, f"kill {kill.id}: {kill.reason}"[:500])
        if kill is None:
            return None
        return Refusal(f"killed_{kill.kind}", KILLED_TEXT, f"kill {kill.id}: {kill.reason}"[:500])


EMPTY: Final = LifecycleSnapshot()
