"""Compare two validated trust configurations and say what each change does to trust.

``diff_configs(old, new)`` is pure: it reads two :class:`~sts.config.models.BrokerConfig`
values and returns every difference as a :class:`Change` whose ``effect`` is one of

* ``widens``: the new configuration certainly admits something the old one refused (an added
  grant, issuer, client, trust domain or target; more scopes, audiences, algorithms, actors or
  identities; a longer lifetime or clock skew; an audit grant turned to enforce; an enforced
  claim rule removed or turned to audit; a sender constraint or a ``jti`` requirement dropped);
* ``may_widen``: it changed in a way this module cannot prove harmless (a CEL condition or
  claim mapping rewritten, a pattern changed outside the provable cases below, grants
  reordered (the first matching grant wins), a field this module does not know): it counts as
  a widening, so review fails closed;
* ``narrows``: the new configuration certainly admits less for this part;
* ``neutral``: it changed without admitting more (a message, a signing algorithm, a rotated
  client secret, anything about a grant in audit mode, which never issues a token).

``sts config diff`` exits 3 when any change widens or may widen, so that CI can require a
review. Which identities a regular expression admits is undecidable in general
(``identity_pattern`` is matched with ``re.fullmatch``); the relations proven here are sound:

* a literal against a pattern (the pattern is run on the literal);
* alternatives (``^(?:a|b)$`` and ``^a|b$``) compared alternative by alternative, where a new
  alternative, or one that is the same text, covers an old one;
* anchored prefixes ``^lit.*$`` / ``^lit.+$``: a shorter literal prefix covers a longer one.

Anything else that differs is ``may_widen``. Patterns with back references or conditional
groups are never compared by text (adding an alternative renumbers the groups).

Each change names its place (``grant deploy targets[audience=vault].scopes``) and, for
identities and claim rules, the values involved: the configuration is reviewed by the people
who write it, and the diff holds no secret (client secrets appear only as "rotated").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pydantic import BaseModel

from sts.config.models import (
    BrokerConfig,
    ClaimMappings,
    DelegationConfig,
    GrantConfig,
    IssuerConfig,
    KeysConfig,
    MatchConfig,
    RegisteredClient,
    TargetConfig,
    TokensConfig,
)
from sts.config.spiffe import TrustDomainConfig

Effect = Literal["widens", "may_widen", "narrows", "neutral"]
Action = Literal["added", "removed", "changed"]

EFFECTS: Final = ("widens", "may_widen", "narrows", "neutral")
WIDENING: Final = frozenset({"widens", "may_widen"})
SECTIONS: Final = ("broker", "tokens", "transaction_tokens", "clients", "client", "issuer", "trust_domain", "grant")


@dataclass(frozen=True)
class Change:
    """One difference. Invariant: ``effect`` is ``widens`` or ``may_widen`` whenever the new
    configuration could admit a request, subject or client the old one refused."""

    effect: Effect
    action: Action
    section: str
    name: str
    path: str
    summary: str
    old: Any = None
    new: Any = None

    @property
    def widening(self) -> bool:
        return self.effect in WIDENING

    def where(self) -> str:
        label = {"trust_domain": "trust domain"}.get(self.section, self.section)
        out = label if not self.name else f"{label} {self.name}"
        return f"{out} {self.path}" if self.path else out

    def as_dict(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "widening": self.widening,
            "action": self.action,
            "section": self.section,
            "name": self.name,
            "path": self.path,
            "summary": self.summary,
            "old": self.old,
            "new": self.new,
        }


@dataclass(frozen=True)
class ConfigDiff:
    """Every change, widenings first (``widens``, then ``may_widen``), then narrowings, then
    neutral changes; within each, in the order of the file's sections."""

    changes: tuple[Change, ...] = ()

    @property
    def widens(self) -> bool:
        return any(c.widening for c in self.changes)

    def counts(self) -> dict[str, int]:
        return {e: sum(c.effect == e for c in self.changes) for e in EFFECTS}

    def as_dict(self) -> dict[str, Any]:
        return {"widens": self.widens, "counts": self.counts(),
                "changes": [c.as_dict() for c in self.changes]}


# --- pattern relations ---------------------------------------------------------------------------

Relation = Literal["equal", "wider", "narrower", "widens_other", "unknown"]

_META: Final = frozenset(".^$*+?{}[]|()\\")
_BACKREF: Final = re.compile(r"\\[1-9]|\(\?P=|\(\?\(")


@dataclass(frozen=True)
class _Alt:
    """One alternative of an identity matcher: ``literal`` (one identity), ``prefix`` (a
    literal followed by ``.*`` or ``.+``) or ``opaque`` (compared by text only)."""

    kind: Literal["literal", "prefix", "opaque"]
    text: str
    literal: str = ""
    min_extra: int = 0


@dataclass(frozen=True)
class _Language:
    """The identities a matcher (or a list of actor matchers) admits, as alternatives, with
    the whole patterns to test a literal against. ``comparable`` is False when opaque
    alternatives must not be compared by text."""

    alts: tuple[_Alt, ...]
    patterns: tuple[re.Pattern[str], ...]
    literals: frozenset[str]
    comparable: bool = True

    def admits(self, identity: str) -> bool:
        return identity in self.literals or any(p.fullmatch(identity) for p in self.patterns)


