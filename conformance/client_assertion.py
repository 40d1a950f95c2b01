"""Client authentication with ``private_key_jwt`` (RFC 7523 §2.2 and §3, OpenID Connect Core §9).

The kit signs a fresh client assertion for every request: ``iss`` and ``sub`` the client id,
``aud`` the token endpoint (or the audience the profile names), a short ``exp``, and a unique
``jti``, since RFC 7523 §3 lets the server accept each ``jti`` once. The client's private key
lives in a private JWK Set file that the kit creates on first use; its public half is written to
``client.jwks_file`` for the target's client registration (``sts conformance --prepare``).
"""

from __future__ import annotations

import json
import secrets
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from conformance import jose

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60


def ensure_client_key(path: str, alg: str) -> tuple[str, jose.PrivateKey]:
    """The client's signing key from ``path`` (a private JWK Set), created there if missing."""
    file = Path(path)
    if not file.exists():
        key = jose.generate_key(alg)
        kid = f"client-{jose.jwk_thumbprint(jose.public_jwk(key))[:12]}"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps({"keys": [jose.private_jwk(key, kid=kid, alg=alg)]}, indent=2) + "\n",
                        encoding="utf-8")
        file.chmod(0o600)
    return _load(path, file.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _load(path: str, _mtime_ns: int) -> tuple[str, jose.PrivateKey]:
    jwk = json.loads(Path(path).read_text(encoding="utf-8"))["keys"][0]
    return str(jwk["kid"]), jose.key_from_jwk(jwk)  # type: ignore[return-value]


def write_public_jwks(path: str, kid: str, key: jose.PrivateKey, alg: str) -> None:
    Path(path).write_text(json.dumps({"keys": [jose.public_jwk(key, kid=kid, alg=alg, use="sig")]}, indent=2)
                          + "\n", encoding="utf-8")


def client_assertion(client_id: str, audience: str, key: Any, kid: str, alg: str, *,
                     now: float | None = None) -> str:
    """A signed RFC 7523 §3 client assertion, valid for ``ASSERTION_LIFETIME`` seconds."""
    issued = int(time.time() if now is None else now)
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": issued,
              "exp": issued + ASSERTION_LIFETIME, "jti": secrets.token_urlsafe(16)}
    return jose.sign_compact({"alg": alg, "typ": "JWT", "kid": kid}, claims, key)


def assertion_form(client_id: str, assertion: str) -> list[tuple[str, str]]:
    """Form parameters of RFC 7521 §4.2 (``client_id`` is optional there; sent for servers that look
    the client up by it)."""
    return [("client_assertion_type", CLIENT_ASSERTION_TYPE), ("client_assertion", assertion),
            ("client_id", client_id)]
