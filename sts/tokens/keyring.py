"""Signing keys: storage at rest, rotation, publication (RFC 7517, RFC 7518 §3, RFC 8725 §3.1).

Keys live in the database so that every replica signs with the same keys and publishes the
same JWKS. Private keys are sealed with AES-256-GCM under a key-encryption key (KEK) that is
never stored in the database; the key id is bound as associated data so a ciphertext cannot be
swapped onto another row.

Lifecycle, per signing algorithm:

``next``     published in the JWKS, signs nothing. It exists so that relying parties have it
             cached before it signs anything.
``active``   signs; published. It signs nothing after its ``not_after``.
``retired``  published until ``publish_until`` (its last token has expired). Signs only as a
             fallback, while the active key cannot be used by this process (see below).

Rotation promotes ``next`` to ``active``, retires the old ``active`` and creates a new ``next``
in one optimistic transaction, so concurrent replicas cannot rotate twice.

The KEK can be wrong or differ between processes, and a mistake must not take the fleet down
(the rules are pure functions in ``sts/tokens/keyplan.py``): a KEK that opens no stored key is
refused before anything is written; a ``next`` key is promoted only if the promoting process
opened it and every replica that reported recently holds its KEK; a process that cannot use
the active key signs with the newest still-valid key it can use and reports itself degraded.
KEK rotation: the new KEK seals, the previous one still opens, and ``rewrap`` re-encrypts every
key under the new one in one transaction.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sts import jose
from sts.settings import KekMaterial
from sts.settings import kek_id as compute_kek_id
from sts.store.keys import KeyRepository
from sts.store.records import ReplicaRecord, SigningKeyRow
from sts.store.replicas import ReplicaRepository
from sts.tokens.keyplan import (
    PUBLICATION_MARGIN,
    KekVerdict,
    RewrapPlan,
    fresh_replicas,
    kek_refusal,
    kek_verdict,
    plan_rewrap,
    plan_rotation,
    sealing_kek,
    signing_order,
)

log = logging.getLogger("sts.keys")

SIGNING_ALGORITHMS = ("ES256", "RS256", "EdDSA")


def rotation_due_at(rows: Iterable[SigningKeyRow], alg: str, key_lifetime: float, now: float) -> float:
    """The moment after which ``rotate_due`` rotates ``alg``: when its newest active key has
    less than a quarter of its life left (already past when it has no active key). The admin
    API shows it (sts.admin)."""
    newest = max((r.not_after for r in rows if r.alg == alg and r.state == "active"), default=now)
    return newest - key_lifetime / 4


class KeyUnavailable(Exception):
    """No usable signing key for an algorithm (never loaded, wrong KEK, or expired)."""


class KekMismatch(Exception):
    """The key-encryption key opens none of the stored signing keys: the wrong KEK. ``fix``
    says what to change, for the one line the command line prints."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.fix = fix


class KeyEncryptor:
    """AES-256-GCM sealing of private keys under the KEK. Invariant: a blob opens only with the
    same KEK and the same kid it was sealed for. Holds the current KEK and, during a KEK
    rotation, previous ones; opens with the one named by the row's ``kek_id`` and seals under
    the current one unless told otherwise (``keyplan.sealing_kek``)."""

    _NONCE = 12

    def __init__(self, kek: bytes, previous: Iterable[bytes] = ()) -> None:
        self.kek_id = compute_kek_id(kek)
        self._aeads = {self.kek_id: AESGCM(kek)}
        for old in previous:
            self._aeads.setdefault(compute_kek_id(old), AESGCM(old))
        self.kek_ids = frozenset(self._aeads)
        self.held = tuple(self._aeads)  # current first, then previous ones

    @classmethod
    def from_material(cls, material: KekMaterial) -> KeyEncryptor:
        return cls(material.current, material.previous)

    def seal(self, plaintext: bytes, kid: str, kek_id: str | None = None) -> bytes:
        nonce = os.urandom(self._NONCE)
        return nonce + self._aeads[kek_id or self.kek_id].encrypt(nonce, plaintext, b"sts-signing-key:" + kid.encode())

    def open(self, blob: bytes, kid: str, kek_id: str | None = None) -> bytes:
        aead = self._aeads.get(kek_id or self.kek_id)
        if aead is None:
            raise KeyUnavailable(f"signing key {kid} is sealed under KEK id {kek_id}, which this process does not hold")
        try:
            return aead.decrypt(blob[: self._NONCE], blob[self._NONCE :], b"sts-signing-key:" + kid.encode())
        except InvalidTag as exc:
            raise KeyUnavailable(f"signing key {kid} does not open with this KEK") from exc

    def opens(self, row: SigningKeyRow) -> bool:
        try:
            self.open(row.private_key_ciphertext, row.kid, row.kek_id)
        except KeyUnavailable:
            return False
        return True


