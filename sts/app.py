"""Wiring: ``create_app(settings)`` is the only place where parts are built and connected.

Nothing here is global: a test builds as many brokers as it likes, each with its own database,
keys and configuration. Background work (JWKS refresh, signing-key refresh and rotation,
configuration reload) runs as tasks owned by the app's lifespan, never on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.routing import Route

from sts import endpoints
from sts.admin.auth import AdminSetupError
from sts.approvals.gate import ApprovalGate
from sts.approvals.view import ApprovalView
from sts.audit import DATABASE_WAIT_SECONDS, AuditSink, audit_log_lines
from sts.config.loader import ConfigInvalid, LoadedConfig, load_config
from sts.config.sources import ConfigSource, latest_mtime
from sts.exchange import TokenExchanger
from sts.gcpolicy import collector_paused, freeze_long_lived
from sts.lifecycle.status_index import StatusIndexAllocator
from sts.lifecycle.status_publisher import StatusListPublisher
from sts.lifecycle.statuslist import STATUS_LIST_PATH, status_list_uri
from sts.lifecycle.view import LifecycleView
from sts.http import lifecycle as lifecycle_http
from sts.http import status_list as status_list_http
from sts.http.token import Receive, Scope, Send, TokenEndpoint
from sts.ops.coalesce import RefusalCoalescer, RefusalFlusher
from sts.ops.retention import Pruner
from sts.ops.metrics import Metrics, NoMetrics, metrics_endpoint, multiprocess_directory
from sts.runtime import BrokerRuntime, build_runtime
from sts.sender.guard import dpop_guard
from sts.spiffe.verifier import commit_bundles
from sts.settings import Settings, keep_dev_kek, load_keks, load_settings
from sts.store import migrate
from sts.store.db import make_engine
from sts.store.config_versions import ConfigVersionRepository
from sts.store.errors import StoreError
from sts.store.keys import KeyRepository
from sts.store.queries import purge_replay
from sts.store.replicas import ReplicaRepository
from sts.store.retention import insert_audit_records
from sts.store.status_list import StatusListRepository
from sts.store.writer import GroupCommitWriter
from sts.subject.fetch import Fetcher
from sts.subject.jwks import CachePolicy, JWKSCache
from sts.spiffe.bundle_source import BundlePolicy, BundleStore
from sts.spiffe.mtls import parse_proxies
from sts.spiffe.tls import ClientCATrust
from sts.tokens.keyring import KekMismatch, KeyEncryptor, KeyRing
from sts.tokens.signer import LocalSigner
from sts.upstream import UpstreamTokens

log = logging.getLogger("sts.app")


class StartupError(Exception):
    """The broker cannot start safely (bad configuration, missing KEK, unmigrated database).
    ``fix`` (optional) says what to do, for the one line the command line prints."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


class WrongKek(StartupError):
    """The key-encryption key opens none of the stored signing keys (a user error: exit 2)."""


def replica_id() -> str:
    """A name for this process among the replicas: host, pid and a random tail (a pid can be
    reused by a restarted container on the same host name)."""
    return f"{socket.gethostname()[:64]}/{os.getpid()}/{secrets.token_hex(3)}"


