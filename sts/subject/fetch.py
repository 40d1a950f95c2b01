"""A hardened fetcher of small JSON documents (OIDC discovery documents and JWK Sets).

Serves OpenID Connect Discovery 1.0 §4 (the provider configuration request) and RFC 7517 §5
(JWK Set documents); the freshness lifetime comes from RFC 9111 §5.2.2.1 (``max-age``) minus
§5.1 (``Age``).

Every fetch is bounded on every axis an unfriendly or broken server could stretch: the URL
scheme (HTTPS, or plain HTTP to a loopback host when the caller allows it), the connect and
total time, the body size (streamed, abandoned past the cap) and redirects (at most
``MAX_REDIRECTS`` hops, each to the same scheme, host and port; a redirect anywhere else is
refused). The response must be a JSON object; its ``Content-Type`` is not checked because
real issuers serve JWK Sets as ``text/plain`` or ``application/jwk-set+json`` as often as
``application/json``.

Server certificates are verified against the system's trust store, or, for an issuer with a
private CA (a self-managed Kubernetes API server, GitHub Enterprise Server), against that
issuer's own :class:`CACertificates` and nothing else (RFC 5280 §6 path validation to those
anchors, RFC 6125 host name check). Those anchors reach only the fetches that name them: the
process-wide trust (``SSL_CERT_FILE``, the system store) is neither read for them nor changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

__all__ = ["MAX_REDIRECTS", "CACertificates", "FetchError", "Fetcher", "is_loopback_host", "parse_max_age"]

log = logging.getLogger("sts.jwks")

MAX_REDIRECTS: Final = 3
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS: Final = {"https": 443, "http": 80}

FETCH_ERROR_REASONS: Final = frozenset(
    {
        "timeout",
        "too_large",
        "http_status",
        "not_json",
        "insecure_url",
        "redirect_refused",
        "issuer_mismatch",
        "no_jwks_uri",
        "network",
        "tls",
    }
)


class FetchError(Exception):
    """A remote document could not be obtained or was refused.

    Invariant: ``reason`` is one of ``FETCH_ERROR_REASONS``; the message names the URL and the
    cause, never a response body.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in FETCH_ERROR_REASONS:
            raise ValueError(f"unknown fetch error reason {reason!r}")
        self.reason = reason
        super().__init__(f"{reason}: {message}")


@dataclass(frozen=True)
class CACertificates:
    """PEM CA certificates that, alone, verify the TLS servers of one issuer.

    Invariant: ``pem`` holds one or more PEM certificates that OpenSSL accepts as trust anchors
    (the configuration loader checks this); ``sha256`` identifies the set, so that two issuers
    with the same file share one TLS context and a changed file is a different key source.
    """

    pem: str = field(repr=False)
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.pem.encode("ascii")).hexdigest())

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting these certificates only (no system roots, and not
        ``SSL_CERT_FILE``: ``create_default_context`` loads the defaults only without ``cadata``)."""
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.pem)


def _is_tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``.

    Other names that happen to resolve to loopback are refused: the decision must not depend on
    DNS, which an attacker may influence.
    """
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv4Address):
        return addr in ipaddress.IPv4Network("127.0.0.0/8")
    return addr == ipaddress.IPv6Address("::1")