_PROBE_CLAIMS = {"iss": "sts-key-check", "sub": "sts-key-check", "aud": "sts-key-check"}


def key_pair_problem(private: jose.PrivateKey, published_jwk: dict[str, Any]) -> str | None:
    """Why ``private`` must not sign, or None: a token it signs has to verify under the JWK
    that relying parties fetch from our ``jwks_uri``, with the same ``kid`` and ``alg``.

    Run once when a key is loaded: what it guards against (a sealed key that does not belong
    to its published row, a wrong algorithm or kid) is a property of the key, which the
    per-token self-check (sts.tokens.signer) cannot see, as it verifies with the public half
    of the private key in hand."""
    try:
        public = jose.parse_jwk(published_jwk)
        if public.kid != private.kid or public.alg != private.alg:
            return "kid or alg differ"
        token = jose.sign(_PROBE_CLAIMS, private, typ="JWT")
        decoded = jose.unsafe_decode(token)
        jose.verify_signature(decoded, public, jose.check_header(decoded.header, allowed_algorithms=(private.alg,)))
    except jose.JOSEError as exc:
        return exc.reason
    return None


@dataclass(frozen=True, slots=True)
class ActiveKey:
    private: jose.PrivateKey
    public: jose.PublicKey
    not_after: float
    fallback: bool = False  # signs because the active key cannot be used by this process


@dataclass(frozen=True)
class KeySnapshot:
    """An immutable view swapped in whole on every refresh, so readers never lock.
    ``signing`` holds, per algorithm, the keys in the order they may sign; ``degraded`` says,
    per algorithm, why a fallback signs (or why nothing can)."""

    signing: dict[str, tuple[ActiveKey, ...]]
    jwks: dict[str, Any]
    rows: tuple[SigningKeyRow, ...]
    degraded: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RotationOutcome:
    alg: str
    promoted: str | None
    withdrawn: tuple[str, ...] = ()
    new_next: str | None = None
    blocked: tuple[str, ...] = ()
    conflict: bool = False  # another replica changed the keys first; nothing was written
    created: tuple[str, ...] = ()  # there was no next key: the missing keys were set up instead


@dataclass(frozen=True, slots=True)
class RewrapOutcome:
    plan: RewrapPlan
    applied: bool
    conflict: bool = False


