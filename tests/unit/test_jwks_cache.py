"""The per-issuer JWKS cache (sts.subject.jwks).

Cache logic runs against issuers behind ``httpx.MockTransport`` with a frozen clock; discovery,
single flight, the loopback rule and issuer isolation also run over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sts.subject.jwks import (
    JWKSURI,
    CachePolicy,
    Discovery,
    Fetcher,
    JWKSCache,
    KeysUnavailable,
    StaticKeys,
    UnknownKey,
    discovery_url,
    freshness_lifetime,
    refresh_after,
    retry_delay,
)

# -- keys -----------------------------------------------------------------------------------


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64u_int(i: int) -> str:
    return _b64u(i.to_bytes((i.bit_length() + 7) // 8, "big"))


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, **extra: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "n": _b64u_int(numbers.n), "e": _b64u_int(numbers.e), **extra}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "kid": kid,
        "x": _b64u(numbers.x.to_bytes(32, "big")),
        "y": _b64u(numbers.y.to_bytes(32, "big")),
    }


class Keys:
    def __init__(self) -> None:
        self.r1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.r2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.e1 = ec.generate_private_key(ec.SECP256R1())

    def jwks(self, *names: str) -> dict[str, Any]:
        make = {
            "k1": lambda: rsa_jwk(self.r1, "k1"),
            "k2": lambda: rsa_jwk(self.r2, "k2"),
            "weak": lambda: rsa_jwk(self.weak, "weak"),
            "ec1": lambda: ec_jwk(self.e1, "ec1"),
        }
        return {"keys": [make[n]() for n in names]}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def same_key(found: Any, private: Any) -> bool:
    return bool(found.key.public_numbers() == private.public_key().public_numbers())


# -- clock, mock issuers, loopback server ---------------------------------------------------


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        """A sleep for the refresh loop that advances this clock instead of waiting."""
        self.t += seconds
        await asyncio.sleep(0)


class MockIssuer:
    """An OIDC issuer behind MockTransport with mutable documents and hit counts."""

    def __init__(self, clock: Clock, host: str = "issuer.example") -> None:
        self.base = f"https://{host}"
        self.clock = clock
        self.jwks: dict[str, Any] = {"keys": []}
        self.status = 200
        self.headers: dict[str, str] = {}
        self.discovery: dict[str, Any] = {"issuer": self.base, "jwks_uri": self.base + "/jwks"}
        self.hits: Counter[str] = Counter()
        self.jwks_fetch_times: list[float] = []
        self.gate: asyncio.Event | None = None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.hits[path] += 1
        if self.gate is not None:
            await self.gate.wait()
        if path == "/.well-known/openid-configuration":
            return httpx.Response(200, json=self.discovery)
        if path == "/jwks":
            self.jwks_fetch_times.append(self.clock())
            body = json.dumps(self.jwks).encode()
            return httpx.Response(self.status, content=body, headers=self.headers)
        if path == "/moved":
            return httpx.Response(302, headers={"Location": "https://elsewhere.example/jwks"})
        return httpx.Response(404)


class Env:
    """A cache whose fetcher reaches the registered mock issuers by host."""

    def __init__(self, policy: CachePolicy, *, max_bytes: int = 512 * 1024, sleep: bool = False) -> None:
        self.clock = Clock()
        self.issuers: dict[str, MockIssuer] = {}
        self.other_hosts: list[str] = []

        async def route(request: httpx.Request) -> httpx.Response:
            issuer = self.issuers.get(request.url.host)
            if issuer is None:
                self.other_hosts.append(request.url.host)
                return httpx.Response(200, json={"keys": []})
            return await issuer.handle(request)

        self.fetcher = Fetcher(httpx.AsyncClient(transport=httpx.MockTransport(route)), max_bytes=max_bytes)
        kw: dict[str, Any] = {"sleep": self.clock.sleep} if sleep else {}
        self.cache = JWKSCache(self.fetcher, policy=policy, clock=self.clock, **kw)

    def issuer(self, host: str = "issuer.example") -> MockIssuer:
        self.issuers[host] = MockIssuer(self.clock, host)
        return self.issuers[host]


FAST = CachePolicy(lookup_wait=0.5)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = Env(FAST)
    yield e
    await e.cache.stop()
    await e.fetcher.aclose()


Reply = tuple[int, dict[str, str], bytes]


class LoopbackServer:
    """``routes[path]() -> (status, headers, body)`` served on 127.0.0.1 with hit counts."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[], Reply]] = {}
        self.hits: Counter[str] = Counter()
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits[self.path] += 1
                route = owner.routes.get(self.path)
                status, headers, body = route() if route else (404, {"Content-Length": "0"}, b"")
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
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def serve_json(self, path: str, doc: Callable[[], object], **headers: str) -> None:
        def reply() -> Reply:
            body = json.dumps(doc()).encode()
            return 200, {"Content-Length": str(len(body)), **headers}, body

        self.routes[path] = reply

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    # trust_env=False: a proxy configured in the environment must not carry loopback traffic.
    async with httpx.AsyncClient(trust_env=False) as client:
        yield Fetcher(client, timeout=3.0, connect_timeout=1.0)


