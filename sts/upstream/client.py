"""POSTing token requests to providers: bounded, retried with jitter, behind a circuit breaker.

Every fetch is bounded: a timeout per attempt (the upstream's ``timeout``), a body cap
(``MAX_RESPONSE_BYTES``, streamed and abandoned past it), no redirects at all (a token
endpoint that redirects is misconfigured or hijacked; a 3xx is a failure, never followed to
another host), and at most ``1 + retries`` attempts.

Failures are of two kinds, answered differently to the workload:

* transient (connection refused or reset, timeout, HTTP 429 or 5xx, a 200 whose body is not a
  token): retried with full-jitter exponential backoff, then ``temporarily_unavailable``
  (HTTP 503, RFC 6749 §5.2 via §4.1.2.1) with ``Retry-After``. They count towards the
  upstream's circuit breaker; an open breaker answers the same way at once, without a request.
* refusal (any other 4xx: the provider does not trust our assertion or its mapping does not
  match): ``invalid_target`` (RFC 8693 §2.2.2: the server is "unable to issue a token for any
  target service indicated"). Not retried; the provider is up, so the breaker is not moved.

The provider's body never reaches the workload: the answer carries our fixed text, and the
audit record keeps ``HTTP <status> <error code>`` only (``wire.error_summary``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import httpx

from sts.errors import InvalidTarget, TemporarilyUnavailable
from sts.upstream.wire import BadProviderResponse, OutboundRequest, ProviderToken, error_summary, parse_token, request_id

log = logging.getLogger("sts.upstream")

MAX_RESPONSE_BYTES: Final = 64 * 1024
BACKOFF_BASE: Final = 0.2
BACKOFF_CAP: Final = 2.0
# Circuit breaker: this many transient failures in a row open it for OPEN_SECONDS; then one
# trial request may pass (half-open), and its outcome closes or reopens the breaker.
FAILURE_THRESHOLD: Final = 5
OPEN_SECONDS: Final = 30.0
DEFAULT_RETRY_AFTER: Final = 5
MAX_RETRY_AFTER: Final = 60

REFUSED_TEXT: Final = "The token service of the requested target refused the broker's request."
UNAVAILABLE_TEXT: Final = "The token service of the requested target is unavailable; retry later."


@dataclass(frozen=True, slots=True)
class Fetched:
    """A provider's answer: its token, its request id, how many attempts it took."""

    token: ProviderToken
    request_id: str | None
    attempts: int


