"""Delegation chains that can only narrow (pure): RFC 8693 §1.1, §4.1 ``act``, §4.4 ``may_act``.

A chain hop is an exchange whose subject token is a token this broker issued, presented by the
service it was issued to. These rules decide whether the hop may happen and what it may carry;
the pipeline (``sts.exchange``) applies them after the grant policy chose a grant, and every
refusal has its own audit reason:

* ``chain_not_allowed``: the grant does not accept our own tokens (``delegation.chain``).
* ``chain_presenter_unknown``: neither an actor token nor client authentication says who
  presents the token. ``chain_client_not_allowed``: a client presenting it alone is not one of
  the grant's ``delegation.clients``.
* ``chain_audience_mismatch``: the token's ``aud`` is not the presenting service (by default
  the ``aud`` is the service's workload identity or client id; ``chains.presenters`` maps an
  audience to the services that hold its tokens). A token is only ever passed on by the party
  it was issued to; anyone else holding it is not part of the chain.
* ``chain_scope_widening`` (``invalid_scope``): a requested scope the parent does not carry;
  without ``scope``, the grant's default scopes that the parent carries, and none is a refusal.
* ``chain_ancestor_revoked``: a token earlier in the chain than the parent was revoked
  (``sts revoke``); the parent itself is the lifecycle step's ``subject_revoked``.
* ``chain_details_widening`` (``invalid_authorization_details``, raised by the pipeline with
  :func:`details_within`): RFC 9396 details the parent does not carry.
* ``chain_record_invalid``: the parent lacks a well-formed chain record (``sts_chain``), e.g. a
  token issued before chains were configured; the chain could not be named in full.

For every delegated exchange, chained or not:

* ``may_act_mismatch``: RFC 8693 §4.4, "The may_act claim makes a statement that one party is
  authorized to become the actor and act on behalf of another party": when the subject token
  carries it, the actor must be that party, in addition to the grant's ``delegation.actors``.
  ``may_act_missing``: the grant sets ``require_may_act`` and the subject token has none.
* ``chain_too_deep``: the new token's ``act`` would nest deeper than the grant's
  ``delegation.max_depth`` (or ``chains.max_depth``). Depth is the number of actors in ``act``.

What is issued never widens: scopes within the parent's (above), the audience one the grant
allows (the policy), the lifetime within the parent's remaining life (the pipeline caps it by
the parent's ``exp`` whatever the grant's ``cap_to_subject_lifetime``), the
depth one more than the parent's, and ``act`` nested as RFC 8693 §4.1 says: "The outermost act
claim represents the current actor while nested act claims represent prior actors": the new
actor wraps the parent's ``act``, which is copied, never rewritten.

The chain record (``sts_chain``, a private claim of our tokens while some grant sets
``delegation.chain``) lists, oldest first, every token of the chain: its ``jti``, the grant that
issued it and who presented it (``actor`` identity or ``client`` id); the first names the
``origin`` issuer of the workload's own credential. The audit record of a hop holds it whole
(context key ``chain``), so a chain is named without reading the database on the hot path.

Standards: RFC 8693 (January 2020) only; no draft is followed. The chain record is our own
private claim, not draft-liu-oauth-chain-delegation's ``delegation_chain``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from sts.config.delegation import ChainsConfig
    from sts.config.models import DelegationConfig

#: The private claim holding the chain record of a token (RFC 7519 §4.3 private claim name).
CHAIN_CLAIM: Final = "sts_chain"
#: ``chains.max_depth`` when the configuration does not set it.
DEFAULT_MAX_DEPTH: Final = 4
# act nests once per hop and the cap is at most 16: anything deeper is refused, and walking
# stops there, so a hostile nesting from another issuer costs nothing.
_WALK_LIMIT: Final = 64
_MAX_ID: Final = 512


@dataclass(frozen=True, slots=True)
class GrantDelegation:
    """What one grant allows of delegation. Invariant: ``max_depth >= 1``."""

    chain: bool
    max_depth: int
    require_may_act: bool = False
    clients: frozenset[str] = frozenset()

    @classmethod
    def compile(cls, cfg: DelegationConfig | None, default_depth: int) -> GrantDelegation:
        if cfg is None:
            return cls(chain=False, max_depth=default_depth)
        return cls(chain=cfg.chain, max_depth=cfg.max_depth or default_depth,
                   require_may_act=cfg.require_may_act, clients=frozenset(cfg.clients))


#: What a grant without ``delegation`` allows: no chain, the default depth cap.
NO_DELEGATION: Final = GrantDelegation(chain=False, max_depth=DEFAULT_MAX_DEPTH)


@dataclass(frozen=True, slots=True)
class Presenter:
    """The party asking for the next hop: an actor (by its verified actor token: mapped
    ``identity``, raw ``iss`` and ``sub``) or else an authenticated client. Invariant: exactly
    one of ``identity`` and ``client_id``."""

    identity: str | None = None
    client_id: str | None = None
    iss: str | None = None
    sub: str | None = None

    def record(self) -> dict[str, str]:
        return {"actor": self.identity} if self.identity is not None else {"client": self.client_id or ""}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused hop: the RFC error and the stable audit reason (never sent to the caller)."""

    error: Literal["invalid_request", "invalid_scope"]
    reason: str
    detail: str | None = None