def parse_max_age(headers: Mapping[str, str]) -> float | None:
    """The remaining freshness lifetime in seconds from ``Cache-Control`` and ``Age``.

    ``None`` when the response says nothing usable (no header, no or malformed ``max-age``); the
    caller then uses its default. ``no-cache`` and ``no-store`` without a ``max-age`` give 0:
    the server asks not to reuse the document, so the caller refreshes as often as its own
    lower bound allows. Bounds are the caller's business; this only reads the headers.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("cache-control")
    if value is None:
        return None
    max_age: float | None = None
    no_reuse = False
    for directive in value.split(","):
        name, _, arg = directive.strip().partition("=")
        name = name.strip().lower()
        arg = arg.strip().strip('"')
        if name == "max-age":
            if not arg.isdigit():
                return None  # RFC 9111 §4.2.1: an invalid max-age makes the response stale
            if max_age is not None:
                return None  # conflicting duplicates: trust neither
            max_age = float(arg)
        elif name in ("no-cache", "no-store"):
            no_reuse = True
    if max_age is None:
        return 0.0 if no_reuse else None
    age = lowered.get("age", "").strip()
    if age.isdigit():
        max_age = max(0.0, max_age - float(age))
    return max_age


def _effective_port(url: httpx.URL) -> int | None:
    return url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme)


def _check_url(url: httpx.URL, *, allow_insecure_loopback: bool) -> None:
    if not url.host:
        raise FetchError("insecure_url", f"{url} has no host")
    if url.userinfo:
        # Credentials in a key URL would end up in logs and status output.
        raise FetchError("insecure_url", "URL carries credentials")
    if url.scheme == "https":
        return
    if url.scheme == "http" and allow_insecure_loopback and is_loopback_host(url.host):
        return
    raise FetchError("insecure_url", f"{url} is not HTTPS (plain HTTP only to loopback in dev mode)")


ClientFactory = Callable[[ssl.SSLContext], httpx.AsyncClient]


def _client_for(context: ssl.SSLContext) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=context, follow_redirects=False)


class Fetcher:
    """Fetches JSON objects over HTTPS under hard limits.

    Invariant: ``get_json`` either returns a ``dict`` read from at most ``max_bytes`` of body,
    within ``timeout`` seconds in total, from the requested origin (or a same-origin redirect),
    whose TLS certificate chains to the given ``ca`` (or, without one, to the system's trust
    store), or raises ``FetchError``. One ``httpx.AsyncClient`` is shared by the issuers without
    their own CA so connections are pooled; a client passed in is not closed by ``aclose``.

    A fetch with its own ``ca`` runs on a client made for that one fetch, over a TLS context
    kept per CA set: key refreshes are minutes apart, longer than any keep-alive, so a pooled
    client per CA set would save nothing and would have to be closed when a reload drops it.
    """

    # TLS contexts kept per CA set; past this many (configurations reloaded with ever new CA
    # files) the cache starts over. A context holds no connection, so dropping one is free.
    MAX_TLS_CONTEXTS: Final = 64

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_bytes: int = 512 * 1024,
        client_factory: ClientFactory = _client_for,
    ) -> None:
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(follow_redirects=False)
        self._client_factory = client_factory
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._httpx_timeout = httpx.Timeout(timeout, connect=connect_timeout)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def get_json(
        self, url: str, *, allow_insecure_loopback: bool = False, ca: CACertificates | None = None
    ) -> tuple[dict[str, Any], float | None]:
        """GET ``url`` and return ``(document, max_age)``; see the class invariant. With
        ``ca``, the server's certificate must chain to those certificates and to no others."""
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise FetchError("insecure_url", "unparseable URL") from exc
        _check_url(target, allow_insecure_loopback=allow_insecure_loopback)
        try:
            # httpx timeouts bound each read and connect; this bounds the whole exchange,
            # redirects and a slowly dripped body included.
            async with asyncio.timeout(self.timeout):
                if ca is None:
                    return await self._get(self._client, target)
                async with self._client_factory(self._context_for(ca)) as client:
                    return await self._get(client, target)
        except TimeoutError as exc:
            raise FetchError("timeout", f"{target} took longer than {self.timeout}s") from exc
        except httpx.TimeoutException as exc:
            raise FetchError("timeout", f"{target}: {type(exc).__name__}") from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise FetchError("insecure_url", f"{target}: {type(exc).__name__}") from exc
        except ssl.SSLError as exc:  # the CA set itself is unusable (the loader checks it first)
            raise FetchError("tls", f"{target}: the configured CA certificates are unusable") from exc
        except httpx.HTTPError as exc:
            if _is_tls_failure(exc):
                # Most often an issuer on a private CA without (or with the wrong) ca_file.
                raise FetchError("tls", f"{target}: the server's TLS certificate is not trusted") from exc
            raise FetchError("network", f"{target}: {type(exc).__name__}") from exc

    def _context_for(self, ca: CACertificates) -> ssl.SSLContext:
        context = self._contexts.get(ca.sha256)
        if context is None:
            if len(self._contexts) >= self.MAX_TLS_CONTEXTS:
                self._contexts.clear()
            context = self._contexts[ca.sha256] = ca.ssl_context()
        return context

    async def _get(
        self, client: httpx.AsyncClient, url: httpx.URL
    ) -> tuple[dict[str, Any], float | None]:
        origin = (url.scheme, url.host, _effective_port(url))
        for _hop in range(MAX_REDIRECTS + 1):
            async with client.stream(
                "GET",
                url,
                # identity: the size cap then bounds what the server sends, not only what a
                # compression bomb would inflate to.
                headers={"Accept": "application/json", "Accept-Encoding": "identity"},
                timeout=self._httpx_timeout,
                follow_redirects=False,
            ) as response:
                if response.status_code in _REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise FetchError("http_status", f"{url}: redirect without Location")
                    try:
                        nxt = url.join(location)
                    except httpx.InvalidURL as exc:
                        raise FetchError("redirect_refused", f"{url}: bad Location") from exc
                    if (nxt.scheme, nxt.host, _effective_port(nxt)) != origin or nxt.userinfo:
                        raise FetchError("redirect_refused", f"{url} redirects to another origin")
                    log.debug(
                        "following same-origin redirect",
                        extra={"event": "jwks_redirect", "url": str(url), "location": str(nxt)},
                    )
                    url = nxt
                    continue
                if response.status_code != 200:
                    raise FetchError("http_status", f"{url} answered {response.status_code}")
                body = await self._read_capped(response, url)
                max_age = parse_max_age(response.headers)
            return _parse_object(body, url), max_age
        raise FetchError("redirect_refused", f"more than {MAX_REDIRECTS} redirects from {origin[1]}")

    async def _read_capped(self, response: httpx.Response, url: httpx.URL) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError("too_large", f"{url} declares {declared} bytes > {self.max_bytes}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                # Leaving the stream context closes the connection; the rest is never read.
                raise FetchError("too_large", f"{url} sent more than {self.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _parse_object(body: bytes, url: httpx.URL) -> dict[str, Any]:
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise FetchError("not_json", f"{url} did not return JSON") from exc
    if not isinstance(doc, dict):
        raise FetchError("not_json", f"{url} returned JSON that is not an object")
    return doc
