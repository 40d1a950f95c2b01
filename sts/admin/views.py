"""The JSON bodies of the admin API, built from what the broker already holds.

Each function is an adapter: it reads the broker's own state or calls the function the command
line calls (``sts keys list``, ``sts explain``) and shapes the answer. Nothing here decides
anything or writes anything. :func:`redact` runs over every answer before it is sent.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from cryptography.hazmat.primitives import hashes

from sts.store.records import SigningKeyRow
from sts.tokens.keyring import KeyUnavailable, rotation_due_at

# A compact JWS or JWE (RFC 7515 §7.1, RFC 7516 §7.1): a base64url JSON header ("eyJ" is "{")
# and at least two more dot-separated base64url parts. Claims copied from a token may hold one.
_COMPACT_JOSE: Final = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)?")
_PEM_PRIVATE: Final = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
# JWK members that are private key material (RFC 7518 §6.2.2, §6.3.2, §6.4.1; RFC 8037 §2).
_PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
REDACTED: Final = "[redacted]"


def redact(value: Any) -> Any:
    """``value`` with every string that holds a compact JWS/JWE or a PEM private key replaced
    by ``[redacted: sha256 ...]``, and every JWK's private members dropped. The admin API never
    hands out a token or a private key, whatever a future field or a token's claims hold."""
    if isinstance(value, str):
        if _PEM_PRIVATE.search(value):
            return REDACTED
        if "eyJ" in value and _COMPACT_JOSE.search(value):
            return _COMPACT_JOSE.sub(lambda m: f"[redacted: sha256 {hashlib.sha256(m.group(0).encode()).hexdigest()}]", value)
        return value
    if isinstance(value, Mapping):
        jwk = "kty" in value
        return {k: redact(v) for k, v in value.items() if not (jwk and k in _PRIVATE_JWK_MEMBERS)}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def served_by(replica_id: str | None = None) -> dict[str, Any]:
    """Which process answered: with several workers, per-process state is that worker's."""
    return {"pid": os.getpid(), **({"replica": replica_id} if replica_id else {})}


# --- the signing-key schedule --------------------------------------------------------------------
def key_schedule(rows: Iterable[SigningKeyRow], *, keyring: Any, algorithms: Iterable[str], key_lifetime: float,
                 now: float) -> dict[str, Any]:
    """The broker's own signing keys (what ``sts keys list`` shows), per algorithm the key this
    process signs with and when the next rotation is due. Never the private key, sealed or not."""
    rows = sorted(rows, key=lambda r: (r.alg, r.created_at, r.kid))
    degraded = keyring.degraded()
    algs = sorted(set(algorithms) | {r.alg for r in rows if r.state != "retired"})
    per_alg = []
    for alg in algs:
        try:
            key = keyring.peek(alg)
            signing: str | None = key.public.kid
            fallback = key.fallback
        except KeyUnavailable:
            signing, fallback = None, False
        nxt = [r.kid for r in rows if r.alg == alg and r.state == "next"]
        per_alg.append({
            "alg": alg,
            "signing_kid": signing,
            "fallback": fallback,
            "degraded": degraded.get(alg),
            "next_kids": nxt,
            "rotation_due_at": rotation_due_at(rows, alg, key_lifetime, now),
        })
    keys = [{
        "kid": r.kid,
        "alg": r.alg,
        "state": r.state,
        "created_at": r.created_at,
        "activated_at": r.activated_at,
        "retired_at": r.retired_at,
        "not_after": r.not_after,
        "publish_until": r.publish_until,
        "published": r.state != "retired" or (r.publish_until or 0) > now,
        "kek_id": r.kek_id,
    } for r in rows]
    return {"at": now, "key_lifetime": key_lifetime, "algorithms": per_alg, "keys": keys}


# --- issuers' and trust domains' keys --------------------------------------------------------------
def _kids(key_set: Any) -> list[dict[str, Any]]:
    if key_set is None:
        return []
    return [{"kid": k.kid, "kty": k.kty, "algorithms": sorted(k.algorithms)} for k in key_set.keys]


def issuer_keys(runtime: Any, jwks: Any, bundles: Any, *, now: float) -> dict[str, Any]:
    """Per configured issuer: where its keys come from, the key ids held, the last fetch and
    the last error (``JWKSCache.status``); per SPIFFE trust domain the same of its bundle."""
    status = jwks.status()
    issuers = []
    for name in sorted(runtime.key_sources):
        keys_id = runtime.key_sources[name]
        s = status.get(keys_id)
        if s is None:
            issuers.append({"name": name, "registered": False})
            continue
        issuers.append({
            "name": name,
            "registered": True,
            "source": s.get("source"),
            "keys": s["keys"],
            "kids": _kids(jwks.peek(keys_id)),
            "last_success": s["last_success"],
            "last_error": s["last_error"],
            "last_error_at": s["last_error_at"],
            "stale": s["stale"],
            "fetch_successes": s.get("fetch_successes", 0),
            "fetch_failures": dict(s.get("fetch_failures", {})),
        })
    domains = []
    bundle_status = bundles.status()
    for name in sorted(runtime.bundle_sources):
        b = bundle_status.get(name)
        if b is None:
            domains.append({"name": name, "registered": False})
            continue
        bundle = bundles.current(name)
        domains.append({
            "name": name,
            "registered": True,
            "jwt_keys": b["jwt_keys"],
            "kids": _kids(bundle.jwt_keys if bundle is not None else None),
            "x509_authorities": [{"sha256": c.fingerprint(hashes.SHA256()).hex(), "subject": c.subject.rfc4514_string()}
                                 for c in (bundle.x509_authorities if bundle is not None else ())],
            "sequence": b["sequence"],
            "last_success": b["last_success"],
            "last_error": b["last_error"],
            "stale": b["stale"],
        })
    return {"at": now, "issuers": issuers, "trust_domains": domains}
