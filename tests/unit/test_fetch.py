"""The hardened JSON fetcher (sts.subject.fetch): URL policy, limits, redirects, Cache-Control.

HTTPS behaviour is exercised through ``httpx.MockTransport``; the loopback rules, timeouts and
streamed size cap also over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from sts.subject.fetch import FetchError, Fetcher, is_loopback_host, parse_max_age

# -- a loopback HTTP server -----------------------------------------------------------------

Reply = tuple[int, dict[str, str], bytes]


class LoopbackServer:
    """Serves ``routes[path]() -> (status, headers, body)`` on 127.0.0.1 and counts hits.

    A reply without a ``Content-Length`` header is close-delimited (HTTP/1.0), which is how the
    streamed size cap is exercised. ``release`` unblocks handlers that wait on it.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[], Reply]] = {}
        self.hits: Counter[str] = Counter()
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits[self.path] += 1
                route = owner.routes.get(self.path)
                status, headers, body = route() if route else (404, {}, b"{}")
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def json_reply(doc: object, status: int = 200, **headers: str) -> Callable[[], Reply]:
    body = json.dumps(doc).encode()
    return lambda: (status, {"Content-Length": str(len(body)), **headers}, body)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    # trust_env=False: a proxy configured in the environment must not carry loopback traffic.
    async with httpx.AsyncClient(trust_env=False) as client:
        yield Fetcher(client, timeout=1.0, connect_timeout=0.5, max_bytes=4096)


def mock_fetcher(handler: Callable[[httpx.Request], httpx.Response], **kw: float) -> Fetcher:
    return Fetcher(httpx.AsyncClient(transport=httpx.MockTransport(handler)), **kw)  # type: ignore[arg-type]


# -- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Cache-Control": "max-age=600"}, 600.0),
        ({"cache-control": "public, max-age=21242, must-revalidate"}, 21242.0),
        ({"Cache-Control": 'max-age="120"'}, 120.0),
        ({"Cache-Control": "max-age=600", "Age": "100"}, 500.0),
        ({"Cache-Control": "max-age=60", "Age": "100"}, 0.0),
        ({"Cache-Control": "max-age=-5"}, None),
        ({"Cache-Control": "max-age=abc"}, None),
        ({"Cache-Control": "max-age=1, max-age=2"}, None),
        ({"Cache-Control": "public"}, None),
        ({"Cache-Control": "no-cache"}, 0.0),
        ({"Cache-Control": "no-store, private"}, 0.0),
        ({"Cache-Control": "no-cache, max-age=300"}, 300.0),
    ],
    ids=[
        "absent", "plain", "among-others", "quoted", "minus-age", "age-exceeds", "negative",
        "garbage", "duplicate", "no-max-age", "no-cache", "no-store", "no-cache-with-max-age",
    ],
)
def test_parse_max_age(headers: dict[str, str], expected: float | None) -> None:
    assert parse_max_age(headers) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("127.10.20.30", True),
        ("::1", True),
        ("[::1]", True),
        ("128.0.0.1", False),
        ("10.0.0.1", False),
        ("::ffff:127.0.0.1", False),
        ("localhost.example.com", False),
        ("foo.localhost", False),
        ("example.com", False),
    ],
    ids=lambda v: str(v),
)
def test_is_loopback_host(host: str, expected: bool) -> None:
    assert is_loopback_host(host) is expected


# -- URL policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://example.com/jwks", False),
        ("http://example.com/jwks", True),
        ("http://127.0.0.1:1/jwks", False),
        ("http://10.0.0.1/jwks", True),
        ("ftp://127.0.0.1/jwks", True),
        ("file:///etc/passwd", True),
        ("https://user:pw@example.com/jwks", False),
        ("not a url", False),
        ("https:///nohost", False),
    ],
    ids=[
        "http-remote", "http-remote-flag", "http-loopback-no-flag", "http-private-flag", "ftp",
        "file", "userinfo", "garbage", "no-host",
    ],
)
async def test_refused_urls_never_reach_the_network(url: str, allow: bool) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={})

    f = mock_fetcher(handler)
    with pytest.raises(FetchError) as info:
        await f.get_json(url, allow_insecure_loopback=allow)
    assert info.value.reason == "insecure_url"
    assert calls == []


