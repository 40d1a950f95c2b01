"""Rich Authorization Requests at the token endpoint (RFC 9396), decided per target (pure).

RFC 9396 §2: ``authorization_details`` is a JSON array of objects, each with a ``type``
string that decides what the other fields mean. §6: the parameter may be sent in a token
request. §5: "The AS MUST refuse to process any unknown authorization details type or
authorization details not conforming to the respective type definition", and it answers
``invalid_authorization_details`` when an object has an unknown type, unknown fields, fields of
the wrong type, fields with invalid values, or misses required fields. §7: the token response
carries the details as granted, which may differ from those requested. §9.1: a JWT access
token carries them in its ``authorization_details`` claim.

Here every target of a grant declares the types it accepts (``authorization_details`` in the
configuration). A type has a JSON Schema (the shape: field types, required fields; compiled
once at load) and one rule per field (the values this grant allows: literals, anchored
patterns, or a CEL condition over the value, the whole detail, the identity and the request).
A field without a rule is unknown and refused, whatever the schema says: deny by default. With
``narrow: true`` array elements the rule does not allow are dropped instead of refused, so the
granted details are what was asked *and* allowed, never more; a field left empty by narrowing
refuses the request rather than grant an empty list that a careless resource server might
read as "no restriction".

The public decision never echoes a requested value: :class:`DetailsRefused` carries a reason
code and a detail (object index, type, field) for the audit record only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from sts.errors import InvalidAuthorizationDetails, InvalidRequest
from sts.jsonparam import JsonParameterError, canonical_json, decode_json_parameter
from sts.trust.cel import CONDITION_VARIABLES, CompiledExpression, ExpressionError, compile_expression

if TYPE_CHECKING:
    from sts.config.rar import AuthorizationDetailTypeConfig

#: Variables of an authorization-detail value condition: the value under test (one array
#: element, or the whole field when it is not an array), the whole requested detail object,
#: the subject's identity, issuer, attributes and claims (as grant conditions see them), and
#: the request: the target the token is for and the scopes granted with it.
DETAIL_VARIABLES: Final = CONDITION_VARIABLES | frozenset({"value", "detail", "target", "scopes"})

#: RFC 9396 §5 / §2: every object names its type in ``type``; the broker manages it itself.
TYPE_FIELD: Final = "type"

# Bounds on what a request may ask for (the form body is capped at 64 KiB as a whole).
MAX_DETAILS: Final = 16
MAX_DETAILS_CHARS: Final = 8 * 1024


def check_schema(schema: Mapping[str, Any]) -> str | None:
    """A problem with ``schema`` as a JSON Schema (its own meta-schema), or None. The message
    names the failing keyword's location, never a value."""
    try:
        cls = validator_for(schema, default=Draft202012Validator)
        cls.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return f"not a valid JSON Schema at {where} ({exc.validator})"
    return None