# -- pure timing rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_age", "ttl", "refresh"),
    [(None, 300, 270), (0, 60, 60), (10, 60, 60), (120, 120, 108), (600, 600, 540), (99_999, 3600, 3240)],
    ids=["no-header-default", "zero-min", "below-min", "in-range", "in-range-large", "above-max"],
)
def test_freshness_bounds(max_age: float | None, ttl: float, refresh: float) -> None:
    policy = CachePolicy()
    assert freshness_lifetime(max_age, policy) == ttl
    assert refresh_after(ttl, policy) == pytest.approx(refresh)


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(1, 5), (2, 10), (3, 20), (6, 160), (7, 300), (100, 300), (10_000, 300)],
    ids=lambda v: str(v),
)
def test_retry_backoff(failures: int, delay: float) -> None:
    assert retry_delay(failures, CachePolicy()) == delay


@pytest.mark.parametrize(
    ("issuer", "url"),
    [
        ("https://a.example", "https://a.example/.well-known/openid-configuration"),
        ("https://a.example/", "https://a.example/.well-known/openid-configuration"),
        ("https://a.example/realms/x", "https://a.example/realms/x/.well-known/openid-configuration"),
    ],
    ids=["bare", "trailing-slash", "path"],
)
def test_discovery_url(issuer: str, url: str) -> None:
    assert discovery_url(issuer) == url


# -- discovery ------------------------------------------------------------------------------


async def test_discovery_over_loopback_http(server: LoopbackServer, fetcher: Fetcher, keys: Keys) -> None:
    server.serve_json("/.well-known/openid-configuration", lambda: {"issuer": server.base, "jwks_uri": server.base + "/jwks"})
    server.serve_json("/jwks", lambda: keys.jwks("k1", "ec1"), **{"Cache-Control": "max-age=600"})
    cache = JWKSCache(fetcher, clock=Clock())
    cache.register("local", Discovery(server.base), allow_insecure_loopback=True)
    assert not cache.ready()
    await cache.start()
    try:
        assert same_key(await cache.lookup("local", "k1", "RS256"), keys.r1)
        assert same_key(await cache.lookup("local", "ec1", "ES256"), keys.e1)
        assert cache.ready()
        st = cache.status()["local"]
        assert st["keys"] == 2 and st["last_error"] is None and st["stale"] is False
        assert st["last_success"] is not None
        hits = server.hits.copy()
        for _ in range(50):  # steady state: memory only
            await cache.lookup("local", "k1", "RS256")
        assert server.hits == hits
    finally:
        await cache.stop()


