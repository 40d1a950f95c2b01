"""Pydantic models of the ``chains:`` section: delegation chains of tokens this broker issued
(docs/agents.md, docs/configuration.md#chains).

A chain is a token of ours re-exchanged by the service it was issued to (RFC 8693 §1.1
delegation, §4.1 nested ``act``). The grant that accepts such a token says so itself
(``delegation.chain: true``, ``sts.config.models.DelegationConfig``); this section holds what
is global: the default cap on the chain's depth and which services hold the tokens issued for
an audience, when the audience is not simply the service's own identity or client id.

Every model is frozen, forbids unknown keys and accepts camelCase aliases, like the rest of the
file (``sts.config.models``).
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator
from pydantic.alias_generators import to_camel

from sts.trust.delegation import DEFAULT_MAX_DEPTH

#: The longest chain a grant may allow: ``act`` nests once per hop, and relying parties walk it.
MAX_DEPTH_LIMIT: Final = 16

Depth = Annotated[StrictInt, Field(ge=1, le=MAX_DEPTH_LIMIT)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, hide_input_in_errors=True
    )


def _no_blank(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    for v in values:
        if not v or any(c.isspace() or ord(c) < 0x20 for c in v):
            raise ValueError(f"{what} must be non-empty strings without whitespace")
    if len(set(values)) != len(values):
        raise ValueError(f"duplicate {what}")
    return values


class PresenterConfig(_Model):
    """The services that hold tokens issued for ``audience``: a token of ours whose ``aud`` is
    ``audience`` may be presented as a subject token only by one of these workload identities
    (with its actor token) or registered clients (with their client authentication).

    Invariant: at least one identity or client."""

    audience: str
    identities: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()

    @field_validator("identities")
    @classmethod
    def _identities(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _no_blank(v, "identities")

    @field_validator("clients")
    @classmethod
    def _clients(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _no_blank(v, "clients")

    @model_validator(mode="after")
    def _check(self) -> PresenterConfig:
        if not self.audience or any(c.isspace() for c in self.audience):
            raise ValueError("audience must be a non-empty string without whitespace")
        if not self.identities and not self.clients:
            raise ValueError("a presenter entry needs identities or clients")
        return self


class ChainsConfig(_Model):
    """Global rules of delegation chains. Invariant: one entry per audience."""

    max_depth: Depth = DEFAULT_MAX_DEPTH
    presenters: tuple[PresenterConfig, ...] = ()

    @field_validator("presenters")
    @classmethod
    def _unique(cls, v: tuple[PresenterConfig, ...]) -> tuple[PresenterConfig, ...]:
        seen: set[str] = set()
        for p in v:
            if p.audience in seen:
                raise ValueError(f"duplicate presenters audience {p.audience!r}")
            seen.add(p.audience)
        return v


def own_issuer_problems(issuer: str, issuer_urls: list[tuple[int, str]], chains_on: bool) -> list[tuple[tuple[str | int, ...], str]]:
    """When a grant accepts our own tokens, they are verified with the broker's own keys, so an
    ``issuers`` entry for the broker's own URL would never be used: say so rather than ignore it."""
    if not chains_on:
        return []
    own = issuer.rstrip("/")
    return [
        (("issuers", i, "issuer"),
         "is the broker's own issuer: with delegation.chain the broker verifies its own tokens itself; remove this entry")
        for i, url in issuer_urls if url.rstrip("/") == own
    ]
