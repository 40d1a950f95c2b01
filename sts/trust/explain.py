"""Why the trust decision came out as it did: per-rule and per-grant traces (pure).

``sts explain`` and the audit records of refusals need more than :meth:`CompiledPolicy.decide`
answers: for every grant, in file order, the first step at which it did not apply, or that it
won. :func:`explain_decision` walks the same compiled grants with the same matchers, target
lookup and scope admission as ``decide`` (it reads them from the policy, it compiles nothing),
and returns the decision it reaches together with the trace; a table and a property test pin
that decision equal to ``decide``'s, so the trace can never tell a different story than the
server. It is slower than ``decide`` (it evaluates every grant, not only the indexed ones), so
the exchange calls it only on a refusal and never on the allowed path.

:func:`explain_mapping` does the same for step 5 (claim validation rules, identity, attributes):
every rule with its result and its configured message, in the order ``map_identity`` runs them.

Steps of a grant, in the order ``decide`` applies them (RFC 8693 §2.1 targets and scopes,
RFC 8707 §2 resources, RFC 6749 §3.3 scopes):

``issuer``      the grant's ``issuers`` filter does not admit the identity's issuer
``match``       its literal, pattern or condition does not match the identity
``grant_type``  it does not list the request's grant type in ``grant_types``
``target``      the request names no single target (none and no unique default, or several),
                or the target is not one of the grant's
``scope``       the requested scopes are outside the target's
``delegation``  an actor was presented and the grant's ``delegation.actors`` refuse it
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sts.subject.model import VerifiedSubject, WorkloadIdentity
from sts.trust.cel import Activation, ExpressionError
from sts.trust.mapping import CompiledIssuerMapping, MappingDenied, attribute_value_ok, identity_problem
from sts.trust.policy import (
    Allow,
    CompiledPolicy,
    Decision,
    Deny,
    _Grant,
    _LazyActivation,
    _Matcher,
    _Requested,
)

STEPS: Final = ("issuer", "match", "grant_type", "target", "scope", "delegation")

# Audit records carry at most this many grant entries (the rest are counted), so that a
# refusal against a file of thousands of grants cannot make one audit row large.
MAX_AUDIT_GRANTS: Final = 32
# Each entry's reason is cut to this (a long pattern would otherwise fill the 16 KiB context).
MAX_AUDIT_WHY: Final = 160


@dataclass(frozen=True)
class GrantTrace:
    """One grant's fate. ``outcome`` is ``won``, ``stopped`` (at ``step``, because ``why``),
    ``not_reached`` (it would apply, but an earlier grant decided), or for an audit-mode grant
    ``audit`` with ``why`` its own would-be outcome. ``why`` names configuration, never claim
    values."""

    index: int
    name: str
    mode: str
    outcome: str
    step: str | None = None
    why: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"grant": self.name, "mode": self.mode, "outcome": self.outcome}
        if self.step is not None:
            out["step"] = self.step
        if self.why is not None:
            out["why"] = self.why
        return out


@dataclass(frozen=True)
class DecisionTrace:
    """The decision :func:`explain_decision` reached (equal to ``decide``'s) and why."""

    decision: Decision
    target: str | None
    grants: tuple[GrantTrace, ...]

    def agrees_with(self, decision: Decision) -> bool:
        """Whether ``decision`` (``decide``'s) is the one this trace reached: the same outcome,
        grant, target and scopes (tests pin every field equal)."""
        mine = self.decision
        if isinstance(mine, Allow) and isinstance(decision, Allow):
            return (mine.grant, mine.target, mine.scopes, mine.lifetime, mine.algorithm) == (
                decision.grant, decision.target, decision.scopes, decision.lifetime, decision.algorithm)
        if isinstance(mine, Deny) and isinstance(decision, Deny):
            return (mine.error, mine.reason, mine.grant) == (decision.error, decision.reason, decision.grant)
        return False

    def refusal_context(self, limit: int = MAX_AUDIT_GRANTS) -> dict[str, Any]:
        """What an audit record of a refusal keeps: the grants that got past their issuer
        filter (the ones considered), each with the step where it stopped, at most ``limit``
        of them, and counts of the rest. Configuration names and step codes only."""
        considered = [g for g in self.grants if not (g.outcome == "stopped" and g.step == "issuer")]
        out: dict[str, Any] = {
            "decision": self.decision.reason if isinstance(self.decision, Deny) else "allow",
            "grants": [_short(g.as_dict()) for g in considered[:limit]],
        }
        if self.target is not None:
            out["target"] = self.target[:512]
        skipped = len(self.grants) - len(considered)
        if skipped:
            out["issuer_not_allowed"] = skipped
        if len(considered) > limit:
            out["grants_omitted"] = len(considered) - limit
        return out


def _short(entry: dict[str, Any]) -> dict[str, Any]:
    why = entry.get("why")
    if isinstance(why, str) and len(why) > MAX_AUDIT_WHY:
        entry["why"] = why[: MAX_AUDIT_WHY - 1] + "…"
    return entry


def _matcher_why(m: _Matcher, identity: str, activation: _LazyActivation) -> str | None:
    """``None`` when the matcher admits ``identity``, else why not (no claim values).
    Evaluated exactly as ``_Matcher.matches``; an evaluation error is a non-match there too."""
    try:
        if m.matches(identity, activation):
            return None
    except ExpressionError as exc:
        return f"condition failed to evaluate ({exc.reason})"
    if m.literal is not None:
        return f"identity is not {m.literal!r}"
    if m.pattern is not None:
        return f"identity does not match {m.pattern.pattern!r}"
    return "condition is false"


def _target_why(g: _Grant, target: _Requested) -> str:
    kinds = [k for k, on in (("audience", target.as_audience), ("resource", target.as_resource)) if on]
    return f"{target.value!r} (as {' or '.join(kinds)}) is not one of the grant's targets"


def _scope_why(g: _Grant, target: _Requested, requested: tuple[str, ...] | None) -> str | None:
    t = g.target_for(target)
    assert t is not None
    if t.admit(requested) is not None:
        return None
    outside = [s for s in dict.fromkeys(requested or ()) if s not in t.scopes]
    return f"scope {' '.join(outside)!r} is outside the target's {' '.join(sorted(t.scopes)) or '(none)'!r}"


def explain_decision(
    policy: CompiledPolicy,
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
) -> DecisionTrace:
    """:meth:`CompiledPolicy.decide` with a trace of every grant. Same arguments, same
    decision (pinned by tests), including the audit notes."""
    grants: tuple[_Grant, ...] = policy._grants  # the very objects decide uses
    p = policy.prepare(identity=identity, claims=claims, request_audiences=request_audiences,
                       request_resources=request_resources, requested_scopes=requested_scopes, actor=actor,
                       actor_claims=actor_claims, own_subject=own_subject, grant_type=grant_type)
    activation, actor_activation, notes, frozen = p.activation, p.actor_activation, p.notes, p.frozen
    matched, candidates, requested, audit_outcomes = p.matched, p.candidates, p.requested, p.audit_outcomes

    # Steps 1-2 of each grant (issuer, match): the candidates, as the index finds them.
    early: dict[int, tuple[str, str]] = {}
    for g in grants:
        if g.issuers is not None and identity.issuer_name not in g.issuers:
            early[g.index] = ("issuer", f"issuer {identity.issuer_name!r} is not in {sorted(g.issuers)!r}")
            continue
        why = _matcher_why(g.matcher, identity.identity, activation)
        if why is not None:
            early[g.index] = ("match", why)
        elif grant_type not in g.grant_types:
            early[g.index] = ("grant_type", f"the grant's grant_types do not list {grant_type}")
        elif own_subject and not g.audit and not g.delegation.chain:
            early[g.index] = ("delegation", "the subject token is one of ours and the grant does not set delegation.chain")

    decision: Decision | None = None
    target: _Requested | None = None
    target_why: str | None = None
    if not candidates:
        reason = "chain_not_allowed" if own_subject else "grant_type_not_allowed" if matched else "no_grant"
        decision = Deny("invalid_request", reason, None, frozen)
    elif len(requested) > 1:
        decision = Deny("invalid_target", "multiple_targets", None, frozen)
        target_why = f"the request names {len(requested)} targets; exactly one is allowed"
    elif requested:
        target = requested[0]
    else:
        defaults = list(dict.fromkeys(g.default_target for g in candidates if g.default_target))
        if len(defaults) != 1:
            decision = Deny("invalid_target", "no_target", None, frozen)
            target_why = (f"no target requested and the matching grants name {len(defaults)} default targets"
                          f"{': ' + ', '.join(repr(d) for d in defaults) if defaults else ''}; exactly one is needed")
        else:
            target = _Requested(defaults[0], True, True)

    traces: dict[int, GrantTrace] = {}
    scope_refused: _Grant | None = None
    for g in grants:
        if g.audit:
            continue
        if g.index in early:
            step, why = early[g.index]
            traces[g.index] = GrantTrace(g.index, g.name, "enforce", "stopped", step, why)
            continue
        if target is None:
            traces[g.index] = GrantTrace(g.index, g.name, "enforce", "stopped", "target", target_why)
            continue
        if decision is not None:
            traces[g.index] = GrantTrace(g.index, g.name, "enforce", "not_reached",
                                         why=f"grant {decision.grant!r} decided first")
            continue
        if g.target_for(target) is None:
            traces[g.index] = GrantTrace(g.index, g.name, "enforce", "stopped", "target", _target_why(g, target))
            continue
        why = _scope_why(g, target, requested_scopes)
        if why is not None:
            scope_refused = scope_refused or g
            traces[g.index] = GrantTrace(g.index, g.name, "enforce", "stopped", "scope", why)
            continue
        t = g.target_for(target)
        assert t is not None
        scopes = t.admit(requested_scopes)
        assert scopes is not None
        if actor is not None and not policy._actor_allowed(g, actor, actor_activation, notes):
            decision = Deny("invalid_request", "actor_not_allowed", g.name, tuple(notes))
            traces[g.index] = GrantTrace(g.index, g.name, "enforce", "stopped", "delegation",
                                         f"actor {actor.identity!r} is not one of the grant's delegation.actors")
            continue
        decision = g.allow(t, target.value, scopes, tuple(notes), requested_scopes)
        traces[g.index] = GrantTrace(g.index, g.name, "enforce", "won",
                                     why=f"target {target.value!r}, scopes {' '.join(scopes)!r}")
    if decision is None:
        if scope_refused is not None:
            decision = Deny("invalid_scope", "scope_not_allowed", scope_refused.name, frozen)
        else:
            decision = Deny("invalid_target", "target_not_allowed", None, frozen)

    for g in grants:
        if not g.audit:
            continue
        if g.index in audit_outcomes:
            traces[g.index] = GrantTrace(g.index, g.name, "audit", "audit", why=audit_outcomes[g.index])
        else:
            step, why = early[g.index]
            traces[g.index] = GrantTrace(g.index, g.name, "audit", "stopped", step, why)

    return DecisionTrace(
        decision=decision,
        target=target.value if target is not None else (requested[0].value if len(requested) == 1 else None),
        grants=tuple(traces[g.index] for g in grants),
    )


# --- step 5: claim validation rules, identity, attributes ------------------------------------


@dataclass(frozen=True)
class RuleTrace:
    """One claim validation rule: ``result`` is ``ok``, ``failed``, ``error`` (evaluation
    failed: ``why``) or ``not_reached`` (an earlier enforced rule denied)."""

    location: str
    mode: str
    message: str
    result: str
    why: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"rule": self.location, "mode": self.mode, "message": self.message, "result": self.result}
        if self.why is not None:
            out["why"] = self.why
        return out