@pytest.mark.parametrize(
    ("discovery", "reason"),
    [
        ({"issuer": "https://evil.example", "jwks_uri": "https://issuer.example/jwks"}, "issuer_mismatch"),
        ({"issuer": "https://issuer.example/", "jwks_uri": "https://issuer.example/jwks"}, "issuer_mismatch"),
        ({"jwks_uri": "https://issuer.example/jwks"}, "issuer_mismatch"),
        ({"issuer": "https://issuer.example"}, "no_jwks_uri"),
        ({"issuer": "https://issuer.example", "jwks_uri": 7}, "no_jwks_uri"),
        ({"issuer": "https://issuer.example", "jwks_uri": "http://issuer.example/jwks"}, "insecure_url"),
    ],
    ids=["other-issuer", "trailing-slash", "missing-issuer", "no-jwks-uri", "jwks-uri-not-string", "jwks-uri-http"],
)
async def test_discovery_refused(env: Env, keys: Keys, discovery: dict[str, Any], reason: str) -> None:
    issuer = env.issuer()
    issuer.discovery = discovery
    issuer.jwks = keys.jwks("k1")
    env.cache.register("idp", Discovery(issuer.base))
    await env.cache.start()
    assert env.cache.status()["idp"]["last_error"] == reason
    assert issuer.hits["/jwks"] == 0
    with pytest.raises(KeysUnavailable) as info:
        await env.cache.lookup("idp", "k1", "RS256")
    assert info.value.issuer_name == "idp"


async def test_discovery_mismatch_over_loopback(server: LoopbackServer, fetcher: Fetcher, keys: Keys) -> None:
    server.serve_json("/.well-known/openid-configuration", lambda: {"issuer": "https://other.example", "jwks_uri": server.base + "/jwks"})
    server.serve_json("/jwks", lambda: keys.jwks("k1"))
    cache = JWKSCache(fetcher, clock=Clock())
    cache.register("local", Discovery(server.base), allow_insecure_loopback=True)
    await cache.start()
    try:
        assert cache.status()["local"]["last_error"] == "issuer_mismatch"
        assert server.hits["/jwks"] == 0
        with pytest.raises(KeysUnavailable):
            await cache.lookup("local", "k1", "RS256")
    finally:
        await cache.stop()


# -- refresh schedule (background loop on a fake clock) -------------------------------------


async def _run_loop_until(env: Env, issuer: MockIssuer, fetches: int) -> list[float]:
    await env.cache.start()
    async with asyncio.timeout(3):
        while len(issuer.jwks_fetch_times) < fetches:
            await asyncio.sleep(0)
    await env.cache.stop()
    t0 = issuer.jwks_fetch_times[0]
    return [round(t - t0, 6) for t in issuer.jwks_fetch_times[:fetches]]


@pytest.mark.parametrize(
    ("cache_control", "gaps"),
    [(None, 270), ("max-age=10", 60), ("max-age=600", 540), ("public, max-age=86400", 3240)],
    ids=["default", "clamped-to-min", "honoured", "clamped-to-max"],
)
async def test_background_refresh_honours_cache_control(keys: Keys, cache_control: str | None, gaps: float) -> None:
    env = Env(FAST, sleep=True)
    issuer = env.issuer()
    issuer.jwks = keys.jwks("k1")
    if cache_control:
        issuer.headers = {"Cache-Control": cache_control}
    env.cache.register("idp", JWKSURI(issuer.base + "/jwks"))
    times = await _run_loop_until(env, issuer, 4)
    assert times == [0, gaps, 2 * gaps, 3 * gaps]
    await env.fetcher.aclose()


async def test_background_retries_with_backoff_then_recovers(keys: Keys) -> None:
    env = Env(FAST, sleep=True)
    issuer = env.issuer()
    issuer.status = 503
    env.cache.register("idp", JWKSURI(issuer.base + "/jwks"))
    times = await _run_loop_until(env, issuer, 5)
    assert times == [0, 5, 15, 35, 75]
    assert env.cache.status()["idp"]["last_error"] == "http_status"
    issuer.status = 200
    issuer.jwks = keys.jwks("k2")
    await _run_loop_until(env, issuer, 7)
    assert same_key(await env.cache.lookup("idp", "k2", "RS256"), keys.r2)  # rotation picked up
    assert env.cache.status()["idp"]["last_error"] is None
    await env.fetcher.aclose()


