"""The floor: the least work any token-exchange server must do per request (RFC 8693 §2.1-2.2).

A raw ASGI app, no framework, served by uvicorn exactly like the broker. Per request it parses
the urlencoded form, verifies the subject token's signature with a key parsed once at start
(``cryptography`` directly; RS256 or ES256), checks ``iss``, ``aud`` and ``exp``, signs an ES256
JWT and answers JSON. It has no policy, no database, no audit and no self-check of its output:
the broker's cost is reported as a ratio to this, measured in the same run on the same machine.

Run: ``uvicorn --factory bench.floor:create_app`` with ``BENCH_FLOOR_JWKS`` (a JWKS file of the
subject issuer), ``BENCH_FLOOR_SUBJECT_ISSUER`` and ``BENCH_FLOOR_AUDIENCE`` set.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from bench import jwtutil

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
LIFETIME = 900

_JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


class Rejected(Exception):
    pass


def create_app(
    *,
    jwks: dict[str, Any] | None = None,
    subject_issuer: str | None = None,
    audience: str | None = None,
    own_issuer: str = "https://floor.bench.example",
) -> ASGIApp:
    """Build the floor app; arguments default to the ``BENCH_FLOOR_*`` environment variables."""
    if jwks is None:
        with open(os.environ["BENCH_FLOOR_JWKS"], encoding="utf-8") as fh:
            jwks = json.load(fh)
    expected_iss = subject_issuer if subject_issuer is not None else os.environ["BENCH_FLOOR_SUBJECT_ISSUER"]
    expected_aud = audience if audience is not None else os.environ["BENCH_FLOOR_AUDIENCE"]
    # Keys are parsed once: the per-request cost is the signature check, not the key import.
    keys = {(jwk["kid"], jwk["alg"]): jwtutil.key_from_jwk(jwk) for jwk in jwks["keys"]}
    signing_key = ec.generate_private_key(ec.SECP256R1())
    signing_header = jwtutil.b64e(json.dumps({"alg": "ES256", "kid": "floor-1", "typ": "at+jwt"}).encode())

    def exchange(body: bytes) -> dict[str, Any]:
        form = dict(parse_qsl(body.decode("ascii"), strict_parsing=True))
        if form.get("grant_type") != GRANT_TYPE or form.get("subject_token_type") != JWT_TYPE:
            raise Rejected("grant")
        target = form.get("audience")
        if not target:
            raise Rejected("audience")
        token = form["subject_token"]
        head_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(jwtutil.b64d(head_b64))
        alg = header.get("alg")
        key = keys.get((header.get("kid"), alg))
        if key is None:
            raise Rejected("kid")
        try:
            jwtutil.verify(f"{head_b64}.{claims_b64}".encode("ascii"), jwtutil.b64d(sig_b64), key, alg)
        except (InvalidSignature, ValueError) as exc:
            raise Rejected("signature") from exc
        claims = json.loads(jwtutil.b64d(claims_b64))
        now = int(time.time())
        aud = claims.get("aud")
        if claims.get("iss") != expected_iss or (aud != expected_aud and expected_aud not in (aud or ())):
            raise Rejected("iss/aud")
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= now:
            raise Rejected("exp")
        issued = {
            "iss": own_issuer,
            "sub": claims["sub"],
            "aud": target,
            "iat": now,
            "exp": min(now + LIFETIME, exp),
            "jti": secrets.token_urlsafe(16),
        }
        signing_input = signing_header + "." + jwtutil.b64e(json.dumps(issued, separators=(",", ":")).encode())
        signature = jwtutil.sign(signing_input.encode("ascii"), signing_key)
        return {
            "access_token": signing_input + "." + jwtutil.b64e(signature),
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": issued["exp"] - now,
        }

    async def respond(send: Send, status: int, doc: dict[str, Any]) -> None:
        payload = json.dumps(doc).encode()
        headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/readyz":
            await respond(send, 200, {"status": "ready"})
            return
        if scope["path"] != "/token" or scope["method"] != "POST":
            await respond(send, 404, {"error": "not_found"})
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            doc = exchange(b"".join(chunks))
        except (Rejected, KeyError, ValueError, UnicodeDecodeError):
            await respond(send, 400, {"error": "invalid_request"})
            return
        await respond(send, 200, doc)

    return app