def _unescape_literal(body: str) -> str | None:
    """The text a regular expression without metacharacters matches, else None."""
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 >= len(body):
                return None
            nxt = body[i + 1]
            # \d, \w, \b, \1, ... are classes or references, not characters.
            if nxt.isalnum() or nxt == "_":
                return None
            out.append(nxt)
            i += 2
            continue
        if c in _META:
            return None
        out.append(c)
        i += 1
    return "".join(out)


def _split_top(body: str) -> list[str] | None:
    """``body`` split at its top-level ``|`` (outside groups and classes); None if unbalanced."""
    parts: list[str] = []
    depth = 0
    in_class = False
    start = 0
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            # A ']' right after '[' or '[^' is a literal member of the class.
            if body[i + 1:i + 2] == "]":
                i += 1
            elif body[i + 1:i + 3] == "^]":
                i += 2
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return None
        elif c == "|" and depth == 0:
            parts.append(body[start:i])
            start = i + 1
        i += 1
    if depth != 0 or in_class:
        return None
    parts.append(body[start:])
    return parts


def _unwrap_group(body: str) -> str:
    """``(?:x)`` or ``(x)`` spanning the whole body -> ``x``."""
    for opener in ("(?:", "("):
        if body.startswith(opener) and body.endswith(")"):
            inner = body[len(opener):-1]
            # The group spans the whole body only if its inside is balanced on its own.
            if _split_top(inner) is not None and not inner.startswith("?"):
                return inner
    return body


def _expand_group(body: str) -> list[str] | None:
    """``lit1(a|b)lit2`` -> ``[lit1 a lit2, lit1 b lit2]`` when both sides are literal text."""
    for opener in ("(?:", "("):
        start = body.find(opener)
        if start < 0 or (start > 0 and body[start - 1] == "\\"):
            continue
        end = body.rfind(")")
        if end < start or body[end + 1:end + 2] in ("*", "+", "?", "{"):
            continue
        head, inner, tail = body[:start], body[start + len(opener):end], body[end + 1:]
        parts = _split_top(inner)
        if parts is None or inner.startswith("?") or _unescape_literal(head) is None or _unescape_literal(tail) is None:
            continue
        return [head + p + tail for p in parts]
    return None


def _alternative(text: str) -> _Alt:
    lit = _unescape_literal(text)
    if lit is not None:
        return _Alt("literal", text, lit)
    for tail, extra in ((".*", 0), (".+", 1)):
        if text.endswith(tail) and not text.endswith("\\" + tail):
            lit = _unescape_literal(text[: -len(tail)])
            if lit is not None:
                return _Alt("prefix", text, lit, extra)
    return _Alt("opaque", text)


def _pattern_alts(pattern: str) -> tuple[tuple[_Alt, ...], bool]:
    """The alternatives of an anchored pattern, and whether opaque ones may be compared."""
    comparable = _BACKREF.search(pattern) is None
    # Alternatives of ^a|b$ are anchored by fullmatch; each keeps its own ^ or $ otherwise.
    parts = _split_top(pattern)
    if parts is not None and len(parts) > 1:
        items = [p.removeprefix("^").removesuffix("$") if not p.endswith("\\$") else p.removeprefix("^")
                 for p in parts]
    else:
        body = pattern[1:-1] if pattern.startswith("^") and pattern.endswith("$") else pattern
        body = _unwrap_group(body)
        items = _split_top(body) or [body]
        if len(items) == 1:
            items = _expand_group(body) or items
    return tuple(_alternative(_unwrap_group(p)) for p in items), comparable


def _language(matches: Sequence[MatchConfig]) -> _Language | None:
    """The identities a list of matchers admits (their union); None when a CEL condition is
    among them (conditions see claims and attributes, not only the identity)."""
    alts: list[_Alt] = []
    patterns: list[re.Pattern[str]] = []
    literals: set[str] = set()
    comparable = True
    for m in matches:
        if m.identity is not None:
            alts.append(_Alt("literal", re.escape(m.identity), m.identity))
            literals.add(m.identity)
        elif m.identity_pattern is not None:
            found, ok = _pattern_alts(m.identity_pattern)
            alts.extend(found)
            comparable = comparable and ok
            patterns.append(re.compile(m.identity_pattern))
        else:
            return None
    return _Language(tuple(alts), tuple(patterns), frozenset(literals), comparable)


def _covers(big: _Language, alt: _Alt) -> bool:
    """Sound: True only if every identity ``alt`` admits is admitted by ``big``."""
    if alt.kind == "literal":
        return big.admits(alt.literal)
    for b in big.alts:
        if alt.kind == "prefix" and b.kind == "prefix":
            # lit1 + s (len(s) >= m1) = lit2 + rest + s; the rest has no newline ('.' stops there).
            if alt.literal.startswith(b.literal):
                rest = alt.literal[len(b.literal):]
                if "\n" not in rest and len(rest) + alt.min_extra >= b.min_extra:
                    return True
        if alt.kind == "opaque" and b.kind == "opaque" and big.comparable and alt.text == b.text:
            return True
    return False