# -- unknown kid: single flight, cooldown, rotation -----------------------------------------


async def test_unknown_kid_single_flight_over_loopback(server: LoopbackServer, fetcher: Fetcher, keys: Keys) -> None:
    current = {"doc": keys.jwks("k1")}

    def slowish() -> Reply:
        time.sleep(0.05)  # keep the fetch in flight while all lookups arrive
        body = json.dumps(current["doc"]).encode()
        return 200, {"Content-Length": str(len(body))}, body

    server.routes["/jwks"] = slowish
    clock = Clock()
    cache = JWKSCache(fetcher, policy=CachePolicy(lookup_wait=1.0), clock=clock)
    cache.register("local", JWKSURI(server.base + "/jwks"), allow_insecure_loopback=True)
    await cache.start()
    try:
        assert server.hits["/jwks"] == 1
        results = await asyncio.gather(
            *(cache.lookup("local", "nope", "RS256") for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, UnknownKey) for r in results)
        assert server.hits["/jwks"] == 2  # twenty lookups, one refetch

        clock.t += 29  # still within the cooldown: answered from memory
        current["doc"] = keys.jwks("k1", "k2")
        with pytest.raises(UnknownKey):
            await cache.lookup("local", "k2", "RS256")
        assert server.hits["/jwks"] == 2

        clock.t += 2  # cooldown over: the rotated key is fetched once, by concurrent lookups
        found = await asyncio.gather(*(cache.lookup("local", "k2", "RS256") for _ in range(20)))
        assert all(same_key(k, keys.r2) for k in found)
        assert server.hits["/jwks"] == 3
        assert same_key(await cache.lookup("local", "k1", "RS256"), keys.r1)
        assert server.hits["/jwks"] == 3
    finally:
        await cache.stop()


async def test_rotation_picked_up_via_unknown_kid(env: Env, keys: Keys) -> None:
    issuer = env.issuer()
    issuer.jwks = keys.jwks("k1")
    env.cache.register("idp", Discovery(issuer.base))
    await env.cache.start()
    issuer.jwks = keys.jwks("k2")  # the issuer rotated; our copy is still fresh
    assert same_key(await env.cache.lookup("idp", "k2", "RS256"), keys.r2)
    assert issuer.hits["/jwks"] == 2
    with pytest.raises(UnknownKey):  # the retired key is gone with the new set
        await env.cache.lookup("idp", "k1", "RS256")


async def test_wrong_alg_for_known_kid_is_unknown_key(env: Env, keys: Keys) -> None:
    issuer = env.issuer()
    issuer.jwks = keys.jwks("k1", "ec1")
    env.cache.register("idp", JWKSURI(issuer.base + "/jwks"))
    await env.cache.start()
    with pytest.raises(UnknownKey) as info:
        await env.cache.lookup("idp", "ec1", "RS256")
    assert info.value.issuer_name == "idp"
    with pytest.raises(UnknownKey):
        await env.cache.lookup("idp", "k1", "ES256")
    assert issuer.hits["/jwks"] == 2  # one refetch, then the cooldown holds


async def test_lookup_without_kid(env: Env, keys: Keys) -> None:
    issuer = env.issuer()
    issuer.jwks = keys.jwks("k1", "ec1")
    env.cache.register("idp", JWKSURI(issuer.base + "/jwks"))
    await env.cache.start()
    assert same_key(await env.cache.lookup("idp", None, "ES256"), keys.e1)
    assert same_key(await env.cache.lookup("idp", None, "RS256"), keys.r1)
    issuer.jwks = keys.jwks("k1", "k2", "ec1")
    assert same_key(await env.cache.lookup("idp", "k2", "RS256"), keys.r2)
    with pytest.raises(UnknownKey):  # two RSA keys now: no guessing
        await env.cache.lookup("idp", None, "RS256")


