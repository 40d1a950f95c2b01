"""Prometheus metrics of the broker: text exposition format 0.0.4, or OpenMetrics 1.0 when the
scraper asks for it (docs/metrics.md lists every series).

Two kinds of series, so that a token request pays for counters and nothing else:

* Event series are counted where the event happens. The token endpoint makes one call per
  request, ``exchange_done``: one dictionary lookup of pre-resolved children, one counter
  increment, one histogram observation. Configuration reloads, database errors and failed
  background rounds are counted off the request path.
* State series (issuer keys, SPIFFE bundles, signing-key expiry, group-commit totals, the
  configuration version) are read from the live objects when scraped; neither the request path
  nor the group-commit writer's loop does any work for them.

Labels are bounded by construction. Issuer, grant and target values are names from the
configuration (anything else is ``other``, absence ``none``); reasons are the code's own
identifiers (at most ``MAX_REASONS`` distinct values, then ``other``); outcomes are a fixed set.
No text a caller sent becomes a label value.

Several workers (``sts serve --workers N``) use prometheus_client's multiprocess mode:
``sts serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh private directory before the
workers start. Each worker's event series live in memory-mapped files there and a scrape sums
them over all workers, dead ones included (a counter never goes back). State series are per
process: each worker writes its own to a small JSON file every ``metrics_state_interval``
seconds (the worker that answers a scrape refreshes its own first), and a scrape reads the files
of the workers still alive, each sample labelled with its ``pid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from sts.config.models import BrokerConfig

log = logging.getLogger("sts.metrics")

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
OTHER: Final = "other"
NONE: Final = "none"
OUTCOMES: Final = ("issued", "denied", "error")
MAX_REASONS: Final = 256
_REASON_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Exchanges take about a millisecond when warm; a cold issuer (a JWKS fetch on an unknown kid)
# or a slow database shows up in the upper buckets.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Raw label tuples remembered for the hot path. Past this many, a request normalises its labels
# first (a flood of distinct targets costs a little CPU per request, never memory).
RAW_CACHE_LIMIT: Final = 4096
STATE_FILE_PREFIX: Final = "sts_state_"


def multiprocess_directory() -> str | None:
    """The multiprocess directory, if this process runs in multiprocess mode. prometheus_client
    itself decides from the same variable when it is first imported."""
    return os.environ.get(MULTIPROC_ENV) or None


# --- label sets ------------------------------------------------------------------------------
class LabelSets:
    """The label values a configuration allows. Invariant: every value returned is a name from
    the configuration, ``other`` or ``none``."""

    __slots__ = ("grants", "issuers", "target_prefixes", "targets")

    def __init__(self, *, issuers: Iterable[str] = (), grants: Iterable[str] = (), targets: Iterable[str] = (),
                 target_prefixes: Iterable[str] = ()) -> None:
        self.issuers = frozenset(issuers)
        self.grants = frozenset(grants)
        self.targets = frozenset(targets)
        # Longest first: a resource is labelled with the most specific prefix it falls under.
        self.target_prefixes = tuple(sorted(set(target_prefixes), key=len, reverse=True))

    @classmethod
    def from_config(cls, config: BrokerConfig) -> LabelSets:
        targets = [t for g in config.grants for t in g.targets]
        return cls(
            issuers=[i.name for i in config.issuers] + [td.name for td in config.trust_domains],
            grants=[g.name for g in config.grants],
            targets=[t.value for t in targets if t.kind != "resource_prefix"],
            target_prefixes=[t.value for t in targets if t.kind == "resource_prefix"],
        )

    def issuer(self, value: str | None) -> str:
        return NONE if value is None else value if value in self.issuers else OTHER

    def grant(self, value: str | None) -> str:
        return NONE if value is None else value if value in self.grants else OTHER

    def target(self, value: str | None) -> str:
        """An exact configured target, or the ``resource_prefix`` a resource falls under."""
        if value is None:
            return NONE
        if value in self.targets:
            return value
        for prefix in self.target_prefixes:
            if value.startswith(prefix):
                return prefix
        return OTHER


class ReasonLabels:
    """Reason codes are identifiers written in the code (a literal, or a literal prefix and
    another code's literal), never caller text; the syntax check and the cap make the label set
    bounded even if a future change let one slip through."""

    def __init__(self, limit: int = MAX_REASONS) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, reason: str | None) -> str:
        if reason is None:
            return NONE
        if reason in self._seen:
            return reason
        if len(self._seen) >= self._limit or not _REASON_RE.fullmatch(reason):
            return OTHER
        self._seen.add(reason)
        return reason


# --- the metrics objects ---------------------------------------------------------------------
class NoMetrics:
    """Metrics turned off (no ``STS_METRICS_PORT``): every call does nothing."""

    enabled = False

    def configure(self, config: BrokerConfig, version: str) -> None:
        pass

    def exchange_done(self, outcome: str, reason: str | None, issuer: str | None, grant: str | None,
                      target: str | None, seconds: float) -> None:
        pass

    def config_reload(self, ok: bool) -> None:
        pass

    def database_error(self, operation: str) -> None:
        pass

    def background_failure(self, task: str, exc: BaseException) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def _is_database_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import SQLAlchemyError

    from sts.store.errors import StoreError

    return isinstance(exc, (SQLAlchemyError, StoreError))


class Metrics(NoMetrics):
    """The broker's metrics. Invariant: the token endpoint's call touches only pre-resolved
    children; every label value is bounded (``LabelSets``, ``ReasonLabels``, ``OUTCOMES``).

    The state sources are read on the event loop thread only (they are not locked): ``jwks``
    and ``bundles`` give ``status()``, ``keyring`` gives ``active(alg)``, ``writer`` gives
    ``stats``, and ``runtime()`` the compiled configuration (``key_sources``, signing
    algorithms).
    """

    enabled = True

    def __init__(self, *, runtime: Callable[[], Any], jwks: Any, bundles: Any, keyring: Any, writer: Any,
                 port: int = 0, host: str = "127.0.0.1", state_interval: float = 5.0,
                 directory: str | None = None, clock: Callable[[], float] = time.time) -> None:
        # Created series (*_created) double the output and say little for a long-running server.
        disable_created_metrics()
        self._runtime = runtime
        self._jwks = jwks
        self._bundles = bundles
        self._keyring = keyring
        self._writer = writer
        self._port = port
        self._host = host
        self._state_interval = state_interval
        self._directory = directory
        self._clock = clock
        self._pid = str(os.getpid())

        self.exchanges = Counter(
            "sts_token_exchanges", "Token requests answered, by outcome, reason and the configured issuer, grant and target.",
            ("outcome", "reason", "issuer", "grant", "target"), registry=None,
        )
        self.latency = Histogram(
            "sts_token_request_duration_seconds", "Time from receiving a token request to answering it (audit record durable).",
            ("outcome",), buckets=LATENCY_BUCKETS, registry=None,
        )
        self.reloads = Counter("sts_config_reloads", "Configuration reloads, by result.", ("result",), registry=None)
        self.database_errors = Counter("sts_database_errors", "Database errors outside the group commit, by operation.",
                                       ("operation",), registry=None)
        self.background_failures = Counter("sts_background_failures", "Failed rounds of background tasks, by task.",
                                           ("task",), registry=None)
        # Series that exist from the start, so that rate() and alerts see a zero before the first event.
        self._latency = {o: self.latency.labels(o) for o in OUTCOMES}
        for result in ("success", "failure"):
            self.reloads.labels(result)
        for operation in ("readiness", "key_refresh"):
            self.database_errors.labels(operation)
        self.background_failures.labels("key_refresh")

        self._labels = LabelSets()
        self._reasons = ReasonLabels()
        self._hot: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}
        self._config_version = ""
        self._config_loaded_at = 0.0
        self._key_set_hashes: dict[int, tuple[Any, str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._server: Any = None
        self.registry = self._build_registry()

    # -- configuration ---------------------------------------------------------------------
    def configure(self, config: BrokerConfig, version: str) -> None:
        """Take the label sets of a newly loaded configuration (start and every reload)."""
        self._labels = LabelSets.from_config(config)
        self._hot = {}  # the same raw values may map to other labels now
        self._config_version = version
        self._config_loaded_at = self._clock()

    # -- hot path --------------------------------------------------------------------------
    def exchange_done(self, outcome: str, reason: str | None, issuer: str | None, grant: str | None,
                      target: str | None, seconds: float) -> None:
        """Count one answered token request. ``issuer``, ``grant`` and ``target`` are the
        audit record's values; any value not in the configuration is counted as ``other``."""
        children = self._hot.get((outcome, reason, issuer, grant, target))
        if children is None:
            children = self._resolve(outcome, reason, issuer, grant, target)
        children[0].inc()
        children[1].observe(seconds if seconds > 0.0 else 0.0)

    def _resolve(self, outcome: str, reason: str | None, issuer: str | None, grant: str | None,
                 target: str | None) -> tuple[Any, Any]:
        ls = self._labels
        labels = (outcome if outcome in OUTCOMES else OTHER, self._reasons(reason), ls.issuer(issuer),
                  ls.grant(grant), ls.target(target))
        children = self._children.get(labels)
        if children is None:
            latency = self._latency.get(labels[0]) or self.latency.labels(labels[0])
            children = (self.exchanges.labels(*labels), latency)
            self._children[labels] = children
        if len(self._hot) < RAW_CACHE_LIMIT:
            self._hot[(outcome, reason, issuer, grant, target)] = children
        return children

    # -- off the hot path ------------------------------------------------------------------
    def config_reload(self, ok: bool) -> None:
        self.reloads.labels("success" if ok else "failure").inc()

    def database_error(self, operation: str) -> None:
        self.database_errors.labels(operation).inc()

    def background_failure(self, task: str, exc: BaseException) -> None:
        self.background_failures.labels(task).inc()
        if _is_database_error(exc):
            self.database_errors.labels(task).inc()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self._directory is not None:
            self.publish_state()
            self._publisher = asyncio.create_task(self._publish_loop(), name="sts-metrics-state")
        elif self._port:
            # With several workers the supervising process serves the separate port (sts serve).
            self._server = serve_metrics(self.registry, self._host, self._port)

    async def stop(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()
            self._server = None
        if self._directory is not None:
            from prometheus_client import multiprocess

            with contextlib.suppress(OSError):
                state_file(self._directory, os.getpid()).unlink()
            multiprocess.mark_process_dead(os.getpid(), self._directory)
        self._loop = None

    async def _publish_loop(self) -> None:
        while True:
            await asyncio.sleep(self._state_interval)
            try:
                self.publish_state()
            except Exception:
                log.exception("could not publish state metrics")

    # -- exposition ------------------------------------------------------------------------
    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics if ``accept`` asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def _build_registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        if self._directory is None:
            for metric in (self.exchanges, self.latency, self.reloads, self.database_errors, self.background_failures):
                registry.register(metric)
            registry.register(_LiveState(self))
        else:
            add_multiprocess_collectors(registry, self._directory, refresh=self.publish_state)
        return registry

    def publish_state(self) -> None:
        """Write this process's state series for the other workers' scrapes (multiprocess)."""
        if self._directory is None:
            return
        families = self.state_families()
        write_state_file(self._directory, os.getpid(), families)

    def state_on_loop(self) -> list[Metric]:
        """State families built on the event loop thread, whichever thread asks."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            return self.state_families()

        async def build() -> list[Metric]:
            return self.state_families()

        try:
            return asyncio.run_coroutine_threadsafe(build(), loop).result(timeout=5)
        except Exception:  # the loop is gone or busy: answer the event series alone
            log.warning("state metrics unavailable for this scrape")
            return []

    # -- state series ----------------------------------------------------------------------
    def state_families(self) -> list[Metric]:
        """Every state series of this process, read now (on the event loop thread)."""
        pid = {"pid": self._pid}
        out = _Families(pid)
        out.gauge("sts_build_info", "The broker's version.", [({"version": _package_version()}, 1.0)])
        out.gauge("sts_config_info", "The configuration version this process serves (a digest of the file).",
                  [({"version": self._config_version}, 1.0)])
        out.gauge("sts_config_last_load_timestamp_seconds", "When this process last loaded a configuration successfully.",
                  [({}, self._config_loaded_at)])
        rt = self._runtime()
        self._issuer_key_families(out, rt)
        self._bundle_families(out)
        self._signing_key_families(out, rt)
        self._writer_families(out)
        return out.families

    def _issuer_key_families(self, out: _Families, rt: Any) -> None:
        status = self._jwks.status()
        names = {keys_id: name for name, keys_id in rt.key_sources.items() if keys_id in status}
        keys, stale, fetches, failures, last, key_sets = [], [], [], [], [], []
        hashes: dict[int, tuple[Any, str]] = {}
        for keys_id, name in sorted(names.items(), key=lambda kv: kv[1]):
            s = status[keys_id]
            labels = {"issuer": name}
            keys.append((labels, float(s["keys"])))
            stale.append((labels, 1.0 if s["stale"] else 0.0))
            failed = s.get("fetch_failures", {})
            fetches.append(({**labels, "result": "success"}, float(s.get("fetch_successes", 0))))
            fetches.append(({**labels, "result": "failure"}, float(sum(failed.values()))))
            failures.extend(({**labels, "reason": reason}, float(n)) for reason, n in sorted(failed.items()))
            if s["last_success"] is not None:
                last.append(({**labels, "result": "success"}, float(s["last_success"])))
            if s.get("last_error_at") is not None:
                last.append(({**labels, "result": "failure"}, float(s["last_error_at"])))
            key_set = self._jwks.peek(keys_id)
            if key_set is not None:
                digest = self._key_set_hash(key_set)
                hashes[id(key_set)] = (key_set, digest)
                key_sets.append(({**labels, "hash": digest}, 1.0))
        self._key_set_hashes = hashes
        out.gauge("sts_jwks_keys", "Usable verification keys held for the issuer.", keys)
        out.gauge("sts_jwks_stale", "1 while the issuer's keys are served although their refresh is overdue or failed.", stale)
        out.counter("sts_jwks_fetches", "Fetches of the issuer's keys (discovery and JWKS), by result.", fetches)
        out.counter("sts_jwks_fetch_failures", "Failed fetches of the issuer's keys, by reason.", failures)
        out.gauge("sts_jwks_fetch_last_timestamp_seconds", "Time of the issuer's last key fetch with this result.", last)
        out.gauge("sts_jwks_fetch_last_key_set_info", "Digest of the key set fetched last (changes when the issuer rotates).",
                  key_sets)

    def _key_set_hash(self, key_set: Any) -> str:
        known = self._key_set_hashes.get(id(key_set))
        if known is not None and known[0] is key_set:
            return known[1]
        canonical = sorted(json.dumps(k.to_jwk(), sort_keys=True, separators=(",", ":")) for k in key_set.keys)
        return hashlib.sha256("\n".join(canonical).encode()).hexdigest()[:16]

    def _bundle_families(self, out: _Families) -> None:
        status = self._bundles.status()
        keys, last, stale = [], [], []
        for name, s in sorted(status.items()):
            labels = {"trust_domain": name}
            keys.append(({**labels, "kind": "jwt"}, float(s["jwt_keys"])))
            keys.append(({**labels, "kind": "x509"}, float(s["x509_authorities"])))
            stale.append((labels, 1.0 if s["stale"] else 0.0))
            if s["last_success"] is not None:
                last.append((labels, float(s["last_success"])))
        out.gauge("sts_spiffe_bundle_keys", "Keys (jwt) and X.509 authorities (x509) in the trust domain's bundle.", keys)
        out.gauge("sts_spiffe_bundle_stale", "1 when the trust domain has no usable bundle or its last fetch failed.", stale)
        out.gauge("sts_spiffe_bundle_last_success_timestamp_seconds", "Time of the trust domain's last good bundle fetch.", last)

    def _signing_key_families(self, out: _Families, rt: Any) -> None:
        from sts.tokens.keyring import KeyUnavailable

        expiry, usable, degraded = [], [], []
        problems = self._keyring.degraded(rt.signing_algorithms)
        for alg in sorted(rt.signing_algorithms):
            labels = {"alg": alg}
            degraded.append((labels, 1.0 if alg in problems else 0.0))
            try:
                key = self._keyring.peek(alg)
            except KeyUnavailable:
                usable.append((labels, 0.0))
                continue
            usable.append((labels, 1.0))
            expiry.append((labels, float(key.not_after)))
        out.gauge("sts_signing_key_expiry_timestamp_seconds", "When the key this process signs with for the algorithm expires.",
                  expiry)
        out.gauge("sts_signing_key_usable", "1 when this process holds a usable signing key for the algorithm.", usable)
        out.gauge("sts_signing_key_degraded",
                  "1 when the active key for the algorithm cannot be used here and a fallback key signs (or none can).",
                  degraded)
        out.counter("sts_signing_key_fallback_signatures", "Tokens signed with a fallback key because the active key could not be used.",
                    [({}, float(self._keyring.fallback_signatures))])

    def _writer_families(self, out: _Families) -> None:
        s = self._writer.stats
        for name, doc, value in (
            ("sts_group_commit_batches", "Group transactions committed.", s.batches),
            ("sts_group_commit_records", "Audit and issued-token rows committed.", s.records),
            ("sts_group_commit_claims", "One-time jti claims run in group transactions.", s.claims),
            ("sts_group_commit_failed_batches", "Group transactions rolled back (their items retried one by one).",
             s.failed_batches),
            ("sts_group_commit_failed_items", "Writes or claims answered with a database error.", s.failed_items),
        ):
            out.counter(name, doc, [({}, float(value))])
        out.gauge("sts_group_commit_batch_size_max", "Records and claims in the largest group transaction so far.",
                  [({}, float(s.max_batch_seen))])


class _Families:
    """Builds state families; every sample carries the process's ``pid`` label."""

    def __init__(self, base: dict[str, str]) -> None:
        self.base = base
        self.families: list[Metric] = []

    def gauge(self, name: str, doc: str, samples: list[tuple[dict[str, str], float]]) -> None:
        self._add(name, doc, "gauge", name, samples)

    def counter(self, name: str, doc: str, samples: list[tuple[dict[str, str], float]]) -> None:
        self._add(name, doc, "counter", name + "_total", samples)

    def _add(self, name: str, doc: str, typ: str, sample_name: str, samples: list[tuple[dict[str, str], float]]) -> None:
        family = Metric(name, doc, typ)
        for labels, value in samples:
            family.add_sample(sample_name, {**labels, **self.base}, value)
        self.families.append(family)


class _LiveState:
    """Collector of the state series of this process (single-process mode)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics.state_on_loop()


_VERSION: list[str] = []


def _package_version() -> str:
    if not _VERSION:
        try:
            _VERSION.append(metadata.version("workload-sts"))
        except metadata.PackageNotFoundError:
            _VERSION.append("unknown")
    return _VERSION[0]


# --- several workers -------------------------------------------------------------------------
def state_file(directory: str, pid: int) -> Path:
    return Path(directory) / f"{STATE_FILE_PREFIX}{pid}.json"


def write_state_file(directory: str, pid: int, families: list[Metric]) -> None:
    doc = {
        "pid": pid,
        "families": [
            [f.name, f.type, f.documentation, [[s.name, s.labels, s.value] for s in f.samples]] for f in families
        ],
    }
    target = state_file(directory, pid)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(temporary, target)  # readers see the old file or the new one, never half of one


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state_files(directory: str, alive: Callable[[int], bool] = process_alive) -> list[Metric]:
    """The state families of every live worker, merged by name. Files of dead workers are
    removed (a worker killed with SIGKILL never removes its own)."""
    merged: dict[str, Metric] = {}
    for path in sorted(Path(directory).glob(f"{STATE_FILE_PREFIX}*.json")):
        try:
            pid = int(path.stem[len(STATE_FILE_PREFIX):])
        except ValueError:
            continue
        if not alive(pid):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # removed or replaced while listed: the next scrape reads it
        for name, typ, doc_text, samples in doc["families"]:
            family = merged.get(name)
            if family is None:
                family = merged[name] = Metric(name, doc_text, typ)
            for sample_name, labels, value in samples:
                family.add_sample(sample_name, labels, value)
    return list(merged.values())


class _StateFiles:
    def __init__(self, directory: str, refresh: Callable[[], None] | None) -> None:
        self._directory = directory
        self._refresh = refresh

    def collect(self) -> list[Metric]:
        if self._refresh is not None:
            try:
                self._refresh()
            except Exception:
                log.exception("could not publish state metrics")
        return read_state_files(self._directory)


def add_multiprocess_collectors(registry: CollectorRegistry, directory: str,
                                refresh: Callable[[], None] | None = None) -> None:
    """Event series summed over every worker, and the state series of the live ones."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry.register(MultiProcessCollector(None, path=directory))
    registry.register(_StateFiles(directory, refresh))


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """The registry the supervising process of several workers serves on the metrics port."""
    registry = CollectorRegistry(auto_describe=False)
    add_multiprocess_collectors(registry, directory)
    return registry


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Any:
    """A separate HTTP listener for scrapes (a thread; returns the server, ``shutdown()``
    stops it). It answers the exposition on every path and nothing else."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics`` on the main port (``STS_METRICS_PORT=0``)."""
    from starlette.responses import Response

    metrics: Metrics = request.app.state.broker.metrics
    body, content_type = metrics.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
