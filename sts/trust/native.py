"""A native evaluator for the simplest CEL expressions, exact where it answers at all.

Most trust configurations read a claim (``claims.sub``) or compare claims and attributes with
string literals (``claims.repository_owner == "acme" && claims.ref == "refs/heads/main"``).
Evaluating those through the CEL engine costs more in converting the inputs to CEL values
than the comparison itself, so an expression of exactly this shape also gets a native form:

    expression := comparison ("&&" comparison)* | reference
    comparison := reference ("==" | "!=") literal | literal ("==" | "!=") reference
    reference  := VARIABLE | VARIABLE "." FIELD
    literal    := a double- or single-quoted string without escapes or line breaks

The native form answers only when every reference resolves to a ``str`` (a variable that is a
string, or a present entry of a ``dict`` variable that is a string). Then CEL's result is the
plain Python one: selecting a present map entry yields it, string equality is code point
equality, and ``&&`` of booleans is their conjunction. In every other case (a missing entry,
another type) it returns :data:`NOT_NATIVE` and the caller runs the CEL program, so errors and
CEL's mixed-type rules stay the engine's.

Only source text the CEL compiler has already accepted is offered here (see
``sts.trust.cel.compile_expression``), so the grammar above needs no error reporting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

NOT_NATIVE: Final = object()
"""Returned when the native form cannot answer exactly; evaluate with CEL instead."""

NativeForm = Callable[[Mapping[str, Any]], Any]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<literal>"[^"\\\r\n]*"|'[^'\\\r\n]*')
      | (?P<op>==|!=|&&)
      | (?P<ref>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
    )""",
    re.VERBOSE,
)
_TRAILING_SPACE = re.compile(r"\s*")
# CEL keywords and literals that look like identifiers but are not references.
_RESERVED: Final = frozenset(
    {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
     "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}
)  # fmt: skip

_Reference = tuple[str, str | None]  # (variable, field or None)


def _tokens(src: str) -> list[tuple[str, str]] | None:
    out: list[tuple[str, str]] = []
    pos = 0
    while True:
        if _TRAILING_SPACE.match(src, pos).end() == len(src):  # type: ignore[union-attr]
            return out
        m = _TOKEN.match(src, pos)
        if m is None:
            return None
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()


def _reference(text: str, variables: Collection[str]) -> _Reference | None:
    root, _, name = text.partition(".")
    if root not in variables or name in _RESERVED:
        return None
    return (root, name or None)


def _resolve(ref: _Reference, values: Mapping[str, Any]) -> str | None:
    value = values.get(ref[0])
    if ref[1] is not None:
        if type(value) is not dict:
            return None
        value = value.get(ref[1])
    return value if type(value) is str else None


def native_form(src: str, variables: Collection[str]) -> NativeForm | None:
    """The native form of ``src`` if it has the shape above, else ``None``."""
    tokens = _tokens(src)
    if not tokens:
        return None
    if len(tokens) == 1:
        kind, text = tokens[0]
        ref = _reference(text, variables) if kind == "ref" else None
        if ref is None:
            return None

        def select(values: Mapping[str, Any]) -> Any:
            value = _resolve(ref, values)
            return NOT_NATIVE if value is None else value

        return select

    comparisons: list[tuple[_Reference, bool, str]] = []  # (reference, equal?, literal)
    for start in range(0, len(tokens), 4):
        group = tokens[start : start + 3]
        if len(group) != 3 or group[1][0] != "op" or group[1][1] == "&&":
            return None
        (k1, t1), (_, op), (k2, t2) = group
        if k1 == "ref" and k2 == "literal":
            ref_text, literal = t1, t2
        elif k1 == "literal" and k2 == "ref":
            ref_text, literal = t2, t1
        else:
            return None
        ref = _reference(ref_text, variables)
        if ref is None:
            return None
        comparisons.append((ref, op == "==", literal[1:-1]))
        joiner = tokens[start + 3] if start + 3 < len(tokens) else None
        if joiner is not None and joiner != ("op", "&&"):
            return None
    if len(tokens) % 4 != 3:  # a dangling "&&"
        return None
    checks = tuple(comparisons)

    def conjunction(values: Mapping[str, Any]) -> Any:
        # Resolve everything first: one reference CEL would treat differently (a missing
        # entry, a number) makes the whole answer CEL's, whatever the other terms say.
        resolved = [(_resolve(ref, values), equal, literal) for ref, equal, literal in checks]
        if any(value is None for value, _, _ in resolved):
            return NOT_NATIVE
        return all((value == literal) is equal for value, equal, literal in resolved)

    return conjunction