async def test_lookup_gives_up_after_lookup_wait(env: Env, keys: Keys) -> None:
    issuer = env.issuer()
    issuer.jwks = keys.jwks("k1")
    env.cache.register("idp", JWKSURI(issuer.base + "/jwks"))
    await env.cache.start()
    issuer.gate = asyncio.Event()  # the next fetch hangs
    issuer.jwks = keys.jwks("k1", "k2")
    started = time.monotonic()
    with pytest.raises(UnknownKey):
        await env.cache.lookup("idp", "k2", "RS256")
    assert 0.4 < time.monotonic() - started < 1.0  # FAST.lookup_wait == 0.5
    issuer.gate.set()  # the abandoned fetch still completes and is used by later lookups
    async with asyncio.timeout(2):
        while env.cache.peek("idp") is None or len(env.cache.peek("idp") or ()) < 2:
            await asyncio.sleep(0.01)
    assert same_key(await env.cache.lookup("idp", "k2", "RS256"), keys.r2)
    assert issuer.hits["/jwks"] == 2


# -- failures and staleness -----------------------------------------------------------------


async def test_failure_keeps_last_good_keys_until_max_stale(env: Env, keys: Keys) -> None:
    issuer = env.issuer()
    issuer.jwks = keys.jwks("k1")
    env.cache.register("idp", JWKSURI(issuer.base + "/jwks"))
    await env.cache.start()
    loaded_at = env.clock()
    issuer.status = 500

    env.clock.t = loaded_at + 3600
    with pytest.raises(UnknownKey):  # the refetch fails; the old set still answers
        await env.cache.lookup("idp", "k2", "RS256")
    assert issuer.hits["/jwks"] == 2
    assert same_key(await env.cache.lookup("idp", "k1", "RS256"), keys.r1)
    st = env.cache.status()["idp"]
    assert st == {"keys": 1, "last_success": loaded_at, "last_error": "http_status", "last_error_at": loaded_at + 3600,
                  "stale": True, "fetch_successes": 1, "fetch_failures": {"http_status": 1},
                  "source": f"jwks_uri {issuer.base}/jwks"}
    assert env.cache.ready()

    env.clock.t = loaded_at + 86_400 - 1
    assert same_key(await env.cache.lookup("idp", "k1", "RS256"), keys.r1)

    env.clock.t = loaded_at + 86_400
    with pytest.raises(KeysUnavailable) as info:
        await env.cache.lookup("idp", "k1", "RS256")
    assert info.value.issuer_name == "idp" and info.value.retry_after >= 1
    assert not env.cache.ready()
    assert env.cache.peek("idp") is None
    assert env.cache.status()["idp"]["keys"] == 0

    issuer.status = 200  # the issuer recovers; the next permitted refetch restores service
    env.clock.t += 31
    assert same_key(await env.cache.lookup("idp", "k1", "RS256"), keys.r1)
    assert env.cache.status()["idp"]["stale"] is False