class Presenters:
    """Which services hold tokens issued for an audience (``chains.presenters``); by default
    the audience itself is the service's workload identity or client id."""

    def __init__(self, entries: Mapping[str, tuple[frozenset[str], frozenset[str]]] | None = None) -> None:
        self._entries = dict(entries or {})

    @classmethod
    def from_config(cls, cfg: ChainsConfig) -> Presenters:
        return cls({p.audience: (frozenset(p.identities), frozenset(p.clients)) for p in cfg.presenters})

    def holds(self, audience: object, presenter: Presenter) -> bool:
        if not isinstance(audience, str):
            return False  # we issue one audience per token (RFC 9068 §3): anything else is not ours
        entry = self._entries.get(audience)
        if entry is not None:
            identities, clients = entry
            return presenter.identity in identities if presenter.identity is not None else presenter.client_id in clients
        return audience == (presenter.identity if presenter.identity is not None else presenter.client_id)


@dataclass(frozen=True)
class ChainRules:
    """The compiled global part: the default depth cap and the presenters of audiences."""

    max_depth: int
    presenters: Presenters

    @classmethod
    def from_config(cls, cfg: ChainsConfig) -> ChainRules:
        return cls(max_depth=cfg.max_depth, presenters=Presenters.from_config(cfg))


def act_depth(act: object) -> int:
    """How many actors an ``act`` claim names (0 without one); -1 when it is not a chain of
    JSON objects or nests beyond any cap we allow."""
    depth = 0
    while act is not None:
        if not isinstance(act, Mapping) or depth >= _WALK_LIMIT:
            return -1
        depth += 1
        act = act.get("act")
    return depth


def may_act_allows(may_act: object, presenter: Presenter) -> bool:
    """RFC 8693 §4.4: does ``may_act`` name ``presenter``? Its members identify the party;
    every identifying member we know must match and at least one must be there:

    * ``iss`` with ``sub``: the actor token's own issuer and subject;
    * ``sub`` alone: the actor's workload identity in this broker (an unqualified ``sub`` of
      another issuer would be ambiguous across issuers);
    * ``client_id`` (RFC 8693 §4.3): the client presenting a chained token alone.

    Other members (say ``email``) only inform and are ignored."""
    if not isinstance(may_act, Mapping):
        return False
    iss, sub, client = may_act.get("iss"), may_act.get("sub"), may_act.get("client_id")
    if sub is None and client is None:
        return False
    if client is not None and client != presenter.client_id:
        return False
    if sub is not None:
        if presenter.identity is None:
            return False
        if iss is not None:
            return iss == presenter.iss and sub == presenter.sub
        return sub == presenter.identity
    return iss is None


def check_delegation(subject_claims: Mapping[str, Any], presenter: Presenter, rules: GrantDelegation) -> Refusal | int:
    """``may_act`` and the depth cap, for every exchange with an actor. Returns the new
    token's depth (actors in its ``act``) or the refusal."""
    may_act = subject_claims.get("may_act")
    if may_act is not None:
        if not may_act_allows(may_act, presenter):
            return Refusal("invalid_request", "may_act_mismatch")
    elif rules.require_may_act:
        return Refusal("invalid_request", "may_act_missing")
    prior = act_depth(subject_claims.get("act"))
    if prior < 0:
        return Refusal("invalid_request", "chain_too_deep", "act is not a chain of objects or nests too deep")
    depth = prior + 1
    if depth > rules.max_depth:
        return Refusal("invalid_request", "chain_too_deep", f"depth {depth} > max_depth {rules.max_depth}")
    return depth


def parse_record(value: object) -> tuple[dict[str, str], ...] | None:
    """The chain record of one of our tokens, or None when it is missing or malformed."""
    if not isinstance(value, list) or not value or len(value) > _WALK_LIMIT:
        return None
    hops: list[dict[str, str]] = []
    for i, hop in enumerate(value):
        if not isinstance(hop, Mapping):
            return None
        allowed = {"jti", "grant", "actor", "client"} | ({"origin"} if i == 0 else set())
        if set(hop) - allowed or not all(isinstance(v, str) and 0 < len(v) <= _MAX_ID for v in hop.values()):
            return None
        if "jti" not in hop or "grant" not in hop or ("actor" in hop and "client" in hop):
            return None
        hops.append(dict(hop))
    if "origin" not in hops[0]:
        return None
    return tuple(hops)