async def test_http_loopback_allowed_with_flag(server: LoopbackServer, fetcher: Fetcher) -> None:
    server.routes["/jwks"] = json_reply({"keys": []}, **{"Cache-Control": "max-age=120"})
    doc, max_age = await fetcher.get_json(server.url("/jwks"), allow_insecure_loopback=True)
    assert doc == {"keys": []}
    assert max_age == 120.0
    with pytest.raises(FetchError) as info:
        await fetcher.get_json(server.url("/jwks"))
    assert info.value.reason == "insecure_url"
    assert server.hits["/jwks"] == 1


async def test_localhost_name_allowed_with_flag(server: LoopbackServer, fetcher: Fetcher) -> None:
    server.routes["/jwks"] = json_reply({"keys": [1]})
    url = f"http://localhost:{server.port}/jwks"
    try:
        doc, max_age = await fetcher.get_json(url, allow_insecure_loopback=True)
    except FetchError as exc:  # a host whose "localhost" resolves to ::1 only
        pytest.skip(f"localhost does not reach 127.0.0.1 here: {exc.reason}")
    assert doc == {"keys": [1]} and max_age is None


# -- responses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(404, json={}), "http_status"),
        (httpx.Response(500, text="oops"), "http_status"),
        (httpx.Response(204), "http_status"),
        (httpx.Response(200, text="<html>hi</html>"), "not_json"),
        (httpx.Response(200, json=[{"kty": "RSA"}]), "not_json"),
        (httpx.Response(200, json="keys"), "not_json"),
        (httpx.Response(200, text='{"keys": NaN}'), "not_json"),
        (httpx.Response(200, content=b"\xff\xfe{"), "not_json"),
        (httpx.Response(302), "http_status"),
    ],
    ids=["404", "500", "204", "html", "array", "string", "nan", "bad-bytes", "redirect-no-location"],
)
async def test_bad_responses(response: httpx.Response, reason: str) -> None:
    f = mock_fetcher(lambda request: response)
    with pytest.raises(FetchError) as info:
        await f.get_json("https://issuer.example/jwks")
    assert info.value.reason == reason


async def test_content_type_not_required_and_request_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b'{"keys": []}', headers={"Content-Type": "text/plain"})

    doc, max_age = await mock_fetcher(handler).get_json("https://issuer.example/jwks")
    assert doc == {"keys": []} and max_age is None
    assert seen[0].headers["accept-encoding"] == "identity"


async def test_declared_oversize_refused_without_reading() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": "5000"}, content=b"x" * 5000)

    with pytest.raises(FetchError) as info:
        await mock_fetcher(handler, max_bytes=4096).get_json("https://issuer.example/jwks")
    assert info.value.reason == "too_large"


async def test_streamed_oversize_aborted_at_cap() -> None:
    produced = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        while True:
            produced += 1
            yield b" " * 1024

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    with pytest.raises(FetchError) as info:
        await mock_fetcher(handler, max_bytes=4096).get_json("https://issuer.example/jwks")
    assert info.value.reason == "too_large"
    assert produced <= 6  # stopped right after crossing 4 KiB, not drained


async def test_oversize_over_real_http_without_length(server: LoopbackServer, fetcher: Fetcher) -> None:
    server.routes["/big"] = lambda: (200, {}, b"[" + b"0," * 100_000 + b"0]")
    server.routes["/ok"] = lambda: (200, {}, b'{"keys": []}')
    with pytest.raises(FetchError) as info:
        await fetcher.get_json(server.url("/big"), allow_insecure_loopback=True)
    assert info.value.reason == "too_large"
    doc, _ = await fetcher.get_json(server.url("/ok"), allow_insecure_loopback=True)
    assert doc == {"keys": []}


