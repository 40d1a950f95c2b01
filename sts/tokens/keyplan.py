"""Pure decisions about signing keys and key-encryption keys (RFC 7517 §4.5 ``kid``, RFC 8725 §3.1).

Nothing here reads the database, the clock or a KEK: the key ring (``sts/tokens/keyring.py``)
gathers the facts (the stored rows, which of them this process could open, which replicas
reported which KEKs) and asks these functions what to do, so every rule is table-tested.

The rules, and the outage each one prevents:

* **KEK check** (:func:`kek_verdict`): a KEK that opens none of the stored keys is the wrong
  KEK. Commands and ``sts serve`` refuse it before writing anything, instead of sealing new
  keys under it that no running broker can open.
* **Promotion** (:func:`plan_rotation`): a ``next`` key becomes ``active`` only if the process
  promoting it opened it (decrypted it and checked it against its published JWK) *and* every
  replica that reported recently holds the KEK it is sealed under. Replicas report the ids of
  the KEKs they hold, not the keys they opened: a KEK id is the hash of the KEK, so "holds the
  KEK" and "the promoter opened the key with that same KEK" together prove that the replica can
  open it, including a ``next`` key created a moment ago that no replica has loaded yet.
* **Fallback** (:func:`signing_order`): if the active key cannot be used by this process, sign
  with the newest still-valid key it can use, and say so (degraded), rather than failing every
  request while a valid key is at hand.
* **Rewrap** (:func:`plan_rewrap`): re-encrypt every key under the new KEK only once every
  running replica holds the new KEK, and only if every key opens with a KEK at hand.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from sts.store.records import ReplicaRecord, SigningKeyRow

# A retired key signs, as a fallback, only tokens that expire this long before it leaves the
# JWKS, so a relying party that fetches the JWKS late still finds it. It is the margin that
# rotation adds to a retired key's publication (sts/tokens/keyring.py).
PUBLICATION_MARGIN = 300.0


def fresh_replicas(replicas: Iterable[ReplicaRecord], now: float) -> tuple[ReplicaRecord, ...]:
    """Replicas whose last report has not expired. A replica that stopped reporting (crashed,
    partitioned) counts as gone once its own ``expires_at`` passes."""
    return tuple(r for r in replicas if r.expires_at > now)


def sealing_kek(held: Sequence[str], replicas: Sequence[ReplicaRecord]) -> str:
    """The KEK to seal a new key under: the first of ``held`` (current first, then previous)
    that every fresh replica holds, else the current one. During a KEK roll-out (some replicas
    hold only the old KEK) new keys stay under the old KEK, which everyone can open, and the
    rewrap moves them with the rest."""
    for kek_id in held:
        if all(kek_id in r.kek_ids for r in replicas):
            return kek_id
    return held[0]


# --- the KEK check -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KekVerdict:
    """How the KEKs a process holds fare against the stored keys."""

    total: int
    opened: int
    stored_kek_ids: tuple[str, ...]  # the KEK ids the stored keys are sealed under

    @property
    def ok(self) -> bool:
        # An empty store takes any KEK: the first keys will be sealed under it.
        return self.total == 0 or self.opened > 0


def kek_verdict(rows: Sequence[SigningKeyRow], opened: Collection[str]) -> KekVerdict:
    return KekVerdict(
        total=len(rows),
        opened=sum(1 for r in rows if r.kid in opened),
        stored_kek_ids=tuple(sorted({r.kek_id for r in rows})),
    )


def kek_refusal(verdict: KekVerdict, *, origin: str, kek_id: str) -> tuple[str, str]:
    """The problem and the fix that refuse a wrong KEK, one line each."""
    sealed = ", ".join(verdict.stored_kek_ids)
    problem = (
        f"the key-encryption key from {origin} (KEK id {kek_id}) opens none of the {verdict.total} stored "
        f"signing keys, which are sealed under KEK id {sealed} (nothing was changed)"
    )
    return problem, "set STS_KEK or STS_KEK_FILE to the KEK the broker runs with"


# --- promotion -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RotationPlan:
    """What one rotation of ``alg`` does, applied in one transaction by the repository.

    ``promote`` None means no rotation; ``withdraw`` lists ``next`` keys that no running process
    can open (they never signed anything, so they are retired at once); ``new_next`` asks for a
    fresh ``next`` key sealed under the current KEK; ``blocked`` says why nothing was promoted."""

    alg: str
    expect_active: str | None
    promote: str | None
    withdraw: tuple[str, ...]
    new_next: bool
    blocked: tuple[str, ...]


def _oldest_first(rows: Iterable[SigningKeyRow]) -> list[SigningKeyRow]:
    return sorted(rows, key=lambda r: (r.created_at, r.kid))


def plan_rotation(
    alg: str,
    rows: Sequence[SigningKeyRow],
    *,
    usable: Collection[str],
    held_kek_ids: Collection[str],
    replicas: Sequence[ReplicaRecord],
) -> RotationPlan:
    """Decide a rotation of ``alg``.

    ``usable``: kids the promoting process opened and checked against their published JWK.
    ``held_kek_ids``: the KEK ids the promoting process holds. ``replicas``: fresh reports only.
    The oldest ``next`` key that passes both checks is promoted (the one relying parties have
    had longest)."""
    mine = [r for r in rows if r.alg == alg]
    active = max((r for r in mine if r.state == "active"), key=lambda r: r.not_after, default=None)
    nexts = _oldest_first(r for r in mine if r.state == "next")
    promote: str | None = None
    withdraw: list[str] = []
    blocked: list[str] = []
    for row in nexts:
        reasons: list[str] = []
        if row.kid not in usable:
            reasons.append(f"next key {row.kid} does not open with the KEK of this process (it is sealed under KEK id {row.kek_id})")
        lacking = [r.replica_id for r in replicas if row.kek_id not in r.kek_ids]
        if lacking:
            reasons.append(f"replica {', '.join(lacking)} does not hold KEK id {row.kek_id}, which next key {row.kid} is sealed under")
        if not reasons:
            if promote is None:
                promote = row.kid
            continue
        blocked.extend(reasons)
        nobody_holds_it = not any(row.kek_id in r.kek_ids for r in replicas)
        if row.kid not in usable and (row.kek_id in held_kek_ids or nobody_holds_it):
            # Corrupt under a KEK we hold, or sealed under a KEK no running process holds:
            # it can never be promoted safely, and it never signed, so nothing needs it.
            withdraw.append(row.kid)
    if promote is not None:
        blocked = []
    elif not nexts:
        blocked = [f"there is no next {alg} key to promote yet"]
    return RotationPlan(
        alg=alg,
        expect_active=active.kid if active else None,
        promote=promote,
        withdraw=tuple(withdraw),
        # A promotion consumes the next key; otherwise make one only when none is left, so a
        # rotation blocked by a lagging replica does not pile up next keys.
        new_next=promote is not None or len(withdraw) == len(nexts),
        blocked=tuple(blocked),
    )


# --- signing with a fallback -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SigningCandidate:
    kid: str
    not_after: float  # the last moment it may sign; a token it signs expires no later
    fallback: bool


@dataclass(frozen=True, slots=True)
class SigningOrder:
    """Keys of one algorithm in the order they should sign. ``degraded`` is None when the
    active key itself signs, else why a fallback (or nothing) is used."""

    candidates: tuple[SigningCandidate, ...]
    degraded: str | None


def signing_order(alg: str, rows: Sequence[SigningKeyRow], *, usable: Collection[str], now: float) -> SigningOrder:
    """The active key first if this process can use it; then, newest first, other active or
    retired keys of ``alg`` that it can use and that are still valid. A retired key is valid for
    signing until its ``not_after`` and, as it leaves the JWKS at ``publish_until``, until
    ``PUBLICATION_MARGIN`` before that. ``next`` keys never sign: relying parties may not have
    fetched them yet."""
    mine = [r for r in rows if r.alg == alg]
    actives = sorted((r for r in mine if r.state == "active" and r.not_after > now), key=lambda r: r.not_after, reverse=True)
    primary = actives[0] if actives else None

    def last_signing_moment(row: SigningKeyRow) -> float:
        if row.state == "retired" and row.publish_until is not None:
            return min(row.not_after, row.publish_until - PUBLICATION_MARGIN)
        return row.not_after

    candidates: list[SigningCandidate] = []
    if primary is not None and primary.kid in usable:
        candidates.append(SigningCandidate(primary.kid, primary.not_after, fallback=False))
    others = [r for r in mine if r.state in ("active", "retired") and r.kid in usable and (primary is None or r.kid != primary.kid)]
    others.sort(key=lambda r: (r.activated_at or r.created_at, r.not_after), reverse=True)
    candidates += [SigningCandidate(r.kid, last_signing_moment(r), fallback=True) for r in others if last_signing_moment(r) > now]
    if candidates and not candidates[0].fallback:
        return SigningOrder(tuple(candidates), None)
    if primary is None:
        reason = f"no valid active {alg} key"
    else:
        reason = f"active {alg} key {primary.kid} cannot be used by this process (sealed under KEK id {primary.kek_id})"
    return SigningOrder(tuple(candidates), reason)


# --- KEK rotation ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RewrapPlan:
    """Which keys to re-encrypt under the current KEK, and what stands in the way."""

    reseal: tuple[str, ...]
    already_current: int
    unopenable: tuple[str, ...]
    lagging_replicas: tuple[str, ...]

    @property
    def refused(self) -> bool:
        return bool(self.unopenable or self.lagging_replicas)


def plan_rewrap(
    rows: Sequence[SigningKeyRow], *, current_kek_id: str, opened: Collection[str], replicas: Sequence[ReplicaRecord]
) -> RewrapPlan:
    """Every key not yet under the current KEK is re-encrypted, all in one transaction, or none
    is: a key that opens with no KEK at hand, or a running replica that does not hold the
    current KEK (it could not open the rewrapped keys), refuses the whole rewrap."""
    stale = [r for r in rows if r.kek_id != current_kek_id]
    return RewrapPlan(
        reseal=tuple(r.kid for r in stale if r.kid in opened),
        already_current=len(rows) - len(stale),
        unopenable=tuple(r.kid for r in stale if r.kid not in opened),
        lagging_replicas=tuple(r.replica_id for r in replicas if current_kek_id not in r.kek_ids),
    )
