"""Compiled CEL expressions for claim validation, claim mapping and grant conditions.

The vocabulary follows Kubernetes structured authentication (``AuthenticationConfiguration``:
``claimValidationRules`` and ``claimMappings`` over a ``claims`` variable), evaluated with the
Rust-backed ``cel`` package. Every expression is compiled and statically checked when the
configuration loads, so a typo is a configuration problem and never a runtime surprise:

* syntax errors are reported with their position in the expression;
* only the variables of the expression's context may be used (``claims`` for validation rules
  and mappings; ``identity``, ``issuer``, ``attributes`` and ``claims`` for grant conditions
  and actor matchers);
* only functions the evaluator knows may be called: the CEL standard functions plus the
  Kubernetes-style string extension (``split``, ``lowerAscii``, ``substring``, ...).

Evaluation failures (a missing claim, a type mismatch) raise :class:`ExpressionError` with a
short reason code; the message never holds a claim value, so it is safe for logs.

Cost: converting Python values into CEL values dominates (about 2-3 µs per string), while
running a compiled program over an already converted context takes about 1 µs. So the
variables are converted once per request into an :class:`Activation`, with ``claims`` and
``attributes`` pruned to the entries the compiled expressions can read (found statically), and
every expression of that request runs against it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import cel
from cel.stdlib import EXTENSIONS

from sts.trust.native import NOT_NATIVE, NativeForm, native_form

MAPPING_VARIABLES: Final = frozenset({"claims"})
"""Variables of claim validation rules and claim mappings."""

CONDITION_VARIABLES: Final = frozenset({"identity", "issuer", "attributes", "claims"})
"""Variables of grant conditions and actor matchers."""

# The string extension of cel-go, which Kubernetes enables for claim mappings; the package
# implements it as Python callbacks. ``strings.quote`` is left out (namespaced, rarely useful).


class _ExtensionFailed(ValueError):
    """Raised in place of an extension's own exception, whose text may quote its input."""


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    # The evaluator logs a failing Python callback with the exception text ("substring: [5:99]
    # out of range ..."); the text of the stdlib functions can quote arguments, i.e. claim
    # values, so it is replaced by a fixed one before it reaches any log.
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - any failure becomes one fixed, value-free error
            raise _ExtensionFailed("extension function failed") from None

    call.__name__ = getattr(fn, "__name__", "extension")
    return call


EXTENSION_FUNCTIONS: Final[Mapping[str, Callable[..., Any]]] = {
    name: _guarded(fn) for name, fn in EXTENSIONS["strings"].items() if "." not in name
}

# Functions the Rust evaluator implements natively (CEL spec standard definitions).
_NATIVE_FUNCTIONS: Final = frozenset(
    {
        "size", "contains", "startsWith", "endsWith", "matches",
        "int", "uint", "double", "string", "bytes", "timestamp", "duration", "dyn", "type",
        "getFullYear", "getMonth", "getDayOfYear", "getDayOfMonth", "getDate", "getDayOfWeek",
        "getHours", "getMinutes", "getSeconds", "getMilliseconds",
    }
)  # fmt: skip
_ALLOWED_FUNCTIONS: Final = _NATIVE_FUNCTIONS | frozenset(EXTENSION_FUNCTIONS)

# Type names are identifiers in CEL (`type(x) == string`); the analyser reports them as variables.
_TYPE_NAMES: Final = frozenset(
    {"int", "uint", "double", "string", "bytes", "bool", "list", "map", "null_type", "type", "dyn"}
)

# Comprehension macros bind a loop variable; the analyser reports it as a variable, so the
# names bound this way are collected from the source to not flag them as unknown. A false
# positive only makes the static check more lenient, never the evaluation unsafe.
_BOUND_NAME = re.compile(
    r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([_A-Za-z][_A-Za-z0-9]*)\s*,"
)

# Uses of a map variable (`claims`, `attributes`) that read one named entry: `claims.name`
# (not a method call) or `claims["name"]`. Any other use means the expression may read all.
PRUNABLE_VARIABLES: Final = ("claims", "attributes")
_ROOTS: Final = {name: re.compile(rf"(?<![\w.]){name}\b") for name in PRUNABLE_VARIABLES}
_CLAIMS_FIELD = re.compile(r"\s*\.\s*([_A-Za-z][_A-Za-z0-9]*)\b(?!\s*\()")
_CLAIMS_INDEX = re.compile(r"""\s*\[\s*(?:"([^"\\\n]*)"|'([^'\\\n]*)')\s*\]""")

# cel reports parse errors as "... ERROR: <input>:1:15: Syntax error: ...\n| source\n| ..^".
_PARSE_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*(.*)")


