"""Per-trust-domain SPIFFE bundles, fetched and kept fresh (SPIFFE Federation §4.1, §4.2, §5,
§6.2; SPIFFE Trust Domain and Bundle §4.1).

A trust domain's bundle comes from exactly one configured source:

* a **bundle file** (``spire-server bundle show -format spiffe``), re-read on every refresh;
* an **``https_web`` endpoint** (Federation §5.2.1): HTTPS authenticated by Web PKI, i.e. the
  system roots or a configured CA file, with the usual host name check (RFC 6125);
* an **``https_spiffe`` endpoint** (Federation §5.2.2): the server certificate "MUST be
  validated [as] a valid X509-SVID for the bundle endpoint SPIFFE ID that was provided". For a
  self-serving endpoint the configured bootstrap bundle authenticates the first connection and
  "The latest available bundle MUST be used to validate any subsequent connections"; for
  another trust domain's endpoint, that trust domain's latest bundle is used (it must be
  configured too).

Keeping bundles:

* §4.1: "Clients SHOULD poll at a frequency equal to the value of the bundle's
  ``spiffe_refresh_hint`` ... If not set, a reasonably low default value should apply - five
  minutes is recommended." The hint is clamped to ``[min_refresh, max_refresh]`` so a
  publisher can neither make the broker hammer it nor stop polling.
* §6.2: "If attempts to poll the bundle endpoint fail, bundle endpoint clients SHOULD retry at
  the next polling interval": after a failure the last good bundle keeps serving, and the next
  attempt is one polling interval later (a trust domain that never answered is retried with a
  short backoff, since nothing is being served). Past ``max_stale`` seconds without a
  successful poll the bundle is withheld from verification and SVIDs of that trust domain get
  503, as issuer keys do.
* §4.2 / Bundle §4.1.1: ``spiffe_sequence`` "MUST be a monotonically increasing integer": a
  fetched bundle with a lower sequence than the one held is refused, as is one with the same
  sequence but different keys. A bundle without a sequence is taken as the latest.
* Bundle §4.1.3: an empty bundle means revocation, so a successfully fetched empty bundle
  replaces the held one (unlike an issuer JWKS, which is never replaced by an empty set).
* §4.2: "Bundle contents from different trust domains MUST NOT be merged": every trust domain
  has its own state, and a bundle is stored under the configured trust domain name only.
* An unknown ``kid`` or an unknown X.509 authority may trigger one refetch per trust domain
  per cooldown, shared by concurrent callers (single flight) and awaited at most
  ``lookup_wait`` seconds, so a key published just before its first use is picked up without
  waiting a whole polling interval.

Fetches use the same hardened :class:`sts.subject.fetch.Fetcher` as issuer keys: HTTPS only,
total timeout, size cap, same-origin redirects only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sts.spiffe.bundle import (
    MAX_BUNDLE_BYTES,
    BundleError,
    SpiffeBundle,
    parse_bundle,
    parse_bundle_bytes,
)
from sts.spiffe.id import SpiffeID, parse_spiffe_id
from sts.spiffe.x509svid import SvidRejected, check_leaf
from sts.subject.fetch import Fetcher, FetchError

__all__ = [
    "BundleFile",
    "BundlePolicy",
    "BundleSourceSpec",
    "BundleStore",
    "BundleUnavailable",
    "CustomSource",
    "HttpsSpiffeEndpoint",
    "HttpsWebEndpoint",
    "refresh_interval",
]

log = logging.getLogger("sts.spiffe")


class BundleUnavailable(Exception):
    """The trust domain is configured but has no usable bundle (never fetched, or stale)."""

    def __init__(self, trust_domain: str, *, retry_after: int = 1) -> None:
        super().__init__(f"no usable bundle for trust domain {trust_domain!r}")
        self.trust_domain = trust_domain
        self.retry_after = retry_after


class _FetchFailed(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class BundleFile:
    """A SPIFFE bundle document on disk."""

    path: Path


@dataclass(frozen=True)
class HttpsWebEndpoint:
    """Federation §5.2.1; ``ca_file`` (PEM) replaces the system roots when set."""

    url: str
    ca_file: Path | None = None


@dataclass(frozen=True)
class HttpsSpiffeEndpoint:
    """Federation §5.2.2. ``bootstrap`` is required for a self-serving endpoint."""

    url: str
    endpoint_id: str
    bootstrap: Path | None = None


@dataclass(frozen=True)
class CustomSource:
    """A source given as a coroutine returning a bundle document (tests, embedding)."""

    fetch: Callable[[], Awaitable[Any]] = field(compare=False)
    name: str = "custom"


BundleSourceSpec = BundleFile | HttpsWebEndpoint | HttpsSpiffeEndpoint | CustomSource


@dataclass(frozen=True)
class BundlePolicy:
    """Timing of bundle refresh, all in seconds."""

    min_refresh: float = 30
    max_refresh: float = 3600
    default_refresh: float = 300
    max_stale: float = 86400
    unknown_key_cooldown: float = 30
    lookup_wait: float = 2.0
    retry_backoff_initial: float = 5
    fetch_timeout: float = 5.0
    connect_timeout: float = 2.0


def refresh_interval(hint: int | None, policy: BundlePolicy) -> float:
    """Seconds between polls: the bundle's refresh hint (or the default) within the bounds."""
    wanted = policy.default_refresh if hint is None else float(hint)
    return min(max(wanted, policy.min_refresh), policy.max_refresh)