@pytest.mark.parametrize(
    "bad",
    [{"keys": []}, "weak-only", {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, {"nokeys": 1}, {"keys": "x"}],
    ids=["empty", "weak-only", "symmetric-only", "no-keys-member", "keys-not-array"],
)
async def test_unusable_set_never_cached(env: Env, keys: Keys, bad: Any) -> None:
    doc = keys.jwks("weak") if bad == "weak-only" else bad
    issuer = env.issuer()
    issuer.jwks = doc
    env.cache.register("idp", JWKSURI(issuer.base + "/jwks"))
    await env.cache.start()
    with pytest.raises(KeysUnavailable):  # never loaded: unavailable, not unknown
        await env.cache.lookup("idp", "weak", "RS256")
    assert issuer.hits["/jwks"] == 2  # the lookup's permitted refetch failed the same way
    assert env.cache.status()["idp"]["last_error"] in ("no_usable_keys", "invalid_jwks")

    issuer.jwks = keys.jwks("k1")
    env.clock.t += 31
    assert same_key(await env.cache.lookup("idp", "k1", "RS256"), keys.r1)
    issuer.jwks = doc  # an unusable set later does not replace good keys
    env.clock.t += 31
    with pytest.raises(UnknownKey):
        await env.cache.lookup("idp", "k2", "RS256")
    assert issuer.hits["/jwks"] == 4
    assert same_key(await env.cache.lookup("idp", "k1", "RS256"), keys.r1)
    assert len(env.cache.peek("idp") or ()) == 1


async def test_weak_key_skipped_others_usable(env: Env, keys: Keys) -> None:
    issuer = env.issuer()
    issuer.jwks = keys.jwks("weak", "k1", "ec1")
    issuer.jwks["keys"].append(rsa_jwk(keys.r2, "enc", use="enc"))  # not a signing key
    env.cache.register("idp", JWKSURI(issuer.base + "/jwks"))
    await env.cache.start()
    assert len(env.cache.peek("idp") or ()) == 2
    assert same_key(await env.cache.lookup("idp", "k1", "RS256"), keys.r1)
    assert same_key(await env.cache.lookup("idp", "ec1", "ES256"), keys.e1)
    for kid in ("weak", "enc"):
        env.clock.t += 31
        with pytest.raises(UnknownKey):
            await env.cache.lookup("idp", kid, "RS256")
    st = env.cache.status()["idp"]
    assert (st["keys"], st["last_error"], st["stale"]) == (2, None, False)


@pytest.mark.parametrize("spare", [-1, 0], ids=["one-byte-over", "exactly-at-cap"])
async def test_oversize_response_refused(keys: Keys, spare: int) -> None:
    doc = keys.jwks("k1", "k2", "ec1")
    env = Env(FAST, max_bytes=len(json.dumps(doc)) + spare)  # MockIssuer serves json.dumps
    issuer = env.issuer()
    issuer.jwks = doc
    env.cache.register("idp", JWKSURI(issuer.base + "/jwks"))
    await env.cache.start()
    if spare < 0:
        assert env.cache.status()["idp"]["last_error"] == "too_large"
        with pytest.raises(KeysUnavailable):
            await env.cache.lookup("idp", "k1", "RS256")
    else:
        assert same_key(await env.cache.lookup("idp", "k1", "RS256"), keys.r1)
    await env.cache.stop()
    await env.fetcher.aclose()


async def test_redirect_to_other_host_refused(env: Env, keys: Keys) -> None:
    issuer = env.issuer()
    issuer.jwks = keys.jwks("k1")
    env.cache.register("idp", JWKSURI(issuer.base + "/moved"))
    await env.cache.start()
    assert env.cache.status()["idp"]["last_error"] == "redirect_refused"
    assert env.other_hosts == []
    with pytest.raises(KeysUnavailable):
        await env.cache.lookup("idp", "k1", "RS256")


# -- URL policy over real loopback HTTP -----------------------------------------------------


@pytest.mark.parametrize(("flag", "ok"), [(True, True), (False, False)], ids=["with-flag", "without-flag"])
async def test_http_only_for_loopback_with_flag(
    server: LoopbackServer, fetcher: Fetcher, keys: Keys, flag: bool, ok: bool
) -> None:
    server.serve_json("/jwks", lambda: keys.jwks("k1"))
    cache = JWKSCache(fetcher, clock=Clock())
    cache.register("local", JWKSURI(server.base + "/jwks"), allow_insecure_loopback=flag)
    await cache.start()
    try:
        if ok:
            assert same_key(await cache.lookup("local", "k1", "RS256"), keys.r1)
        else:
            assert cache.status()["local"]["last_error"] == "insecure_url"
            with pytest.raises(KeysUnavailable):
                await cache.lookup("local", "k1", "RS256")
            assert server.hits["/jwks"] == 0
    finally:
        await cache.stop()


async def test_http_remote_refused_even_with_flag(env: Env, keys: Keys) -> None:
    issuer = env.issuer()
    issuer.jwks = keys.jwks("k1")
    env.cache.register("idp", JWKSURI("http://issuer.example/jwks"), allow_insecure_loopback=True)
    await env.cache.start()
    assert env.cache.status()["idp"]["last_error"] == "insecure_url"
    assert issuer.hits["/jwks"] == 0


# -- isolation between issuers --------------------------------------------------------------


async def test_slow_issuer_does_not_delay_others(server: LoopbackServer, fetcher: Fetcher, keys: Keys) -> None:
    hang = threading.Event()

    def slow_jwks() -> Reply:
        if hang.is_set():
            server.release.wait(5)
        body = json.dumps(keys.jwks("k2")).encode()
        return 200, {"Content-Length": str(len(body))}, body

    server.routes["/slow/jwks"] = slow_jwks
    server.serve_json("/fast/jwks", lambda: keys.jwks("k1"))
    clock = Clock()
    cache = JWKSCache(fetcher, policy=CachePolicy(lookup_wait=0.3), clock=clock)
    cache.register("slow", JWKSURI(server.base + "/slow/jwks"), allow_insecure_loopback=True)
    cache.register("fast", JWKSURI(server.base + "/fast/jwks"), allow_insecure_loopback=True)
    await cache.start()
    try:
        hang.set()
        slow_lookup = asyncio.ensure_future(cache.lookup("slow", "rotated", "RS256"))
        await asyncio.sleep(0.05)  # the slow refetch is now in flight
        started = time.monotonic()
        assert same_key(await cache.lookup("fast", "k1", "RS256"), keys.r1)
        with pytest.raises(UnknownKey):  # even a refetch of the fast issuer goes through
            await cache.lookup("fast", "rotated", "RS256")
        assert same_key(await cache.lookup("slow", "k2", "RS256"), keys.r2)  # cached keys of the slow one
        assert time.monotonic() - started < 0.5
        assert server.hits["/fast/jwks"] == 2
        with pytest.raises(UnknownKey):
            await slow_lookup
        assert time.monotonic() - started < 0.5
    finally:
        await cache.stop()


async def test_start_is_bounded_by_a_dead_issuer(server: LoopbackServer, keys: Keys) -> None:
    def dead() -> Reply:
        server.release.wait(5)
        return 500, {"Content-Length": "0"}, b""

    server.routes["/dead/jwks"] = dead
    server.serve_json("/ok/jwks", lambda: keys.jwks("k1"))
    client = httpx.AsyncClient(trust_env=False)
    fetcher = Fetcher(client, timeout=0.3, connect_timeout=0.2)
    cache = JWKSCache(fetcher, clock=Clock())
    cache.register("dead", JWKSURI(server.base + "/dead/jwks"), allow_insecure_loopback=True)
    cache.register("ok", JWKSURI(server.base + "/ok/jwks"), allow_insecure_loopback=True)
    started = time.monotonic()
    await cache.start()
    try:
        assert time.monotonic() - started < 1.2
        st = cache.status()
        assert st["dead"]["last_error"] == "timeout" and st["dead"]["keys"] == 0
        assert st["ok"]["keys"] == 1
        assert not cache.ready()
        assert same_key(await cache.lookup("ok", "k1", "RS256"), keys.r1)
    finally:
        await cache.stop()
        await client.aclose()


# -- static keys and registration -----------------------------------------------------------


async def test_static_keys(env: Env, keys: Keys) -> None:
    env.cache.register("cluster", StaticKeys(keys.jwks("weak", "k1", "ec1")))
    assert env.cache.ready()
    assert same_key(await env.cache.lookup("cluster", "k1", "RS256"), keys.r1)
    with pytest.raises(UnknownKey):
        await env.cache.lookup("cluster", "k2", "RS256")
    await env.cache.start()
    env.clock.t += 10 * 86_400  # static keys never go stale
    assert same_key(await env.cache.lookup("cluster", "ec1", "ES256"), keys.e1)
    with pytest.raises(UnknownKey):
        await env.cache.lookup("cluster", "weak", "RS256")
    st = env.cache.status()["cluster"]
    assert st["keys"] == 2 and st["stale"] is False and st["last_error"] is None
    assert env.other_hosts == [] and env.issuers == {}


@pytest.mark.parametrize(
    "jwks",
    [{"keys": []}, "weak-only", {"keys": "nope"}, {}],
    ids=["empty", "weak-only", "keys-not-array", "no-keys"],
)
def test_static_keys_without_usable_key_refused(keys: Keys, jwks: Any) -> None:
    doc = keys.jwks("weak") if jwks == "weak-only" else jwks
    cache = JWKSCache(Fetcher(httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500)))))
    with pytest.raises(ValueError):
        cache.register("cluster", StaticKeys(doc))
    assert cache.status() == {}