def check_chain(
    *,
    parent: Mapping[str, Any],
    record: Sequence[Mapping[str, str]] | None,
    presenter: Presenter | None,
    rules: GrantDelegation,
    presenters: Presenters,
    requested_scopes: tuple[str, ...] | None,
    granted_scopes: tuple[str, ...],
    revoked: Iterable[str] | frozenset[str] = frozenset(),
) -> Refusal | tuple[str, ...]:
    """The rules of a hop whose subject token (``parent``, verified claims) is ours. Returns
    the scopes to issue (within the parent's) or the refusal."""
    if not rules.chain:
        return Refusal("invalid_request", "chain_not_allowed")
    if record is None:
        return Refusal("invalid_request", "chain_record_invalid")
    if presenter is None:
        return Refusal("invalid_request", "chain_presenter_unknown")
    if presenter.identity is None and presenter.client_id not in rules.clients:
        return Refusal("invalid_request", "chain_client_not_allowed")
    if not presenters.holds(parent.get("aud"), presenter):
        return Refusal("invalid_request", "chain_audience_mismatch")
    revoked_set = revoked if isinstance(revoked, frozenset) else frozenset(revoked)
    if revoked_set:
        # The parent itself is the lifecycle step's (`subject_revoked`); here, its ancestors.
        for hop in record:
            if hop["jti"] in revoked_set and hop["jti"] != parent.get("jti"):
                return Refusal("invalid_request", "chain_ancestor_revoked", f"jti {hop['jti']}")
    scope = parent.get("scope")
    held = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
    if requested_scopes is not None:
        wider = [s for s in dict.fromkeys(requested_scopes) if s not in held]
        if wider:
            return Refusal("invalid_scope", "chain_scope_widening", "not in the parent token: " + " ".join(wider)[:200])
        return granted_scopes
    narrowed = tuple(s for s in granted_scopes if s in held)
    if not narrowed:
        return Refusal("invalid_scope", "chain_scope_widening", "no default scope is in the parent token")
    return narrowed


def next_record(
    parent_record: Sequence[Mapping[str, str]] | None, *, jti: str, grant: str, presenter: Presenter | None,
    origin: str,
) -> list[dict[str, str]]:
    """The chain record of the token about to be issued: the parent's, then this hop."""
    hop: dict[str, str] = {"jti": jti, "grant": grant}
    if presenter is not None:
        hop.update(presenter.record())
    if parent_record is None:
        return [{**hop, "origin": origin}]
    return [dict(h) for h in parent_record] + [hop]


@dataclass(frozen=True, slots=True)
class Hop:
    """An allowed delegated exchange: the new token's depth, who acts, the parent's chain
    record (chain hops only) and the scopes to issue when a chain narrowed them."""

    depth: int
    presenter: Presenter | None
    record: tuple[dict[str, str], ...] | None = None
    scopes: tuple[str, ...] | None = None


def decide_hop(
    *,
    subject_claims: Mapping[str, Any],
    own: bool,
    presenter: Presenter | None,
    rules: GrantDelegation,
    chains: ChainRules | None,
    requested_scopes: tuple[str, ...] | None,
    granted_scopes: tuple[str, ...],
    revoked: frozenset[str] = frozenset(),
) -> Refusal | Hop:
    """Step 6a of the exchange, for an exchange with an actor or whose subject token is ours:
    the chain rules (our own tokens), then ``may_act`` and the depth cap."""
    record: tuple[dict[str, str], ...] | None = None
    scopes: tuple[str, ...] | None = None
    if own:
        record = parse_record(subject_claims.get(CHAIN_CLAIM))
        narrowed = check_chain(
            parent=subject_claims, record=record, presenter=presenter, rules=rules,
            presenters=chains.presenters if chains is not None else Presenters(),
            requested_scopes=requested_scopes, granted_scopes=granted_scopes, revoked=revoked,
        ) if chains is not None else Refusal("invalid_request", "chain_not_allowed")
        if isinstance(narrowed, Refusal):
            return narrowed
        scopes = narrowed
    if presenter is None:
        return Hop(depth=max(act_depth(subject_claims.get("act")), 0), presenter=None, record=record, scopes=scopes)
    depth = check_delegation(subject_claims, presenter, rules)
    if isinstance(depth, Refusal):
        return depth
    return Hop(depth=depth, presenter=presenter, record=record, scopes=scopes)



def details_within(granted: Sequence[Mapping[str, Any]], parent_details: object) -> bool:
    """RFC 9396 authorization details of a chain hop never widen either: each granted object
    must lie within one the parent token carries (``authorization_details``, §9.1) — the same
    ``type`` and fields; a list field a subset of the parent's, any other field equal. A field
    the parent sets and the hop would drop, or one it would add, is wider or unknown, so not
    within. A parent without authorization details admits none."""
    if not granted:
        return True
    if not isinstance(parent_details, list):
        return False
    return all(any(_detail_within(d, p) for p in parent_details if isinstance(p, Mapping)) for d in granted)


def _detail_within(detail: Mapping[str, Any], parent: Mapping[str, Any]) -> bool:
    if set(detail) != set(parent):
        return False
    for key, value in detail.items():
        held = parent[key]
        if isinstance(value, list) and isinstance(held, list):
            if not all(v in held for v in value):
                return False
        elif value != held:
            return False
    return True
