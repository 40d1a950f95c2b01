"""Claim validation and mapping: verified claims -> a workload identity (pure).

This is step 5 of the exchange pipeline. It follows the Kubernetes structured authentication
model (``claimValidationRules`` then ``claimMappings``) and GCP workload identity federation's
attribute mapping (``google.subject`` / ``attribute.NAME``): rules must hold, then CEL
expressions produce the identity and named attributes.

Order, per issuer:

1. the preset's rules (always enforced), then the configured ``claim_validation_rules`` in
   file order: an ``enforce`` rule that is false or fails denies; an ``audit`` rule only adds a
   note;
2. the identity: ``claim_mappings.identity`` if set, else the preset's, else
   ``"{issuer_name}:{sub}"``; it must be a non-empty string of at most 255 characters without
   control or format characters;
3. the attributes: the preset's, then ``claim_mappings.attributes`` (same name overrides). An
   attribute whose expression reads a claim the token does not have is left out (write
   ``has(claims.x) ? claims.x : ""`` to get a value instead); any other failure denies. Values
   must be JSON scalars or lists of strings.

RFC 8693 §2.2.2: a subject token that is unacceptable under policy is answered with
``invalid_request``; :class:`MappingDenied` carries the private reason for the audit record.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from sts.subject.model import VerifiedSubject, WorkloadIdentity
from sts.trust.cel import (
    MAPPING_VARIABLES,
    Activation,
    CompiledExpression,
    ExpressionError,
    compile_expression,
    union_claim_keys,
)
from sts.trust.native import NOT_NATIVE
from sts.trust.presets import Preset, PresetError, get_preset

if TYPE_CHECKING:
    from sts.config.models import IssuerConfig

MAX_IDENTITY_LENGTH: Final = 255
MAX_ATTRIBUTE_LIST: Final = 256
# Control (Cc), format (Cf: bidi overrides, zero-width), separators that break lines, and
# surrogates: none may appear in an identity that is matched, logged and put in tokens.
_FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


class _NotNative(Exception):
    """A native form declined: evaluate the whole mapping with CEL instead."""


class MappingDenied(Exception):
    """The claims do not yield an acceptable workload identity.

    ``reason`` is a stable code; ``rule_location`` names the rule or mapping (e.g.
    ``issuers[0].claim_validation_rules[1]``); ``message`` is the configured rule message or a
    fixed text. None of them holds claim values. ``audit_notes`` are the audit-mode findings
    gathered before the denial.
    """

    def __init__(
        self,
        reason: str,
        rule_location: str,
        message: str,
        audit_notes: tuple[str, ...] = (),
    ) -> None:
        super().__init__(f"{reason} at {rule_location}: {message}")
        self.reason = reason
        self.rule_location = rule_location
        self.message = message
        self.audit_notes = audit_notes


@dataclass(frozen=True)
class MappingResult:
    """The mapped identity and the audit-mode findings on the way."""

    identity: WorkloadIdentity
    audit_notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Rule:
    expression: CompiledExpression
    message: str
    enforce: bool


def identity_problem(value: object) -> str | None:
    """Why ``value`` is not an acceptable identity, or ``None``."""
    if not isinstance(value, str):
        return "identity is not a string"
    if not value:
        return "identity is empty"
    if len(value) > MAX_IDENTITY_LENGTH:
        return f"identity is longer than {MAX_IDENTITY_LENGTH} characters"
    # str.isprintable() is False for every forbidden category (and a few harmless ones, such
    # as non-ASCII spaces), so the per-character scan runs only for the rare identity that
    # fails it: the common case costs one C call instead of a category lookup per character.
    if not value.isprintable() and any(unicodedata.category(c) in _FORBIDDEN_CATEGORIES for c in value):
        return "identity contains control or format characters"
    return None


def attribute_value_ok(value: object) -> bool:
    """JSON scalars (finite numbers) or a list of strings."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return len(value) <= MAX_ATTRIBUTE_LIST and all(isinstance(v, str) for v in value)
    return False