async def test_unregister_and_replace(env: Env, keys: Keys) -> None:
    issuer = env.issuer()
    issuer.jwks = keys.jwks("k1")
    env.cache.register("idp", JWKSURI(issuer.base + "/jwks"))
    env.cache.register("gone", JWKSURI("https://gone.example/jwks"))
    await env.cache.start()
    assert not env.cache.ready()
    env.cache.unregister("gone")
    env.cache.unregister("never-registered")
    assert env.cache.ready() and set(env.cache.status()) == {"idp"}
    with pytest.raises(KeysUnavailable):
        await env.cache.lookup("gone", "k1", "RS256")

    env.cache.register("idp", StaticKeys(keys.jwks("k2")))  # config reload changed the source
    assert same_key(await env.cache.lookup("idp", "k2", "RS256"), keys.r2)
    hits = issuer.hits["/jwks"]
    env.clock.t += 31
    with pytest.raises(UnknownKey):
        await env.cache.lookup("idp", "k1", "RS256")
    assert issuer.hits["/jwks"] == hits

    other = env.issuer("late.example")  # registered after start: fetched in the background
    other.jwks = keys.jwks("ec1")
    env.cache.register("late", JWKSURI(other.base + "/jwks"))
    async with asyncio.timeout(2):
        while env.cache.peek("late") is None:
            await asyncio.sleep(0.01)
    assert same_key(await env.cache.lookup("late", "ec1", "ES256"), keys.e1)


