"""Per-issuer cache of signature verification keys (RFC 7517 JWK Sets).

Keys come only from the configuration of a trusted issuer, never from a URL named inside a
token: a static JWK Set, an explicit ``jwks_uri``, or OpenID Connect Discovery 1.0 §4, whose
document must name the configured issuer exactly (§4.3: "The issuer value returned MUST be
identical to the Issuer URL that was used as the prefix to /.well-known/openid-configuration").

The cache is built for a hot path that never waits on the network in steady state:

* ``lookup`` answers from memory. A background task per remote issuer refreshes the keys ahead
  of their freshness lifetime (``Cache-Control: max-age``, RFC 9111 §5.2.2.1, clamped to the
  policy bounds) and retries failures with exponential backoff.
* An unknown ``kid`` (the issuer rotated its keys) may trigger one refetch per issuer per
  cooldown interval; concurrent lookups share that one in-flight fetch (single flight), and
  each waits for it only up to ``lookup_wait`` seconds.
* After a failed refresh the last good keys keep serving until ``max_stale`` seconds past their
  last successful fetch, then they are dropped and lookups raise ``KeysUnavailable``.
* A fetch that yields no usable key is a failure: an empty set never replaces good keys.

Every issuer has its own state and its own in-flight task; nothing is locked across I/O, so a
slow issuer delays only lookups that need that issuer's new keys.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sts.jose import JWKError, KeySet, PublicKey, parse_jwks
from sts.subject.fetch import CACertificates, FetchError, Fetcher

__all__ = [
    "CACertificates",
    "CachePolicy",
    "Discovery",
    "FetchError",
    "Fetcher",
    "JWKSCache",
    "JWKSURI",
    "KeySourceSpec",
    "KeysUnavailable",
    "StaticKeys",
    "UnknownKey",
    "discovery_url",
    "freshness_lifetime",
    "refresh_after",
    "retry_delay",
]

log = logging.getLogger("sts.jwks")

# Refresh when this fraction of the freshness lifetime has passed, so new keys are in memory
# before the old copy goes stale (never sooner than ``min_refresh`` after the fetch).
REFRESH_AHEAD: Final = 0.9


class KeysUnavailable(Exception):
    """The issuer has no usable keys: never fetched successfully, or expired past max_stale.

    ``retry_after`` is a hint in whole seconds for a ``Retry-After`` header: when the cache will
    next try the issuer.
    """

    def __init__(self, issuer_name: str, *, retry_after: int = 1) -> None:
        self.issuer_name = issuer_name
        self.retry_after = retry_after
        super().__init__(f"no usable keys for issuer {issuer_name!r}")


class UnknownKey(Exception):
    """Keys are loaded for the issuer but none matches the token's kid and alg."""

    def __init__(self, issuer_name: str) -> None:
        self.issuer_name = issuer_name
        super().__init__(f"no key of issuer {issuer_name!r} matches the token header")


@dataclass(frozen=True)
class StaticKeys:
    """A JWK Set given in the configuration (inline, or read from a file by the caller)."""

    jwks: Mapping[str, Any]


@dataclass(frozen=True)
class JWKSURI:
    """An explicit ``jwks_uri``; ``ca``: the issuer's own CA certificates, if it has any."""

    url: str
    ca: CACertificates | None = None


@dataclass(frozen=True)
class Discovery:
    """OIDC Discovery: ``{issuer}/.well-known/openid-configuration`` names the ``jwks_uri``.
    ``ca`` verifies both fetches (the issuer's own CA certificates, if it has any)."""

    issuer: str
    ca: CACertificates | None = None


KeySourceSpec = StaticKeys | JWKSURI | Discovery


@dataclass(frozen=True)
class CachePolicy:
    """Timing of the cache, all in seconds."""

    min_refresh: float = 60
    max_refresh: float = 3600
    default_refresh: float = 300
    max_stale: float = 86400
    unknown_kid_cooldown: float = 30
    lookup_wait: float = 2.0
    retry_backoff_initial: float = 5
    retry_backoff_max: float = 300