def relate(old: Sequence[MatchConfig], new: Sequence[MatchConfig]) -> Relation:
    """How the identities admitted by ``new`` relate to those admitted by ``old``.

    ``wider``/``narrower``: a proven strict or non-strict superset/subset (``wider`` when the
    new one is proven to hold the old one but not proven equal); ``widens_other``: the new one
    admits a literal identity the old one does not (certainly a widening, not a superset);
    ``unknown``: nothing could be proven."""
    if [m.model_dump() for m in old] == [m.model_dump() for m in new]:
        return "equal"
    lo, ln = _language(old), _language(new)
    if lo is None or ln is None:
        if sorted(json.dumps(m.model_dump(), sort_keys=True) for m in old) == sorted(
            json.dumps(m.model_dump(), sort_keys=True) for m in new
        ):
            return "equal"
        return "unknown"
    if not lo.alts and ln.alts:
        return "wider"
    new_holds_old = lo.comparable and ln.comparable and all(_covers(ln, a) for a in lo.alts)
    old_holds_new = lo.comparable and ln.comparable and all(_covers(lo, a) for a in ln.alts)
    if not lo.comparable or not ln.comparable:
        new_holds_old = all(a.kind == "literal" and ln.admits(a.literal) for a in lo.alts)
        old_holds_new = all(a.kind == "literal" and lo.admits(a.literal) for a in ln.alts)
    if new_holds_old and old_holds_new:
        return "equal"
    if new_holds_old:
        return "wider"
    if witness(lo, ln) is not None:
        return "widens_other"
    if old_holds_new:
        return "narrower"
    return "unknown"


def witness(old: _Language | None, new: _Language | None) -> str | None:
    """An identity ``new`` admits and ``old`` does not, found among the literals and sample
    strings of prefixes of ``new`` (each one tested against both whole patterns), or None."""
    if old is None or new is None:
        return None
    for alt in new.alts:
        if alt.kind == "literal":
            candidates = [alt.literal]
        elif alt.kind == "prefix":
            candidates = [alt.literal + s for s in ("", "0", "zz", "-witness") if len(s) >= alt.min_extra]
        else:
            continue
        for c in candidates:
            if new.admits(c) and not old.admits(c):
                return c
    return None


def _describe_match(m: MatchConfig) -> str:
    if m.identity is not None:
        return f"identity {m.identity}"
    if m.identity_pattern is not None:
        return f"identity_pattern {m.identity_pattern}"
    return f"condition {m.condition}"


# --- comparison machinery ------------------------------------------------------------------------


@dataclass
class _Ctx:
    section: str
    name: str
    out: list[Change] = field(default_factory=list)

    def add(self, effect: Effect, path: str, summary: str, old: Any = None, new: Any = None,
            action: Action = "changed") -> None:
        self.out.append(Change(effect, action, self.section, self.name, path, summary,
                               _plain(old), _plain(new)))


Compare = Callable[[_Ctx, str, Any, Any], None]