class CompiledIssuerMapping:
    """Everything needed to turn one issuer's verified claims into a workload identity.

    Invariant: built once from a validated issuer configuration; ``map_identity`` is pure and
    raises only :class:`MappingDenied`.
    """

    def __init__(
        self,
        *,
        issuer_name: str,
        location: str,
        preset: Preset | None,
        rules: tuple[_Rule, ...],
        identity: CompiledExpression | None,
        attributes: Mapping[str, CompiledExpression],
    ) -> None:
        self.issuer_name = issuer_name
        self.location = location
        self.preset = preset
        self._rules = rules
        self._identity = identity
        self._attributes = dict(attributes)
        expressions = [r.expression for r in rules] + list(self._attributes.values())
        if identity is not None:
            expressions.append(identity)
        self._has_cel = bool(expressions)
        self._extensions = any(e.uses_extensions for e in expressions)
        # Converted once per request: only the claims some expression can read.
        self.claim_keys = union_claim_keys(expressions)
        # Every expression has an exact native form (sts.trust.native) and reads known claims:
        # tokens whose read claims are all strings skip CEL altogether.
        self._native_keys = (
            self.claim_keys
            if self.claim_keys is not None and all(e.native is not None for e in expressions)
            else None
        )

    @classmethod
    def from_config(cls, issuer: IssuerConfig, *, location: str) -> CompiledIssuerMapping:
        """Compile an issuer's rules and mappings (``location``: e.g. ``issuers[0]``).

        Raises ``ExpressionCompileError`` for an expression that does not compile (the schema
        already refuses those, so this is a guard for configurations built in code).
        """
        rules = tuple(
            _Rule(
                expression=compile_expression(
                    rule.expression,
                    location=f"{location}.claim_validation_rules[{i}]",
                    expect=bool,
                    variables=MAPPING_VARIABLES,
                ),
                message=rule.message or f"claim validation rule {i} failed",
                enforce=rule.mode == "enforce",
            )
            for i, rule in enumerate(issuer.claim_validation_rules)
        )
        mappings = issuer.claim_mappings
        identity = None
        if mappings.identity is not None:
            identity = compile_expression(
                mappings.identity,
                location=f"{location}.claim_mappings.identity",
                expect=str,
                variables=MAPPING_VARIABLES,
            )
        attributes = {
            name: compile_expression(
                src,
                location=f"{location}.claim_mappings.attributes.{name}",
                expect=None,
                variables=MAPPING_VARIABLES,
            )
            for name, src in mappings.attributes.items()
        }
        return cls(
            issuer_name=issuer.name,
            location=location,
            preset=get_preset(issuer.preset) if issuer.preset else None,
            rules=rules,
            identity=identity,
            attributes=attributes,
        )

    def map_identity(self, subject: VerifiedSubject) -> MappingResult:
        """Validate ``subject.claims`` and map them to a :class:`WorkloadIdentity`."""
        claims = subject.claims
        keys = self._native_keys
        if keys is not None and all(type(claims.get(k)) is str for k in keys):
            # Exact: with every read claim a string, CEL's conversion cannot fail and each
            # native form answers as CEL would. If one still declines (a result of another
            # type than expected), start over with CEL; nothing was decided yet.
            try:
                return self._map(subject, None)
            except _NotNative:
                pass
        activation: Activation | None = None
        if self._has_cel:
            try:
                activation = Activation({"claims": claims}, claim_keys=self.claim_keys, extensions=self._extensions)
            except ExpressionError as exc:
                raise MappingDenied(
                    "claims_unsupported",
                    self.location,
                    f"claims cannot be evaluated ({exc.reason})",
                ) from None
        return self._map(subject, activation)

    def _map(self, subject: VerifiedSubject, activation: Activation | None) -> MappingResult:
        """Steps 1-3, with expressions evaluated against ``activation`` (CEL) or, when it is
        ``None``, natively (raising ``_NotNative`` where the native form declines)."""
        claims = subject.claims
        notes: list[str] = []

        def evaluate(expr: CompiledExpression) -> Any:
            if activation is not None:
                return expr.evaluate(activation)
            result = expr.evaluate_native({"claims": claims})
            if result is NOT_NATIVE:
                raise _NotNative
            return result

        # 1. rules: preset first (always enforced), then configured ones in file order.
        if self.preset is not None:
            for prule in self.preset.rules:
                if not prule.check(claims):
                    raise MappingDenied(
                        "claim_validation_failed",
                        f"{self.location}.preset[{self.preset.name}].{prule.name}",
                        prule.message,
                        tuple(notes),
                    )
        for rule in self._rules:
            loc = rule.expression.location
            try:
                ok = evaluate(rule.expression)
                error = None
            except ExpressionError as exc:
                ok, error = False, exc.reason
            if ok:
                continue
            if not rule.enforce:
                what = f"failed: {rule.message}" if error is None else f"errored ({error})"
                notes.append(f"audit rule {loc} {what}")
                continue
            if error is None:
                raise MappingDenied("claim_validation_failed", loc, rule.message, tuple(notes))
            raise MappingDenied(
                "claim_validation_error",
                loc,
                f"{rule.message} (evaluation failed: {error})",
                tuple(notes),
            )

        # 2. identity.
        identity_loc = f"{self.location}.claim_mappings.identity"
        if self._identity is not None:
            try:
                identity: object = evaluate(self._identity)
            except ExpressionError as exc:
                raise MappingDenied(
                    "identity_mapping_error",
                    identity_loc,
                    f"identity mapping failed ({exc.reason})",
                    tuple(notes),
                ) from None
        elif self.preset is not None:
            identity_loc = f"{self.location}.preset[{self.preset.name}].identity"
            try:
                identity = self.preset.identity(claims)
            except (KeyError, TypeError, PresetError):
                raise MappingDenied(
                    "identity_mapping_error",
                    identity_loc,
                    "preset identity mapping failed",
                    tuple(notes),
                ) from None
        else:
            identity_loc = f"{self.location}.sub"
            identity = f"{self.issuer_name}:{subject.subject}"
        problem = identity_problem(identity)
        if problem is not None:
            raise MappingDenied("identity_invalid", identity_loc, problem, tuple(notes))
        assert isinstance(identity, str)

        # 3. attributes: preset, then configured (overriding by name).
        attributes: dict[str, Any] = {}
        if self.preset is not None:
            attributes.update(self.preset.attributes(claims))
        for name, expr in self._attributes.items():
            try:
                attributes[name] = evaluate(expr)
            except ExpressionError as exc:
                if exc.reason == "missing_field":
                    # An optional claim this token does not carry: no attribute.
                    attributes.pop(name, None)
                    continue
                raise MappingDenied(
                    "attribute_mapping_error",
                    expr.location,
                    f"attribute mapping failed ({exc.reason})",
                    tuple(notes),
                ) from None
        for name, value in attributes.items():
            if not attribute_value_ok(value):
                raise MappingDenied(
                    "attribute_invalid",
                    f"{self.location}.claim_mappings.attributes.{name}",
                    "attribute values must be JSON scalars or lists of strings",
                    tuple(notes),
                )

        return MappingResult(
            identity=WorkloadIdentity(
                identity=identity, issuer_name=self.issuer_name, attributes=attributes
            ),
            audit_notes=notes,
        )
