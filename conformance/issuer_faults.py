"""Misbehaviour of the kit's issuer on demand: slow, failing, garbled or hanging key documents.

A target's key cache is only tested when the issuer it fetches from misbehaves. ``FaultSwitch``
holds the current fault of one ``LocalIssuer``; the issuer asks it to answer every request for
its key documents (OpenID Connect Discovery 1.0 §4 metadata and the RFC 7517 §5 JWK Set) while
a fault is set. Rotating and removing keys are ``LocalIssuer.rotate`` and ``retire``.

Modes:

- ``slow``: answer normally after ``delay`` seconds;
- ``error``: answer ``status`` (default 503) with an RFC 6749-style JSON error;
- ``garbage``: answer 200 with a body that is not JSON;
- ``hang``: accept the request and answer nothing until the fault is cleared (then 503), at
  most ``max_hang`` seconds, so that a stopped run never leaves a thread blocked forever.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

FaultMode = Literal["slow", "error", "garbage", "hang"]
Answer = tuple[int, dict[str, str], bytes]

#: Paths (suffixes) of the key documents a fault applies to; other routes (attacker material
#: published by cases) keep answering.
KEY_DOCUMENT_SUFFIXES = ("/.well-known/openid-configuration", "/jwks", "/.well-known/jwks.json")


@dataclass(frozen=True)
class Fault:
    mode: FaultMode
    delay: float = 0.0
    status: int = 503
    max_hang: float = 60.0


class FaultSwitch:
    """The current fault of one issuer; thread-safe, cleared by ``clear`` or on leaving ``active``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._released = threading.Event()
        self._released.set()

    @property
    def current(self) -> Fault | None:
        with self._lock:
            return self._fault

    def set(self, fault: Fault) -> None:
        with self._lock:
            self._fault = fault
            if fault.mode == "hang":
                self._released.clear()

    def clear(self) -> None:
        with self._lock:
            self._fault = None
            self._released.set()

    @contextlib.contextmanager
    def active(self, mode: FaultMode, *, delay: float = 0.0, status: int = 503,
               max_hang: float = 60.0) -> Iterator[Fault]:
        fault = Fault(mode, delay=delay, status=status, max_hang=max_hang)
        self.set(fault)
        try:
            yield fault
        finally:
            self.clear()

    def answer(self, path: str, route: Callable[[], Answer]) -> Answer:
        """The answer to a GET of ``path``: the route's own unless a fault applies to it."""
        fault = self.current
        if fault is None or not path.endswith(KEY_DOCUMENT_SUFFIXES):
            return route()
        if fault.mode == "slow":
            time.sleep(fault.delay)
            return route()
        if fault.mode == "hang":
            self._released.wait(fault.max_hang)
            return _error(503)
        if fault.mode == "garbage":
            return 200, {"Content-Type": "application/json"}, b"<html>not a key set</html>"
        return _error(fault.status)


def _error(status: int) -> Answer:
    return (status, {"Content-Type": "application/json", "Retry-After": "1"},
            b'{"error":"temporarily_unavailable"}')


__all__ = ["KEY_DOCUMENT_SUFFIXES", "Fault", "FaultMode", "FaultSwitch"]
