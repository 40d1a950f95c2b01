"""Strict decoding of JSON-valued form parameters (RFC 9396 §6 ``authorization_details``;
draft-ietf-oauth-transaction-tokens-10 §"Txn-Token Request" ``request_context`` and
``request_details``).

Pure. The text is size-capped before it is parsed, duplicate member names and the non-JSON
constants ``NaN``/``Infinity`` are refused (RFC 8259 §4: names "SHOULD be unique"; a value
that two parsers read differently must not reach a decision), and nesting is bounded so that a
deeply nested value cannot exhaust the stack. Errors name what was wrong, never the value.
"""

from __future__ import annotations

import json
from typing import Any, Final

MAX_DEPTH: Final = 16


class JsonParameterError(ValueError):
    """The parameter is not acceptable JSON. ``reason`` is a stable code for the audit record:
    ``too_large``, ``malformed`` or ``too_deep``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("duplicate member name")
    return d


def _no_constant(name: str) -> Any:
    raise ValueError("not JSON")


_DECODER: Final = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def _depth(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` containers deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > limit:
            return False
        stack.extend((child, level + 1) for child in children)
    return True


def decode_json_parameter(raw: str, *, max_chars: int, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of a form parameter, or :class:`JsonParameterError`."""
    if len(raw) > max_chars:
        raise JsonParameterError("too_large")
    try:
        value = _DECODER.decode(raw)
    except (ValueError, RecursionError):
        raise JsonParameterError("malformed") from None
    if not _depth(value, max_depth):
        raise JsonParameterError("too_deep")
    return value


def canonical_json(value: Any) -> str:
    """One text per JSON value (sorted keys, no spaces): how configured literals and requested
    values are compared, so that ``1``, ``1.0`` and ``true`` stay three different values."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def json_size(value: Any) -> int:
    return len(canonical_json(value))