async def test_exactly_at_cap_is_accepted() -> None:
    body = b'{"a": "' + b"x" * (4096 - 10) + b'"}'
    assert len(body) == 4096 - 1

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body + b" ")

    doc, _ = await mock_fetcher(handler, max_bytes=4096).get_json("https://issuer.example/jwks")
    assert set(doc) == {"a"}


# -- redirects ------------------------------------------------------------------------------


def redirector(chain: dict[str, str], final: dict[str, object]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        target = chain.get(str(request.url))
        if target is not None:
            return httpx.Response(302, headers={"Location": target})
        return httpx.Response(200, json=final, headers={"Cache-Control": "max-age=90"})

    return handler


async def test_same_origin_redirects_followed() -> None:
    chain = {
        "https://issuer.example/jwks": "/v2/jwks",
        "https://issuer.example/v2/jwks": "https://issuer.example:443/v3/jwks",
        "https://issuer.example/v3/jwks": "keys.json",
    }
    doc, max_age = await mock_fetcher(redirector(chain, {"keys": ["v3"]})).get_json("https://issuer.example/jwks")
    assert doc == {"keys": ["v3"]} and max_age == 90.0


@pytest.mark.parametrize(
    "location",
    [
        "https://evil.example/jwks",
        "//evil.example/jwks",
        "http://issuer.example/jwks",
        "https://issuer.example:8443/jwks",
        "https://user@issuer.example/jwks",
        "https://sub.issuer.example/jwks",
    ],
    ids=["other-host", "scheme-relative", "downgrade", "other-port", "userinfo", "subdomain"],
)
async def test_cross_origin_redirect_refused(location: str) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        if request.url.host == "issuer.example" and request.url.path == "/jwks" and len(calls) == 1:
            return httpx.Response(301, headers={"Location": location})
        return httpx.Response(200, json={"keys": ["evil"]})

    with pytest.raises(FetchError) as info:
        await mock_fetcher(handler).get_json("https://issuer.example/jwks")
    assert info.value.reason == "redirect_refused"
    assert calls == ["https://issuer.example/jwks"]


async def test_too_many_redirects_refused() -> None:
    chain = {f"https://issuer.example/{i}": f"/{i + 1}" for i in range(4)}
    with pytest.raises(FetchError) as info:
        await mock_fetcher(redirector(chain, {})).get_json("https://issuer.example/0")
    assert info.value.reason == "redirect_refused"


async def test_redirect_to_other_loopback_port_refused(server: LoopbackServer, fetcher: Fetcher) -> None:
    with LoopbackServer() as other:
        other.routes["/jwks"] = json_reply({"keys": ["other"]})
        server.routes["/jwks"] = lambda: (302, {"Location": other.url("/jwks"), "Content-Length": "0"}, b"")
        with pytest.raises(FetchError) as info:
            await fetcher.get_json(server.url("/jwks"), allow_insecure_loopback=True)
        assert info.value.reason == "redirect_refused"
        assert other.hits["/jwks"] == 0


# -- time and network -----------------------------------------------------------------------


async def test_total_timeout_bounds_a_slow_server(server: LoopbackServer) -> None:
    def slow() -> Reply:
        server.release.wait(5)
        return (200, {"Content-Length": "2"}, b"{}")

    server.routes["/slow"] = slow
    async with httpx.AsyncClient(trust_env=False) as client:
        f = Fetcher(client, timeout=0.3, connect_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(FetchError) as info:
            await f.get_json(server.url("/slow"), allow_insecure_loopback=True)
    assert info.value.reason == "timeout"
    assert time.monotonic() - started < 1.0


async def test_connection_refused_is_network(fetcher: Fetcher) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError) as info:
        await fetcher.get_json(f"http://127.0.0.1:{port}/jwks", allow_insecure_loopback=True)
    assert info.value.reason == "network"


def test_unknown_reason_rejected() -> None:
    with pytest.raises(ValueError):
        FetchError("bogus", "x")


async def test_borrowed_client_not_closed() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, json={})))
    f = Fetcher(client)
    await f.aclose()
    assert not client.is_closed
    await client.aclose()