# -- logging --------------------------------------------------------------------------------


async def test_logs_are_structured_and_hold_no_key_material(env: Env, keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sts.jwks")
    issuer = env.issuer()
    issuer.jwks = keys.jwks("k1", "weak")
    env.cache.register("idp", Discovery(issuer.base))
    await env.cache.start()
    issuer.status = 500
    env.clock.t += 31
    with pytest.raises(UnknownKey):
        await env.cache.lookup("idp", "x\nforged", "RS256")
    events = [getattr(r, "event", None) for r in caplog.records if r.name == "sts.jwks"]
    assert {"jwks_register", "jwks_refreshed", "jwks_refetch_unknown_kid", "jwks_fetch_failed", "jwks_unknown_key"} <= set(events)
    refreshed = next(r for r in caplog.records if getattr(r, "event", None) == "jwks_refreshed")
    assert refreshed.issuer_name == "idp" and refreshed.keys == 1  # type: ignore[attr-defined]
    assert refreshed.skipped == ["kid=weak: weak_key"]  # type: ignore[attr-defined]
    dump = " ".join(repr(vars(r)) + r.getMessage() for r in caplog.records)
    for jwk in keys.jwks("k1", "weak")["keys"]:
        assert jwk["n"] not in dump and jwk["n"][:40] not in dump
    assert "x\nforged" not in dump
