"""Verifying tokens this broker issued, presented back as subject tokens (a delegation chain
hop, sts.trust.delegation), with the broker's own published keys: no network I/O.

RFC 8725 §3.1 and §3.11: the algorithm is one we sign with and the ``typ`` is ``at+jwt``
(RFC 9068 §2.1), so no other kind of JWT of ours passes for an access token; the key is found
by ``kid`` among the keys we publish at ``/jwks`` (the key ring's snapshot, parsed once per
snapshot), never through a header. RFC 7519 §4.1.4: the token is refused at or after ``exp``;
``nbf``/``iat`` may be a little ahead (replicas' clocks differ). The claims we put in every
token (RFC 9068 §2.2) must be there with the types we give them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sts import jose
from sts.jose.b64 import b64url_decode
from sts.subject.model import VerifiedSubject, WorkloadIdentity
from sts.subject.oidc import SubjectRejected, token_sha256
from sts.tokens.claims import ACCESS_TOKEN_TYP

OWN_ALGORITHMS: Final = frozenset({"ES256", "RS256", "EdDSA"})
CLOCK_LEEWAY: Final = 30
_MAX_TOKEN: Final = 16384


@dataclass(frozen=True)
class VerifiedOwnToken(VerifiedSubject):
    """One of our access tokens, verified. ``issuer_name`` is the configured issuer the chain
    started from (``origin`` of its chain record, or the empty string when the token has
    none); ``identity`` is the workload it speaks for (its ``sub`` and the attributes mapped
    when the chain began), which no hop can change; ``origin_issuer``/``origin_subject`` are
    the workload credential's own ``iss``/``sub`` (the workload claim)."""

    identity: WorkloadIdentity = field(default_factory=lambda: WorkloadIdentity("", "", {}))
    origin_issuer: str = ""
    origin_subject: str = ""


class OwnTokenVerifier:
    """Invariant: a returned token was signed by a key we publish, for our issuer, and has
    not expired."""

    def __init__(self, jwks: Callable[[], Mapping[str, Any]], *, clock: Callable[[], float] = time.time) -> None:
        self._jwks = jwks
        self._clock = clock
        self._parsed: tuple[int, jose.KeySet] | None = None

    @staticmethod
    def is_ours(token: str, issuer: str) -> bool:
        """Named unsafe peek for dispatch: does the token say we issued it? (Then only our keys
        may verify it; a token claiming our issuer is never sent to another verifier.)

        Every token of ours is typed ``at+jwt``: the small header is read first, so the
        workload credentials of every other exchange (typed otherwise) cost no payload decode
        here. An untyped or otherwise typed token naming our issuer goes to the verifier
        of its ``iss`` like any other, which refuses it: we trust no issuer entry for our URL."""
        head, dot, _ = token.partition(".")
        if not dot or len(head) > 1024:
            return False
        try:
            header = json.loads(b64url_decode(head))
        except ValueError:
            return False
        if not isinstance(header, dict) or header.get("typ") != ACCESS_TOKEN_TYP:
            return False
        try:
            return jose.unsafe_decode(token).claims.get("iss") == issuer
        except jose.JOSEError:
            return False

    def _keys(self) -> jose.KeySet:
        jwks = self._jwks()
        parsed = self._parsed
        # The key ring swaps its snapshot (a new dict) on every refresh: parse once per swap.
        if parsed is None or parsed[0] != id(jwks):
            parsed = (id(jwks), jose.parse_jwks(dict(jwks)))
            self._parsed = parsed
        return parsed[1]

    def verify(self, token: str, *, issuer: str, workload_claim: str, chain_claim: str) -> VerifiedOwnToken:
        if len(token) > _MAX_TOKEN:
            raise SubjectRejected("malformed", "own_token_too_large")
        try:
            unverified = jose.unsafe_decode(token)
            alg = jose.check_header(unverified.header, allowed_algorithms=OWN_ALGORITHMS, expected_typ=ACCESS_TOKEN_TYP)
        except jose.JOSEError as exc:
            raise SubjectRejected("header", f"own_token_{exc.reason}") from None
        kid = unverified.header.get("kid")
        key = self._keys().find(kid if isinstance(kid, str) else None, alg)
        if key is None:
            raise SubjectRejected("signature", "own_token_unknown_kid")
        try:
            jose.verify_signature(unverified, key, alg)
        except jose.JOSEError as exc:
            raise SubjectRejected("signature", f"own_token_{exc.reason}") from None
        claims = unverified.claims
        now = self._clock()
        exp, iat, sub, jti = claims.get("exp"), claims.get("iat"), claims.get("sub"), claims.get("jti")
        nbf = claims.get("nbf", iat)
        if claims.get("iss") != issuer or not _number(exp) or not _number(nbf):
            raise SubjectRejected("claims", "own_token_claims")
        if now >= exp:
            raise SubjectRejected("claims", "own_token_expired")
        if nbf > now + CLOCK_LEEWAY:
            raise SubjectRejected("claims", "own_token_not_yet_valid")
        if not isinstance(sub, str) or not sub or not isinstance(jti, str) or not jti:
            raise SubjectRejected("claims", "own_token_claims")
        workload = claims.get(workload_claim)
        if not isinstance(workload, Mapping):
            raise SubjectRejected("claims", "own_token_workload_claim")
        attributes = workload.get("attributes")
        record = claims.get(chain_claim)
        origin = ""
        if isinstance(record, list) and record and isinstance(record[0], Mapping) and isinstance(record[0].get("origin"), str):
            origin = record[0]["origin"]
        identity = WorkloadIdentity(identity=sub, issuer_name=origin,
                                    attributes=dict(attributes) if isinstance(attributes, Mapping) else {})
        return VerifiedOwnToken(
            issuer_name=origin,
            issuer=issuer,
            subject=sub,
            claims=claims,
            expires_at=float(exp),
            token_sha256=token_sha256(token),
            identity=identity,
            origin_issuer=str(workload.get("issuer", "")),
            origin_subject=str(workload.get("subject", "")),
        )


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
