"""TLS termination by the broker under uvicorn, with optional client certificates.

uvicorn does not expose the client certificate to the application. Two small pieces fill the
gap, both on public uvicorn and asyncio APIs:

* :func:`server_ssl_context` builds the server context (TLS >= 1.2, ``CERT_OPTIONAL``: a client
  may present a certificate, none is required, since only ``mtls`` exchanges need one). It is
  handed to uvicorn through ``ssl_context_factory``.
* :func:`tls_protocol_class` wraps uvicorn's HTTP protocol class: asyncio calls
  ``connection_made`` once the handshake has completed, so the peer certificate is read there
  from ``transport.get_extra_info("ssl_object")`` and put into every request scope of that
  connection as the ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``,
  PEM, leaf first; only the leaf is available from the ``ssl`` module).

The TLS layer is only a gate; the decision is the X.509-SVID verification against the
presented chain (:mod:`sts.spiffe.x509svid`), per trust domain. OpenSSL still has to accept
the certificate during the handshake, so :class:`ClientCATrust` adds the x509-svid authorities
of every configured trust domain to the server context as bundles arrive (plus the optional
``--tls-client-ca`` file). An authority that later leaves a bundle stays in the context until
restart; that only lets the handshake finish, and the application refuses the SVID.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

__all__ = ["ClientCATrust", "server_ssl_context", "tls_protocol_class", "uvicorn_tls_options"]

log = logging.getLogger("sts.tls")

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def server_ssl_context(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> ssl.SSLContext:
    """The broker's server context: its certificate chain and key, TLS >= 1.2, optional client
    certificates (verified by OpenSSL against ``client_ca_file`` plus trust domain authorities
    added later by :class:`ClientCATrust`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    # SPIFFE bundle authorities are trust anchors even when not self-signed.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if client_ca_file is not None:
        ctx.load_verify_locations(cafile=str(client_ca_file))
    return ctx


class ClientCATrust:
    """The client CA list of the broker's TLS server contexts. Invariant: every authority
    passed to :meth:`add` is loaded into every attached context exactly once."""

    def __init__(self) -> None:
        self._contexts: list[ssl.SSLContext] = []
        self._loaded: set[bytes] = set()
        self._authorities: dict[bytes, x509.Certificate] = {}

    def attach(self, ctx: ssl.SSLContext) -> None:
        if any(c is ctx for c in self._contexts):
            return
        self._contexts.append(ctx)
        self._load(ctx, self._authorities.values())

    def add(self, certs: Iterable[x509.Certificate]) -> None:
        new = {}
        for cert in certs:
            fp = cert.fingerprint(hashes.SHA256())
            if fp not in self._authorities:
                new[fp] = cert
        if not new:
            return
        self._authorities.update(new)
        for ctx in self._contexts:
            self._load(ctx, new.values())

    @staticmethod
    def _load(ctx: ssl.SSLContext, certs: Iterable[x509.Certificate]) -> None:
        pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)
        if pem:
            try:
                ctx.load_verify_locations(cadata=pem)
            except ssl.SSLError:
                log.exception("could not add trust domain authorities to the TLS client CA list")


def _find_broker(app: Any) -> Any:
    for _ in range(8):
        state = getattr(app, "state", None)
        broker = getattr(state, "broker", None) if state is not None else None
        if broker is not None:
            return broker
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def _tls_app(app: ASGIApp, extension: dict[str, Any]) -> ASGIApp:
    async def with_tls(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": extension}}
        await app(scope, receive, send)

    return with_tls


def tls_protocol_class(base: type[asyncio.Protocol], *, name: str | None = None) -> type[asyncio.Protocol]:
    """A subclass of uvicorn's HTTP protocol ``base`` that adds the ASGI TLS extension.
    ``name`` must be the module attribute the class is stored under, so that it pickles."""

    class TLSProtocol(base):  # type: ignore[valid-type, misc]
        def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, *args, **kwargs)
            # The protocol is created when the connection is accepted, before the handshake:
            # make sure the trust domains' authorities are in the context OpenSSL will use.
            broker = _find_broker(getattr(config, "loaded_app", None))
            tls_trust = getattr(broker, "tls_trust", None)
            if tls_trust is not None and getattr(config, "ssl", None) is not None:
                tls_trust.attach(config.ssl)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None:
                return
            der = ssl_object.getpeercert(binary_form=True)
            extension = {
                "server_cert": None,
                "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
                "client_cert_name": None,
                "client_cert_error": None,
                "tls_version": None,
                "cipher_suite": None,
            }
            # uvicorn's protocols read ``self.app`` for every request of the connection.
            app: ASGIApp = getattr(self, "app")  # noqa: B009 - typed through the base class at run time
            self.app = _tls_app(app, extension)

    TLSProtocol.__name__ = TLSProtocol.__qualname__ = name or f"TLS{base.__name__}"
    return TLSProtocol


def _auto_protocol() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


class _Factory:
    """A picklable ``ssl_context_factory`` (uvicorn hands the config to worker processes)."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> None:
        self.args = (cert_file, key_file, client_ca_file)

    def __call__(self, config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return server_ssl_context(*self.args)


TLSAutoHTTPProtocol = tls_protocol_class(_auto_protocol(), name="TLSAutoHTTPProtocol")


def uvicorn_tls_options(cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config``/``uvicorn.run`` to serve TLS with client
    certificates exposed to the app (``sts serve --tls-cert ...`` and the tests use this)."""
    # Fail now, with a clear message, rather than in every worker.
    server_ssl_context(cert_file, key_file, client_ca_file)
    return {"http": TLSAutoHTTPProtocol, "ssl_context_factory": _Factory(cert_file, key_file, client_ca_file)}