def _plain(value: Any) -> Any:
    """JSON-ready form of a model value."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, (tuple, list, frozenset, set)):
        items = [_plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (frozenset, set)) else items
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _compare_model(ctx: _Ctx, path: str, old: BaseModel, new: BaseModel,
                   rules: Mapping[str, Compare]) -> None:
    """Every field through its rule; a differing field without a rule may widen (a field
    added to the schema later is reviewed, never silently ignored)."""
    for name in type(new).model_fields:
        a, b = getattr(old, name, None), getattr(new, name, None)
        rule = rules.get(name)
        if rule is not None:
            rule(ctx, _join(path, name), a, b)
        elif _plain(a) != _plain(b):
            ctx.add("may_widen", _join(path, name), "changed (this field is not analysed: review it)", a, b)


def _more_is_wider(what: str) -> Compare:
    def rule(ctx: _Ctx, path: str, a: Any, b: Any) -> None:
        if a == b:
            return
        if a is None or b is None:
            ctx.add("may_widen", path, f"{what} {'set' if a is None else 'unset'}", a, b)
        else:
            ctx.add("widens" if b > a else "narrows", path,
                    f"{what} {'longer' if 'lifetime' in what else 'larger'}: {a} -> {b}" if b > a
                    else f"{what} {'shorter' if 'lifetime' in what else 'smaller'}: {a} -> {b}", a, b)
    return rule


def _true_is_wider(what: str) -> Compare:
    def rule(ctx: _Ctx, path: str, a: Any, b: Any) -> None:
        if a != b:
            ctx.add("widens" if b else "narrows", path, f"{what}: {a} -> {b}".replace("True", "true")
                    .replace("False", "false"), a, b)
    return rule


def _false_is_wider(what: str) -> Compare:
    def rule(ctx: _Ctx, path: str, a: Any, b: Any) -> None:
        if a != b:
            ctx.add("narrows" if b else "widens", path, f"{what}: {a} -> {b}".replace("True", "true")
                    .replace("False", "false"), a, b)
    return rule


def _set_more_is_wider(what: str) -> Compare:
    def rule(ctx: _Ctx, path: str, a: Any, b: Any) -> None:
        old, new = set(a or ()), set(b or ())
        if new - old:
            ctx.add("widens", path, f"{what} added: {', '.join(sorted(map(str, new - old)))}",
                    sorted(old), sorted(new))
        if old - new:
            ctx.add("narrows", path, f"{what} removed: {', '.join(sorted(map(str, old - new)))}",
                    sorted(old), sorted(new))
    return rule


def _neutral(what: str) -> Compare:
    def rule(ctx: _Ctx, path: str, a: Any, b: Any) -> None:
        if _plain(a) != _plain(b):
            ctx.add("neutral", path, f"{what} changed", a, b)
    return rule


def _may_widen(what: str) -> Compare:
    def rule(ctx: _Ctx, path: str, a: Any, b: Any) -> None:
        if _plain(a) != _plain(b):
            ctx.add("may_widen", path, f"{what} changed (cannot prove it admits no more)", a, b)
    return rule


def _ignore(ctx: _Ctx, path: str, a: Any, b: Any) -> None:
    """Compared elsewhere (keys of a list, or through an effective value)."""


def _named(section: str, old: Iterable[Any], new: Iterable[Any], key: Callable[[Any], str],
           compare: Callable[[_Ctx, Any, Any], None], describe: Callable[[Any], str]) -> list[Change]:
    """Items of a list matched by name: added ones widen, removed ones narrow."""
    before = {key(x): x for x in old}
    after = {key(x): x for x in new}
    out: list[Change] = []
    for name, item in after.items():
        if name not in before:
            out.append(Change("widens", "added", section, name, "", f"added: {describe(item)}", None,
                              _plain(item)))
    for name, item in before.items():
        if name not in after:
            out.append(Change("narrows", "removed", section, name, "", f"removed: {describe(item)}",
                              _plain(item), None))
    for name, item in after.items():
        if name in before:
            ctx = _Ctx(section, name)
            compare(ctx, before[name], item)
            out.extend(ctx.out)
    return out


# --- rules per part ------------------------------------------------------------------------------


def _match_rule(ctx: _Ctx, path: str, a: MatchConfig, b: MatchConfig) -> None:
    _relation(ctx, path, [a], [b], "identities", _describe_match(a), _describe_match(b))


def _relation(ctx: _Ctx, path: str, old: Sequence[MatchConfig], new: Sequence[MatchConfig],
              what: str, old_text: str, new_text: str) -> None:
    rel = relate(old, new)
    example = witness(_language(old), _language(new)) if rel in ("wider", "widens_other") else None
    if example is not None:
        new_text += f" (admits {example!r}, which the old one did not)"
    if rel == "equal":
        if [m.model_dump() for m in old] != [m.model_dump() for m in new]:
            ctx.add("neutral", path, f"rewritten, same {what}: {old_text} -> {new_text}", old, new)
        return
    summary = {
        "wider": f"matches more {what}: {old_text} -> {new_text}",
        "narrower": f"matches fewer {what}: {old_text} -> {new_text}",
        "widens_other": f"matches other {what}: {old_text} -> {new_text}",
        "unknown": f"changed, may match more {what} (cannot prove otherwise): {old_text} -> {new_text}",
    }[rel]
    effect: Effect = {"wider": "widens", "narrower": "narrows", "widens_other": "widens",
                      "unknown": "may_widen"}[rel]  # type: ignore[assignment]
    ctx.add(effect, path, summary, old if len(old) != 1 else old[0], new if len(new) != 1 else new[0])


def _delegation_rule(ctx: _Ctx, path: str, a: DelegationConfig | None, b: DelegationConfig | None) -> None:
    if a == b:
        return
    if a is None:
        assert b is not None
        ctx.add("widens", path, f"delegation allowed: actors {'; '.join(map(_describe_match, b.actors))}", a, b)
        return
    if b is None:
        ctx.add("narrows", path, "delegation removed: no actor may act any more", a, b)
        return
    _relation(ctx, _join(path, "actors"), a.actors, b.actors, "actors",
              "; ".join(map(_describe_match, a.actors)), "; ".join(map(_describe_match, b.actors)))


def _issuers_rule(ctx: _Ctx, path: str, a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> None:
    if a == b:
        return
    if b is None:
        ctx.add("widens", path, f"issuers: {', '.join(a or ())} -> every issuer", a, b)
    elif a is None:
        ctx.add("narrows", path, f"issuers: every issuer -> {', '.join(b)}", a, b)
    else:
        _set_more_is_wider("issuers")(ctx, path, a, b)


def _mode_rule(ctx: _Ctx, path: str, a: str, b: str) -> None:
    """Grants: an audit grant only adds notes, an enforced one issues tokens."""
    if a != b:
        ctx.add("widens" if b == "enforce" else "narrows", path,
                f"mode {a} -> {b}" + (" (now issues tokens)" if b == "enforce" else " (no longer issues tokens)"), a, b)


_SENDER_STRENGTH: Final = {"none": 0, "required": 1, "dpop": 2, "mtls": 2}


def _sender(ctx: _Ctx, path: str, a: str, b: str) -> None:
    if a == b:
        return
    sa, sb = _SENDER_STRENGTH.get(a, -1), _SENDER_STRENGTH.get(b, -1)
    if sa < 0 or sb < 0:
        ctx.add("may_widen", path, f"sender constraint {a} -> {b}", a, b)
    elif sb < sa:
        ctx.add("widens", path, f"sender constraint weakened: {a} -> {b}"
                + (" (dropped: bearer tokens)" if b == "none" else ""), a, b)
    elif sb > sa:
        ctx.add("narrows", path, f"sender constraint strengthened: {a} -> {b}", a, b)
    else:
        ctx.add("neutral", path, f"sender constraint {a} -> {b} (another proof of possession)", a, b)


def _target_key(t: TargetConfig) -> str:
    return f"{t.kind}={t.value}"


def _grant_compare(tokens_old: TokensConfig, tokens_new: TokensConfig) -> Callable[[_Ctx, GrantConfig, GrantConfig], None]:
    def lifetime(cfg: GrantConfig, tokens: TokensConfig) -> int:
        return min(cfg.lifetime or tokens.default_lifetime, tokens.max_lifetime)

    def compare(ctx: _Ctx, a: GrantConfig, b: GrantConfig) -> None:
        _compare_model(ctx, "", a, b, {
            "name": _ignore,
            "mode": _mode_rule,
            "issuers": _issuers_rule,
            "match": _match_rule,
            "targets": _ignore,
            "default_target": _default_target,
            "lifetime": _ignore,
            "cap_to_subject_lifetime": _false_is_wider("cap_to_subject_lifetime"),
            "delegation": _delegation_rule,
            "sender_constraint": _ignore,
            "status_list": _ignore,
            "transaction_tokens": _grant_txn_rule,
            "grant_types": _set_more_is_wider("grant types"),
        })
        la, lb = lifetime(a, tokens_old), lifetime(b, tokens_new)
        if la != lb:
            _more_is_wider("token lifetime")(ctx, "lifetime", la, lb)
        old_targets = {_target_key(t): t for t in a.targets}
        new_targets = {_target_key(t): t for t in b.targets}
        for key, t in new_targets.items():
            if key not in old_targets:
                scopes = f" (scopes {', '.join(t.scopes)})" if t.scopes else ""
                ctx.add("widens", f"targets[{key}]", f"target added: {t.kind} {t.value}{scopes}", None, t, "added")
        for key, t in old_targets.items():
            if key not in new_targets:
                ctx.add("narrows", f"targets[{key}]", f"target removed: {t.kind} {t.value}", t, None, "removed")
        for key, t in new_targets.items():
            if key in old_targets:
                _target(ctx, f"targets[{key}]", a, old_targets[key], b, t)

    return compare


def _default_target(ctx: _Ctx, path: str, a: str | None, b: str | None) -> None:
    if a == b:
        return
    if a is None:
        ctx.add("widens", path, f"default target set: {b} (requests without a target now get tokens)", a, b)
    elif b is None:
        ctx.add("narrows", path, f"default target removed: {a}", a, b)
    else:
        ctx.add("neutral", path, f"default target {a} -> {b} (both are targets of the grant)", a, b)


def _target(ctx: _Ctx, path: str, ga: GrantConfig, a: TargetConfig, gb: GrantConfig, b: TargetConfig) -> None:
    _compare_model(ctx, path, a, b, {
        "audience": _ignore,
        "resource": _ignore,
        "resource_prefix": _ignore,
        "scopes": _set_more_is_wider("scopes"),
        "default_scopes": _set_more_is_wider("default scopes"),
        "algorithm": _neutral("signing algorithm"),
        "sender_constraint": _ignore,
        "status_list": _ignore,
        "approval": _approval_rule,
        "authorization_details": _detail_types_rule,
        # A scope ignored is a request that no longer fails (never a scope granted): wider.
        "ignore_scopes": _set_more_is_wider("ignored scopes"),
    })
    # The effective values: a target's own, else its grant's.
    sa = a.sender_constraint or ga.sender_constraint
    sb = b.sender_constraint or gb.sender_constraint
    _sender(ctx, _join(path, "sender_constraint"), sa, sb)
    la = ga.status_list if a.status_list is None else a.status_list
    lb = gb.status_list if b.status_list is None else b.status_list
    _false_is_wider("status_list (offline revocation)")(ctx, _join(path, "status_list"), la, lb)


def _detail_types_rule(ctx: _Ctx, path: str, a: Sequence[Any], b: Sequence[Any]) -> None:
    """RFC 9396 ``authorization_details`` types a target accepts (docs/authorization-details.md):
    a type added widens; a type's schema, fields or narrowing changed cannot be proven
    harmless (JSON Schemas and CEL conditions are compared by text)."""
    old = {t.type: t for t in a or ()}
    new = {t.type: t for t in b or ()}
    for name in sorted(set(new) - set(old)):
        ctx.add("widens", f"{path}[{name}]", f"authorization detail type added: {name}", None, new[name], "added")
    for name in sorted(set(old) - set(new)):
        ctx.add("narrows", f"{path}[{name}]", f"authorization detail type removed: {name}", old[name], None, "removed")
    for name in sorted(set(old) & set(new)):
        if _plain(old[name]) != _plain(new[name]):
            ctx.add("may_widen", f"{path}[{name}]",
                    f"authorization detail type {name} changed (schema, fields or narrowing: cannot prove it admits no more)",
                    old[name], new[name])


def _clients_rule(what: str) -> Compare:
    """A list of client ids where None admits every client."""
    def rule(ctx: _Ctx, path: str, a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> None:
        if a == b:
            return
        if b is None:
            ctx.add("widens", path, f"{what}: {', '.join(a or ())} -> every client", a, b)
        elif a is None:
            ctx.add("narrows", path, f"{what}: every client -> {', '.join(b)}", a, b)
        else:
            _set_more_is_wider(what)(ctx, path, a, b)
    return rule


def _grant_txn_rule(ctx: _Ctx, path: str, a: Any, b: Any) -> None:
    """Transaction tokens a grant may issue (docs/transaction-tokens.md)."""
    if _plain(a) == _plain(b):
        return
    if a is None:
        ctx.add("widens", path, f"transaction tokens allowed (scopes {', '.join(b.scopes)})", a, b)
    elif b is None:
        ctx.add("narrows", path, "transaction tokens no longer allowed", a, b)
    else:
        _compare_model(ctx, path, a, b, {
            "scopes": _set_more_is_wider("transaction token scopes"),
            "clients": _clients_rule("clients"),
        })


def _approval_rule(ctx: _Ctx, path: str, a: Any, b: Any) -> None:
    """Just-in-time approval (docs/approvals.md): what needs an approver's window is withheld
    until one is granted, so needing approval for less is a widening."""
    if _plain(a) == _plain(b):
        return
    if b is None:
        ctx.add("widens", path, "approval no longer required (for scopes "
                + (", ".join(a.scopes) or "none") + ")", a, b)
        return
    if a is None:
        ctx.add("narrows", path, "approval now required (for scopes " + (", ".join(b.scopes) or "none") + ")", a, b)
        return

    def details(x: Any) -> set[str]:
        return {f"{r.type}.{r.field}={v}" for r in x.authorization_details for v in r.values}

    # Fewer markers: fewer requests wait for an approver (the inverse of the usual sets).
    for what, old, new in (("scopes needing approval", set(a.scopes), set(b.scopes)),
                           ("authorization details needing approval", details(a), details(b))):
        if old - new:
            ctx.add("widens", _join(path, what.split()[0].replace("authorization", "authorization_details")),
                    f"{what} removed: {', '.join(sorted(old - new))}", sorted(old), sorted(new))
        if new - old:
            ctx.add("narrows", _join(path, what.split()[0].replace("authorization", "authorization_details")),
                    f"{what} added: {', '.join(sorted(new - old))}", sorted(old), sorted(new))
    _more_is_wider("approval max_window")(ctx, _join(path, "max_window"), a.max_window, b.max_window)
    if a.request_ttl != b.request_ttl:
        ctx.add("neutral", _join(path, "request_ttl"), f"approval request_ttl {a.request_ttl} -> {b.request_ttl}",
                a.request_ttl, b.request_ttl)


def _rules_rule(ctx: _Ctx, path: str, a: Sequence[Any], b: Sequence[Any]) -> None:
    """Claim validation rules: an enforced rule refuses tokens, an audit one only notes."""
    def enforced(rules: Sequence[Any]) -> set[str]:
        return {r.expression for r in rules if r.mode == "enforce"}

    def audited(rules: Sequence[Any]) -> set[str]:
        return {r.expression for r in rules if r.mode == "audit"}

    ea, eb = enforced(a), enforced(b)
    for expr in sorted(ea - eb):
        turned = expr in audited(b)
        ctx.add("widens", path, f"enforced rule {'turned to audit' if turned else 'removed'}: {expr}", expr, None)
    for expr in sorted(eb - ea):
        turned = expr in audited(a)
        ctx.add("narrows", path, f"rule {'turned to enforce' if turned else 'added'}: {expr}", None, expr)
    msgs_a = {r.expression: r.message for r in a}
    msgs_b = {r.expression: r.message for r in b}
    audit_changed = audited(a) ^ audited(b)
    if any(msgs_a[e] != msgs_b[e] for e in set(msgs_a) & set(msgs_b)) or (audit_changed - ea - eb):
        ctx.add("neutral", path, "rule messages or audit-only rules changed", a, b)


def _keys_rule(ctx: _Ctx, path: str, a: KeysConfig, b: KeysConfig) -> None:
    if a == b:
        return
    if a.source != b.source:
        ctx.add("may_widen", path, f"key source {a.source} -> {b.source}", a, b)
    elif a.source == "jwks":
        def kset(k: KeysConfig) -> set[str]:
            return {json.dumps(x, sort_keys=True) for x in (k.jwks or {}).get("keys", ())}
        added, removed = kset(b) - kset(a), kset(a) - kset(b)
        if added:
            ctx.add("widens", path, f"{len(added)} verification key(s) added", None, None)
        if removed:
            ctx.add("narrows", path, f"{len(removed)} verification key(s) removed", None, None)
    else:
        ctx.add("may_widen", path, f"{a.source} changed: {getattr(a, a.source)} -> {getattr(b, b.source)}", a, b)


def _expected_typ(ctx: _Ctx, path: str, a: str | None, b: str | None) -> None:
    if a == b:
        return
    if b is None:
        ctx.add("widens", path, f"expected_typ no longer required (was {a})", a, b)
    elif a is None:
        ctx.add("narrows", path, f"expected_typ now required: {b}", a, b)
    else:
        ctx.add("may_widen", path, f"expected_typ {a} -> {b}", a, b)


def _ca_file(ctx: _Ctx, path: str, a: str | None, b: str | None) -> None:
    if a == b:
        return
    if b is None:
        ctx.add("widens", path, f"ca_file removed: every system CA is trusted for this issuer (was {a})", a, b)
    elif a is None:
        ctx.add("narrows", path, f"ca_file set: only {b} verifies this issuer's servers", a, b)
    else:
        ctx.add("may_widen", path, f"ca_file {a} -> {b}", a, b)


def _mappings_rule(ctx: _Ctx, path: str, a: ClaimMappings, b: ClaimMappings) -> None:
    if a == b:
        return
    if a.identity != b.identity:
        ctx.add("may_widen", _join(path, "identity"),
                f"identity mapping changed: {a.identity or '(default)'} -> {b.identity or '(default)'}"
                " (grants now see other identities)", a.identity, b.identity)
    for name in sorted(set(a.attributes) | set(b.attributes)):
        x, y = a.attributes.get(name), b.attributes.get(name)
        if x != y:
            ctx.add("may_widen", _join(path, f"attributes.{name}"),
                    f"attribute {name} mapping {'added' if x is None else 'removed' if y is None else 'changed'}"
                    " (conditions that read it may match more)", x, y)


def _compare_issuer(ctx: _Ctx, a: IssuerConfig, b: IssuerConfig) -> None:
    _compare_model(ctx, "", a, b, {
        "name": _ignore,
        "issuer": _may_widen("issuer URL"),
        "preset": _may_widen("preset"),
        "audiences": _set_more_is_wider("accepted audiences"),
        "keys": _keys_rule,
        "algorithms": _set_more_is_wider("algorithms"),
        "clock_skew": _more_is_wider("clock skew"),
        "max_token_lifetime": _more_is_wider("max subject token lifetime"),
        "require_jti": _false_is_wider("require_jti (one-time use)"),
        "expected_typ": _expected_typ,
        "id_jag": _true_is_wider("id_jag (ID-JAGs of this issuer accepted)"),
        "allow_insecure_http": _true_is_wider("allow_insecure_http"),
        "ca_file": _ca_file,
        "claim_validation_rules": _rules_rule,
        "claim_mappings": _mappings_rule,
    })


def _compare_trust_domain(ctx: _Ctx, a: TrustDomainConfig, b: TrustDomainConfig) -> None:
    _compare_model(ctx, "", a, b, {
        "name": _ignore,
        "bundle_file": _may_widen("bundle_file"),
        "bundle_endpoint": _may_widen("bundle_endpoint"),
        "audiences": _set_more_is_wider("accepted JWT-SVID audiences"),
        "algorithms": _set_more_is_wider("algorithms"),
        "clock_skew": _more_is_wider("clock skew"),
        "max_token_lifetime": _more_is_wider("max subject token lifetime"),
        "require_jti": _false_is_wider("require_jti (one-time use)"),
        "x509_svid": _true_is_wider("x509_svid accepted"),
        "path_templates": _may_widen("path templates"),
        "claim_validation_rules": _rules_rule,
        "claim_mappings": _may_widen("claim mappings"),
    })


# A shared secret is weaker than proof of a private key (a signed assertion, RFC 7523, or a
# TLS client certificate, RFC 8705 §2).
_AUTH_STRENGTH: Final = {"client_secret_basic": 1, "client_secret_post": 1, "private_key_jwt": 2,
                         "tls_client_auth": 2, "self_signed_tls_client_auth": 2}
_SECRET_METHODS: Final = frozenset({"client_secret_basic", "client_secret_post"})


def _auth_method(ctx: _Ctx, path: str, a: str, b: str) -> None:
    if a == b:
        return
    sa, sb = _AUTH_STRENGTH.get(a, 0), _AUTH_STRENGTH.get(b, 0)
    if sb < sa:
        ctx.add("widens", path, f"authentication weakened: {a} -> {b}", a, b)
    elif sb > sa:
        ctx.add("narrows", path, f"authentication strengthened: {a} -> {b}", a, b)
    elif a in _SECRET_METHODS and b in _SECRET_METHODS:
        ctx.add("neutral", path, f"authentication {a} -> {b} (the same secret)", a, b)
    else:
        # Another kind of key or certificate: who holds it may differ (a CA may issue many).
        ctx.add("may_widen", path, f"authentication {a} -> {b} (another credential)", a, b)


def _compare_client(ctx: _Ctx, a: RegisteredClient, b: RegisteredClient) -> None:
    def secret(ctx: _Ctx, path: str, x: str | None, y: str | None) -> None:
        if x != y and x is not None and y is not None:
            # Never the digest itself: the diff is pasted into pull requests.
            ctx.add("neutral", path, "client secret rotated")

    def jwks(ctx: _Ctx, path: str, x: Any, y: Any) -> None:
        if x != y and x is not None and y is not None:
            _keys_rule(ctx, path, KeysConfig(jwks=x), KeysConfig(jwks=y))

    _compare_model(ctx, "", a, b, {
        "client_id": _ignore,
        "auth_method": _auth_method,
        "secret_sha256": secret,
        "jwks": jwks,
        "token_exchange": _true_is_wider("token_exchange"),
        "jwt_bearer": _true_is_wider("jwt_bearer"),
        "introspection": _true_is_wider("introspection"),
        "tls_client_auth_subject_dn": _may_widen("certificate subject DN"),
        "tls_client_auth_san_dns": _may_widen("certificate DNS name"),
        "tls_client_auth_san_uri": _may_widen("certificate URI"),
        "tls_client_auth_san_ip": _may_widen("certificate IP address"),
        "tls_client_auth_san_email": _may_widen("certificate email address"),
        "tls_client_auth_ca_file": _may_widen("tls_client_auth_ca_file"),
        "certificates_sha256": _set_more_is_wider("pinned certificates"),
    })


def _describe_grant(g: GrantConfig) -> str:
    targets = ", ".join(f"{t.kind} {t.value}" + (f" [{' '.join(t.scopes)}]" if t.scopes else "") for t in g.targets)
    mode = " (audit mode)" if g.mode == "audit" else ""
    return f"{_describe_match(g.match)} -> {targets}{mode}"


def diff_configs(old: BrokerConfig, new: BrokerConfig) -> ConfigDiff:
    """Every change from ``old`` to ``new``, widenings first."""
    out: list[Change] = []
    top = _Ctx("broker", "")
    _compare_model(top, "", old, new, {
        "issuer": _neutral("the broker's issuer URL"),
        "transaction_tokens": _ignore,
        "tokens": _ignore,
        "clients": _ignore,
        "trust_domains": _ignore,
        "issuers": _ignore,
        "grants": _ignore,
    })
    out.extend(top.out)
    tokens = _Ctx("tokens", "")
    _compare_model(tokens, "", old.tokens, new.tokens, {
        "default_lifetime": _more_is_wider("default lifetime"),
        "max_lifetime": _more_is_wider("max lifetime"),
        "algorithm": _neutral("signing algorithm"),
        "workload_claim": _neutral("workload claim name"),
    })
    out.extend(tokens.out)
    txn = _Ctx("transaction_tokens", "")
    a_txn, b_txn = getattr(old, "transaction_tokens", None), getattr(new, "transaction_tokens", None)
    if _plain(a_txn) != _plain(b_txn):
        if a_txn is None or b_txn is None:
            txn.add("widens" if a_txn is None else "narrows", "",
                     "transaction tokens configured" if a_txn is None else "transaction tokens removed", a_txn, b_txn)
        else:
            _compare_model(txn, "", a_txn, b_txn, {
                "lifetime": _more_is_wider("transaction token lifetime"),
                "replacement_clients": _set_more_is_wider("replacement clients"),
            })
    out.extend(txn.out)
    clients = _Ctx("clients", "")
    _compare_model(clients, "", old.clients, new.clients, {
        "allow_public": _true_is_wider("allow_public (clients without authentication)"),
        "registered": _ignore,
    })
    out.extend(clients.out)
    client_changes = _named("client", old.clients.registered, new.clients.registered, lambda c: c.client_id,
                            _compare_client, lambda c: f"{c.auth_method}" + (" (token exchange)" if c.token_exchange else ""))
    out.extend(_redact(client_changes))
    out.extend(_named("issuer", old.issuers, new.issuers, lambda i: i.name, _compare_issuer,
                      lambda i: f"{i.issuer} (audiences {', '.join(i.audiences)})"))
    out.extend(_named("trust_domain", old.trust_domains, new.trust_domains, lambda t: t.name,
                      _compare_trust_domain, lambda t: f"spiffe://{t.name}"))
    grant_changes = _named("grant", old.grants, new.grants, lambda g: g.name,
                           _grant_compare(old.tokens, new.tokens), _describe_grant)
    out.extend(_audit_grants_issue_nothing(grant_changes, old.grants, new.grants))
    out.extend(_grant_order(old.grants, new.grants))
    rank = {e: i for i, e in enumerate(EFFECTS)}
    section = {s: i for i, s in enumerate(SECTIONS)}
    # A stable sort keeps the file's order within a section.
    ordered = sorted(out, key=lambda c: (rank[c.effect], section.get(c.section, len(SECTIONS))))
    return ConfigDiff(tuple(ordered))


def _audit_grants_issue_nothing(changes: list[Change], old: Sequence[GrantConfig],
                                new: Sequence[GrantConfig]) -> list[Change]:
    """A grant in audit mode only adds notes to audit records and never issues a token
    (docs/configuration.md#audit-mode): adding one, removing one, or changing one that stays
    (or becomes) an audit grant admits nothing, so those changes are neutral. Turning one to
    enforce is the widening that gets reviewed."""
    mode_old = {g.name: g.mode for g in old}
    mode_new = {g.name: g.mode for g in new}
    out: list[Change] = []
    for c in changes:
        audit_after = mode_new.get(c.name, mode_old.get(c.name)) == "audit"
        if audit_after and c.path != "mode" and c.effect != "neutral":
            c = Change("neutral", c.action, c.section, c.name, c.path,
                       f"{c.summary} (audit mode: issues nothing)", c.old, c.new)
        out.append(c)
    return out


def _grant_order(old: Sequence[GrantConfig], new: Sequence[GrantConfig]) -> list[Change]:
    """The first matching grant in file order wins (docs/configuration.md#how-a-grant-is-chosen),
    and its lifetime, sender constraint and delegation apply: a new order of enforced grants may
    admit more (audit grants are evaluated each on its own and never win)."""
    names_new = {g.name for g in new if g.mode == "enforce"}
    names_old = {g.name for g in old if g.mode == "enforce"}
    before = [g.name for g in old if g.name in names_new and g.name in names_old]
    after = [g.name for g in new if g.name in names_old and g.name in names_new]
    if before == after:
        return []
    return [Change("may_widen", "changed", "grant", "", "order",
                   "grants reordered: " + ", ".join(after) + " (was " + ", ".join(before) + "); the first matching"
                   " grant wins, so lifetimes, sender constraints and delegation may change", before, after)]


def _redact(changes: list[Change]) -> list[Change]:
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k not in ("secretSha256", "secret_sha256")}
        return v

    return [Change(c.effect, c.action, c.section, c.name, c.path, c.summary, clean(c.old), clean(c.new))
            for c in changes]