@dataclass(eq=False)
class _DomainState:
    """Everything known about one trust domain; touched only from the event loop thread."""

    trust_domain: str
    source: BundleSourceSpec
    bundle: SpiffeBundle | None = None
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    next_attempt: float = 0.0
    failures: int = 0
    last_refetch: float | None = None
    web_client: httpx.AsyncClient | None = None
    inflight: asyncio.Task[None] | None = None
    loop_task: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _read_bundle_file(path: Path, trust_domain: str) -> SpiffeBundle:
    try:
        if path.stat().st_size > MAX_BUNDLE_BYTES:
            raise _FetchFailed("too_large", str(path))
        data = path.read_bytes()
    except OSError as exc:
        raise _FetchFailed("file_unreadable", f"{path}: {type(exc).__name__}") from None
    try:
        return parse_bundle_bytes(data, trust_domain)
    except BundleError as exc:
        raise _FetchFailed(f"bundle_{exc.reason}", str(path)) from None


def _pem(certs: Iterable[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


def spiffe_client_context(authorities: Iterable[x509.Certificate]) -> ssl.SSLContext:
    """A TLS client context that trusts exactly ``authorities`` and checks no host name: the
    server is identified by its SPIFFE ID, checked on the peer certificate afterwards."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Bundle authorities are trust anchors even when they are not self-signed (SPIRE behind an
    # upstream CA publishes its intermediate).
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=_pem(authorities))
    return ctx


def _expect_endpoint_svid(expected: SpiffeID) -> Callable[[httpx.Response], Awaitable[None]]:
    async def check(response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise _FetchFailed("endpoint_not_authenticated", "no peer certificate")
        try:
            presented = check_leaf(x509.load_der_x509_certificate(der), purpose="server")
        except (SvidRejected, ValueError) as exc:
            raise _FetchFailed("endpoint_svid_invalid", getattr(exc, "reason", "malformed")) from None
        if presented != expected:
            raise _FetchFailed("endpoint_spiffe_id_mismatch")

    return check


class BundleStore:
    """The bundles of every configured trust domain, refreshed in the background.

    Invariant: ``current(td)`` returns a bundle that was obtained from ``td``'s own configured
    source (or its bootstrap bundle) in a successful fetch at most ``policy.max_stale`` seconds
    ago, or ``None``; bundles of two trust domains never mix. ``current`` does no I/O.
    """

    def __init__(
        self,
        *,
        policy: BundlePolicy = BundlePolicy(),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_bytes: int = MAX_BUNDLE_BYTES,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._max_bytes = max_bytes
        self._domains: dict[str, _DomainState] = {}
        self._listeners: list[Callable[[SpiffeBundle], None]] = []
        self._started = False

    # -- configuration ---------------------------------------------------------------------

    def register(self, trust_domain: str, source: BundleSourceSpec) -> None:
        """Add or replace a trust domain. File sources and bootstrap bundles are read now and
        raise ``ValueError`` when unusable; remote sources are fetched by the refresh task."""
        state = _DomainState(trust_domain, source)
        now = self._clock()
        try:
            if isinstance(source, BundleFile):
                self._accept(state, _read_bundle_file(source.path, trust_domain), now)
            elif isinstance(source, HttpsSpiffeEndpoint):
                endpoint_id = parse_spiffe_id(source.endpoint_id)
                if endpoint_id.trust_domain == trust_domain:
                    if source.bootstrap is None:
                        raise ValueError("a self-serving https_spiffe endpoint needs a bootstrap bundle")
                    self._accept(state, _read_bundle_file(source.bootstrap, trust_domain), now)
                    state.next_attempt = 0.0  # the bootstrap is only a start: poll at once
            elif isinstance(source, HttpsWebEndpoint):
                verify: ssl.SSLContext | bool = True
                if source.ca_file is not None:
                    verify = ssl.create_default_context(cafile=str(source.ca_file))
                state.web_client = httpx.AsyncClient(verify=verify, follow_redirects=False)
            elif not isinstance(source, CustomSource):
                raise TypeError(f"unknown bundle source {source!r}")
        except _FetchFailed as exc:
            raise ValueError(f"bundle of trust domain {trust_domain!r} is unusable ({exc.reason})") from None
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"CA file of trust domain {trust_domain!r} is unusable ({type(exc).__name__})") from None
        self.unregister(trust_domain)
        self._domains[trust_domain] = state
        if self._started:
            state.loop_task = self._spawn(state, self._run(state))
        log.info("trust domain bundle source registered",
                 extra={"event": "bundle_register", "trust_domain": trust_domain, "source": _describe(source)})

    def unregister(self, trust_domain: str) -> None:
        state = self._domains.pop(trust_domain, None)
        if state is None:
            return
        for task in list(state.tasks):
            task.cancel()
        if state.web_client is not None:
            client = state.web_client
            state.web_client = None
            try:
                asyncio.get_running_loop().create_task(client.aclose())
            except RuntimeError:  # no running loop (configuration built before start)
                pass

    def add_listener(self, listener: Callable[[SpiffeBundle], None]) -> None:
        """Call ``listener(bundle)`` whenever a trust domain's bundle changes."""
        self._listeners.append(listener)

    def trust_domains(self) -> frozenset[str]:
        return frozenset(self._domains)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch every remote trust domain once (bounded wait), then refresh in the background."""
        if self._started:
            return
        self._started = True
        states = list(self._domains.values())
        remote = [s for s in states if not isinstance(s.source, BundleFile)]
        # Endpoints of other trust domains' bundles first would need ordering; a failed first
        # fetch is simply retried after a short backoff.
        initial = [self._refresh(s) for s in remote]
        for state in states:
            state.loop_task = self._spawn(state, self._run(state))
        if initial:
            await asyncio.wait(initial, timeout=self._policy.fetch_timeout + 0.5)

    async def stop(self) -> None:
        self._started = False
        tasks = [t for s in self._domains.values() for t in s.tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._domains.values():
            if state.web_client is not None:
                await state.web_client.aclose()
                state.web_client = None

    # -- hot path --------------------------------------------------------------------------

    def registered(self, trust_domain: str) -> bool:
        return trust_domain in self._domains

    def current(self, trust_domain: str) -> SpiffeBundle | None:
        state = self._domains.get(trust_domain)
        if state is None or state.bundle is None or state.last_success is None:
            return None
        if self._clock() - state.last_success >= self._policy.max_stale:
            return None
        return state.bundle

    async def refetch(self, trust_domain: str) -> None:
        """Join the in-flight fetch, or start one if the cooldown allows; wait boundedly."""
        state = self._domains.get(trust_domain)
        if state is None:
            return
        task = state.inflight if state.inflight is not None and not state.inflight.done() else None
        if task is None:
            now = self._clock()
            if state.last_refetch is not None and now - state.last_refetch < self._policy.unknown_key_cooldown:
                return
            state.last_refetch = now
            task = self._refresh(state)
        await asyncio.wait({task}, timeout=self._policy.lookup_wait)

    def retry_after(self, trust_domain: str) -> int:
        state = self._domains.get(trust_domain)
        if state is None:
            return 1
        return max(1, min(300, math.ceil(state.next_attempt - self._clock())))

    def all_authorities(self) -> list[x509.Certificate]:
        """Every x509-svid authority currently held, for the TLS layer's client CA list (the
        per-trust-domain decision is made again, unmerged, by the SVID verifier)."""
        return [c for s in self._domains.values() if s.bundle is not None for c in s.bundle.x509_authorities]

    # -- introspection ---------------------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        """Per trust domain: usable key counts, sequence, last success and error. ``stale`` is
        true when no bundle is usable or the latest fetch attempt failed."""
        out: dict[str, dict[str, Any]] = {}
        for name, state in self._domains.items():
            bundle = self.current(name)
            failed_last = (
                state.last_error_at is not None
                and (state.last_success is None or state.last_error_at >= state.last_success)
            )
            out[name] = {
                "jwt_keys": 0 if bundle is None else len(bundle.jwt_keys),
                "x509_authorities": 0 if bundle is None else len(bundle.x509_authorities),
                "sequence": None if bundle is None else bundle.sequence,
                "last_success": state.last_success,
                "last_error": state.last_error,
                "stale": bundle is None or failed_last,
            }
        return out

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, state: _DomainState, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)
        return task

    def _refresh(self, state: _DomainState) -> asyncio.Task[None]:
        if state.inflight is None or state.inflight.done():
            state.inflight = self._spawn(state, self._fetch_and_apply(state))
        return state.inflight

    async def _run(self, state: _DomainState) -> None:
        while True:
            try:
                if self._clock() >= state.next_attempt:
                    await asyncio.wait({self._refresh(state)})
                delay = min(max(state.next_attempt - self._clock(), 1.0), self._policy.min_refresh)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bundle refresh loop error", extra={"event": "bundle_loop_error", "trust_domain": state.trust_domain})
                delay = self._policy.min_refresh
            await self._sleep(delay)

    def _fetcher(self, client: httpx.AsyncClient) -> Fetcher:
        return Fetcher(client, timeout=self._policy.fetch_timeout, connect_timeout=self._policy.connect_timeout,
                       max_bytes=self._max_bytes)

    async def _fetch_bundle(self, state: _DomainState) -> SpiffeBundle:
        source = state.source
        td = state.trust_domain
        if isinstance(source, BundleFile):
            return await asyncio.to_thread(_read_bundle_file, source.path, td)
        if isinstance(source, CustomSource):
            doc = await source.fetch()
        elif isinstance(source, HttpsWebEndpoint):
            assert state.web_client is not None
            doc, _ = await self._fetcher(state.web_client).get_json(source.url)
        else:
            doc = await self._fetch_spiffe(state, source)
        try:
            return parse_bundle(doc, td)
        except BundleError as exc:
            raise _FetchFailed(f"bundle_{exc.reason}") from None

    async def _fetch_spiffe(self, state: _DomainState, source: HttpsSpiffeEndpoint) -> Any:
        endpoint_id = parse_spiffe_id(source.endpoint_id)
        if endpoint_id.trust_domain == state.trust_domain:
            # Self-serving: the latest bundle we hold (first the bootstrap), even if stale.
            authorities = state.bundle.x509_authorities if state.bundle is not None else ()
        else:
            other = self._domains.get(endpoint_id.trust_domain)
            authorities = other.bundle.x509_authorities if other is not None and other.bundle is not None else ()
        if not authorities:
            raise _FetchFailed("no_endpoint_authorities", endpoint_id.trust_domain)
        client = httpx.AsyncClient(
            verify=spiffe_client_context(authorities),
            follow_redirects=False,
            event_hooks={"response": [_expect_endpoint_svid(endpoint_id)]},
        )
        try:
            doc, _ = await self._fetcher(client).get_json(source.url)
        finally:
            await client.aclose()
        return doc

    async def _fetch_and_apply(self, state: _DomainState) -> None:
        try:
            bundle = await self._fetch_bundle(state)
        except _FetchFailed as exc:
            self._record_failure(state, exc.reason, exc.detail)
            return
        except FetchError as exc:
            self._record_failure(state, exc.reason, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a failed fetch of any kind keeps the last good bundle
            self._record_failure(state, "internal", type(exc).__name__)
            return
        held = state.bundle
        if held is not None and held.sequence is not None and bundle.sequence is not None:
            if bundle.sequence < held.sequence:
                self._record_failure(state, "sequence_regressed", f"{bundle.sequence} < {held.sequence}")
                return
            if bundle.sequence == held.sequence and not bundle.same_keys(held):
                self._record_failure(state, "sequence_not_incremented", str(bundle.sequence))
                return
        self._accept(state, bundle, self._clock())

    def _accept(self, state: _DomainState, bundle: SpiffeBundle, now: float) -> None:
        held = state.bundle
        changed = held is None or not bundle.same_keys(held) or bundle.sequence != held.sequence
        state.bundle = bundle
        state.last_success = now
        state.failures = 0
        state.last_error = None
        state.next_attempt = now + refresh_interval(bundle.refresh_hint, self._policy)
        if not changed:
            return
        log.log(
            logging.WARNING if bundle.empty else logging.INFO,
            "trust domain bundle updated" + (" (empty: every SVID of the trust domain is refused)" if bundle.empty else ""),
            extra={
                "event": "bundle_updated",
                "trust_domain": state.trust_domain,
                "sequence": bundle.sequence,
                "jwt_keys": len(bundle.jwt_keys),
                "x509_authorities": len(bundle.x509_authorities),
                "skipped": list(bundle.skipped),
                "refresh_in": state.next_attempt - now,
            },
        )
        for listener in self._listeners:
            try:
                listener(bundle)
            except Exception:
                log.exception("bundle listener failed", extra={"trust_domain": state.trust_domain})

    def _record_failure(self, state: _DomainState, reason: str, detail: str) -> None:
        now = self._clock()
        state.failures += 1
        state.last_error = reason
        state.last_error_at = now
        if state.bundle is None:
            delay = self._policy.retry_backoff_initial * 2 ** min(state.failures - 1, 16)
            delay = min(delay, refresh_interval(None, self._policy))
        else:
            delay = refresh_interval(state.bundle.refresh_hint, self._policy)
        state.next_attempt = now + delay
        log.warning(
            "trust domain bundle fetch failed",
            extra={
                "event": "bundle_fetch_failed",
                "trust_domain": state.trust_domain,
                "reason": reason,
                "detail": detail[:300],
                "failures": state.failures,
                "serving": state.bundle is not None,
                "retry_in": delay,
            },
        )


def _describe(source: BundleSourceSpec) -> str:
    if isinstance(source, BundleFile):
        return f"file {source.path}"
    if isinstance(source, HttpsWebEndpoint):
        return f"https_web {source.url}"
    if isinstance(source, HttpsSpiffeEndpoint):
        return f"https_spiffe {source.url} ({source.endpoint_id})"
    return source.name
