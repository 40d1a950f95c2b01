"""Structured logging: one JSON object per line on stderr.

Fields passed through ``extra=`` become top-level keys, so ``log.info("x", extra={"kid": k})``
is searchable in any log pipeline. Nothing here ever formats a token or key: callers pass
digests and identifiers only.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
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


class JSONLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The broker's log handler: JSON lines on a stream, and batches of lines already encoded
    (``emit_batch``) written with one write under the handler's lock."""

    def write_lines(self, text: str) -> None:
        try:
            with self.lock:  # type: ignore[union-attr]
                self.stream.write(text)
                self.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "a batch of log lines"}))


def _plain_json_handler(logger: logging.Logger) -> JSONLinesHandler | None:
    """The one handler a record of ``logger`` at INFO would reach, when that handler is a
    ``JSONLinesHandler`` with our formatter and no filter is on the way; otherwise None."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        found.extend(h for h in current.handlers if h.level <= logging.INFO)
        if not current.propagate:
            break
        current = current.parent
    if len(found) != 1:
        return None
    handler = found[0]
    if type(handler) is not JSONLinesHandler or type(handler.formatter) is not JSONFormatter or handler.filters:
        return None
    return handler


def emit_batch(logger: logging.Logger, msg: str, key: str, values: Sequence[Any]) -> None:
    """Log ``msg`` at INFO once per value, as ``logger.info(msg, extra={key: value})`` would.

    With the handler ``configure_logging`` installs, the lines are encoded here and written with
    one write: the same JSON lines as ``JSONFormatter`` makes, without a ``LogRecord`` each. Any
    other set-up (another handler, a filter, a test's capture) gets ordinary records."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _plain_json_handler(logger)
    if handler is None:
        for value in values:
            logger.info(msg, extra={key: value})
        return
    # Every line of the batch has the same head: encode it once and close each line's object
    # after its value (the same text as encoding the whole object).
    head = _encode({"time": round(time.time(), 6), "level": "info", "logger": logger.name, "msg": msg, key: None})
    prefix = head[: -len("null}")]
    handler.write_lines("".join(f"{prefix}{_encode(value)}}}\n" for value in values))


def configure_logging(level: str = "info") -> None:
    handler = JSONLinesHandler(sys.stderr)
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