class KeyRing:
    """The process's view of the signing keys. Reads are lock-free snapshot lookups; refresh,
    rotation, rewrap and replica reports do database I/O and run off the request path.

    Invariant: a key becomes active only through :func:`keyplan.plan_rotation`, so only when
    this process opened it and every fresh replica holds its KEK."""

    def __init__(
        self,
        repository: KeyRepository,
        encryptor: KeyEncryptor,
        *,
        key_lifetime: float,
        max_token_lifetime: float,
        clock: Callable[[], float] = time.time,
        replicas: ReplicaRepository | None = None,
        replica_id: str | None = None,
        replica_ttl: float = 90.0,
    ) -> None:
        self._repo = repository
        self._enc = encryptor
        self._lifetime = float(key_lifetime)
        self._max_token_lifetime = float(max_token_lifetime)
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot = KeySnapshot(signing={}, jwks={"keys": []}, rows=())
        self._decrypted: dict[str, jose.PrivateKey] = {}
        self._public: dict[str, jose.PublicKey] = {}
        self._unusable: dict[tuple[str, str], str] = {}
        self._replicas = replicas
        self._replica_id = replica_id
        self._replica_ttl = float(replica_ttl)
        self._started_at = clock()
        # Read by the metrics endpoint: how many tokens a fallback key was chosen for.
        self.fallback_signatures = 0

    @property
    def kek_ids(self) -> frozenset[str]:
        return self._enc.kek_ids

    @property
    def current_kek_id(self) -> str:
        return self._enc.kek_id

    def allow_token_lifetime(self, seconds: float) -> None:
        """Raise (never lower) the longest lifetime a signed token may have, which bounds how
        long a retired key stays published. Lowering it could unpublish a key while tokens it
        signed under the old maximum are still valid."""
        self._max_token_lifetime = max(self._max_token_lifetime, float(seconds))

    # -- reads (hot path) -------------------------------------------------------------------
    def active(self, alg: str) -> ActiveKey:
        """The key to sign with: the active key, or a fallback while it cannot be used."""
        keys = self._snapshot.signing.get(alg)
        now = self._clock()
        if keys and not keys[0].fallback and keys[0].not_after > now:
            return keys[0]  # the common case, as cheap as before fallbacks existed
        key = self.peek(alg)
        if key.fallback:
            self.fallback_signatures += 1
        return key

    def peek(self, alg: str) -> ActiveKey:
        """The key ``active`` would sign with, without counting a signature (for metrics)."""
        now = self._clock()
        for key in self._snapshot.signing.get(alg) or ():
            if key.not_after > now:
                return key
        raise KeyUnavailable(f"no usable {alg} signing key")

    def jwks(self) -> dict[str, Any]:
        return self._snapshot.jwks

    def public_keys(self) -> dict[str, jose.PublicKey]:
        return {keys[0].public.kid or "": keys[0].public for keys in self._snapshot.signing.values() if keys}

    def ready(self, algs: Iterable[str]) -> bool:
        """Every algorithm has a key that may sign (the active key or a fallback)."""
        now = self._clock()
        signing = self._snapshot.signing
        return all(any(k.not_after > now for k in signing.get(alg, ())) for alg in algs)

    def degraded(self, algs: Iterable[str] | None = None) -> dict[str, str]:
        """Algorithms whose active key this process cannot use, with the reason (a fallback
        signs, or nothing does). Empty when all is well; read by ``/readyz`` and metrics."""
        snap = self._snapshot.degraded
        return dict(snap) if algs is None else {a: snap[a] for a in algs if a in snap}

    def rows(self) -> tuple[SigningKeyRow, ...]:
        return self._snapshot.rows

    # -- I/O (start-up, background, CLI) ------------------------------------------------------
    def _load(self, row: SigningKeyRow) -> jose.PrivateKey | None:
        """The private key of ``row`` if this process can use it: it opens with a KEK held here
        and signs tokens that verify under its published JWK. Failures are logged once."""
        private = self._decrypted.get(row.kid)
        if private is not None:
            return private
        if row.kek_id not in self._enc.kek_ids:
            return None
        if (row.kid, row.kek_id) in self._unusable:
            return None
        try:
            pem = self._enc.open(row.private_key_ciphertext, row.kid, row.kek_id)
            private = jose.private_key_from_pem(pem, row.alg, row.kid)
        except (KeyUnavailable, jose.JOSEError) as exc:
            self._unusable[(row.kid, row.kek_id)] = str(exc)
            log.error("signing key does not open with its KEK", extra={"kid": row.kid, "kek_id": row.kek_id})
            return None
        problem = key_pair_problem(private, row.public_jwk)
        if problem is not None:
            self._unusable[(row.kid, row.kek_id)] = problem
            log.error("signing key does not match its published key", extra={"kid": row.kid, "problem": problem})
            return None
        self._decrypted[row.kid] = private
        return private

    def _public_of(self, private: jose.PrivateKey) -> jose.PublicKey:
        public = self._public.get(private.kid)
        if public is None:
            public = self._public[private.kid] = private.public()
        return public

    @staticmethod
    def _may_sign(row: SigningKeyRow, now: float) -> bool:
        if row.not_after <= now:
            return False
        if row.state == "active":
            return True
        return row.state == "retired" and (row.publish_until or 0) - PUBLICATION_MARGIN > now

    def refresh(self) -> None:
        """Reload keys from the database and swap in a new snapshot."""
        with self._lock:
            rows = tuple(self._repo.list())
            now = self._clock()
            published: list[dict[str, Any]] = []
            for row in rows:
                if row.state == "retired" and (row.publish_until or 0) < now:
                    continue
                published.append(dict(row.public_jwk))
            usable = {r.kid for r in rows if self._may_sign(r, now) and self._load(r) is not None}
            signing: dict[str, tuple[ActiveKey, ...]] = {}
            degraded: dict[str, str] = {}
            for alg in sorted({r.alg for r in rows}):
                order = signing_order(alg, rows, usable=usable, now=now)
                keys = []
                for c in order.candidates:
                    private = self._decrypted[c.kid]
                    keys.append(ActiveKey(private=private, public=self._public_of(private), not_after=c.not_after, fallback=c.fallback))
                signing[alg] = tuple(keys)
                if order.degraded is not None:
                    degraded[alg] = order.degraded
            self._log_changes(degraded, signing)
            self._snapshot = KeySnapshot(signing=signing, jwks={"keys": published}, rows=rows, degraded=degraded)

    def _log_changes(self, degraded: dict[str, str], signing: dict[str, tuple[ActiveKey, ...]]) -> None:
        before = self._snapshot.degraded
        for alg, reason in degraded.items():
            if before.get(alg) == reason:
                continue
            keys = signing.get(alg, ())
            if keys:
                log.error("signing with a fallback key: the active key cannot be used",
                          extra={"alg": alg, "reason": reason, "kid": keys[0].private.kid})
            else:
                log.error("no usable signing key", extra={"alg": alg, "reason": reason})
        for alg in before.keys() - degraded.keys():
            log.info("signing with the active key again", extra={"alg": alg})

    def check_kek(self) -> KekVerdict:
        """How the KEKs held here fare against the stored keys (AES-GCM opening only)."""
        rows = self._repo.list()
        return kek_verdict(rows, {r.kid for r in rows if self._enc.opens(r)})

    def require_kek(self, origin: str) -> None:
        """Refuse, before anything is written, a KEK that opens none of the stored keys."""
        verdict = self.check_kek()
        if not verdict.ok:
            raise KekMismatch(*kek_refusal(verdict, origin=origin, kek_id=self._enc.kek_id))

    # -- replica reports ------------------------------------------------------------------------
    def report_replica(self) -> None:
        """Tell the other replicas (and ``sts keys``) which KEKs this process holds."""
        if self._replicas is None or self._replica_id is None:
            return
        now = self._clock()
        self._replicas.report(ReplicaRecord(replica_id=self._replica_id, kek_ids=self._enc.kek_ids,
                                            started_at=self._started_at, last_seen=now, expires_at=now + self._replica_ttl))
        # Crashed replicas leave their row behind; it stopped counting at its expiry already.
        self._replicas.prune(now - 3600.0)

    def leave(self) -> None:
        if self._replicas is not None and self._replica_id is not None:
            self._replicas.remove(self._replica_id)

    def fresh_replicas(self) -> tuple[ReplicaRecord, ...]:
        if self._replicas is None:
            return ()
        return fresh_replicas(self._replicas.list(), self._clock())

    def _sealing_kek(self) -> str:
        if len(self._enc.held) == 1:
            return self._enc.kek_id
        return sealing_kek(self._enc.held, self.fresh_replicas())

    def _new_row(self, alg: str, state: str, now: float, kek_id: str | None = None) -> SigningKeyRow:
        private = jose.generate_private_key(alg)
        pem = jose.private_key_to_pem(private)
        return SigningKeyRow(
            kid=private.kid,
            alg=alg,
            state=state,
            public_jwk=private.public_jwk(),
            private_key_ciphertext=self._enc.seal(pem, private.kid, kek_id),
            kek_id=kek_id or self._enc.kek_id,
            created_at=now,
            activated_at=now if state == "active" else None,
            retired_at=None,
            not_after=now + self._lifetime if state == "active" else now + 2 * self._lifetime,
            publish_until=None,
        )

    def ensure(self, algs: Iterable[str]) -> list[str]:
        """Create an active and a next key for every algorithm that lacks them. Returns the
        kids created. Safe to run on several replicas at once: the repository stores a key
        only if its algorithm still lacks one in that state, under a lock."""
        now = self._clock()
        rows = self._repo.list()
        wanted: list[SigningKeyRow] = []
        kek: str | None = None
        for alg in dict.fromkeys(algs):
            states = {r.state for r in rows if r.alg == alg and (r.state != "active" or (r.not_after or 0) > now)}
            for state in ("active", "next"):
                if state not in states:
                    kek = kek or self._sealing_kek()
                    wanted.append(self._new_row(alg, state, now, kek))
        created = self._repo.insert_missing(wanted, now) if wanted else []
        self.refresh()
        return created

    def rotate(self, alg: str) -> str | None:
        """Promote a ``next`` key to ``active`` for ``alg``. Returns the new active kid, or
        ``None`` when nothing was promoted (another replica rotated first, or no ``next`` key
        can safely be promoted: see :meth:`rotate_alg`)."""
        return self.rotate_alg(alg).promoted

    def rotate_alg(self, alg: str) -> RotationOutcome:
        """One rotation of ``alg`` as decided by :func:`keyplan.plan_rotation`: promote the
        oldest ``next`` key that this process opened and that every fresh replica can open;
        withdraw ``next`` keys nobody running can open; keep a ``next`` key published."""
        now = self._clock()
        rows = self._repo.list()
        if not any(r.alg == alg and r.state == "next" for r in rows):
            return RotationOutcome(alg, promoted=None, created=tuple(self.ensure([alg])))
        usable = {r.kid for r in rows if r.alg == alg and r.state == "next" and self._load(r) is not None}
        plan = plan_rotation(alg, rows, usable=usable, held_kek_ids=self._enc.kek_ids, replicas=self.fresh_replicas())
        new_next = self._new_row(alg, "next", now, self._sealing_kek()) if plan.new_next else None
        if plan.promote is not None and new_next is not None:
            current = next((r for r in rows if r.kid == plan.expect_active), None)
            # A retired key must stay published until every token it signed has expired: tokens
            # never outlive the key's not_after, nor now + the maximum token lifetime.
            publish_until = now + self._max_token_lifetime + PUBLICATION_MARGIN
            if current is not None:
                publish_until = min(publish_until, float(current.not_after) + PUBLICATION_MARGIN)
            ok = self._repo.rotate(
                alg=alg,
                expect_active_kid=plan.expect_active,
                new_next=new_next,
                now=now,
                active_not_after=now + self._lifetime,
                publish_until_for_retired=publish_until,
                promote_kid=plan.promote,
                withdraw=plan.withdraw,
            )
        elif plan.withdraw or new_next is not None:
            ok = self._repo.replace_next(alg=alg, withdraw=plan.withdraw, new_next=new_next, now=now)
        else:
            ok = True
        self.refresh()
        if not ok:
            return RotationOutcome(alg, promoted=None, conflict=True)
        if plan.promote is not None:
            log.info("signing key rotated", extra={"alg": alg, "kid": plan.promote})
        else:
            log.error("signing key rotation refused", extra={"alg": alg, "reasons": list(plan.blocked)})
        if plan.withdraw:
            log.warning("next signing keys withdrawn: no running replica can open them", extra={"alg": alg, "kids": list(plan.withdraw)})
        return RotationOutcome(alg, promoted=plan.promote, withdrawn=plan.withdraw,
                               new_next=new_next.kid if new_next is not None else None, blocked=plan.blocked)

    def rewrap(self, *, dry_run: bool = False) -> RewrapOutcome:
        """Re-encrypt every private key under the current KEK, in one transaction, as decided
        by :func:`keyplan.plan_rewrap`. Replicas keep serving throughout: they hold the new KEK
        as current and the old one as previous, and open either."""
        rows = self._repo.list()
        current = self._enc.kek_id
        opened = {r.kid for r in rows if r.kek_id != current and self._enc.opens(r)}
        plan = plan_rewrap(rows, current_kek_id=current, opened=opened, replicas=self.fresh_replicas())
        if plan.refused or dry_run or not plan.reseal:
            return RewrapOutcome(plan, applied=False)
        changes = []
        for row in rows:
            if row.kid in plan.reseal:
                plaintext = self._enc.open(row.private_key_ciphertext, row.kid, row.kek_id)
                changes.append((row.kid, row.kek_id, self._enc.seal(plaintext, row.kid), current))
        ok = self._repo.rewrap(changes)
        self.refresh()
        if ok:
            log.info("signing keys re-encrypted under the current KEK", extra={"kek_id": current, "keys": len(changes)})
        return RewrapOutcome(plan, applied=ok, conflict=not ok)

    def rotate_due(self) -> list[str]:
        """Rotate every algorithm whose active key has used three quarters of its life, so the
        key's remaining life rarely caps an issued token's lifetime; drop retired keys whose
        tokens have all expired; reload the snapshot (other replicas may have rotated)."""
        now = self._clock()
        rotated: list[str] = []
        rows = self._snapshot.rows
        for alg in sorted({r.alg for r in rows}):
            # Judged from the stored rows, not from the keys this process can use: a replica
            # that cannot open the active key still knows when it is due.
            if rotation_due_at(rows, alg, self._lifetime, now) < now:
                kid = self.rotate(alg)
                if kid:
                    rotated.append(kid)
        self._repo.prune(now)
        self.refresh()
        return rotated
