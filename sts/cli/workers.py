"""``sts serve --workers N``: uvicorn's process supervisor, with ``SIGHUP`` meaning "reload the
configuration" rather than "restart every worker".

uvicorn's ``Multiprocess`` answers ``SIGHUP`` by replacing each worker with a new process. For
the broker that throws away warm caches (issuer keys, compiled configuration, the decrypted
signing keys) and, while a replacement starts, leaves fewer workers serving, only to pick up
an edited trust configuration, which every worker can reload in place: a ``Broker`` reloads
its configuration when its own process gets ``SIGHUP`` (``sts.app.Broker.start``). So the
supervisor forwards the signal to every worker and keeps the processes. A worker that is
still starting has no handler yet: the signal ends it, and the supervisor starts a
replacement that reads the current file, as it does for any worker that dies. Every other
signal keeps uvicorn's meaning (docs/operations.md, "Several workers").
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("sts.serve")


class ReloadingSupervisor(Multiprocess):
    """uvicorn's supervisor whose ``SIGHUP`` is forwarded to the workers. Invariant: it never
    starts or stops a worker because of ``SIGHUP``."""

    def handle_hup(self) -> None:
        pids: list[int] = []
        for process in self.processes:
            pid = process.pid
            if pid is None or not process.process.is_alive():
                continue  # a dead worker is replaced by keep_subprocess_alive, and reads the file then
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
                pids.append(pid)
        log.info("SIGHUP forwarded to the workers: each reloads the configuration in place", extra={"workers": pids})


def run_workers(app: str, *, workers: int, **options: Any) -> None:
    """What ``uvicorn.run(app, workers=N, factory=True, ...)`` does, with ``ReloadingSupervisor``."""
    config = uvicorn.Config(app, factory=True, workers=workers, **options)
    sock = config.bind_socket()
    try:
        ReloadingSupervisor(config, sockets=[sock]).run()
    except KeyboardInterrupt:  # pragma: no cover - uvicorn's own supervisor does the same
        pass
    finally:
        sock.close()