class ExpressionError(Exception):
    """A compiled expression could not produce a usable value for this input.

    ``reason`` is a short code (``missing_field``, ``type_error``, ``wrong_result_type``, ...);
    the message never contains claim values or other input data.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ExpressionCompileError(Exception):
    """An expression in the configuration does not compile or uses unknown names."""

    def __init__(self, location: str, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location
        self.message = message


class Activation:
    """The variables of one evaluation round, converted to CEL values once.

    Invariant: built from plain Python values; a map variable named in ``keys`` (and
    ``claims`` when ``claim_keys`` is given) is pruned to those entries, the ones any
    expression evaluated against it can read, so the conversion cost is paid only for values
    that matter. With ``extensions=False`` the string extension functions are not registered
    (registering them costs more than converting a claim); pass it only when no expression
    evaluated against this activation calls one (``CompiledExpression.uses_extensions``).
    """

    __slots__ = ("context",)

    def __init__(
        self,
        variables: Mapping[str, Any],
        *,
        claim_keys: frozenset[str] | None = None,
        keys: Mapping[str, frozenset[str] | None] | None = None,
        extensions: bool = True,
    ) -> None:
        limits = dict(keys or {})
        if claim_keys is not None:
            limits["claims"] = claim_keys
        context = cel.Context(functions=dict(EXTENSION_FUNCTIONS)) if extensions else cel.Context()
        try:
            for name, value in variables.items():
                limit = limits.get(name)
                if limit is not None and isinstance(value, Mapping):
                    value = _prune(value, limit)
                context.add_variable(name, value)
        except (ValueError, TypeError, OverflowError) as exc:
            # A value CEL cannot represent (e.g. a Python set): never echo it.
            raise ExpressionError("unsupported_value") from exc
        self.context = context


def _prune(claims: Mapping[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    return {k: claims[k] for k in keys if k in claims}


@dataclass(frozen=True)
class CompiledExpression:
    """A CEL program compiled and statically checked at configuration load.

    Invariant: ``source`` parsed, every variable it references is in ``variables`` (or bound
    by a comprehension), and every function it calls is known to the evaluator.
    ``claim_keys`` / ``attribute_keys`` are the claims / attributes it can read, or ``None``
    when it may read any of them; ``uses`` are the context variables it references.
    """

    source: str
    location: str
    expect: type | None
    variables: frozenset[str]
    claim_keys: frozenset[str] | None
    attribute_keys: frozenset[str] | None
    uses: frozenset[str]
    uses_extensions: bool
    _program: Any = field(repr=False, compare=False)
    # Set when the source has the shape sts.trust.native evaluates exactly without CEL.
    native: NativeForm | None = field(default=None, repr=False, compare=False)

    def evaluate_native(self, values: Mapping[str, Any]) -> Any:
        """The result from plain Python ``values``, or :data:`NOT_NATIVE` when only the CEL
        program can answer (then call :meth:`evaluate`). Never raises for input data."""
        if self.native is None:
            return NOT_NATIVE
        result = self.native(values)
        if result is NOT_NATIVE or (self.expect is not None and not _is_type(result, self.expect)):
            return NOT_NATIVE
        return result

    def evaluate(self, activation: Mapping[str, Any] | Activation) -> Any:
        """Run the program; raise :class:`ExpressionError` when it cannot produce a value of
        the expected type. A plain mapping is converted on every call (tests, one-offs); an
        :class:`Activation` is converted once and shared by many expressions."""
        if isinstance(activation, Activation):
            context: Any = activation.context
        else:
            variables = {k: v for k, v in activation.items() if k in self.variables}
            for name, limit in self.keys_read().items():
                if limit is not None and isinstance(variables.get(name), Mapping):
                    variables[name] = _prune(variables[name], limit)
            if self.uses_extensions:
                context = Activation(variables).context
            else:
                context = variables
        try:
            result = self._program.execute(context)
        except KeyError as exc:
            raise ExpressionError("missing_field") from exc
        except IndexError as exc:
            raise ExpressionError("index_out_of_range") from exc
        except ZeroDivisionError as exc:
            raise ExpressionError("division_by_zero") from exc
        except TypeError as exc:
            raise ExpressionError("type_error") from exc
        except RuntimeError as exc:
            # Unknown names are rejected at compile time; what is left is a known function
            # called with argument types it has no overload for, or a failing conversion.
            reason = "no_such_overload" if "Undefined" in str(exc) else "function_error"
            raise ExpressionError(reason) from exc
        except Exception as exc:  # noqa: BLE001 - extension callbacks may raise anything
            raise ExpressionError("evaluation_error") from exc
        if self.expect is not None and not _is_type(result, self.expect):
            raise ExpressionError("wrong_result_type")
        return result

    def keys_read(self) -> dict[str, frozenset[str] | None]:
        """Entries read per map variable (``None``: possibly all of them)."""
        return {"claims": self.claim_keys, "attributes": self.attribute_keys}


def _is_type(value: Any, expect: type) -> bool:
    if expect is bool:
        return isinstance(value, bool)
    if expect is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expect is float:
        return isinstance(value, float) and math.isfinite(value)
    return isinstance(value, expect)


def compile_expression(
    src: str,
    *,
    location: str,
    expect: type | None = None,
    variables: Collection[str] = MAPPING_VARIABLES,
) -> CompiledExpression:
    """Compile ``src`` and check it statically; raise :class:`ExpressionCompileError`.

    ``expect`` is the Python type the result must have (``bool`` for rules and conditions,
    ``str`` for the identity mapping, ``None`` for attribute mappings, whose values are
    checked by the caller).
    """
    if not isinstance(src, str) or not src.strip():
        raise ExpressionCompileError(location, "expression must be a non-empty string")
    try:
        program = cel.compile(src)
    except ValueError as exc:
        raise ExpressionCompileError(location, _parse_error_message(str(exc))) from None
    allowed_vars = frozenset(variables)
    refs = program.references()
    bound = frozenset(_BOUND_NAME.findall(src))
    unknown_vars = sorted(set(refs["variables"]) - allowed_vars - bound - _TYPE_NAMES)
    if unknown_vars:
        raise ExpressionCompileError(
            location,
            f"unknown variable {unknown_vars[0]!r}; available here: "
            + ", ".join(sorted(allowed_vars)),
        )
    called = {f for f in refs["functions"] if not _is_operator(f)}
    unknown_fns = sorted(called - _ALLOWED_FUNCTIONS)
    if unknown_fns:
        raise ExpressionCompileError(location, f"unknown function {unknown_fns[0]!r}")
    read = {
        name: fields_read(src, name) if name in refs["variables"] else frozenset()
        for name in PRUNABLE_VARIABLES
    }
    return CompiledExpression(
        source=src,
        location=location,
        expect=expect,
        variables=allowed_vars,
        claim_keys=read["claims"],
        attribute_keys=read["attributes"],
        uses=allowed_vars & frozenset(refs["variables"]),
        uses_extensions=bool(called & frozenset(EXTENSION_FUNCTIONS)),
        _program=program,
        native=native_form(src, allowed_vars),
    )


def _is_operator(name: str) -> bool:
    # Operator overloads are reported as `_==_`, `!_`, `-_`, `@in`, `@not_strictly_false`.
    return not name[:1].isalpha()


def _parse_error_message(raw: str) -> str:
    # Keep "line:column: what", drop the echo of the source the library appends.
    m = _PARSE_POSITION.search(raw)
    if m is None:
        return "syntax error"
    line, column, what = m.groups()
    return f"syntax error at expression line {line}, column {column}: {what.strip()}"


def fields_read(src: str, root: str) -> frozenset[str] | None:
    """The entries of the map variable ``root`` that ``src`` can read; ``None``: any.

    Sound by construction: only ``root.name`` and ``root["name"]`` are understood; any other
    use of the variable (iteration, a computed index, passing the map to a function) yields
    ``None``. Extra names (e.g. from text inside a string literal) only make the set larger.
    """
    keys: set[str] = set()
    for m in _ROOTS[root].finditer(src):
        rest = src[m.end() :]
        f = _CLAIMS_FIELD.match(rest)
        if f is not None:
            keys.add(f.group(1))
            continue
        i = _CLAIMS_INDEX.match(rest)
        if i is not None:
            keys.add(i.group(1) if i.group(1) is not None else i.group(2))
            continue
        return None
    return frozenset(keys)


def claim_keys_read(src: str) -> frozenset[str] | None:
    """The claims ``src`` can read, or ``None`` if it may read any claim."""
    return fields_read(src, "claims")


def union_keys(expressions: Iterable[CompiledExpression], root: str) -> frozenset[str] | None:
    """The entries of ``root`` any of ``expressions`` can read (``None``: all of them)."""
    keys: set[str] = set()
    for expr in expressions:
        read = expr.keys_read()[root]
        if read is None:
            return None
        keys |= read
    return frozenset(keys)


def union_claim_keys(expressions: Iterable[CompiledExpression]) -> frozenset[str] | None:
    """The claims any of ``expressions`` can read (``None``: all of them)."""
    return union_keys(expressions, "claims")


def union_keys_read(
    expressions: Iterable[CompiledExpression],
) -> dict[str, frozenset[str] | None]:
    """:func:`union_keys` for every map variable, ready for ``Activation(keys=...)``."""
    exprs = list(expressions)
    return {root: union_keys(exprs, root) for root in PRUNABLE_VARIABLES}
