"""Garbage collection around the long-lived configuration.

A compiled configuration is a large, long-lived object graph (every issuer, grant, pattern,
CEL program and key) that stays alive until the next reload, and CPython's full collections
traverse all of it. Measured with the benchmark's large configuration (500 issuers, 10,000
grants), one worker over one benchmark scenario: 15 full collections took 8.1 s in all and up
to 1.5 s each, with requests waiting behind them. Hence:

* loading and compiling a configuration runs with the collector paused: it allocates and keeps
  nearly everything, so collections in the middle of it find nothing to free;
* once a configuration is in place, every object alive is moved to the permanent generation
  (``gc.freeze``), so later collections scan only what requests allocate. On a reload the
  previous configuration's objects are unfrozen and collected once, so none of them is kept
  by the freeze: one pause per reload instead of one every few seconds.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_paused = 0  # blocks inside collector_paused, in any thread
_restore = False  # whether the collector was enabled when the first of them began


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause automatic collection while the block runs. Blocks nest and may overlap across
    threads (a reload loads in a worker thread): the collector comes back, if it was on, only
    when the last of them ends."""
    global _paused, _restore
    with _lock:
        if _paused == 0:
            _restore = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _lock:
            _paused -= 1
            if _paused == 0 and _restore:
                gc.enable()


def freeze_long_lived() -> None:
    """Collect what is garbage now, then exempt everything still alive from collections."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
