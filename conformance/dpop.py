"""DPoP proofs the kit sends with its token requests (RFC 9449), built here from the RFC.

RFC 9449 §4.2: a proof is a JWS with header ``typ`` ``dpop+jwt``, an asymmetric ``alg`` and the
public ``jwk`` of the client's key (never a private member), and claims ``jti`` (unique per
proof), ``htm`` (the request's method), ``htu`` (its URI without query and fragment) and ``iat``;
``nonce`` when the server demands one (§8). §5: a token issued to a request with a proof is bound
to the key through the RFC 7638 thumbprint in ``cnf.jkt`` (§6.1) and typed ``DPoP``.

Deliberately independent of the broker's ``sts.sender``: the kit checks that code, so it must not
share its mistakes.
"""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from conformance import jose


def htu(url: str) -> str:
    """RFC 9449 §4.2: the target URI without query and fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class DpopKey:
    """One client key that signs every proof of a run."""

    def __init__(self, alg: str = "ES256") -> None:
        self.alg = alg
        self.key = jose.generate_key(alg)
        self.jwk = jose.public_jwk(self.key, use=None)

    @property
    def thumbprint(self) -> str:
        """RFC 7638 SHA-256 thumbprint: the ``cnf.jkt`` of tokens bound to this key (RFC 9449 §6.1)."""
        return jose.jwk_thumbprint(self.jwk)

    def proof(self, method: str, url: str, *, nonce: str | None = None, iat: int | None = None,
              jti: str | None = None) -> str:
        claims: dict[str, Any] = {"jti": jti or secrets.token_urlsafe(16), "htm": method.upper(), "htu": htu(url),
                                  "iat": int(time.time()) if iat is None else iat}
        if nonce is not None:
            claims["nonce"] = nonce
        return jose.sign_compact({"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk}, claims, self.key)
