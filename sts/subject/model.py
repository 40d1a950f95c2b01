"""Values that cross the boundary between verifying a credential and deciding on it.

A :class:`VerifiedSubject` is what the subject-token verifier hands on once a token's signature
and registered claims (RFC 7519 §4.1) have been checked; a :class:`WorkloadIdentity` is what
the claim mapping (``sts.trust.mapping``) makes of it and what the policy
(``sts.trust.policy``) decides on. Neither holds the raw token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VerifiedSubject:
    """A token whose signature and registered claims were verified.

    Invariant: ``issuer_name`` names a configured trusted issuer whose keys verified the token,
    ``issuer`` and ``subject`` equal its ``iss`` and ``sub``, and ``token_sha256`` is the hex
    SHA-256 of the compact token (the token itself is never kept).
    """

    issuer_name: str
    issuer: str
    subject: str
    claims: Mapping[str, Any]
    expires_at: float
    token_sha256: str


@dataclass(frozen=True)
class WorkloadIdentity:
    """The workload a verified token speaks for, after claim mapping.

    Invariant: ``identity`` is a non-empty string of at most 255 characters without control
    characters; it is what grants match and what becomes ``sub`` of an issued token.
    ``attributes`` hold JSON scalars or lists of strings only.
    """

    identity: str
    issuer_name: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class VerifiedIdJag(VerifiedSubject):
    """An Identity Assertion JWT Authorization Grant (``typ`` ``oauth-id-jag+jwt``,
    draft-ietf-oauth-identity-assertion-authz-grant-04 §3) from an issuer trusted for ID-JAGs,
    verified as a JWT-bearer assertion. Invariant: as for ``VerifiedSubject``, and its issuer is
    configured with ``id_jag: true``; the draft's own claim rules (§4.4.1) are checked by
    ``sts.assertion``."""
