"""A small HTTP/1.1 load generator on raw asyncio sockets, and a driver for ``wrk``.

Two modes:

* **saturation** (closed loop): ``connections`` keep-alive connections, each sending the next
  request as soon as the previous answer arrives, for ``duration`` seconds. Reports throughput.
* **paced** (open loop): requests are due at fixed intended times ``start + i / rate`` whatever
  the server does. A pacer thread wakes at each due time and the request goes out at once on an
  idle keep-alive connection or on a new one; it never waits for an answer. Up to
  ``max_connections`` may be open; a request due when all of them are busy is not sent and is
  counted in ``not_sent``: the generator failed to offer the rate, and the report says so rather
  than queueing it behind an answer (which would turn the open loop back into a closed one).
  Latency is measured from the *intended* send time, so a stalled server is charged for every
  request due during the stall (no coordinated omission); ``service_ms`` is from the actual send
  and ``dispatch_lag_ms`` is the generator's own delay between due and sent.

The generator reports its own CPU time: on a 2-core machine every core it uses is taken from the
server it measures. ``wrk`` (a compiled, event-driven generator) is preferred for saturation
when installed; this module is the fallback and always does the paced mode.

Run as ``python -m bench.loadgen --port N --bodies FILE --mode paced --rate 1000 --duration 10``;
it prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WRK_SCRIPT = Path(__file__).with_name("wrk_token.lua")


def percentiles(values: Sequence[float], qs: Sequence[float] = (0.5, 0.9, 0.99, 0.999)) -> dict[str, float | None]:
    """Nearest-rank percentiles in milliseconds (``values`` in seconds)."""
    out: dict[str, float | None] = {}
    ordered = sorted(values)
    for q in qs:
        key = "p" + (f"{q * 100:g}".replace(".", ""))
        out[key] = round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000, 3) if ordered else None
    out["max"] = round(ordered[-1] * 1000, 3) if ordered else None
    out["mean"] = round(sum(ordered) / len(ordered) * 1000, 3) if ordered else None
    return out


def build_requests(host: str, port: int, path: str, bodies: Sequence[bytes]) -> list[bytes]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\n"
    ).encode()
    return [head + b"Content-Length: %d\r\n\r\n" % len(b) + b for b in bodies]


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight (no pipelining)."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.end = -1  # index just past the current response, once the head is parsed
        self.body_start = 0
        self.chunked = False
        self.status = 0
        self.intended = 0.0
        self.sent = 0.0
        self.busy = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, intended: float) -> None:
        self.busy = True
        self.intended = intended
        self.sent = time.perf_counter()
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.end < 0:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    return
                head = bytes(buf[: head_end + 2])
                self.status = int(head[9:12])
                self.body_start = head_end + 4
                match = _CONTENT_LENGTH.search(head)
                if match is not None:
                    self.end = self.body_start + int(match.group(1))
                    self.chunked = False
                elif _CHUNKED.search(head):
                    self.chunked = True
                    self.end = 0
                else:
                    self.end = self.body_start
            if self.chunked:
                # Good enough for small JSON bodies: the message ends at the zero-size chunk.
                last = buf.find(b"\r\n0\r\n\r\n", self.body_start - 2)
                if last < 0:
                    return
                self.end = last + 7
            if len(buf) < self.end:
                return
            body = bytes(buf[self.body_start : self.end]) if self.status != 200 else b""
            del buf[: self.end]
            self.end = -1
            self.busy = False
            self.gen.on_response(self, self.status, body)
            if not buf:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gen.on_lost(self)


class Generator:
    def __init__(self, host: str, port: int, requests: list[bytes]) -> None:
        self.host = host
        self.port = port
        self.requests = requests
        self.next_request = 0
        self.latencies: list[float] = []
        self.service: list[float] = []
        self.status_counts: dict[int, int] = {}
        self.error_samples: list[str] = []
        self.socket_errors = 0
        self.sent = 0
        self.completed = 0
        self.idle: deque[Connection] = deque()
        self.conns: list[Connection] = []
        self.opening = 0
        self.running = True
        self.closing = False
        self.closed_loop = False
        self.outstanding_done: asyncio.Event | None = None
        self.lag: list[float] = []
        self.not_sent = 0
        self.last_fire = 0.0
        self.max_connections = 0
        self.in_flight_now = 0
        self.max_in_flight = 0
        self.closed_count = 0  # connections the server closed during the phase

    def take_request(self) -> bytes:
        request = self.requests[self.next_request]
        self.next_request = (self.next_request + 1) % len(self.requests)
        return request

    async def open(self) -> Connection:
        self.opening += 1
        try:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        finally:
            self.opening -= 1
        self.conns.append(conn)
        return conn

    def dispatch(self, conn: Connection, intended: float) -> None:
        self.sent += 1
        self.in_flight_now += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight_now)
        conn.send(self.take_request(), intended)

    def on_response(self, conn: Connection, status: int, body: bytes) -> None:
        now = time.perf_counter()
        self.completed += 1
        self.in_flight_now -= 1
        self.latencies.append(now - conn.intended)
        self.service.append(now - conn.sent)
        self.status_counts[status] = self.status_counts.get(status, 0) + 1
        if status != 200 and len(self.error_samples) < 5:
            self.error_samples.append(f"{status} {body[:300].decode(errors='replace')}")
        if self.closed_loop:
            if self.running:
                self.dispatch(conn, time.perf_counter())
        else:
            self.idle.append(conn)
        self._check_done()

    def on_lost(self, conn: Connection) -> None:
        if conn.busy and not self.closing:
            self.socket_errors += 1
            self.in_flight_now -= 1
            conn.busy = False
        if conn in self.idle:
            self.idle.remove(conn)
        if not self.closing and conn in self.conns:
            self.conns.remove(conn)  # the cap counts open connections only
            self.closed_count += 1
        self._check_done()

    def in_flight(self) -> int:
        return sum(1 for c in self.conns if c.busy and not c.closed)

    def _check_done(self) -> None:
        if self.outstanding_done is not None and self.in_flight() == 0:
            self.outstanding_done.set()

    async def drain(self, timeout: float) -> int:
        """Wait for answers to requests in flight; returns how many never came back."""
        self.outstanding_done = asyncio.Event()
        self._check_done()
        try:
            await asyncio.wait_for(self.outstanding_done.wait(), timeout)
        except TimeoutError:
            pass
        lost = self.in_flight()
        self.closing = True  # what is still in flight is counted in ``lost``, not as socket errors
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()
        return lost

    async def saturation(self, duration: float, connections: int) -> dict[str, Any]:
        self.closed_loop = True
        conns = await asyncio.gather(*(self.open() for _ in range(connections)))
        start = time.perf_counter()
        for conn in conns:
            self.dispatch(conn, time.perf_counter())
        await asyncio.sleep(duration)
        self.running = False
        elapsed = time.perf_counter() - start
        lost = await self.drain(5.0)
        return {"elapsed": elapsed, "lost": lost, "connections": connections}

    async def paced(self, duration: float, rate: float, connections: int, max_connections: int) -> dict[str, Any]:
        """Open loop: request *i* is due at ``start + i / rate`` whatever the answers do.

        A pacer thread sleeps until each due time (``time.sleep`` is precise to tens of
        microseconds, where the event loop's timers have millisecond resolution) and hands the
        request to the loop, which sends it at once on an idle connection or on a new one. No
        due request ever waits for an answer: when ``max_connections`` are all busy it is not
        sent and counted in ``not_sent``, a failure to offer the rate, reported as such.
        """
        for conn in await asyncio.gather(*(self.open() for _ in range(connections))):
            self.idle.append(conn)
        loop = asyncio.get_running_loop()
        self.max_connections = max_connections
        total = max(1, int(rate * duration))
        start = time.perf_counter() + 0.02
        finished = asyncio.Event()

        def pacer() -> None:
            _tighten_timer_slack()
            try:
                for i in range(total):
                    intended = start + i / rate
                    wait = intended - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    loop.call_soon_threadsafe(self.fire, intended)
            finally:
                loop.call_soon_threadsafe(finished.set)

        thread = threading.Thread(target=pacer, name="pacer", daemon=True)
        thread.start()
        await finished.wait()
        thread.join()
        send_window = max(self.last_fire - start, 0.0) + 1.0 / rate
        elapsed = time.perf_counter() - start
        lost = await self.drain(5.0)
        return {
            "elapsed": elapsed,
            "lost": lost,
            "connections": len(self.conns) + self.closed_count,
            "offered_rate": round(self.sent / send_window, 1),
            "due": total,
            "dispatch_lag_ms": percentiles(self.lag, (0.5, 0.99, 0.999)),
        }

    def fire(self, intended: float) -> None:
        """Send the request due at ``intended`` now (runs on the loop, called by the pacer)."""
        now = time.perf_counter()
        self.last_fire = now
        self.lag.append(now - intended)
        # Most recently used first: surplus connections left from a burst stay idle until the
        # server's keep-alive timeout closes them, instead of being reused just as it does.
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                self.dispatch(conn, intended)
                return
        if len(self.conns) + self.opening < self.max_connections:
            asyncio.ensure_future(self._open_and_send(intended))
        else:
            self.not_sent += 1

    async def _open_and_send(self, intended: float) -> None:
        try:
            conn = await self.open()
        except OSError:
            self.socket_errors += 1
            return
        self.dispatch(conn, intended)


def _tighten_timer_slack() -> None:
    """Ask Linux for 1 µs timer slack on this thread (default 50 µs) so sleeps end on time."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, in nanoseconds
    except (OSError, AttributeError):
        pass


def _raise_fd_limit(wanted: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def run_python(
    *,
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    mode: str,
    duration: float,
    connections: int = 32,
    rate: float = 1000.0,
    max_connections: int = 1024,
) -> dict[str, Any]:
    """Run one load phase in this process and return its report."""
    _raise_fd_limit(max_connections + 64)
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = asyncio.new_event_loop
    gen = Generator(host, port, build_requests(host, port, path, bodies))
    cpu0 = time.process_time()
    loop = loop_factory()
    try:
        if mode == "saturation":
            info = loop.run_until_complete(gen.saturation(duration, connections))
        else:
            info = loop.run_until_complete(gen.paced(duration, rate, min(connections, max_connections), max_connections))
    finally:
        loop.close()
    cpu = time.process_time() - cpu0
    non_200 = sum(n for code, n in gen.status_counts.items() if code != 200)
    report: dict[str, Any] = {
        "generator": "python",
        "mode": mode,
        "elapsed": round(info["elapsed"], 4),
        "sent": gen.sent,
        "completed": gen.completed,
        "ok": gen.status_counts.get(200, 0),
        "non_200": non_200,
        "socket_errors": gen.socket_errors,
        # Requests still unanswered when the drain timed out: in an overloaded open-loop phase
        # that is the queue the server never reached, reported apart from errors.
        "lost": info["lost"],
        "errors": non_200 + gen.socket_errors,
        "status_counts": {str(k): v for k, v in sorted(gen.status_counts.items())},
        "error_samples": gen.error_samples,
        "throughput": round(gen.completed / info["elapsed"], 1) if info["elapsed"] > 0 else 0.0,
        "latency_ms": percentiles(gen.latencies),
        "service_ms": percentiles(gen.service),
        "connections": info["connections"],
        "loadgen_cpu_s": round(cpu, 4),
    }
    if mode == "paced":
        report["rate"] = rate
        report["due"] = info["due"]
        report["offered_rate"] = info["offered_rate"]
        report["not_sent"] = gen.not_sent
        report["max_connections"] = max_connections
        report["max_in_flight"] = gen.max_in_flight
        report["dispatch_lag_ms"] = info["dispatch_lag_ms"]
    return report


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    *, host: str, port: int, path: str, bodies_file: Path, duration: float, connections: int = 32, threads: int = 1
) -> dict[str, Any]:
    """Saturation with ``wrk``; its own CPU comes from the rusage of the reaped child."""
    seconds = max(1, round(duration))
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        f"http://{host}:{port}{path}",
        "--",
        str(bodies_file),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read().decode(errors="replace")
    err = proc.stderr.read().decode(errors="replace")
    marker = out.rfind("BENCH_JSON ")
    if proc.returncode != 0 or marker < 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.strip() or out.strip()}")
    data = json.loads(out[marker + len("BENCH_JSON ") :].splitlines()[0])
    elapsed = data["duration_us"] / 1e6
    socket_errors = sum(data[k] for k in ("connect", "read", "write", "timeout"))
    return {
        "generator": "wrk",
        "mode": "saturation",
        "elapsed": round(elapsed, 4),
        "sent": data["requests"],
        "completed": data["requests"],
        "ok": data["requests"] - data["status"],
        "non_200": data["status"],
        "socket_errors": socket_errors,
        "lost": 0,
        "errors": data["status"] + socket_errors,
        "status_counts": {},
        "error_samples": [],
        "throughput": round(data["requests"] / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": {k: round(v / 1000, 3) for k, v in data["latency_us"].items()},
        "connections": connections,
        "loadgen_cpu_s": round(rusage.ru_utime + rusage.ru_stime, 4),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/token")
    parser.add_argument("--bodies", type=Path, required=True, help="one urlencoded form body per line")
    parser.add_argument("--mode", choices=("saturation", "paced"), default="saturation")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--max-connections", type=int, default=1024)
    parser.add_argument("--generator", choices=("python", "wrk"), default="python")
    args = parser.parse_args(argv)
    if args.generator == "wrk":
        report = run_wrk(
            host=args.host, port=args.port, path=args.path, bodies_file=args.bodies,
            duration=args.duration, connections=args.connections,
        )
    else:
        bodies = [line for line in args.bodies.read_bytes().splitlines() if line]
        report = run_python(
            host=args.host, port=args.port, path=args.path, bodies=bodies, mode=args.mode,
            duration=args.duration, connections=args.connections, rate=args.rate,
            max_connections=args.max_connections,
        )
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