class _Transient(Exception):
    def __init__(self, detail: str, retry_after: int | None = None, request_id: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.request_id = request_id


class CircuitBreaker:
    """Per upstream. Invariant: ``closed`` until ``FAILURE_THRESHOLD`` transient failures in a
    row; then ``open`` for ``OPEN_SECONDS``; then one trial at a time until a success."""

    def __init__(self, clock: Callable[[], float], threshold: int = FAILURE_THRESHOLD, open_seconds: float = OPEN_SECONDS) -> None:
        self._clock = clock
        self._threshold = threshold
        self._open_seconds = open_seconds
        self.failures = 0
        self.opened_at: float | None = None
        self._trial = False

    def retry_after(self) -> int | None:
        """Seconds until a request may pass, or None if one may pass now (and is admitted)."""
        if self.opened_at is None:
            return None
        left = self.opened_at + self._open_seconds - self._clock()
        if left > 0:
            return max(1, math.ceil(left))
        if self._trial:
            return 1
        self._trial = True  # half-open: this caller is the trial
        return None

    def success(self) -> None:
        self.failures, self.opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        self.failures += 1
        self._trial = False
        if self.opened_at is not None or self.failures >= self._threshold:
            self.opened_at = self._clock()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "open" if self._clock() < self.opened_at + self._open_seconds else "half-open"


def _retry_after_header(response: httpx.Response) -> int | None:
    value = response.headers.get("retry-after", "")
    return min(int(value), MAX_RETRY_AFTER) if value.isdigit() else None


class ProviderClient:
    """One process's HTTP client for every upstream. Invariant: redirects are never followed."""

    def __init__(self, *, clock: Callable[[], float], sleep: Callable[[float], object] = asyncio.sleep,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._clock = clock
        self._sleep = sleep
        # Proxies from the environment (HTTPS_PROXY, NO_PROXY) apply, as for issuer key fetches.
        self._http = httpx.AsyncClient(follow_redirects=False, transport=transport,
                                       headers={"Accept": "application/json", "User-Agent": "workload-sts"})
        self._breakers: dict[str, CircuitBreaker] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    def breaker(self, name: str) -> CircuitBreaker:
        b = self._breakers.get(name)
        if b is None:
            b = self._breakers[name] = CircuitBreaker(self._clock)
        return b

    async def post(self, name: str, request: OutboundRequest, *, timeout: float, retries: int, key: str | None = None) -> Fetched:
        """The provider's token, or ``InvalidTarget`` (refused) / ``TemporarilyUnavailable``.
        ``key`` names the breaker (default ``name``): the upstream's full identity, so that a
        reload pointing the upstream elsewhere starts with a closed breaker."""
        breaker = self.breaker(key or name)
        wait = breaker.retry_after()
        if wait is not None:
            raise TemporarilyUnavailable(UNAVAILABLE_TEXT, reason="upstream_circuit_open", detail=f"{name}: circuit open",
                                         retry_after=wait)
        last: _Transient | None = None
        for attempt in range(1 + retries):
            if attempt:
                delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))
                if last is not None and last.retry_after is not None:
                    delay = max(delay, min(float(last.retry_after), BACKOFF_CAP))
                await self._sleep(delay)
            try:
                token, rid = await self._attempt(request, timeout)
            except _Transient as exc:
                last = exc
                continue
            except InvalidTarget:
                breaker.success()  # the provider answered: it is up
                raise
            breaker.success()
            return Fetched(token, rid, attempt + 1)
        assert last is not None
        breaker.failure()
        log.warning("upstream unavailable", extra={"upstream": name, "detail": last.detail, "breaker": breaker.state})
        retry_after = breaker.retry_after() if breaker.state == "open" else None
        raise TemporarilyUnavailable(
            UNAVAILABLE_TEXT, reason="upstream_unavailable",
            detail=f"{name}: {last.detail} after {1 + retries} attempt(s)" + (f" request_id={last.request_id}" if last.request_id else ""),
            retry_after=retry_after or last.retry_after or DEFAULT_RETRY_AFTER)

    async def _attempt(self, request: OutboundRequest, timeout: float) -> tuple[ProviderToken, str | None]:
        body, content_type = request.content()
        try:
            async with self._http.stream("POST", request.url, content=body, headers={**request.headers, "Content-Type": content_type},
                                         timeout=httpx.Timeout(timeout)) as response:
                data = await self._read_capped(response)
        except httpx.TimeoutException:
            raise _Transient("timeout") from None
        except httpx.HTTPError as exc:
            raise _Transient(f"network ({type(exc).__name__})") from None
        rid = request_id(response.headers)
        status = response.status_code
        if status == 200:
            try:
                return parse_token(data), rid
            except BadProviderResponse as exc:
                raise _Transient(f"HTTP 200 unusable token ({exc.reason})", request_id=rid) from None
        summary = error_summary(status, data)
        if status == 429 or status >= 500 or 300 <= status < 400:
            raise _Transient(summary, _retry_after_header(response) if status in (429, 503) else None, rid)
        raise InvalidTarget(REFUSED_TEXT, reason="upstream_refused", detail=summary + (f" request_id={rid}" if rid else ""))

    @staticmethod
    async def _read_capped(response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise _Transient("response too large")
            chunks.append(chunk)
        return b"".join(chunks)
