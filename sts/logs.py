"""Structured logging: one JSON object per line on stderr.

Fields passed through ``extra=`` become top-level keys, so ``log.info("x", extra={"kid": k})``
is searchable in any log pipeline. Nothing here ever formats a token or key: callers pass
digests and identifiers only.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {
    "message", "asctime", "taskName", "color_message",
}


# One encoder for every line: json.dumps with non-default options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            # Operators need the trace of a server error; callers never see it.
            doc["exc"] = self.formatException(record.exc_info)
        return _encode(doc)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Every request logs its audit line, so the per-record work matters (logging HOWTO,
    # "Optimization"): none of these LogRecord fields reaches the JSON above, and collecting
    # them costs a stack walk (caller's file and line), a thread lookup and process lookups.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # uvicorn installs its own handlers; route them through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
