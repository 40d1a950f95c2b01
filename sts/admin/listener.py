"""The admin API's own listener: a uvicorn server in the broker's event loop, on its own socket.

It binds ``STS_ADMIN_LISTEN`` when the broker starts and closes it when the broker stops. It
never shares the token port, so no route of the token listener can ever reach it, and a
network policy or firewall can treat the two apart.

Several workers (``sts serve --workers N``): the listener must be bound once. Every worker
tries to bind it when it starts; the first one gets the port and serves the admin API, and the
others retry every ``RETRY_SECONDS``, so that when the serving worker exits another takes the
port over within seconds. (The socket is bound without ``SO_REUSEPORT``, so the kernel lets
only one process listen.) Answers name the answering process (``served_by.pid``): per-process
state, such as issuer key status, is that worker's. With one process a port already in use is a
start-up error.

TLS (``STS_ADMIN_TLS_CERT``/``KEY``) uses the broker's TLS server context
(``sts.spiffe.tls.server_ssl_context``: TLS 1.2 or later, client certificates optional and
verified against ``STS_ADMIN_TLS_CLIENT_CA`` only; the SPIFFE trust domains' authorities that
the token listener adds are never added here). The certificate then decides nothing by
itself: only the pinned thumbprints authenticate (:mod:`sts.admin.auth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
from typing import TYPE_CHECKING, Any, Final

import uvicorn

from sts.admin.app import AdminApp
from sts.admin.auth import AdminAuth, AdminSetupError, TokenFile
from sts.admin.endpoints import routes
from sts.http.halfclose import uvicorn_options
from sts.settings import Settings, admin_address
from sts.spiffe.tls import server_ssl_context, uvicorn_tls_options

if TYPE_CHECKING:
    from sts.app import Broker

log = logging.getLogger("sts.admin")

RETRY_SECONDS: Final = 5.0


def admin_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.admin_tls_cert is None or settings.admin_tls_key is None:
        return None
    try:
        return server_ssl_context(settings.admin_tls_cert, settings.admin_tls_key, settings.admin_tls_client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise AdminSetupError(f"the admin API's TLS certificate, key or client CA is unusable ({exc})",
                              "check STS_ADMIN_TLS_CERT, STS_ADMIN_TLS_KEY and STS_ADMIN_TLS_CLIENT_CA") from None


def bind(settings: Settings) -> socket.socket:
    """The admin listener's socket, bound and listening (OSError when the port is taken)."""
    assert settings.admin_listen is not None
    host, port = admin_address(settings.admin_listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, reuse_port=False)
    sock.setblocking(False)
    return sock


def check_port(settings: Settings) -> None:
    """Fail now, with one line, when the admin port cannot be bound (``sts serve`` calls this
    before the broker starts); the socket is closed again at once."""
    if settings.admin_listen is None:
        return
    try:
        bind(settings).close()
    except OSError as exc:
        raise AdminSetupError(f"cannot listen on the admin address {settings.admin_listen}: {_why(exc)}",
                              "choose a free address with STS_ADMIN_LISTEN") from None


def _why(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


class AdminListener:
    """Owns the admin server of one broker process. Invariant: at most one listening socket,
    closed by ``stop``; no request reaches the app before authentication (sts.admin.app)."""

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.settings = settings
        token_file = TokenFile(settings.admin_token_file) if settings.admin_token_file is not None else None
        self.auth = AdminAuth(token_file=token_file, allowed_thumbprints=settings.admin_allowed_cert_sha256)
        self.app = AdminApp(broker, self.auth, routes())
        self._tls = admin_ssl_context(settings)
        self._server: uvicorn.Server | None = None
        self._retry: asyncio.Task[None] | None = None
        self.address: tuple[str, int] | None = None

    @property
    def serving(self) -> bool:
        return self._server is not None

    def _config(self) -> uvicorn.Config:
        options: dict[str, Any] = uvicorn_options()
        if self._tls is not None:
            assert self.settings.admin_tls_cert is not None and self.settings.admin_tls_key is not None
            options = uvicorn_options(uvicorn_tls_options(self.settings.admin_tls_cert, self.settings.admin_tls_key,
                                                          self.settings.admin_tls_client_ca))
            context = self._tls
            options["ssl_context_factory"] = lambda config, default: context
        # ws="none": an upgrade request is an ordinary HTTP request here, authenticated and audited.
        config = uvicorn.Config(self.app, lifespan="off", ws="none", log_config=None, access_log=False, proxy_headers=False,
                                server_header=False, timeout_graceful_shutdown=5, **options)
        config.load()
        return config

    async def start(self) -> None:
        """Bind and serve; with several workers, a taken port means another worker serves it."""
        if not await self._try_start():
            if self.settings.workers <= 1:
                raise AdminSetupError(f"cannot listen on the admin address {self.settings.admin_listen}: address in use",
                                      "choose a free address with STS_ADMIN_LISTEN")
            log.info("admin API served by another worker; this one takes over if that one exits",
                     extra={"address": self.settings.admin_listen})
            self._retry = asyncio.create_task(self._retry_loop(), name="sts-admin-bind")

    async def _try_start(self) -> bool:
        try:
            sock = bind(self.settings)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise AdminSetupError(f"cannot listen on the admin address {self.settings.admin_listen}: {_why(exc)}",
                                  "choose a usable address with STS_ADMIN_LISTEN") from None
        config = self._config()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)  # "off": what Server.serve sets up first
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._server = server
        self.address = sock.getsockname()[:2]
        log.info("admin API listening", extra={"address": self.settings.admin_listen, "methods": list(self.auth.methods),
                                               "tls": self._tls is not None})
        return True

    async def _retry_loop(self) -> None:
        while self._server is None:
            await asyncio.sleep(RETRY_SECONDS)
            try:
                await self._try_start()
            except Exception:
                log.exception("admin API: binding its address failed; retrying")

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
            self._retry = None
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
