"""Token introspection (RFC 7662 §2) and client revocation (RFC 7009 §2) of the broker's own
tokens: the pure parts (is this one of our tokens, still valid; what the answer says).

RFC 7662 §2.1: "To prevent token scanning attacks, the endpoint MUST also require some form of
authorization to access this endpoint" — only registered clients with ``introspection: true``
may call it (``sts.http.lifecycle``).

RFC 7662 §2.2: "If the introspection call is properly authorized but the token is not active,
does not exist on this server, or the protected resource is not allowed to introspect this
particular token, then the authorization server MUST return an introspection response with the
"active" field set to "false"." — every such case answers exactly ``{"active": false}``, so
the answer tells nothing more about a token that is not active.

RFC 7009 §2.1: "The authorization server first validates the client credentials (in case of a
confidential client) and then verifies whether the token was issued to the client making the
revocation request." RFC 7009 §2.2: "The authorization server responds with HTTP status code
200 if the token has been revoked successfully or if the client submitted an invalid token." —
a token that is unknown, foreign, expired or issued to another client is left alone and the
answer is the same 200.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sts import jose

# Tokens this broker signs (sts.tokens.signer): RFC 9068 typ, allowlisted algorithms.
OWN_TOKEN_TYP: Final = "at+jwt"
OWN_ALGORITHMS: Final = ("ES256", "RS256", "EdDSA", "PS256")
# Replicas' clocks differ a little: a token one replica just issued is not "not yet valid" at another.
CLOCK_LEEWAY: Final = 30
INACTIVE: Final = {"active": False}
# RFC 7662 §2.2 members copied from the token when present (plus cnf for sender-constrained
# tokens, RFC 7800 §3 / RFC 9449 §7.1, act for delegation, RFC 8693 §4.1, and the granted
# authorization details, RFC 9396 §9.2).
_COPIED: Final = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti", "cnf", "act", "authorization_details")


def verify_own_token(token: str, *, issuer: str, jwks: Mapping[str, Any], now: float) -> dict[str, Any] | None:
    """The claims of ``token`` if this broker signed it with a published key, its issuer is ours
    and it is within its validity period; None for anything else (never raises for bad input)."""
    if not token or len(token) > 16384:
        return None
    try:
        unverified = jose.unsafe_decode(token)
        alg = jose.check_header(unverified.header, allowed_algorithms=OWN_ALGORITHMS, expected_typ=OWN_TOKEN_TYP)
        kid = unverified.header.get("kid")
        key = jose.parse_jwks(jwks).find(kid if isinstance(kid, str) else None, alg)
        if key is None:
            return None
        jose.verify_signature(unverified, key, alg)
    except jose.JOSEError:
        return None
    claims = dict(unverified.claims)
    exp, nbf, jti = claims.get("exp"), claims.get("nbf", claims.get("iat")), claims.get("jti")
    if claims.get("iss") != issuer or not isinstance(jti, str) or not jti:
        return None
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or now >= exp:
        return None
    if isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and nbf > now + CLOCK_LEEWAY:
        return None
    return claims


def introspection_response(claims: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7662 §2.2 for an active token."""
    body: dict[str, Any] = {"active": True}
    body.update({name: claims[name] for name in _COPIED if name in claims})
    cnf = claims.get("cnf")
    # RFC 9449 §7.1: a DPoP-bound token introspects with token_type DPoP.
    body["token_type"] = "DPoP" if isinstance(cnf, Mapping) and "jkt" in cnf else "Bearer"
    return body


def issued_to(row: Mapping[str, Any] | None, client_id: str) -> bool:
    """RFC 7009 §2.1: may ``client_id`` revoke the token of ``row``? Only the client it was issued to."""
    return row is not None and row.get("client_id") == client_id
