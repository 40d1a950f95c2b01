"""Answering requests whose client half-closed the connection (RFC 9112 §9.6, RFC 9293 §3.6).

HTTP/1.1 lets a client send its request and then close its sending side ("half-close") while it
waits for the answer; curl with ``--no-keepalive`` scripts and some proxies do. uvicorn's protocol
returns nothing from ``eof_received``, so the event loop closes the whole connection at once and
the answer of a request still being processed is dropped, although the exchange ran, was audited
and may have used up a one-time ``jti``. This protocol keeps the write side open while a
complete request awaits its answer, and closes the connection once that answer is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sts.spiffe.tls import tls_protocol_class


class HalfCloseHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering requests received before the client's EOF."""

    def eof_received(self) -> bool | None:
        cycle = self.cycle
        if cycle is None or (cycle.response_complete and not self.pipeline):
            return None  # nothing in flight: close, as uvicorn does
        # The last request received is the one whose answer ends the connection.
        last = self.pipeline[0][0] if self.pipeline else cycle
        if last.more_body:
            return None  # its body can never arrive complete: close, the app sees a disconnect
        last.keep_alive = False
        return True  # keep the transport open for writing; closed after the last answer


# Serving TLS, the protocol also hands the client certificate to the app (sts.spiffe.tls).
# Stored under its own name in this module, so that uvicorn can pickle it for worker processes.
TLSHalfCloseHttpToolsProtocol = tls_protocol_class(HalfCloseHttpToolsProtocol, name="TLSHalfCloseHttpToolsProtocol")
TLSHalfCloseHttpToolsProtocol.__module__ = __name__


def uvicorn_options(tls: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Options every uvicorn server of the broker runs with (``sts serve`` and the tests):
    ``tls`` are ``sts.spiffe.tls.uvicorn_tls_options``, whose protocol this one replaces with
    the same protocol that also answers half-closed requests."""
    if not tls:
        return {"http": HalfCloseHttpToolsProtocol}
    return {**tls, "http": TLSHalfCloseHttpToolsProtocol}
