"""SPIFFE ID -> workload identity and attributes (pure); step 5 of the pipeline for SVIDs.

SPIFFE-ID.md §2.2 leaves the meaning of a path to the operator ("The meaning behind the path
is left open-ended"), so the mapping is configured per trust domain, in this order:

1. **Path templates** (optional, first match wins): ``/ns/{namespace}/sa/{service_account}``
   matches an ID path segment by segment; each ``{name}`` captures one whole segment. The
   captures become attributes and may build the identity (``k8s:{namespace}/{service_account}``).
   When templates are configured and none matches, the SVID is refused.
2. **Claim validation rules** (CEL, ``enforce`` or ``audit``) over ``claims`` (the JWT-SVID's
   claims, or the X.509-SVID's ``sub``/``iss``/``nbf``/``exp``) and ``spiffe``.
3. **The identity**: ``claim_mappings.identity`` (CEL) if set, else the matched template's
   identity, else the SPIFFE ID itself. It must pass the same checks as any identity (at most
   255 characters, no control or format characters).
4. **Attributes**: the template captures, then ``claim_mappings.attributes`` (CEL; the same
   name overrides; an attribute reading an absent claim is left out).

SPIFFE-ID §3.2 advises caution with SVID contents beyond the ID, "particularly if the SVID being
validated belongs to a different trust domain": the rules and mappings are per trust domain,
so one trust domain's claims can never shape another's identities.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sts.config.spiffe import (
    SPIFFE_MAPPING_VARIABLES,
    TrustDomainConfig,
    template_names,
)
from sts.spiffe.id import SpiffeID
from sts.subject.model import VerifiedSubject, WorkloadIdentity
from sts.trust.cel import (
    Activation,
    CompiledExpression,
    ExpressionError,
    compile_expression,
    union_claim_keys,
)
from sts.trust.mapping import (
    MappingDenied,
    MappingResult,
    attribute_value_ok,
    identity_problem,
)

__all__ = ["CompiledPathTemplate", "SpiffeMapping", "VerifiedSvid"]

_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]{0,63})\}")


@dataclass(frozen=True)
class VerifiedSvid(VerifiedSubject):
    """A verified JWT-SVID or X.509-SVID. Invariant: ``subject == str(spiffe_id)``,
    ``issuer_name`` is the configured trust domain ``spiffe_id.trust_domain``, and ``svid`` is
    ``"jwt"`` or ``"x509"``."""

    spiffe_id: SpiffeID
    svid: str


@dataclass(frozen=True)
class CompiledPathTemplate:
    """A compiled path template; ``match`` returns the captures or ``None``."""

    template: str
    pattern: re.Pattern[str]
    names: tuple[str, ...]
    identity: str | None

    @classmethod
    def compile(cls, template: str, identity: str | None) -> CompiledPathTemplate:
        parts = []
        for segment in template.split("/")[1:]:
            m = _PLACEHOLDER.fullmatch(segment)
            parts.append("([A-Za-z0-9._-]+)" if m else re.escape(segment))
        return cls(template, re.compile("/" + "/".join(parts)), template_names(template), identity)

    def match(self, path: str) -> dict[str, str] | None:
        m = self.pattern.fullmatch(path)
        return None if m is None else dict(zip(self.names, m.groups(), strict=True))

    def format_identity(self, spiffe_id: SpiffeID, params: Mapping[str, str]) -> str | None:
        if self.identity is None:
            return None
        values = {"trust_domain": spiffe_id.trust_domain, "spiffe_id": str(spiffe_id), "path": spiffe_id.path, **params}
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.identity)


@dataclass(frozen=True)
class _Rule:
    expression: CompiledExpression
    message: str
    enforce: bool


class SpiffeMapping:
    """One trust domain's mapping. Invariant: built from a validated ``TrustDomainConfig``;
    ``map_identity`` is pure and raises only :class:`MappingDenied`."""

    def __init__(self, cfg: TrustDomainConfig, *, location: str) -> None:
        self.trust_domain = cfg.name
        self.location = location
        self._templates = tuple(CompiledPathTemplate.compile(t.template, t.identity) for t in cfg.path_templates)

        def compile_(src: str, where: str, expect: type | None) -> CompiledExpression:
            return compile_expression(src, location=f"{location}.{where}", expect=expect, variables=SPIFFE_MAPPING_VARIABLES)

        self._rules = tuple(
            _Rule(compile_(r.expression, f"claim_validation_rules[{i}]", bool),
                  r.message or f"claim validation rule {i} failed", r.mode == "enforce")
            for i, r in enumerate(cfg.claim_validation_rules)
        )
        mappings = cfg.claim_mappings
        self._identity = compile_(mappings.identity, "claim_mappings.identity", str) if mappings.identity else None
        self._attributes = {
            name: compile_(src, f"claim_mappings.attributes.{name}", None) for name, src in mappings.attributes.items()
        }
        expressions = [r.expression for r in self._rules] + list(self._attributes.values())
        if self._identity is not None:
            expressions.append(self._identity)
        self._has_cel = bool(expressions)
        self._claim_keys = union_claim_keys(expressions)

    def map_identity(self, subject: VerifiedSvid) -> MappingResult:
        spiffe_id = subject.spiffe_id
        notes: list[str] = []

        # 1. path templates
        params: dict[str, str] = {}
        template: CompiledPathTemplate | None = None
        if self._templates:
            for candidate in self._templates:
                found = candidate.match(spiffe_id.path)
                if found is not None:
                    template, params = candidate, found
                    break
            if template is None:
                raise MappingDenied("path_template_mismatch", f"{self.location}.path_templates",
                                    "the SPIFFE ID path matches no path template")

        activation: Activation | None = None
        if self._has_cel:
            spiffe_var: dict[str, Any] = {
                "id": str(spiffe_id),
                "trust_domain": spiffe_id.trust_domain,
                "path": spiffe_id.path,
                "segments": list(spiffe_id.segments),
                "svid": subject.svid,
                "params": params,
            }
            try:
                activation = Activation({"claims": subject.claims, "spiffe": spiffe_var}, claim_keys=self._claim_keys)
            except ExpressionError as exc:
                raise MappingDenied("claims_unsupported", self.location, f"claims cannot be evaluated ({exc.reason})") from None

        # 2. rules
        for rule in self._rules:
            assert activation is not None
            loc = rule.expression.location
            try:
                ok, error = rule.expression.evaluate(activation), None
            except ExpressionError as exc:
                ok, error = False, exc.reason
            if ok:
                continue
            if not rule.enforce:
                notes.append(f"audit rule {loc} " + (f"failed: {rule.message}" if error is None else f"errored ({error})"))
                continue
            if error is None:
                raise MappingDenied("claim_validation_failed", loc, rule.message, tuple(notes))
            raise MappingDenied("claim_validation_error", loc, f"{rule.message} (evaluation failed: {error})", tuple(notes))

        # 3. identity
        identity: object
        if self._identity is not None:
            assert activation is not None
            identity_loc = self._identity.location
            try:
                identity = self._identity.evaluate(activation)
            except ExpressionError as exc:
                raise MappingDenied("identity_mapping_error", identity_loc,
                                    f"identity mapping failed ({exc.reason})", tuple(notes)) from None
        elif template is not None and template.identity is not None:
            identity_loc = f"{self.location}.path_templates"
            identity = template.format_identity(spiffe_id, params)
        else:
            identity_loc = f"{self.location}.spiffe_id"
            identity = str(spiffe_id)
        problem = identity_problem(identity)
        if problem is not None:
            raise MappingDenied("identity_invalid", identity_loc, problem, tuple(notes))
        assert isinstance(identity, str)

        # 4. attributes
        attributes: dict[str, Any] = dict(params)
        for name, expr in self._attributes.items():
            assert activation is not None
            try:
                attributes[name] = expr.evaluate(activation)
            except ExpressionError as exc:
                if exc.reason == "missing_field":
                    attributes.pop(name, None)
                    continue
                raise MappingDenied("attribute_mapping_error", expr.location,
                                    f"attribute mapping failed ({exc.reason})", tuple(notes)) from None
        for name, value in attributes.items():
            if not attribute_value_ok(value):
                raise MappingDenied("attribute_invalid", f"{self.location}.claim_mappings.attributes.{name}",
                                    "attribute values must be JSON scalars or lists of strings", tuple(notes))
            if isinstance(value, tuple):
                attributes[name] = list(value)

        return MappingResult(
            identity=WorkloadIdentity(identity=identity, issuer_name=self.trust_domain, attributes=attributes),
            audit_notes=notes,
        )
