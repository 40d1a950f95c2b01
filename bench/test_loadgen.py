"""The open-loop generator: arrivals never wait for answers (bench/loadgen.py paced mode).

A loopback server that holds every request for a fixed time stands in for a slow broker. An
open loop must keep sending at the offered rate however long the answers take, so requests
pile up in flight on many connections; a closed loop would keep one request per connection.
No timing is asserted beyond what holds on a loaded machine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from bench import loadgen


@pytest.fixture
def slow_server() -> Iterator[int]:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 answering every request after 100 ms."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                await asyncio.sleep(0.1)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def serve() -> asyncio.Server:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        return server

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(serve())
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port[0]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _paced(port: int, *, rate: float, max_connections: int) -> dict:
    return loadgen.run_python(host="127.0.0.1", port=port, path="/token", bodies=[b"a=1"], mode="paced",
                              duration=0.5, connections=2, rate=rate, max_connections=max_connections)


def test_arrivals_do_not_wait_for_answers(slow_server: int) -> None:
    report = _paced(slow_server, rate=200, max_connections=200)
    assert report["due"] == report["sent"] == report["ok"] == 100
    assert report["not_sent"] == 0 and report["errors"] == 0 and report["lost"] == 0
    # 100 ms answers at 200/s: about 20 in flight, so the generator opened connections beyond
    # the 2 it started with instead of waiting for one to come free.
    assert report["max_in_flight"] > 2 and report["connections"] > 2
    assert report["latency_ms"]["p50"] >= 100.0  # from the intended time, never less than the hold
    assert {"p50", "p99", "p999"} <= report["dispatch_lag_ms"].keys()
    assert report["offered_rate"] > 0 and report["loadgen_cpu_s"] >= 0


def test_a_full_connection_cap_is_reported_not_queued(slow_server: int) -> None:
    report = _paced(slow_server, rate=200, max_connections=3)
    assert report["connections"] <= 3 and report["max_in_flight"] <= 3
    assert report["not_sent"] > 0
    assert report["sent"] + report["not_sent"] == report["due"] == 100
    assert report["offered_rate"] < 200