@dataclass(frozen=True)
class MappingTrace:
    """Every rule of an issuer in the order ``map_identity`` runs them, then the identity (or
    why none) and the attributes. ``denied`` is the ``MappingDenied`` ``map_identity`` raises
    for these claims (``None``: it maps to ``identity``)."""

    issuer_name: str
    preset: str | None
    rules: tuple[RuleTrace, ...]
    identity: str | None
    identity_source: str
    attributes: Mapping[str, Any]
    denied: MappingDenied | None


def explain_mapping(mapping: CompiledIssuerMapping, subject: VerifiedSubject) -> MappingTrace:
    """Run ``mapping``'s rules one by one on ``subject.claims`` (with CEL, whose answers the
    native forms equal), then ``map_identity`` itself for the identity and the verdict."""
    claims = subject.claims
    rules: list[RuleTrace] = []
    stopped = False
    activation: Activation | None = None
    activation_error: str | None = None
    if mapping._has_cel:
        try:
            activation = Activation({"claims": claims}, claim_keys=mapping.claim_keys, extensions=mapping._extensions)
        except ExpressionError as exc:
            activation_error = exc.reason
    preset = mapping.preset
    if activation_error is not None:
        # map_identity converts the claims before any rule runs, and refuses here.
        rules.append(RuleTrace(mapping.location, "enforce", "claims cannot be evaluated", "error", activation_error))
        stopped = True
    if preset is not None:
        for prule in preset.rules:
            loc = f"{mapping.location}.preset[{preset.name}].{prule.name}"
            if stopped:
                rules.append(RuleTrace(loc, "enforce", prule.message, "not_reached"))
                continue
            ok = prule.check(claims)
            rules.append(RuleTrace(loc, "enforce", prule.message, "ok" if ok else "failed"))
            stopped = not ok
    for rule in mapping._rules:
        loc = rule.expression.location
        mode = "enforce" if rule.enforce else "audit"
        if stopped:
            rules.append(RuleTrace(loc, mode, rule.message, "not_reached"))
            continue
        if activation is None:
            rules.append(RuleTrace(loc, mode, rule.message, "error", f"claims cannot be evaluated ({activation_error})"))
            stopped = rule.enforce
            continue
        try:
            ok, why = bool(rule.expression.evaluate(activation)), None
        except ExpressionError as exc:
            ok, why = False, exc.reason
        rules.append(RuleTrace(loc, mode, rule.message, "ok" if ok else ("failed" if why is None else "error"), why))
        stopped = rule.enforce and not ok

    if mapping._identity is not None:
        source = f"{mapping.location}.claim_mappings.identity"
    elif preset is not None:
        source = f"{mapping.location}.preset[{preset.name}].identity"
    else:
        source = f'"{mapping.issuer_name}:" + sub (no identity mapping)'
    try:
        result = mapping.map_identity(subject)
    except MappingDenied as exc:
        return MappingTrace(mapping.issuer_name, preset.name if preset else None, tuple(rules), None, source, {}, exc)
    return MappingTrace(mapping.issuer_name, preset.name if preset else None, tuple(rules),
                        result.identity.identity, source, dict(result.identity.attributes), None)


__all__ = [
    "MAX_AUDIT_GRANTS",
    "STEPS",
    "DecisionTrace",
    "GrantTrace",
    "MappingTrace",
    "RuleTrace",
    "attribute_value_ok",
    "explain_decision",
    "explain_mapping",
    "identity_problem",
]
