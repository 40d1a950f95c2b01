"""Strict SPIFFE ID parsing (SPIFFE-ID.md §2, §2.1, §2.2, §2.3).

A SPIFFE ID is ``spiffe://<trust domain><path>``. The checks, each with its reason code:

* §2: "Valid SPIFFE IDs MUST have the scheme set to ``spiffe``, include a non-zero trust domain
  name, and MUST NOT include a query or fragment component" (``wrong_scheme``,
  ``empty_trust_domain``, ``query``, ``fragment``).
* §2.1: "The ``userinfo`` and ``port`` parts of the authority component MUST be empty", "The
  ``host`` part ... MUST be lowercase", "MUST contain only letters, numbers, dots, dashes, and
  underscores", "MUST NOT contain percent-encoded characters" (``userinfo``, ``port``,
  ``trust_domain_char``, ``percent_encoding``).
* §2.2: the path "MUST NOT include percent-encoded characters", "MUST NOT include segments that
  are empty or are relative path modifiers (i.e. ``.``, ``..``)", "MUST NOT include a trailing
  ``/``", and segments "MUST contain only letters, numbers, dots, dashes, and underscores"
  (``percent_encoding``, ``empty_segment``, ``dot_segment``, ``trailing_slash``,
  ``path_char``).
* §2.3: implementations "MUST support SPIFFE URIs up to 2048 bytes", and a trust domain name is
  at most 255 bytes. Longer values are refused (``too_long``) so that an ID is always bounded.

Invalid IDs are refused, never normalised: §2.4 calls the scheme and trust domain
case-insensitive, but §2.1 requires the host to be lowercase, so ``SPIFFE://Example.org/x`` is
refused rather than rewritten (as go-spiffe does). Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_TRUST_DOMAIN_LENGTH",
    "InvalidSpiffeID",
    "SpiffeID",
    "parse_spiffe_id",
    "parse_trust_domain",
]

MAX_ID_LENGTH: Final = 2048
MAX_TRUST_DOMAIN_LENGTH: Final = 255
_SCHEME: Final = "spiffe://"
_TRUST_DOMAIN: Final = re.compile(r"[a-z0-9._-]+")
_SEGMENT: Final = re.compile(r"[A-Za-z0-9._-]+")


class InvalidSpiffeID(ValueError):
    """The value is not a valid SPIFFE ID. ``reason`` is a stable code; the message never holds
    the value (it came from a token or a certificate)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid SPIFFE ID: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SpiffeID:
    """A valid SPIFFE ID. Invariant: ``trust_domain`` matches ``[a-z0-9._-]{1,255}`` and
    ``path`` is empty or ``/``-separated non-empty segments of ``[A-Za-z0-9._-]`` that are
    neither ``.`` nor ``..``; ``str(id)`` is at most 2048 characters."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:]) if self.path else ()

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain


def parse_trust_domain(value: str) -> str:
    """A trust domain name (SPIFFE-ID.md §2.1), returned unchanged; ``InvalidSpiffeID``
    otherwise."""
    if not isinstance(value, str) or not value:
        raise InvalidSpiffeID("empty_trust_domain")
    if len(value) > MAX_TRUST_DOMAIN_LENGTH:
        raise InvalidSpiffeID("too_long")
    if _TRUST_DOMAIN.fullmatch(value) is None:
        raise InvalidSpiffeID(_trust_domain_problem(value))
    return value


def _trust_domain_problem(host: str) -> str:
    if "@" in host:
        return "userinfo"
    if ":" in host:
        return "port"
    if "%" in host:
        return "percent_encoding"
    return "trust_domain_char"


def parse_spiffe_id(value: str) -> SpiffeID:
    """Parse ``value`` strictly; raise :class:`InvalidSpiffeID` with the reason code."""
    if not isinstance(value, str) or not value:
        raise InvalidSpiffeID("empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidSpiffeID("too_long")
    if not value.startswith(_SCHEME):
        raise InvalidSpiffeID("wrong_scheme")
    rest = value[len(_SCHEME) :]
    # The fragment and query end the hier-part (RFC 3986 §3); look for them first so that
    # "spiffe://td?x" is reported as a query, not as a bad trust domain character.
    if "#" in rest:
        raise InvalidSpiffeID("fragment")
    if "?" in rest:
        raise InvalidSpiffeID("query")
    authority, slash, path = rest.partition("/")
    if not authority:
        raise InvalidSpiffeID("empty_trust_domain")
    trust_domain = parse_trust_domain(authority)
    if not slash:
        return SpiffeID(trust_domain, "")
    path = "/" + path
    if "%" in path:
        raise InvalidSpiffeID("percent_encoding")
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        if segment == "":
            raise InvalidSpiffeID("trailing_slash" if i == len(segments) - 1 else "empty_segment")
        if segment in (".", ".."):
            raise InvalidSpiffeID("dot_segment")
        if _SEGMENT.fullmatch(segment) is None:
            raise InvalidSpiffeID("path_char")
    return SpiffeID(trust_domain, path)