def compile_schema(schema: Mapping[str, Any]) -> Any:
    """A validator for ``schema`` (its own ``$schema`` dialect, else 2020-12), with the formats
    jsonschema checks without extras (``ipv4``, ``ipv6``, ``email``, ``date``, ``uuid``,
    ``regex``) enforced: they are only annotations otherwise."""
    cls = validator_for(schema, default=Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def schema_problem(validator: Any, value: Any) -> str | None:
    """Where ``value`` first fails ``validator`` (a JSON path and the failing keyword), or
    None. No value is quoted: the text goes to the audit record."""
    error = next(iter(validator.iter_errors(value)), None)
    if error is None:
        return None
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"${path}: {error.validator}"


@dataclass(frozen=True)
class ValueMatcher:
    """Literals (compared as canonical JSON) and anchored patterns (strings only)."""

    literals: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def compile(cls, literals: Iterable[Any], patterns: Iterable[str]) -> ValueMatcher:
        return cls(frozenset(canonical_json(v) for v in literals), tuple(re.compile(p) for p in patterns))

    def matches(self, value: Any, canonical: str) -> bool:
        if canonical in self.literals:
            return True
        return type(value) is str and any(p.fullmatch(value) is not None for p in self.patterns)

    def __bool__(self) -> bool:
        return bool(self.literals or self.patterns)


@dataclass(frozen=True)
class FieldRule:
    """What one field of one type may hold for one grant's target. Invariant: ``allow`` or
    ``condition`` admits something (the configuration refuses an empty rule)."""

    name: str
    allow: ValueMatcher
    condition: CompiledExpression | None

    def admits(self, value: Any, variables: dict[str, Any], notes: list[str]) -> bool:
        if self.allow.matches(value, canonical_json(value)):
            return True
        if self.condition is None:
            return False
        variables["value"] = value
        try:
            return bool(self.condition.evaluate(variables))
        except ExpressionError as exc:
            notes.append(f"authorization_details condition {self.condition.location} failed ({exc.reason})")
            return False


@dataclass(frozen=True)
class DetailType:
    """One accepted ``type``: its schema (shape) and field rules (values)."""

    name: str
    validator: Any
    fields: Mapping[str, FieldRule]
    narrow: bool


@dataclass(frozen=True)
class DetailsGranted:
    """The details to put in the token and the response: a subset of what was asked."""

    details: tuple[dict[str, Any], ...]
    narrowed: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DetailsRefused:
    """RFC 9396 §5 ``invalid_authorization_details``. ``reason`` and ``detail`` are for the
    audit record only."""

    reason: str
    detail: str
    notes: tuple[str, ...] = ()


class DetailTypes:
    """The authorization-detail types one target accepts, compiled. Invariant: immutable;
    :meth:`grant` is a pure function of its arguments."""

    def __init__(self, types: Sequence[DetailType]) -> None:
        self.types: Mapping[str, DetailType] = {t.name: t for t in types}
        self.uses_conditions = any(r.condition is not None for t in types for r in t.fields.values())

    @classmethod
    def compile(cls, configs: Sequence[AuthorizationDetailTypeConfig], location: str) -> DetailTypes:
        types = []
        for i, cfg in enumerate(configs):
            loc = f"{location}.authorization_details[{i}]"
            fields = {
                name: FieldRule(
                    name=name,
                    allow=ValueMatcher.compile(rule.values, rule.patterns),
                    condition=compile_expression(rule.condition, location=f"{loc}.fields.{name}.condition", expect=bool,
                                                 variables=DETAIL_VARIABLES) if rule.condition is not None else None,
                )
                for name, rule in cfg.fields.items()
            }
            types.append(DetailType(cfg.type, compile_schema(cfg.schema_), fields, cfg.narrow))
        return cls(types)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.types)

    def grant(
        self,
        requested: Sequence[Mapping[str, Any]],
        *,
        identity: str,
        issuer: str,
        attributes: Mapping[str, Any],
        claims: Mapping[str, Any],
        target: str,
        scopes: Sequence[str],
    ) -> DetailsGranted | DetailsRefused:
        """Decide on the requested details for a token for ``target`` with ``scopes``."""
        notes: list[str] = []
        variables: dict[str, Any] | None = None
        granted: list[dict[str, Any]] = []
        narrowed = False
        for index, obj in enumerate(requested):
            where = f"[{index}]"
            dtype = self.types.get(obj.get(TYPE_FIELD)) if isinstance(obj.get(TYPE_FIELD), str) else None
            if dtype is None:
                return DetailsRefused("unknown_type", where, tuple(notes))
            where = f"[{index}] type {dtype.name!r}"
            problem = schema_problem(dtype.validator, obj)
            if problem is not None:
                return DetailsRefused("schema_violation", f"{where} {problem}", tuple(notes))
            unknown = sorted(k for k in obj if k != TYPE_FIELD and k not in dtype.fields)
            if unknown:
                return DetailsRefused("unknown_field", f"{where} field {unknown[0][:64]!r}", tuple(notes))
            out: dict[str, Any] = {TYPE_FIELD: dtype.name}
            for name, value in obj.items():
                if name == TYPE_FIELD:
                    continue
                rule = dtype.fields[name]
                if rule.condition is not None and variables is None:
                    variables = {
                        "identity": identity, "issuer": issuer, "attributes": dict(attributes), "claims": dict(claims),
                        "target": target, "scopes": list(scopes),
                    }
                if variables is not None:
                    variables["detail"] = obj
                if isinstance(value, list):
                    kept = [v for v in value if rule.admits(v, variables or {}, notes)]
                    if len(kept) < len(value):
                        if not dtype.narrow:
                            return DetailsRefused("value_not_allowed", f"{where} field {name!r}", tuple(notes))
                        if not kept:
                            return DetailsRefused("nothing_left", f"{where} field {name!r}", tuple(notes))
                        narrowed = True
                    out[name] = kept
                elif rule.admits(value, variables or {}, notes):
                    out[name] = value
                else:
                    return DetailsRefused("value_not_allowed", f"{where} field {name!r}", tuple(notes))
            granted.append(out)
        return DetailsGranted(tuple(granted), narrowed, tuple(notes))


def requested_types(requested: Sequence[Mapping[str, Any]]) -> list[str]:
    """The requested ``type`` values, for the audit record (strings only, each cut to 64)."""
    return [t[:64] if isinstance(t, str) else "?" for t in (o.get(TYPE_FIELD) for o in requested)]


def parse_authorization_details(raw: str) -> tuple[dict[str, Any], ...]:
    """The ``authorization_details`` form parameter (RFC 9396 §6) as a tuple of objects.

    Not JSON, too large, too deep or not a non-empty array of at most ``MAX_DETAILS`` items is a
    malformed request (RFC 6749 §5.2 ``invalid_request``); an item that is not an object with a
    ``type`` string is an authorization detail missing a required field (RFC 9396 §5
    ``invalid_authorization_details``)."""
    try:
        value = decode_json_parameter(raw, max_chars=MAX_DETAILS_CHARS)
    except JsonParameterError as exc:
        text = ("The authorization_details parameter is too large." if exc.reason == "too_large"
                else "The authorization_details parameter is not valid JSON.")
        raise InvalidRequest(text, reason=f"authorization_details_{exc.reason}") from None
    if type(value) is not list or not value:
        raise InvalidRequest("The authorization_details parameter must be a non-empty JSON array.",
                             reason="authorization_details_not_array")
    if len(value) > MAX_DETAILS:
        raise InvalidRequest("The authorization_details parameter is too large.", reason="authorization_details_too_many",
                             detail=f"{len(value)} objects, at most {MAX_DETAILS}")
    for index, obj in enumerate(value):
        if type(obj) is not dict or type(obj.get(TYPE_FIELD)) is not str or not obj[TYPE_FIELD]:
            raise InvalidAuthorizationDetails(reason="authorization_details_no_type", detail=f"[{index}]")
    return tuple(value)