class Broker:
    """Owns every long-lived part of one broker process. Invariant: ``runtime()`` always
    returns a fully compiled, valid configuration; a reload swaps it whole or not at all."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        try:
            with collector_paused():
                loaded = load_config(settings.config)
        except ConfigInvalid as exc:
            problem, fix = exc.one_line(settings.config)
            raise StartupError(problem, fix=fix) from None
        dev_reasons = loaded.requires_dev_mode()
        if dev_reasons and not settings.dev_mode:
            raise StartupError(
                f"the configuration {settings.config} needs dev mode (STS_DEV_MODE=true): " + "; ".join(dev_reasons),
                fix="for production use https issuers without allow_insecure_http"
                f" (`sts config check --for-production {settings.config}` lists them)",
            )
        self._config_path = Path(settings.config)
        self._config_mtime = self._mtime()
        # The configuration that serves, for the admin API's explain (sts.admin); swapped on reload.
        self.loaded_config = loaded
        # The read-only admin API on its own listener (docs/admin-api.md); None when off.
        # Checked first, so that an unusable token or TLS file is the one line `sts serve` prints.
        self.admin: Any = None
        if settings.admin_listen is not None:
            from sts.admin.listener import AdminListener  # imported only when the admin API is on

            try:
                self.admin = AdminListener(self, settings)
            except AdminSetupError as exc:
                raise StartupError(str(exc), fix=exc.fix) from None

        self.engine = make_engine(settings.database_url)
        # Every configuration that serves is stored first (docs/trust-changes.md#stored-versions).
        self.config_versions = ConfigVersionRepository(self.engine)
        self._unrecorded: ConfigSource | None = loaded.source
        self.replica_id = replica_id()
        self.writer = GroupCommitWriter(self.engine, after_commit=audit_log_lines)
        self.kek = load_keks(settings)
        self.keyring = KeyRing(
            KeyRepository(self.engine),
            KeyEncryptor.from_material(self.kek),
            key_lifetime=settings.signing_key_lifetime,
            max_token_lifetime=loaded.config.tokens.max_lifetime,
            clock=clock,
            replicas=ReplicaRepository(self.engine),
            replica_id=self.replica_id,
            # Three missed reports before the others stop waiting for this replica.
            replica_ttl=3 * settings.key_refresh_interval + 5.0,
        )
        self.signer = LocalSigner(self.keyring)
        self.fetcher = Fetcher()
        self.jwks = JWKSCache(self.fetcher, policy=CachePolicy(unknown_kid_cooldown=settings.jwks_unknown_kid_cooldown), clock=clock)
        self.audit = AuditSink(self.writer)
        # Retention (docs/operations.md#retention): the pruner deletes on one replica at a
        # time; the coalescer turns floods of identical unauthenticated refusals into counts.
        self.pruner = Pruner.from_settings(self.engine, settings, clock=clock)
        self.coalescer = RefusalCoalescer(window=settings.audit_coalesce_window,
                                          max_windows=settings.audit_coalesce_max_windows, clock=clock)
        self.refusal_flusher = RefusalFlusher(
            self.coalescer, lambda records: asyncio.to_thread(insert_audit_records, self.engine, records),
            interval=RefusalFlusher.interval_for(settings.audit_coalesce_window),
        )
        # SPIFFE trust domains: bundles refreshed in the background; their x509 authorities are
        # also offered to the TLS layer when the broker terminates TLS (sts.spiffe.tls).
        self.bundles = BundleStore(
            policy=BundlePolicy(unknown_key_cooldown=settings.jwks_unknown_kid_cooldown), clock=clock
        )
        self.tls_trust = ClientCATrust()
        self.bundles.add_listener(lambda bundle: self.tls_trust.add(bundle.x509_authorities))
        self.trusted_proxies = parse_proxies(settings.trusted_proxies)
        try:
            self.dpop = dpop_guard(settings, self.kek.current, self._claim_once, clock)
        except ValueError as exc:
            raise StartupError(f"STS_DPOP_NONCE_KEY is unusable: {exc}",
                               fix="set it to a base64url key of 16 bytes or more, or unset it to derive one from the KEK") from None
        with collector_paused():
            self._runtime: BrokerRuntime = build_runtime(loaded, self.jwks, self._claim_once, dev_mode=settings.dev_mode,
                                                         clock=clock, bundles=self.bundles)
        commit_bundles(self.bundles, self._runtime.pending_bundles)
        # Kill switches and revocations: an in-memory view kept current in the background.
        self.lifecycle = LifecycleView(self.engine, poll_interval=settings.lifecycle_poll_interval, clock=clock)
        # Just-in-time approvals (docs/approvals.md): the same kind of view, woken by the same listener.
        self.approvals = ApprovalView(self.engine, poll_interval=settings.lifecycle_poll_interval, clock=clock)
        self.lifecycle.followers.append(self.approvals.wake)
        # Token Status List (docs/operations.md#offline-revocation-the-status-list).
        status_repo = StatusListRepository(self.engine)
        self.status_index = StatusIndexAllocator(status_repo, clock=clock)
        self.status_list = StatusListPublisher(
            status_repo, key_for=lambda: self.signer.key_for(min(self.runtime().signing_algorithms)),
            uri=lambda: status_list_uri(self.runtime().issuer), ttl=settings.status_list_ttl, clock=clock)
        # Model providers' tokens for targets that name an upstream (docs/providers): in memory only.
        self.upstreams = UpstreamTokens(signer=self.signer, clock=clock)
        self.exchanger = TokenExchanger(runtime=self.runtime, signer=self.signer, audit=self.audit, writer=self.writer, clock=clock,
                                        lifecycle=lambda: self.lifecycle.snapshot, status_index=self.status_index,
                                        approvals=ApprovalGate(lambda: self.approvals.snapshot, self.approvals.repository,
                                                               max_pending=settings.approval_max_pending,
                                                               recorded=self.approvals.wake, clock=clock),
                                        upstreams=self.upstreams)
        self.metrics = self._metrics(settings)
        self.metrics.configure(loaded.config, loaded.version)
        self.tracing = self._tracing(settings)
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_event = asyncio.Event()

    def _metrics(self, settings: Settings) -> NoMetrics:
        if settings.metrics_port is None:
            return NoMetrics()
        return Metrics(runtime=self.runtime, jwks=self.jwks, bundles=self.bundles, keyring=self.keyring, writer=self.writer,
                       port=settings.metrics_port, host=settings.metrics_host or settings.host,
                       state_interval=settings.metrics_state_interval, directory=multiprocess_directory(), clock=self.clock)

    @staticmethod
    def _tracing(settings: Settings) -> Any:
        if not settings.otel_enabled:
            return None
        try:
            from sts.ops.tracing import Tracing, TracingUnavailable
        except ImportError:
            raise StartupError("STS_OTEL_ENABLED needs OpenTelemetry: pip install 'workload-sts[otel]'") from None
        try:
            return Tracing.from_environment()
        except TracingUnavailable as exc:
            raise StartupError(str(exc)) from None

    async def _claim_once(self, namespace: str, jti: str, expires_at: float) -> bool:
        return await asyncio.wait_for(self.writer.claim_once(namespace, jti, expires_at), DATABASE_WAIT_SECONDS)

    def runtime(self) -> BrokerRuntime:
        return self._runtime

    def _mtime(self) -> float:
        return latest_mtime(self._config_path)

    def _record_config(self, source: ConfigSource | None) -> None:
        """Store the configuration about to serve, so that the version in its audit records
        names a stored document (``sts config show``). Idempotent; never on the request path."""
        if source is None:
            return
        self.config_versions.record(sha256=source.sha256, kind=source.kind, source=str(self._config_path.resolve()),
                                    document=source.document_bytes.decode("utf-8"), now=self.clock(),
                                    loaded_by=self.replica_id)

    def preflight(self) -> None:
        """Checks that need the database, before anything is written: the schema is current and
        the KEK opens the stored keys. ``sts serve`` runs it before it starts serving (a wrong
        KEK exits at once with one line) and ``start`` runs it again in every worker."""
        try:
            current = migrate.current(self.settings.database_url)
            if current != migrate.head():
                raise StartupError(f"database is at revision {current!r}, expected {migrate.head()!r}", fix="run `sts db upgrade`")
            self.keyring.require_kek(self.kek.origin)
        except KekMismatch as exc:
            raise WrongKek(str(exc), fix=exc.fix) from None
        except (SQLAlchemyError, StoreError) as exc:
            orig = getattr(exc, "orig", None) or exc
            raise StartupError(f"cannot read the database ({type(orig).__name__})",
                               fix="check STS_DATABASE_URL and that the database server is up") from exc
        keep_dev_kek(self.kek)

    async def start(self) -> None:
        await asyncio.to_thread(self.preflight)
        await asyncio.to_thread(self.keyring.report_replica)
        await asyncio.to_thread(self._record_config, self._unrecorded)
        self._unrecorded = None
        self.writer.start()
        await self.lifecycle.start()
        await self.approvals.start()
        await asyncio.to_thread(self.keyring.ensure, self._runtime.signing_algorithms)
        await self.jwks.start()
        await self.bundles.start()
        await self.metrics.start()
        if self.admin is not None:
            try:
                await self.admin.start()
            except AdminSetupError as exc:
                raise StartupError(str(exc), fix=exc.fix) from None
        self._tasks = [
            asyncio.create_task(self._key_loop(), name="sts-keys"),
            asyncio.create_task(self._config_loop(), name="sts-config"),
        ]
        if self.settings.prune_interval > 0:
            self._tasks.append(asyncio.create_task(self.pruner.run_forever(self.settings.prune_interval), name="sts-prune"))
        if self.coalescer.enabled:
            self._tasks.append(asyncio.create_task(self.refusal_flusher.run_forever(), name="sts-refusals"))
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload_event.set)
        freeze_long_lived()
        # The pid tells the workers of `sts serve --workers N` apart in the logs.
        log.info("broker started", extra={"issuer": self._runtime.issuer, "config_version": self._runtime.version,
                                          "pid": os.getpid()})

    async def stop(self) -> None:
        self.pruner.stop()
        await self.lifecycle.stop()
        await self.approvals.stop()
        await self.metrics.stop()
        if self.admin is not None:
            await self.admin.stop()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await self.refusal_flusher.flush(everything=True)
        except Exception:
            log.exception("coalesced refusals could not be written at shutdown")
        await self.jwks.stop()
        await self.bundles.stop()
        await self.fetcher.aclose()
        await self.upstreams.aclose()
        await asyncio.to_thread(self.writer.stop)
        try:
            # Leaving at once, instead of after the report expires, lets a rotation proceed.
            await asyncio.to_thread(self.keyring.leave)
        except Exception:
            log.warning("could not remove this replica's report; it expires by itself", exc_info=True)
        self.engine.dispose()

    async def _key_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.key_refresh_interval)
            try:
                await asyncio.to_thread(self.keyring.report_replica)
                await asyncio.to_thread(self.keyring.rotate_due)
                await asyncio.to_thread(purge_replay, self.engine, self.clock())
            except Exception as exc:
                self.metrics.background_failure("key_refresh", exc)
                log.exception("signing key refresh failed; the current keys keep serving")

    async def _config_loop(self) -> None:
        interval = self.settings.config_reload_interval or None
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reload_event.wait(), timeout=interval)
            forced = self._reload_event.is_set()
            self._reload_event.clear()
            if forced or self._mtime() != self._config_mtime:
                try:
                    await self.reload_config()
                except Exception:
                    # A failed reload must never end the reload task: later edits still count.
                    log.exception("configuration reload failed; the running configuration keeps serving")

    def _drop_unused_key_entries(self, *, keep: BrokerRuntime) -> None:
        for keys_id in set(self.jwks.status()) - set(keep.key_sources.values()):
            self.jwks.unregister(keys_id)

    async def reload_config(self) -> bool:
        """Load, validate and compile the configuration file; swap it in only if all of that
        succeeded. An invalid file is refused and the running configuration keeps serving."""
        self._config_mtime = self._mtime()
        try:
            loaded = await asyncio.to_thread(_load_paused, self._config_path)
            if loaded.requires_dev_mode() and not self.settings.dev_mode:
                raise ConfigInvalid(["configuration needs dev mode"])
            # A replaced CA or key file counts as a change even when the configuration file is
            # the same: SIGHUP is how an operator makes the broker read them again.
            if loaded.version == self._runtime.version and loaded.files_version == self._runtime.files_version:
                return False
            with collector_paused():
                runtime = build_runtime(loaded, self.jwks, self._claim_once, dev_mode=self.settings.dev_mode,
                                        clock=self.clock, previous=self._runtime, bundles=self.bundles)
        except ConfigInvalid as exc:
            self.metrics.config_reload(False)
            log.error("configuration reload refused", extra={"problems": [str(p) for p in exc.problems]})
            return False
        try:
            await asyncio.to_thread(self.keyring.ensure, runtime.signing_algorithms)
        except Exception:
            self.metrics.config_reload(False)
            log.exception("configuration reload refused: signing keys for it could not be prepared")
            self._drop_unused_key_entries(keep=self._runtime)
            return False
        try:
            await asyncio.to_thread(self._record_config, loaded.source)
        except Exception:
            # Audit records must name a stored version: a configuration that cannot be stored
            # does not serve (the running one keeps serving; the next reload tries again).
            self.metrics.config_reload(False)
            log.exception("configuration reload refused: its version could not be stored; retrying at the next poll")
            self._drop_unused_key_entries(keep=self._runtime)
            self._config_mtime = -1.0  # a database that is back lets the next poll succeed
            return False
        self.keyring.allow_token_lifetime(loaded.config.tokens.max_lifetime)
        old = self._runtime
        # No await from here to the end: requests see the old configuration with its bundles
        # or the new one with its bundles, never a mix.
        self._runtime = runtime
        self.loaded_config = loaded
        self.metrics.configure(loaded.config, runtime.version)
        self.metrics.config_reload(True)
        commit_bundles(self.bundles, runtime.pending_bundles)
        self._drop_unused_key_entries(keep=runtime)
        for name in set(old.bundle_sources) - set(runtime.bundle_sources):
            self.bundles.unregister(name)
        previous_version = old.version
        del old  # the last reference here: the collection below may then free it
        freeze_long_lived()
        log.info("configuration reloaded", extra={"config_version": runtime.version, "previous": previous_version,
                                                  "pid": os.getpid()})
        return True


def _load_paused(path: Path) -> LoadedConfig:
    with collector_paused():
        return load_config(path)


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> BrokerApp:
    broker = Broker(settings, clock=clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broker.start()
        try:
            yield
        finally:
            await broker.stop()

    prefix = broker.runtime().path_prefix
    routes = [
        Route(prefix + "/jwks", endpoints.jwks_endpoint, methods=["GET"]),
        Route(prefix + "/bundle.spiffe", endpoints.spiffe_bundle_endpoint, methods=["GET"]),
        Route("/.well-known/oauth-authorization-server" + prefix, endpoints.metadata_endpoint, methods=["GET"]),
        Route(prefix + "/.well-known/openid-configuration", endpoints.metadata_endpoint, methods=["GET"]),
        Route(prefix + "/introspect", lifecycle_http.introspect_endpoint, methods=["POST"]),
        Route(prefix + "/revoke", lifecycle_http.revoke_endpoint, methods=["POST"]),
        Route(prefix + STATUS_LIST_PATH, status_list_http.status_list_endpoint, methods=["GET"]),
        Route("/healthz", endpoints.healthz, methods=["GET"]),
        Route("/readyz", endpoints.readyz, methods=["GET"]),
    ]
    if prefix:
        routes.append(Route(prefix + "/.well-known/oauth-authorization-server", endpoints.metadata_endpoint, methods=["GET"]))
    if settings.metrics_port == 0:
        # On the main port, reachable by every workload: docs/metrics.md says to protect it.
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.broker = broker
    token_endpoint: TokenApp = TokenEndpoint(broker)
    if broker.tracing is not None:
        from sts.ops.tracing import TracingMiddleware

        token_endpoint = TracingMiddleware(token_endpoint, tracing=broker.tracing, path=prefix + "/token")
    return BrokerApp(app, token_path=prefix + "/token", token_endpoint=token_endpoint)


TokenApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BrokerApp:
    """The broker's ASGI app: the token endpoint as a raw handler (``sts.http.token``), every
    other path (and the lifespan) on Starlette."""

    def __init__(self, app: Starlette, *, token_path: str, token_endpoint: TokenApp) -> None:
        self.app = app
        self.state = app.state
        self._token_path = token_path
        self._token_endpoint = token_endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self._token_path:
            await self._token_endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def app_from_env() -> BrokerApp:
    """Factory for ``uvicorn --factory sts.app:app_from_env`` (used by ``sts serve``)."""
    from sts.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
