"""Signing keys: storage at rest, rotation, publication (RFC 7517, RFC 7518 §3, RFC 8725 §3.1).

Keys live in the database so that every replica signs with the same keys and publishes the
same JWKS. Private keys are sealed with AES-256-GCM under a key-encryption key (KEK) that is
never stored in the database; the key id is bound as associated data so a ciphertext cannot be
swapped onto another row.

Lifecycle, per signing algorithm:

``next``     published in the JWKS, signs nothing. It exists so that relying parties have it
             cached before it signs anything.
``active``   signs; published. It signs nothing after its ``not_after``.
``retired``  signs nothing; published until ``publish_until`` (its last token has expired).

Rotation promotes ``next`` to ``active``, retires the old ``active`` and creates a new ``next``
in one optimistic transaction, so concurrent replicas cannot rotate twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sts import jose
from sts.settings import kek_id as compute_kek_id
from sts.store.keys import KeyRepository
from sts.store.records import SigningKeyRow

log = logging.getLogger("sts.keys")

SIGNING_ALGORITHMS = ("ES256", "RS256", "EdDSA")


class KeyUnavailable(Exception):
    """No usable signing key for an algorithm (never loaded, wrong KEK, or expired)."""


class KeyEncryptor:
    """AES-256-GCM sealing of private keys under the KEK. Invariant: a blob opens only with the
    same KEK and the same kid it was sealed for."""

    _NONCE = 12

    def __init__(self, kek: bytes) -> None:
        self._aead = AESGCM(kek)
        self.kek_id = compute_kek_id(kek)

    def seal(self, plaintext: bytes, kid: str) -> bytes:
        nonce = os.urandom(self._NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, b"sts-signing-key:" + kid.encode())

    def open(self, blob: bytes, kid: str) -> bytes:
        try:
            return self._aead.decrypt(blob[: self._NONCE], blob[self._NONCE :], b"sts-signing-key:" + kid.encode())
        except InvalidTag as exc:
            raise KeyUnavailable(f"signing key {kid} does not open with this KEK") from exc


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


@dataclass(frozen=True)
class KeySnapshot:
    """An immutable view swapped in whole on every refresh, so readers never lock."""

    active: dict[str, ActiveKey]
    jwks: dict[str, Any]
    rows: tuple[SigningKeyRow, ...]


class KeyRing:
    """The process's view of the signing keys. Reads are lock-free snapshot lookups; refresh
    and rotation do database I/O and run off the request path."""

    def __init__(
        self,
        repository: KeyRepository,
        encryptor: KeyEncryptor,
        *,
        key_lifetime: float,
        max_token_lifetime: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._repo = repository
        self._enc = encryptor
        self._lifetime = float(key_lifetime)
        self._max_token_lifetime = float(max_token_lifetime)
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot = KeySnapshot(active={}, jwks={"keys": []}, rows=())
        self._decrypted: dict[str, jose.PrivateKey] = {}

    def allow_token_lifetime(self, seconds: float) -> None:
        """Raise (never lower) the longest lifetime a signed token may have, which bounds how
        long a retired key stays published. Lowering it could unpublish a key while tokens it
        signed under the old maximum are still valid."""
        self._max_token_lifetime = max(self._max_token_lifetime, float(seconds))

    # -- reads (hot path) -------------------------------------------------------------------
    def active(self, alg: str) -> ActiveKey:
        key = self._snapshot.active.get(alg)
        if key is None or key.not_after <= self._clock():
            raise KeyUnavailable(f"no active {alg} signing key")
        return key

    def jwks(self) -> dict[str, Any]:
        return self._snapshot.jwks

    def public_keys(self) -> dict[str, jose.PublicKey]:
        return {k.public.kid or "": k.public for k in self._snapshot.active.values()}

    def ready(self, algs: Iterable[str]) -> bool:
        now = self._clock()
        snap = self._snapshot.active
        return all(alg in snap and snap[alg].not_after > now for alg in algs)

    def rows(self) -> tuple[SigningKeyRow, ...]:
        return self._snapshot.rows

    # -- I/O (start-up, background, CLI) ------------------------------------------------------
    def refresh(self) -> None:
        """Reload keys from the database and swap in a new snapshot."""
        with self._lock:
            rows = tuple(self._repo.list())
            now = self._clock()
            active: dict[str, ActiveKey] = {}
            published: list[dict[str, Any]] = []
            for row in rows:
                if row.state == "retired" and (row.publish_until or 0) < now:
                    continue
                published.append(dict(row.public_jwk))
                if row.state != "active":
                    continue
                if row.kek_id != self._enc.kek_id:
                    log.error("signing key sealed under another KEK", extra={"kid": row.kid, "kek_id": row.kek_id})
                    continue
                private = self._decrypted.get(row.kid)
                if private is None:
                    pem = self._enc.open(row.private_key_ciphertext, row.kid)
                    private = jose.private_key_from_pem(pem, row.alg, row.kid)
                    problem = key_pair_problem(private, row.public_jwk)
                    if problem is not None:
                        log.error("signing key does not match its published key", extra={"kid": row.kid, "problem": problem})
                        continue
                    self._decrypted[row.kid] = private
                current = active.get(row.alg)
                if current is None or (row.not_after or 0) > current.not_after:
                    active[row.alg] = ActiveKey(private=private, public=private.public(), not_after=float(row.not_after))
            self._snapshot = KeySnapshot(active=active, jwks={"keys": published}, rows=rows)

    def _new_row(self, alg: str, state: str, now: float) -> SigningKeyRow:
        private = jose.generate_private_key(alg)
        pem = jose.private_key_to_pem(private)
        return SigningKeyRow(
            kid=private.kid,
            alg=alg,
            state=state,
            public_jwk=private.public_jwk(),
            private_key_ciphertext=self._enc.seal(pem, private.kid),
            kek_id=self._enc.kek_id,
            created_at=now,
            activated_at=now if state == "active" else None,
            retired_at=None,
            not_after=now + self._lifetime if state == "active" else now + 2 * self._lifetime,
            publish_until=None,
        )

    def ensure(self, algs: Iterable[str]) -> list[str]:
        """Create an active and a next key for every algorithm that lacks them. Returns the
        kids created. Safe to run on several replicas at once: a duplicate is harmless because
        only the newest active key signs."""
        now = self._clock()
        rows = self._repo.list()
        created: list[str] = []
        for alg in dict.fromkeys(algs):
            states = {r.state for r in rows if r.alg == alg and (r.state != "active" or (r.not_after or 0) > now)}
            for state in ("active", "next"):
                if state not in states:
                    row = self._new_row(alg, state, now)
                    self._repo.insert(row)
                    created.append(row.kid)
        self.refresh()
        return created

    def rotate(self, alg: str) -> str | None:
        """Promote ``next`` to ``active`` for ``alg``. Returns the new active kid, or ``None``
        when another replica rotated first."""
        now = self._clock()
        rows = [r for r in self._repo.list() if r.alg == alg]
        current = max((r for r in rows if r.state == "active"), key=lambda r: r.not_after or 0, default=None)
        nxt = next((r for r in rows if r.state == "next"), None)
        if nxt is None:
            self.ensure([alg])
            return None
        new_next = self._new_row(alg, "next", now)
        # A retired key must stay published until every token it signed has expired: tokens
        # never outlive the key's not_after, nor now + the maximum token lifetime.
        publish_until = now + self._max_token_lifetime + 300.0
        if current is not None and current.not_after is not None:
            publish_until = min(publish_until, float(current.not_after) + 300.0)
        ok = self._repo.rotate(
            alg=alg,
            expect_active_kid=current.kid if current else None,
            new_next=new_next,
            now=now,
            active_not_after=now + self._lifetime,
            publish_until_for_retired=publish_until,
        )
        self.refresh()
        if ok:
            log.info("signing key rotated", extra={"alg": alg, "kid": nxt.kid})
            return nxt.kid
        return None

    def rotate_due(self) -> list[str]:
        """Rotate every algorithm whose active key has used three quarters of its life, so the
        key's remaining life rarely caps an issued token's lifetime; drop retired keys whose
        tokens have all expired; reload the snapshot (other replicas may have rotated)."""
        now = self._clock()
        rotated: list[str] = []
        for alg, key in list(self._snapshot.active.items()):
            if key.not_after - now < self._lifetime / 4:
                kid = self.rotate(alg)
                if kid:
                    rotated.append(kid)
        self._repo.prune(now)
        self.refresh()
        return rotated
