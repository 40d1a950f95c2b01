"""Coalescing of unauthenticated refusals, so that a flood of garbage cannot grow the audit
table by one row per request (docs/operations.md#cost-of-a-refused-request).

A refusal that carries no verified identity (bad form, failed client authentication, a subject
token that did not verify) is keyed by the peer, the outcome, the RFC 6749 §5.2 error, the
reason and the issuer the token claimed. The first refusal of a key is written on its own as
usual and opens a window; identical refusals inside the window are only counted, and when the
window closes they become ONE audit record whose ``count`` says how many it stands for. So the
sum of ``count`` over the audit table is the number of answered requests, and a peer costs at
most two rows per kind of refusal per window, whatever its request rate.

Never coalesced: anything that issued a token, and any refusal after an identity was verified
(an authenticated client, a verified subject or actor token); those are always written one by
one. Peers are the TCP client address (scope ``client``), IPv6 addresses by their /64 network,
which is what one host usually controls. Behind a load balancer that is the balancer's address:
coalescing then works per kind of refusal across all callers, which still bounds the rows.

``RefusalCoalescer`` is the pure bookkeeping, with an injected clock; ``RefusalFlusher`` is the
background task that writes the closed windows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from sts.logs import emit_batch
from sts.store.records import AuditRecord

log = logging.getLogger("sts.ops.coalesce")
_audit_log = logging.getLogger("sts.audit")

# Peer of refusals that arrive while the table of open windows is full: they share one window
# per kind of refusal, so memory and rows stay bounded however many addresses a flood uses.
OVERFLOW_PEER = "*"
COALESCED_NOTE = "coalesced"


class Refusal(Protocol):
    """The parts of an audit event (``sts.audit.AuditEvent``) that coalescing looks at."""

    time: float
    request_id: str
    outcome: str
    error: str | None
    reason: str | None
    client_id: str | None
    issuer: str | None
    identity: str | None
    subject_token_sha256: str | None
    actor_identity: str | None
    issued_jti: str | None

    def to_record(self) -> AuditRecord: ...


def carries_no_verified_identity(event: Refusal) -> bool:
    """True for a refusal made before any identity was verified. ``issuer`` may be set then
    (the issuer a token claimed, peeked before verification); ``client_id`` is set only once
    the client authenticated, ``subject_token_sha256`` once the subject token verified."""
    return (
        event.outcome != "issued"
        and event.issued_jti is None
        and event.client_id is None
        and event.subject_token_sha256 is None
        and event.identity is None
        and event.actor_identity is None
    )


def peer_of(client: Any) -> str:
    """The coalescing peer of an ASGI ``scope["client"]`` (``(host, port)`` or None). Runs for
    every refusal without an identity, so it avoids ``ipaddress`` (microseconds per call)."""
    if not client:
        return "unknown"
    host = str(client[0])
    if ":" not in host:
        return host[:128]  # IPv4 as the server saw it, or a unix socket path
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except (OSError, ValueError):
        return host[:128]
    if packed[:12] == _IPV4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


_IPV4_MAPPED = bytes(10) + b"\xff\xff"


class RefusalKey(NamedTuple):
    peer: str
    outcome: str
    error: str | None
    reason: str | None
    issuer: str | None


@dataclass(slots=True)
class _Window:
    opened_at: float  # clock time of the refusal that was written on its own
    written_request_id: str
    count: int = 0  # refusals absorbed since
    template: AuditRecord | None = None  # the first absorbed refusal
    first_time: float = 0.0
    last_time: float = 0.0
    last_request_id: str = ""


class RefusalCoalescer:
    """Counts identical unauthenticated refusals per peer and window. Invariant: ``absorb``
    returns True (the caller writes nothing) only for a refusal with no verified identity whose
    key has an open window younger than ``window`` seconds; each absorbed refusal is counted in
    exactly one record that ``due`` or ``drain`` returns later. At most ``max_windows`` windows
    of real peers are open, plus one overflow window per kind of refusal."""

    def __init__(self, *, window: float, max_windows: int = 1024, clock: Callable[[], float] = time.time) -> None:
        if max_windows < 1:
            raise ValueError("max_windows must be at least 1")
        self.window = window
        self._max_windows = max_windows
        self._clock = clock
        self._open: dict[RefusalKey, _Window] = {}
        self._peer_windows = 0  # open windows whose peer is not the overflow peer
        self._closed: list[AuditRecord] = []

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def open_windows(self) -> int:
        return len(self._open)

    def absorb(self, event: Refusal, client: Any) -> bool:
        """Count ``event`` into an open window (True: do not write it) or open a window for it
        (False: write it as usual). ``client`` is the ASGI ``scope["client"]``."""
        if self.window <= 0 or not carries_no_verified_identity(event):
            return False
        now = self._clock()
        key = RefusalKey(peer_of(client), event.outcome, event.error, event.reason, event.issuer)
        win = self._current(key, now)
        if win is None and self._peer_windows >= self._max_windows:
            key = key._replace(peer=OVERFLOW_PEER)
            win = self._current(key, now)
        if win is None:
            self._open[key] = _Window(opened_at=now, written_request_id=event.request_id)
            if key.peer != OVERFLOW_PEER:
                self._peer_windows += 1
            return False
        if win.template is None:
            win.template = event.to_record()
            win.first_time = event.time
        win.count += 1
        win.last_time = event.time
        win.last_request_id = event.request_id
        return True

    def due(self) -> list[AuditRecord]:
        """The records of every window that has closed (and of windows closed by ``absorb``
        since the last call); windows in which nothing was absorbed leave no record."""
        now = self._clock()
        for key in [k for k, w in self._open.items() if now >= w.opened_at + self.window]:
            self._close(key)
        records, self._closed = self._closed, []
        return records

    def drain(self) -> list[AuditRecord]:
        """Close every window now (shutdown) and return all pending records."""
        for key in list(self._open):
            self._close(key)
        records, self._closed = self._closed, []
        return records

    def _current(self, key: RefusalKey, now: float) -> _Window | None:
        win = self._open.get(key)
        if win is not None and now >= win.opened_at + self.window:
            self._close(key)
            return None
        return win

    def _close(self, key: RefusalKey) -> None:
        win = self._open.pop(key)
        if key.peer != OVERFLOW_PEER:
            self._peer_windows -= 1
        if win.count and win.template is not None:
            self._closed.append(summary_record(key, win))


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def summary_record(key: RefusalKey, win: _Window) -> AuditRecord:
    """One record for the ``win.count`` refusals absorbed in a window: the first absorbed
    refusal's fields, the last one's time (so it is pruned no earlier than any it stands for)."""
    assert win.template is not None
    detail = (
        f"{win.count} refusal(s) identical to request {win.written_request_id} from peer {key.peer}, "
        f"{_utc(win.first_time)} to {_utc(win.last_time)}; last request {win.last_request_id}"
    )
    return dataclasses.replace(
        win.template,
        time=win.last_time,
        count=win.count,
        detail=detail,
        mode_notes=(*win.template.mode_notes, COALESCED_NOTE),
    )


class RefusalFlusher:
    """Writes the records of closed windows every ``interval`` seconds, and all of them at
    shutdown. A failed write is retried at the next interval; at most ``max_pending`` records
    wait (the oldest beyond that are dropped with an error log, their first refusals were
    written on their own)."""

    def __init__(self, coalescer: RefusalCoalescer, write: Callable[[list[AuditRecord]], Awaitable[None]],
                 *, interval: float, max_pending: int = 100_000) -> None:
        self._coalescer = coalescer
        self._write = write
        self._interval = interval
        self._max_pending = max_pending
        self._pending: list[AuditRecord] = []

    async def flush(self, *, everything: bool = False) -> int:
        """Write what is due (``everything``: close all windows first); returns rows written."""
        self._pending += self._coalescer.drain() if everything else self._coalescer.due()
        if len(self._pending) > self._max_pending:
            dropped = len(self._pending) - self._max_pending
            log.error("coalesced refusal records dropped: the database did not take them", extra={"dropped": dropped})
            del self._pending[:dropped]
        if not self._pending:
            return 0
        records, self._pending = self._pending, []
        # Shielded: a write already handed to a thread may still land after a cancellation, so
        # the records are put back for the next flush only if it surely did not.
        write = asyncio.ensure_future(self._write(records))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            await asyncio.wait([write], timeout=30)
            if not write.done() or write.cancelled() or write.exception() is not None:
                self._pending[:0] = records
            raise
        except Exception:
            self._pending[:0] = records
            raise
        # The same log lines as every other durable audit record (sts.audit.audit_log_lines).
        emit_batch(_audit_log, "token_exchange", "audit", [dataclasses.asdict(r) for r in records])
        return len(records)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:
                log.exception("writing coalesced refusals failed; retried at the next interval")

    @staticmethod
    def interval_for(window: float) -> float:
        """How often to look for closed windows: a quarter window, between 1 and 15 seconds."""
        return min(max(window / 4, 1.0), 15.0)
