"""Fetches verified by an issuer's own CA certificates (sts.subject.fetch.CACertificates), over
real HTTPS on 127.0.0.1 with a throwaway CA: the CA verifies the fetches that name it and no
others, the process-wide trust is untouched, and the outbound rules hold as without it."""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conformance.issuer import server_tls_context
from spiffe_support import WebCA, pem, write_identity
from sts.subject.fetch import CACertificates, FetchError, Fetcher

Reply = tuple[int, dict[str, str], bytes]


class TLSServer:
    """Serves ``routes[path]() -> (status, headers, body)`` over https on 127.0.0.1."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.routes: dict[str, Callable[[], Reply]] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = owner.routes.get(self.path)
                status, headers, body = route() if route else (404, {}, b"{}")
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def json_reply(doc: object, **headers: str) -> Callable[[], Reply]:
    body = json.dumps(doc).encode()
    return lambda: (200, {"Content-Length": str(len(body)), **headers}, body)


PRIVATE_CA = WebCA()
OTHER_CA = WebCA()


def serve(tmp_path: Path, ca: WebCA, name: str) -> TLSServer:
    cert, key = ca.server()
    cert_file, key_file = write_identity(tmp_path, name, cert, key)
    return TLSServer(server_tls_context(str(cert_file), str(key_file)))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TLSServer]:
    srv = serve(tmp_path, PRIVATE_CA, "issuer")
    srv.routes["/jwks"] = json_reply({"keys": []}, **{"Cache-Control": "max-age=120"})
    yield srv
    srv.close()


def no_proxy_client(context: ssl.SSLContext) -> httpx.AsyncClient:
    # trust_env=False: a proxy configured in the environment must not carry loopback traffic.
    return httpx.AsyncClient(verify=context, trust_env=False, follow_redirects=False)


def make_fetcher(**kw: float) -> Fetcher:
    return Fetcher(httpx.AsyncClient(trust_env=False), client_factory=no_proxy_client, timeout=2.0,
                   connect_timeout=1.0, **kw)  # type: ignore[arg-type]


CA = CACertificates(pem(PRIVATE_CA.cert).decode())


async def test_the_issuers_ca_verifies_its_server(server: TLSServer) -> None:
    fetcher = make_fetcher()
    doc, max_age = await fetcher.get_json(server.url("/jwks"), ca=CA)
    assert doc == {"keys": []} and max_age == 120
    await fetcher.aclose()


async def test_without_the_ca_the_same_server_fails_tls_verification(server: TLSServer) -> None:
    fetcher = make_fetcher()
    await fetcher.get_json(server.url("/jwks"), ca=CA)  # the CA was used once in this process...
    with pytest.raises(FetchError) as info:
        await fetcher.get_json(server.url("/jwks"))  # ...and does not reach another fetch
    assert info.value.reason == "tls"
    await fetcher.aclose()


async def test_another_ca_does_not_verify_the_server(server: TLSServer) -> None:
    fetcher = make_fetcher()
    with pytest.raises(FetchError) as info:
        await fetcher.get_json(server.url("/jwks"), ca=CACertificates(pem(OTHER_CA.cert).decode()))
    assert info.value.reason == "tls"
    await fetcher.aclose()


async def test_the_ca_replaces_the_system_roots_rather_than_adding_to_them(server: TLSServer, tmp_path: Path) -> None:
    # The server is trusted by a CA that is in SSL_CERT_FILE, but the issuer names another CA:
    # only the issuer's own CA counts, so the process-wide trust cannot widen it.
    bundle = tmp_path / "process-wide.pem"
    bundle.write_bytes(pem(PRIVATE_CA.cert))
    fetcher = make_fetcher()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSL_CERT_FILE", str(bundle))
        with pytest.raises(FetchError) as info:
            await fetcher.get_json(server.url("/jwks"), ca=CACertificates(pem(OTHER_CA.cert).decode()))
    assert info.value.reason == "tls"
    await fetcher.aclose()


async def test_the_process_wide_trust_is_not_changed(server: TLSServer) -> None:
    before = os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths()
    fetcher = make_fetcher()
    await fetcher.get_json(server.url("/jwks"), ca=CA)
    await fetcher.aclose()
    assert (os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths()) == before
    # A default context made after the fetch still does not know the private CA.
    context = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="127.0.0.1")


async def test_issuers_with_the_same_ca_share_one_tls_context(server: TLSServer) -> None:
    made: list[ssl.SSLContext] = []

    def factory(context: ssl.SSLContext) -> httpx.AsyncClient:
        made.append(context)
        return no_proxy_client(context)

    fetcher = Fetcher(httpx.AsyncClient(trust_env=False), client_factory=factory)
    await fetcher.get_json(server.url("/jwks"), ca=CA)
    await fetcher.get_json(server.url("/jwks"), ca=CACertificates(CA.pem))
    assert len(made) == 2 and made[0] is made[1]
    await fetcher.aclose()


async def test_outbound_rules_hold_with_a_ca(server: TLSServer, tmp_path: Path) -> None:
    other = serve(tmp_path, PRIVATE_CA, "other")
    try:
        other.routes["/jwks"] = json_reply({"keys": []})
        fetcher = make_fetcher(max_bytes=64)
        server.routes["/away"] = lambda: (302, {"Location": other.url("/jwks"), "Content-Length": "0"}, b"")
        server.routes["/here"] = lambda: (302, {"Location": "/jwks", "Content-Length": "0"}, b"")
        big = json.dumps({"x": "y" * 100}).encode()
        server.routes["/big"] = lambda: (200, {"Content-Length": str(len(big))}, big)
        with pytest.raises(FetchError) as info:
            await fetcher.get_json(server.url("/away"), ca=CA)  # same CA, another origin
        assert info.value.reason == "redirect_refused"
        with pytest.raises(FetchError) as info:
            await fetcher.get_json(server.url("/big"), ca=CA)
        assert info.value.reason == "too_large"
        assert (await fetcher.get_json(server.url("/here"), ca=CA))[0] == {"keys": []}
        with pytest.raises(FetchError) as info:
            await fetcher.get_json(server.url("/jwks").replace("https:", "http:"), ca=CA)
        assert info.value.reason == "insecure_url"
        await fetcher.aclose()
    finally:
        other.close()
