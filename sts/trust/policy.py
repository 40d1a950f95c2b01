"""The grant policy: which token, if any, a workload identity may obtain (pure).

This is step 6 of the exchange pipeline. It implements the target and scope rules of
RFC 8693 §2.1 (``audience``, ``resource``, ``scope``), RFC 8707 §2 (``invalid_target`` when a
resource is not allowed) and RFC 6749 §3.3 (``invalid_scope``). Denial is the default.

Decision, in order:

1. Candidates: ``enforce`` grants whose ``issuers`` filter admits the identity's issuer and whose
   matcher (literal, anchored pattern, CEL condition) matches. None -> ``invalid_request``
   (``no_grant``; RFC 8693 §2.2.2: a subject refused by policy is an invalid request).
2. The target: the distinct union of the requested ``audience`` and ``resource`` values. More
   than one -> ``invalid_target`` (``multiple_targets``). None -> the candidates'
   ``default_target`` if exactly one distinct default exists, else ``invalid_target``
   (``no_target``).
3. The first candidate in file order whose targets match the requested target and whose
   scopes admit the requested scopes wins. Within a grant an exact target beats a prefix, a
   longer prefix beats a shorter one. A target matched but the scopes refused everywhere ->
   ``invalid_scope``; no target matched -> ``invalid_target``. No ``scope`` requested -> the
   target's ``default_scopes``.
4. An actor (RFC 8693 ``actor_token``) must be matched by the winner's ``delegation.actors``,
   else ``invalid_request`` (``actor_not_allowed``).

A grant answers only the grant types it lists (``grant_types``, token exchange by default):
candidates that match but do not list the request's grant type refuse it
(``grant_type_not_allowed``). A target's ``ignore_scopes`` are dropped from the requested
scopes before step 3 (RFC 6749 §3.3: the server "MAY fully or partially ignore the scope
requested"); when nothing is left, the request is treated as one without ``scope`` and gets the
target's ``default_scopes``.

``audit`` grants are evaluated the same way, on their own, and only add notes.

Matching cost does not grow with the size of the file: grants are bucketed by their issuer
filter, literal identities are looked up in a dict, and only the patterns and conditions of
the buckets of the identity's issuer (plus grants without a filter) are evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sts.subject.model import WorkloadIdentity
from sts.trust.authz_details import DetailTypes
from sts.trust.cel import (
    CONDITION_VARIABLES,
    Activation,
    CompiledExpression,
    ExpressionError,
    compile_expression,
    union_keys_read,
)
from sts.trust.delegation import DEFAULT_MAX_DEPTH, NO_DELEGATION, GrantDelegation
from sts.trust.native import NOT_NATIVE

if TYPE_CHECKING:
    from sts.config.models import ApprovalConfig, BrokerConfig, GrantConfig, MatchConfig, TargetConfig


@dataclass(frozen=True)
class Allow:
    """Issue a token: for ``target`` (the exact requested string) with ``scopes``."""

    grant: str
    target: str
    scopes: tuple[str, ...]
    lifetime: int
    cap_to_subject_lifetime: bool
    algorithm: str
    audit_notes: tuple[str, ...]
    # none | dpop | mtls | required (sts.sender.constraint applies it)
    sender_constraint: str = "none"
    # a Token Status List `status` claim (sts.lifecycle.statuslist)
    status_list: bool = False
    # the target's just-in-time approval rule (sts.approvals), None when it needs none
    approval: ApprovalConfig | None = None
    # the RFC 9396 types the target accepts (sts.trust.authz_details); None: it accepts none
    authorization_details: DetailTypes | None = None
    # docs/providers: the token profile (sts.tokens.profiles), its `aud`, and the upstream
    # provider whose token answers instead of ours (sts.upstream)
    profile: str | None = None
    profile_audience: str | None = None
    upstream: str | None = None
    # the grant's delegation rules (sts.trust.delegation): chains, may_act, depth cap
    delegation: GrantDelegation | None = None
    # requested scopes the target ignores (``ignore_scopes``), for the audit record
    ignored_scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Deny:
    """Refuse. ``reason`` is a stable code for the audit record, never sent to the caller."""

    error: Literal["invalid_request", "invalid_target", "invalid_scope"]
    reason: str
    grant: str | None
    audit_notes: tuple[str, ...]


Decision = Allow | Deny


@dataclass(slots=True)
class Prepared:
    """The common start of ``decide`` and the explain trace (``CompiledPolicy.prepare``).
    ``notes`` is still appended to by the decision (actor checks); ``frozen`` is the notes as
    they stood after the audit-mode grants."""

    activation: _LazyActivation
    actor_activation: _LazyActivation | None
    notes: list[str]
    frozen: tuple[str, ...]
    matched: list[_Grant]
    candidates: list[_Grant]
    requested: list[_Requested]
    audit_outcomes: dict[int, str]


def resource_prefix_matches(prefix: str, value: str) -> bool:
    """Whether the requested resource ``value`` lies strictly under ``prefix``.

    The prefix is compared as a plain string (no normalisation), then the request is refused
    if what follows could make a server resolve it outside the prefix or to another resource:
    a ``..`` anywhere, a ``.`` segment, an encoded dot, slash or backslash (``%2e``, ``%2f``,
    ``%5c``, any case), a backslash, a query or fragment, whitespace or control characters.
    """
    if len(value) <= len(prefix) or not value.startswith(prefix):
        return False
    rest = value[len(prefix) :]
    if "?" in value or "#" in value or "\\" in rest or ".." in rest:
        return False
    lowered = rest.lower()
    if "%2e" in lowered or "%2f" in lowered or "%5c" in lowered:
        return False
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in rest):
        return False
    return all(segment != "." for segment in rest.split("/"))


@dataclass(frozen=True)
class _Requested:
    value: str
    as_audience: bool
    as_resource: bool


@dataclass(frozen=True)
class _Matcher:
    location: str
    literal: str | None
    pattern: re.Pattern[str] | None
    condition: CompiledExpression | None

    @classmethod
    def compile(cls, cfg: MatchConfig, location: str) -> _Matcher:
        if cfg.identity is not None:
            return cls(location, cfg.identity, None, None)
        if cfg.identity_pattern is not None:
            return cls(location, None, re.compile(cfg.identity_pattern), None)
        assert cfg.condition is not None
        expr = compile_expression(
            cfg.condition,
            location=f"{location}.condition",
            expect=bool,
            variables=CONDITION_VARIABLES,
        )
        return cls(location, None, None, expr)

    def matches(self, identity: str, activation: _LazyActivation) -> bool:
        """Raises :class:`ExpressionError` when a condition cannot be evaluated."""
        if self.literal is not None:
            return identity == self.literal
        if self.pattern is not None:
            return self.pattern.fullmatch(identity) is not None
        assert self.condition is not None
        values = activation.native_values()
        if values is not None:
            result = self.condition.evaluate_native(values)
            if result is not NOT_NATIVE:
                return bool(result)
        return bool(self.condition.evaluate(activation.get()))


@dataclass(frozen=True)
class _Target:
    kind: Literal["audience", "resource", "resource_prefix"]
    value: str
    scopes: frozenset[str]
    default_scopes: tuple[str, ...]
    algorithm: str | None
    sender_constraint: str | None = None
    status_list: bool | None = None
    approval: ApprovalConfig | None = None
    authorization_details: DetailTypes | None = None
    profile: str | None = None
    profile_audience: str | None = None
    upstream: str | None = None
    ignored: frozenset[str] = frozenset()

    @classmethod
    def compile(cls, cfg: TargetConfig, location: str = "target") -> _Target:
        return cls(
            cfg.kind, cfg.value, frozenset(cfg.scopes), tuple(cfg.default_scopes), cfg.algorithm,
            cfg.sender_constraint, cfg.status_list, cfg.approval,
            DetailTypes.compile(cfg.authorization_details, location) if cfg.authorization_details else None,
            cfg.profile, cfg.profile_audience, cfg.upstream,
            frozenset(cfg.ignore_scopes),
        )

    def admit(self, requested: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """The scopes to grant, or ``None`` if the request asks for more than allowed."""
        if requested is None:
            return self.default_scopes
        wanted = tuple(dict.fromkeys(requested))
        if self.ignored:
            wanted = tuple(s for s in wanted if s not in self.ignored)
            if not wanted:
                return self.default_scopes
        return wanted if all(s in self.scopes for s in wanted) else None

    def ignored_of(self, requested: tuple[str, ...] | None) -> tuple[str, ...]:
        if not self.ignored or requested is None:
            return ()
        return tuple(s for s in dict.fromkeys(requested) if s in self.ignored)


@dataclass(frozen=True)
class _Grant:
    index: int
    name: str
    audit: bool
    issuers: frozenset[str] | None
    matcher: _Matcher
    audiences: Mapping[str, _Target]
    resources: Mapping[str, _Target]
    prefixes: tuple[_Target, ...]  # longest first
    default_target: str | None
    lifetime: int
    cap_to_subject_lifetime: bool
    algorithm: str
    actors: tuple[_Matcher, ...]
    sender_constraint: str = "none"
    status_list: bool = False
    delegation: GrantDelegation = NO_DELEGATION
    grant_types: frozenset[str] = frozenset({"token_exchange"})

    @classmethod
    def compile(
        cls,
        cfg: GrantConfig,
        index: int,
        *,
        default_lifetime: int,
        max_lifetime: int,
        algorithm: str,
        default_depth: int = DEFAULT_MAX_DEPTH,
    ) -> _Grant:
        loc = f"grants[{index}]"
        targets = [_Target.compile(t, f"{loc}.targets[{j}]") for j, t in enumerate(cfg.targets)]
        delegation = cfg.delegation
        return cls(
            index=index,
            name=cfg.name,
            audit=cfg.mode == "audit",
            issuers=frozenset(cfg.issuers) if cfg.issuers is not None else None,
            matcher=_Matcher.compile(cfg.match, f"{loc}.match"),
            audiences={t.value: t for t in targets if t.kind == "audience"},
            resources={t.value: t for t in targets if t.kind == "resource"},
            prefixes=tuple(
                sorted(
                    (t for t in targets if t.kind == "resource_prefix"), key=lambda t: -len(t.value)
                )
            ),
            default_target=cfg.default_target,
            lifetime=min(cfg.lifetime or default_lifetime, max_lifetime),
            cap_to_subject_lifetime=cfg.cap_to_subject_lifetime,
            algorithm=algorithm,
            actors=tuple(
                _Matcher.compile(a, f"{loc}.delegation.actors[{j}]")
                for j, a in enumerate(delegation.actors if delegation else ())
            ),
            sender_constraint=cfg.sender_constraint,
            status_list=cfg.status_list,
            delegation=GrantDelegation.compile(delegation, default_depth),
            grant_types=frozenset(cfg.grant_types),
        )

    def allow(self, t: _Target, target: str, scopes: tuple[str, ...], notes: tuple[str, ...],
              requested_scopes: tuple[str, ...] | None) -> Allow:
        """The decision to issue under this grant and its target ``t`` (one builder, so that
        ``decide`` and the explain trace cannot disagree on a field)."""
        return Allow(
            grant=self.name,
            target=target,
            scopes=scopes,
            lifetime=self.lifetime,
            cap_to_subject_lifetime=self.cap_to_subject_lifetime,
            algorithm=t.algorithm or self.algorithm,
            audit_notes=notes,
            sender_constraint=t.sender_constraint or self.sender_constraint,
            status_list=self.status_list if t.status_list is None else t.status_list,
            approval=t.approval,
            authorization_details=t.authorization_details,
            profile=t.profile,
            profile_audience=t.profile_audience,
            upstream=t.upstream,
            delegation=self.delegation,
            ignored_scopes=t.ignored_of(requested_scopes),
        )

    def target_for(self, req: _Requested) -> _Target | None:
        if req.as_audience and req.value in self.audiences:
            return self.audiences[req.value]
        if req.as_resource:
            if req.value in self.resources:
                return self.resources[req.value]
            for t in self.prefixes:
                if resource_prefix_matches(t.value, req.value):
                    return t
        return None


class _LazyActivation:
    """Converts the condition variables to CEL values at most once, and only if needed."""

    __slots__ = ("_activation", "_extensions", "_keys", "_native", "_variables")

    def __init__(
        self,
        variables: Mapping[str, Any],
        keys: Mapping[str, frozenset[str] | None],
        used: frozenset[str],
        extensions: bool = True,
    ) -> None:
        # Variables no condition references are not converted at all.
        self._variables = {k: v for k, v in variables.items() if k in used}
        self._keys = keys
        self._extensions = extensions  # False: no condition calls an extension function
        self._activation: Activation | None = None
        self._native: bool | None = None

    def native_values(self) -> Mapping[str, Any] | None:
        """The plain variables for native forms (sts.trust.native), or ``None`` when a value
        some condition reads is neither absent nor a string. Then every condition goes
        through CEL, so a value CEL cannot convert fails all of them exactly as before."""
        if self._native is None:
            self._native = all(
                self._strings_only(name, value) for name, value in self._variables.items()
            )
        return self._variables if self._native else None

    def _strings_only(self, name: str, value: Any) -> bool:
        if type(value) is str:
            return True
        keys = self._keys.get(name)
        if keys is None or type(value) is not dict:
            return False
        return all(type(value.get(k, "")) is str for k in keys)

    def get(self) -> Activation:
        if self._activation is None:
            self._activation = Activation(self._variables, keys=self._keys, extensions=self._extensions)
        return self._activation


@dataclass
class _Bucket:
    literal: dict[str, list[int]] = field(default_factory=dict)
    dynamic: list[int] = field(default_factory=list)

    def add(self, grant: _Grant) -> None:
        if grant.matcher.literal is not None:
            self.literal.setdefault(grant.matcher.literal, []).append(grant.index)
        else:
            self.dynamic.append(grant.index)


class _Index:
    """Grants bucketed by issuer filter; literal identities looked up, the rest evaluated."""

    def __init__(self, grants: Iterable[_Grant]) -> None:
        self.any = _Bucket()
        self.by_issuer: dict[str, _Bucket] = {}
        for g in grants:
            if g.issuers is None:
                self.any.add(g)
            else:
                for name in sorted(g.issuers):
                    self.by_issuer.setdefault(name, _Bucket()).add(g)

    def candidates(
        self,
        grants: Sequence[_Grant],
        identity: WorkloadIdentity,
        activation: _LazyActivation,
        notes: list[str],
    ) -> tuple[list[_Grant], int]:
        buckets = [self.any]
        own = self.by_issuer.get(identity.issuer_name)
        if own is not None:
            buckets.append(own)
        found: set[int] = set()
        evaluated = 0
        for bucket in buckets:
            found.update(bucket.literal.get(identity.identity, ()))
        for bucket in buckets:
            for i in bucket.dynamic:
                evaluated += 1
                g = grants[i]
                try:
                    if g.matcher.matches(identity.identity, activation):
                        found.add(i)
                except ExpressionError as exc:
                    kind = "audit grant" if g.audit else "grant"
                    notes.append(f"{kind} {g.name!r} match condition failed ({exc.reason})")
        return [grants[i] for i in sorted(found)], evaluated


@dataclass(frozen=True)
class GrantMatch:
    """The grants whose issuer filter and matcher admit an identity (for ``explain``/tests)."""

    grants: tuple[str, ...]
    audit_grants: tuple[str, ...]
    matchers_evaluated: int
    notes: tuple[str, ...]


class CompiledPolicy:
    """All grants of a configuration, compiled and indexed for :meth:`decide`.

    Invariant: immutable after construction; :meth:`decide` is a pure function of its
    arguments (no I/O, no clock, no shared mutable state).
    """

    def __init__(self, grants: Sequence[_Grant]) -> None:
        self._grants = tuple(grants)
        self._enforce = _Index(g for g in self._grants if not g.audit)
        self._audit = _Index(g for g in self._grants if g.audit)
        # Only the variables, claims and attributes some condition can read are converted.
        conditions = [g.matcher.condition for g in self._grants if g.matcher.condition is not None]
        actor_conditions = [
            a.condition for g in self._grants for a in g.actors if a.condition is not None
        ]
        self._condition_keys = union_keys_read(conditions)
        self._condition_vars = frozenset().union(*(c.uses for c in conditions))
        self._condition_extensions = any(c.uses_extensions for c in conditions)
        self._actor_keys = union_keys_read(actor_conditions)
        self._actor_vars = frozenset().union(*(c.uses for c in actor_conditions))
        self._actor_extensions = any(c.uses_extensions for c in actor_conditions)

    @classmethod
    def from_config(cls, cfg: BrokerConfig) -> CompiledPolicy:
        tokens = cfg.tokens
        grants = [
            _Grant.compile(
                g,
                i,
                default_lifetime=tokens.default_lifetime,
                max_lifetime=tokens.max_lifetime,
                algorithm=tokens.algorithm,
                default_depth=cfg.chains.max_depth,
            )
            for i, g in enumerate(cfg.grants)
        ]
        return cls(grants)

    @property
    def grant_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self._grants)

    def _activation(self, identity: WorkloadIdentity, claims: Mapping[str, Any]) -> _LazyActivation:
        return _LazyActivation(
            {
                "identity": identity.identity,
                "issuer": identity.issuer_name,
                "attributes": identity.attributes,
                "claims": claims,
            },
            self._condition_keys,
            self._condition_vars,
            self._condition_extensions,
        )

    def match_grants(self, identity: WorkloadIdentity, claims: Mapping[str, Any]) -> GrantMatch:
        """The grants that admit ``identity``, and how many matchers had to run."""
        activation = self._activation(identity, claims)
        notes: list[str] = []
        enforce, n1 = self._enforce.candidates(self._grants, identity, activation, notes)
        audit, n2 = self._audit.candidates(self._grants, identity, activation, notes)
        return GrantMatch(
            grants=tuple(g.name for g in enforce),
            audit_grants=tuple(g.name for g in audit),
            matchers_evaluated=n1 + n2,
            notes=tuple(notes),
        )

    def prepare(
        self,
        *,
        identity: WorkloadIdentity,
        claims: Mapping[str, Any],
        request_audiences: tuple[str, ...],
        request_resources: tuple[str, ...],
        requested_scopes: tuple[str, ...] | None,
        actor: WorkloadIdentity | None,
        actor_claims: Mapping[str, Any] | None = None,
        own_subject: bool = False,
        grant_type: str = "token_exchange",
    ) -> Prepared:
        """What ``decide`` and the explain trace both start from (one place, so they cannot
        drift): the activations, the enforce candidates after the grant-type and chain filters,
        the requested targets, and the audit-mode grants evaluated on their own (notes only)."""
        activation = self._activation(identity, claims)
        actor_activation = None
        if actor is not None:
            actor_activation = _LazyActivation(
                {
                    "identity": actor.identity,
                    "issuer": actor.issuer_name,
                    "attributes": actor.attributes,
                    "claims": actor_claims or {},
                },
                self._actor_keys,
                self._actor_vars,
                self._actor_extensions,
            )
        notes: list[str] = []
        matched, _ = self._enforce.candidates(self._grants, identity, activation, notes)
        candidates = [g for g in matched if grant_type in g.grant_types]
        if own_subject:  # a token of ours: only grants with delegation.chain (sts.trust.delegation)
            candidates = [g for g in candidates if g.delegation.chain]
        requested = _requested_targets(request_audiences, request_resources)

        # Audit-mode grants: the same evaluation, each on its own; they only add notes.
        audit_grants, _ = self._audit.candidates(self._grants, identity, activation, notes)
        audit_outcomes: dict[int, str] = {}
        for g in audit_grants:
            if grant_type not in g.grant_types:
                outcome = "would deny: grant_type_not_allowed"
            else:
                outcome = self._evaluate_alone(g, requested, requested_scopes, actor, actor_activation, notes)
            notes.append(f"audit grant {g.name!r} {outcome}")
            audit_outcomes[g.index] = outcome
        return Prepared(activation, actor_activation, notes, tuple(notes), matched, candidates, requested,
                        audit_outcomes)

    def decide(
        self,
        *,
        identity: WorkloadIdentity,
        claims: Mapping[str, Any],
        request_audiences: tuple[str, ...],
        request_resources: tuple[str, ...],
        requested_scopes: tuple[str, ...] | None,
        actor: WorkloadIdentity | None,
        actor_claims: Mapping[str, Any] | None = None,
        own_subject: bool = False,
        grant_type: str = "token_exchange",
    ) -> Decision:
        """Decide on one exchange request. ``claims`` are the subject token's verified claims;
        ``actor_claims`` (optional) are the actor token's, visible to actor conditions.
        ``own_subject``: the subject token is one this broker issued (a chain hop): only grants
        with ``delegation.chain`` are candidates (``chain_not_allowed`` when none matches).
        ``grant_type`` is the request's grant type by its configuration name."""
        p = self.prepare(identity=identity, claims=claims, request_audiences=request_audiences,
                         request_resources=request_resources, requested_scopes=requested_scopes, actor=actor,
                         actor_claims=actor_claims, own_subject=own_subject, grant_type=grant_type)
        notes, frozen, matched, candidates, requested = p.notes, p.frozen, p.matched, p.candidates, p.requested
        actor_activation = p.actor_activation

        # 1. candidates
        if not candidates:
            reason = "chain_not_allowed" if own_subject else "grant_type_not_allowed" if matched else "no_grant"
            return Deny("invalid_request", reason, None, frozen)
        # 2. the one target
        if len(requested) > 1:
            return Deny("invalid_target", "multiple_targets", None, frozen)
        if requested:
            target = requested[0]
        else:
            defaults = list(dict.fromkeys(g.default_target for g in candidates if g.default_target))
            if len(defaults) != 1:
                return Deny("invalid_target", "no_target", None, frozen)
            target = _Requested(defaults[0], True, True)
        # 3. first grant whose target and scopes admit the request
        scope_refused: _Grant | None = None
        for g in candidates:
            t = g.target_for(target)
            if t is None:
                continue
            scopes = t.admit(requested_scopes)
            if scopes is None:
                scope_refused = scope_refused or g
                continue
            # 4. delegation (a client presenting a chained token alone: sts.trust.delegation)
            if actor is not None and not self._actor_allowed(g, actor, actor_activation, notes):
                return Deny("invalid_request", "actor_not_allowed", g.name, tuple(notes))
            return g.allow(t, target.value, scopes, tuple(notes), requested_scopes)
        if scope_refused is not None:
            return Deny("invalid_scope", "scope_not_allowed", scope_refused.name, frozen)
        return Deny("invalid_target", "target_not_allowed", None, frozen)

    @staticmethod
    def _actor_allowed(
        g: _Grant, actor: WorkloadIdentity, activation: _LazyActivation | None, notes: list[str]
    ) -> bool:
        assert activation is not None
        for m in g.actors:
            try:
                if m.matches(actor.identity, activation):
                    return True
            except ExpressionError as exc:
                notes.append(f"grant {g.name!r} actor condition {m.location} failed ({exc.reason})")
        return False

    def _evaluate_alone(
        self,
        g: _Grant,
        requested: list[_Requested],
        requested_scopes: tuple[str, ...] | None,
        actor: WorkloadIdentity | None,
        actor_activation: _LazyActivation | None,
        notes: list[str],
    ) -> str:
        if len(requested) > 1:
            return "would deny: multiple_targets"
        if requested:
            target = requested[0]
        elif g.default_target is not None:
            target = _Requested(g.default_target, True, True)
        else:
            return "would deny: no_target"
        t = g.target_for(target)
        if t is None:
            return "would deny: target_not_allowed"
        scopes = t.admit(requested_scopes)
        if scopes is None:
            return "would deny: scope_not_allowed"
        if actor is not None and not self._actor_allowed(g, actor, actor_activation, notes):
            return "would deny: actor_not_allowed"
        return f"would allow target {target.value!r} with scopes {' '.join(scopes)!r}"


def _requested_targets(audiences: tuple[str, ...], resources: tuple[str, ...]) -> list[_Requested]:
    """The distinct union of requested audiences and resources, in request order."""
    out: dict[str, _Requested] = {}
    for a in audiences:
        prev = out.get(a)
        out[a] = _Requested(a, True, prev.as_resource if prev else False)
    for r in resources:
        prev = out.get(r)
        out[r] = _Requested(r, prev.as_audience if prev else False, True)
    return list(out.values())