def discovery_url(issuer: str) -> str:
    """OIDC Discovery §4: a terminating "/" of the issuer is removed before appending."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def freshness_lifetime(max_age: float | None, policy: CachePolicy) -> float:
    """How long a fetched key set counts as fresh: max-age (or the default) within the bounds."""
    ttl = policy.default_refresh if max_age is None else max_age
    return min(max(ttl, policy.min_refresh), policy.max_refresh)


def refresh_after(ttl: float, policy: CachePolicy) -> float:
    """Seconds after a successful fetch at which the background task refetches."""
    return max(policy.min_refresh, ttl * REFRESH_AHEAD)


def retry_delay(failures: int, policy: CachePolicy) -> float:
    """Exponential backoff after ``failures`` consecutive failed fetches (``failures >= 1``)."""
    exponent = min(max(failures - 1, 0), 32)  # 2**32 * any sane initial is already past the cap
    return float(min(policy.retry_backoff_initial * 2**exponent, policy.retry_backoff_max))


@dataclass(eq=False)
class _IssuerState:
    """Everything the cache knows about one issuer; touched only from the event loop thread."""

    name: str
    source: KeySourceSpec
    allow_insecure_loopback: bool
    keys: KeySet | None = None
    last_success: float | None = None
    fresh_until: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    next_attempt: float = 0.0  # due at once
    failures: int = 0
    # Totals since registration, for metrics (sts.ops.metrics): successes, and failures by reason.
    fetch_successes: int = 0
    fetch_failures: dict[str, int] = field(default_factory=dict)
    last_kid_refetch: float | None = None
    inflight: asyncio.Task[None] | None = None
    loop_task: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def remote(self) -> bool:
        return not isinstance(self.source, StaticKeys)


class JWKSCache:
    """Per-process, per-issuer verification keys with background refresh.

    Invariant: ``lookup`` returns a key of the named issuer that came from that issuer's
    configured source in a fetch at most ``policy.max_stale`` seconds old (static keys never
    age), or raises ``KeysUnavailable`` / ``UnknownKey``. It performs no network I/O when the key
    is in memory; otherwise it waits at most ``policy.lookup_wait`` for a permitted refetch.
    """

    def __init__(
        self,
        fetcher: Fetcher,
        *,
        policy: CachePolicy = CachePolicy(),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._fetcher = fetcher
        self._policy = policy
        self._clock = clock
        self._sleep = sleep  # injectable so tests drive the refresh loop with a fake clock
        self._issuers: dict[str, _IssuerState] = {}
        self._started = False

    # -- configuration ---------------------------------------------------------------------

    def register(
        self, issuer_name: str, source: KeySourceSpec, *, allow_insecure_loopback: bool = False
    ) -> None:
        """Add (or replace) an issuer. Static keys are parsed here and never refetched.

        Raises ``ValueError`` when a static JWK Set is malformed or holds no usable key. Call
        from the event loop thread once the cache is started (a refresh task is spawned).
        """
        state = _IssuerState(issuer_name, source, allow_insecure_loopback)
        if isinstance(source, StaticKeys):
            try:
                keys = parse_jwks(source.jwks)
            except JWKError as exc:
                raise ValueError(f"static JWKS of issuer {issuer_name!r} is invalid") from exc
            if len(keys) == 0:
                raise ValueError(f"static JWKS of issuer {issuer_name!r} has no usable key")
            now = self._clock()
            state.keys, state.last_success, state.fresh_until = keys, now, math.inf
        elif not isinstance(source, (JWKSURI, Discovery)):
            raise TypeError(f"unknown key source {source!r}")
        self.unregister(issuer_name)
        self._issuers[issuer_name] = state
        if self._started and state.remote:
            state.loop_task = self._spawn(state, self._run(state))
        log.info(
            "issuer key source registered",
            extra={"event": "jwks_register", "issuer_name": issuer_name, "source": _describe(source)},
        )

    def registered(self, issuer_name: str) -> bool:
        return issuer_name in self._issuers

    def unregister(self, issuer_name: str) -> None:
        state = self._issuers.pop(issuer_name, None)
        if state is None:
            return
        for task in list(state.tasks):
            task.cancel()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch every remote issuer concurrently, then keep them fresh in the background.

        Waits for the initial fetches at most one discovery round trip (two fetch timeouts);
        failures are logged and recorded in ``status()``, not raised.
        """
        if self._started:
            return
        self._started = True
        remote = [s for s in self._issuers.values() if s.remote]
        initial = [self._refresh(s) for s in remote]
        for state in remote:
            state.loop_task = self._spawn(state, self._run(state))
        if initial:
            await asyncio.wait(initial, timeout=2 * self._fetcher.timeout + 0.5)

    async def stop(self) -> None:
        self._started = False
        tasks = [t for s in self._issuers.values() for t in s.tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- hot path --------------------------------------------------------------------------

    async def lookup(self, issuer_name: str, kid: str | None, alg: str) -> PublicKey:
        """The key of ``issuer_name`` for a JWS header's ``kid`` and ``alg``.

        Raises ``KeysUnavailable`` when the issuer has no usable keys (or is not registered) and
        ``UnknownKey`` when keys are loaded but none matches, even after the permitted refetch.
        """
        state = self._issuers.get(issuer_name)
        if state is None:
            raise KeysUnavailable(issuer_name, retry_after=math.ceil(self._policy.unknown_kid_cooldown))
        keys = self._current_keys(state, self._clock())
        if keys is not None:
            key = keys.find(kid, alg)
            if key is not None:
                return key
        await self._permitted_refetch(state, kid)
        now = self._clock()
        keys = self._current_keys(state, now)
        if keys is None:
            raise KeysUnavailable(issuer_name, retry_after=self._retry_after(state, now))
        key = keys.find(kid, alg)
        if key is None:
            # Debug only: the caller's audit record already says why the token was refused,
            # and tokens with random kids must not be a way to flood the log.
            log.debug(
                "no key matches token header",
                extra={
                    "event": "jwks_unknown_key",
                    "issuer_name": issuer_name,
                    "kid": _short(kid),
                    "alg": _short(alg),
                },
            )
            raise UnknownKey(issuer_name)
        return key

    # -- introspection ---------------------------------------------------------------------

    def peek(self, issuer_name: str) -> KeySet | None:
        state = self._issuers.get(issuer_name)
        return None if state is None else self._current_keys(state, self._clock())

    def status(self) -> dict[str, dict[str, Any]]:
        """Per issuer: key count, last successful fetch time, last error reason, staleness, and
        where the keys come from (``static``, ``jwks_uri URL`` or ``discovery URL``).

        ``stale`` is true while keys are served although their refresh is overdue or the latest
        fetch attempt failed.
        """
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        for name, state in self._issuers.items():
            keys = self._current_keys(state, now)
            stale = keys is not None and (
                (state.fresh_until is not None and now > state.fresh_until)
                or (
                    state.last_error_at is not None
                    and state.last_success is not None
                    and state.last_error_at >= state.last_success
                )
            )
            out[name] = {
                "keys": 0 if keys is None else len(keys),
                "last_success": state.last_success,
                "last_error": state.last_error,
                "last_error_at": state.last_error_at,
                "stale": stale,
                "fetch_successes": state.fetch_successes,
                "fetch_failures": dict(state.fetch_failures),
                "source": _describe(state.source),
            }
        return out

    def ready(self) -> bool:
        """True when every registered issuer has usable keys."""
        now = self._clock()
        return all(self._current_keys(s, now) is not None for s in self._issuers.values())

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, state: _IssuerState, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)
        return task

    def _current_keys(self, state: _IssuerState, now: float) -> KeySet | None:
        """The usable keys, dropping remote keys past max_stale."""
        if (
            state.keys is not None
            and state.remote
            and state.last_success is not None
            and now - state.last_success >= self._policy.max_stale
        ):
            state.keys = None
            log.warning(
                "issuer keys expired past max_stale; dropped",
                extra={
                    "event": "jwks_expired",
                    "issuer_name": state.name,
                    "last_success": state.last_success,
                    "last_error": state.last_error,
                },
            )
        return state.keys

    def _retry_after(self, state: _IssuerState, now: float) -> int:
        """Seconds until the cache next tries the issuer: a background retry or a lookup's."""
        candidates = [state.next_attempt - now]
        if state.last_kid_refetch is not None:
            candidates.append(state.last_kid_refetch + self._policy.unknown_kid_cooldown - now)
        return max(1, math.ceil(min(candidates)))

    def _refresh(self, state: _IssuerState) -> asyncio.Task[None]:
        """The issuer's in-flight fetch, started now if none is running (single flight)."""
        if state.inflight is None or state.inflight.done():
            state.inflight = self._spawn(state, self._fetch_and_apply(state))
        return state.inflight

    async def _permitted_refetch(self, state: _IssuerState, kid: str | None) -> None:
        """Join the in-flight fetch, or start one if the cooldown allows; wait boundedly."""
        if not state.remote:
            return
        task = state.inflight if state.inflight is not None and not state.inflight.done() else None
        if task is None:
            now = self._clock()
            last = state.last_kid_refetch
            if last is not None and now - last < self._policy.unknown_kid_cooldown:
                log.debug(
                    "refetch on unknown kid suppressed by cooldown",
                    extra={"event": "jwks_refetch_cooldown", "issuer_name": state.name, "kid": _short(kid)},
                )
                return
            state.last_kid_refetch = now
            log.info(
                "refetching keys for unknown kid",
                extra={"event": "jwks_refetch_unknown_kid", "issuer_name": state.name, "kid": _short(kid)},
            )
            task = self._refresh(state)
        # asyncio.wait never cancels the fetch: a lookup that gives up leaves it running for
        # the next caller.
        await asyncio.wait({task}, timeout=self._policy.lookup_wait)

    async def _run(self, state: _IssuerState) -> None:
        """Background loop of one remote issuer: refresh when due, sleep until the next due time."""
        while True:
            try:
                if self._clock() >= state.next_attempt:
                    await asyncio.wait({self._refresh(state)})
                now = self._clock()
                self._current_keys(state, now)  # let status()/ready() see expiry promptly
                # Sleep in slices of at most min_refresh so a wall-clock jump is noticed, and at
                # least a second so a misconfigured zero backoff cannot spin.
                delay = min(max(state.next_attempt - now, 1.0), self._policy.min_refresh)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("jwks refresh loop error", extra={"event": "jwks_loop_error", "issuer_name": state.name})
                delay = self._policy.min_refresh
            await self._sleep(delay)

    async def _fetch_document(self, state: _IssuerState) -> tuple[dict[str, Any], float | None]:
        allow = state.allow_insecure_loopback
        source = state.source
        if isinstance(source, JWKSURI):
            return await self._fetcher.get_json(source.url, allow_insecure_loopback=allow, ca=source.ca)
        assert isinstance(source, Discovery)
        meta, _ = await self._fetcher.get_json(discovery_url(source.issuer), allow_insecure_loopback=allow,
                                               ca=source.ca)
        if meta.get("issuer") != source.issuer:
            raise FetchError("issuer_mismatch", "discovery document names another issuer")
        jwks_uri = meta.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise FetchError("no_jwks_uri", "discovery document has no jwks_uri")
        # The freshness of the key set is what matters; the discovery document is refetched
        # with every key fetch, so a moved jwks_uri is followed on the next refresh. The
        # issuer's CA verifies it too: a jwks_uri on another host under another CA needs
        # keys.jwks_uri instead of discovery.
        return await self._fetcher.get_json(jwks_uri, allow_insecure_loopback=allow, ca=source.ca)

    async def _fetch_and_apply(self, state: _IssuerState) -> None:
        """One fetch of the issuer's keys; records success or failure, never raises."""
        started = time.monotonic()
        try:
            doc, max_age = await self._fetch_document(state)
            keys = parse_jwks(doc)
        except FetchError as exc:
            self._record_failure(state, exc.reason, str(exc))
            return
        except JWKError:
            self._record_failure(state, "invalid_jwks", "document is not a usable JWK Set")
            return
        except Exception as exc:  # a bug must not kill the refresh loop or leak key material
            self._record_failure(state, "internal", type(exc).__name__)
            return
        # Each entry is "kid=<sanitised kid>: <reason code>"; never key material.
        skipped = list(keys.skipped)
        if len(keys) == 0:
            # Never cache an empty set: the previous keys stay until max_stale.
            self._record_failure(state, "no_usable_keys", f"0 usable keys; skipped {skipped}")
            return
        now = self._clock()
        ttl = freshness_lifetime(max_age, self._policy)
        state.keys = keys
        state.last_success = now
        state.fresh_until = now + ttl
        state.next_attempt = now + refresh_after(ttl, self._policy)
        state.failures = 0
        state.last_error = None
        state.fetch_successes += 1
        log.info(
            "issuer keys refreshed",
            extra={
                "event": "jwks_refreshed",
                "issuer_name": state.name,
                "keys": len(keys),
                "skipped": skipped,
                "max_age": max_age,
                "refresh_in": state.next_attempt - now,
                "elapsed": round(time.monotonic() - started, 3),
            },
        )

    def _record_failure(self, state: _IssuerState, reason: str, detail: str) -> None:
        now = self._clock()
        state.failures += 1
        state.fetch_failures[reason] = state.fetch_failures.get(reason, 0) + 1
        state.last_error = reason
        state.last_error_at = now
        state.next_attempt = now + retry_delay(state.failures, self._policy)
        keys = self._current_keys(state, now)
        log.warning(
            "issuer key fetch failed",
            extra={
                "event": "jwks_fetch_failed",
                "issuer_name": state.name,
                "reason": reason,
                "detail": detail,
                "failures": state.failures,
                "serving_keys": 0 if keys is None else len(keys),
                "retry_in": state.next_attempt - now,
            },
        )


def _describe(source: KeySourceSpec) -> str:
    if isinstance(source, StaticKeys):
        return "static"
    ca = f" (own CA {source.ca.sha256[:12]})" if source.ca is not None else ""
    if isinstance(source, JWKSURI):
        return f"jwks_uri {source.url}{ca}"
    return f"discovery {discovery_url(source.issuer)}{ca}"


def _short(value: object) -> str | None:
    """A token-supplied header value, repr-quoted and truncated so it cannot forge log lines."""
    return None if value is None else repr(value)[:80]
