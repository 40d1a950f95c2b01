"""A tiny, correct RFC 8693 token service, and deliberately broken variants of it.

It exists only to prove the kit: the kit must pass every MUST against ``reference``, and each
flawed variant must be caught by named cases. One Starlette app serves every variant under its
own path prefix (``/<variant>/token``), with its RFC 8414 metadata at
``/.well-known/oauth-authorization-server/<variant>``; one uvicorn server runs it in a thread.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conformance import jose
from conformance.issuer import LocalIssuer, SpiffeBundleServer
from conformance.profile import ACCESS_TOKEN_TYPE, JWT_TYPE, TOKEN_EXCHANGE_GRANT, Profile, parse_profile

SUBJECT = "workload-1"
SUBJECT_AUDIENCE = "https://sts.conformance.test"
ALGORITHMS = ("RS256", "ES256")
AUDIENCES: dict[str, tuple[str, ...]] = {
    "https://api.conformance.test": ("read", "write"),
    "https://second.conformance.test": ("read",),
}
RESOURCES: dict[str, tuple[str, ...]] = {"https://mcp.conformance.test/tools/search": ("invoke",)}
ACTOR = "agent-1"
MAX_LIFETIME = 300
ISSUER_MAX_TOKEN_LIFETIME = 3600
SKEW = 60
SPIFFE_TRUST_DOMAIN = "conformance.test"
SPIFFE_AUDIENCE = "spiffe-sts"
CLIENT_ID = "conformance-client"
CLIENT_SECRET = "reference-secret-value"
REPEATABLE = {"audience", "resource"}
SUBJECT_TYPES = {JWT_TYPE, ACCESS_TOKEN_TYPE}
ISSUABLE_TYPES = {ACCESS_TOKEN_TYPE, JWT_TYPE}


@dataclass(frozen=True)
class Flaws:
    """What a variant gets wrong; the reference gets nothing wrong."""

    accept_alg_none: bool = False
    skip_audience_check: bool = False
    ignore_exp: bool = False
    no_scope_narrowing: bool = False
    copy_any_audience: bool = False
    leak_token_in_error: bool = False
    no_cache_control: bool = False
    confidential: bool = False


VARIANTS: dict[str, Flaws] = {
    "reference": Flaws(),
    "confidential": Flaws(confidential=True),
    "alg-none": Flaws(accept_alg_none=True),
    "no-audience-check": Flaws(skip_audience_check=True),
    "ignores-exp": Flaws(ignore_exp=True),
    "no-scope-narrowing": Flaws(no_scope_narrowing=True),
    "copies-audience": Flaws(copy_any_audience=True),
    "leaks-token": Flaws(leak_token_in_error=True),
    "no-cache-control": Flaws(no_cache_control=True),
}


class Refusal(Exception):
    def __init__(self, error: str, description: str, status: int = 400, headers: Mapping[str, str] | None = None):
        super().__init__(error)
        self.error, self.description, self.status = error, description, status
        self.headers = dict(headers or {})


class _KeyCache:
    """JWKS by URL, refetched when a kid is unknown (no cooldown: this is a test target)."""

    def __init__(self, http: httpx.Client, url_of: Any) -> None:
        self._http, self._url_of, self._doc, self._lock = http, url_of, None, threading.Lock()

    def get(self, kid: Any) -> dict[str, Any]:
        with self._lock:
            if self._doc is None or not any(k.get("kid") == kid for k in self._doc.get("keys", [])):
                self._doc = self._http.get(self._url_of()).json()
            return self._doc  # type: ignore[return-value]


class ReferenceTarget:
    """The reference token service and its variants, served on loopback by one uvicorn thread."""

    def __init__(self, issuer: LocalIssuer, spiffe: SpiffeBundleServer) -> None:
        self.issuer, self.spiffe = issuer, spiffe
        self.key = jose.generate_key("ES256")
        self.kid = "reference-" + secrets.token_hex(4)
        self._http = httpx.Client(trust_env=False, timeout=5)
        self._oidc_keys = _KeyCache(self._http, self._issuer_jwks_uri)
        self._bundle = _KeyCache(self._http, lambda: spiffe.bundle_url)
        self._seen_jti: set[str] = set()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # serving ---------------------------------------------------------------------------
    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/{variant}/token", self._token_endpoint, methods=["GET", "POST"]),
            Route("/{variant}/jwks", self._jwks_endpoint),
            Route("/.well-known/oauth-authorization-server/{variant}", self._metadata_endpoint),
        ])

    def start(self) -> ReferenceTarget:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                loop="asyncio", http="h11", ws="none", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="reference-target", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("reference target did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._http.close()

    def base(self, variant: str) -> str:
        return f"http://127.0.0.1:{self.port}/{variant}"

    def profile(self, variant: str) -> Profile:
        """The profile describing ``variant`` as the reference behaves (flaws are not declared)."""
        flaws = VARIANTS[variant]
        return parse_profile({
            "name": f"reference target ({variant})",
            "target": {
                "token_endpoint": self.base(variant) + "/token",
                "metadata_url": f"http://127.0.0.1:{self.port}/.well-known/oauth-authorization-server/{variant}",
                "timeout": 5,
            },
            "issuer": {"audience": SUBJECT_AUDIENCE, "subject": SUBJECT, "algorithms": list(ALGORITHMS),
                       "clock_skew": SKEW, "max_token_lifetime": ISSUER_MAX_TOKEN_LIFETIME, "rotation_wait": 2},
            "client": ({"auth": "client_secret_basic", "id": CLIENT_ID, "secret": CLIENT_SECRET}
                       if flaws.confidential else {"auth": "none"}),
            "allowed": {"audiences": list(AUDIENCES), "resources": list(RESOURCES), "scopes": ["read", "write"]},
            "forbidden": {"audiences": ["https://admin.conformance.test"], "scopes": ["admin"],
                          "resources": ["https://mcp.conformance.test/admin"], "subjects": ["intruder-1"]},
            "choices": {"scope_escalation": "refuse", "requires_target": True, "max_lifetime": MAX_LIFETIME,
                        "caps_to_subject_lifetime": True, "replay_protection": True,
                        "supports_actor_token": True, "supports_resource": True, "supports_spiffe": True,
                        "requested_token_types": [ACCESS_TOKEN_TYPE, JWT_TYPE],
                        "issued_token_format": "rfc9068", "issued_subject": SUBJECT},
            "actor": {"subject": ACTOR},
            "spiffe": {"trust_domain": SPIFFE_TRUST_DOMAIN, "spiffe_id": f"spiffe://{SPIFFE_TRUST_DOMAIN}/workload",
                       "audience": SPIFFE_AUDIENCE, "rotation_wait": 2},
        }, env={})

    def _issuer_jwks_uri(self) -> str:
        doc = self._http.get(self.issuer.url + "/.well-known/openid-configuration").json()
        return str(doc["jwks_uri"])

    # endpoints -------------------------------------------------------------------------
    async def _jwks_endpoint(self, request: Request) -> Response:
        return JSONResponse({"keys": [jose.public_jwk(self.key, kid=self.kid, alg="ES256")]})

    async def _metadata_endpoint(self, request: Request) -> Response:
        variant = request.path_params["variant"]
        if variant not in VARIANTS:
            return JSONResponse({"error": "not_found"}, status_code=404)
        base = self.base(variant)
        methods = ["client_secret_basic"] if VARIANTS[variant].confidential else ["none"]
        return JSONResponse({
            "issuer": base, "token_endpoint": base + "/token", "jwks_uri": base + "/jwks",
            "grant_types_supported": [TOKEN_EXCHANGE_GRANT], "response_types_supported": [],
            "token_endpoint_auth_methods_supported": methods,
        })

    async def _token_endpoint(self, request: Request) -> Response:
        variant = request.path_params["variant"]
        flaws = VARIANTS.get(variant)
        if flaws is None:
            return JSONResponse({"error": "not_found"}, status_code=404)
        subject_token = ""
        try:
            if request.method != "POST":
                raise Refusal("invalid_request", "The token endpoint accepts only POST.", 405)
            body = await request.body()
            if len(body) > 64 * 1024:
                raise Refusal("invalid_request", "The request body is too large.", 413)
            params = self._parse(request.headers.get("content-type", ""), body)
            subject_token = (params.get("subject_token") or [""])[0]
            result = await run_in_threadpool(self._exchange, variant, flaws, request.headers, params)
        except Refusal as exc:
            description = exc.description
            if flaws.leak_token_in_error and subject_token:
                description += f" Token: {subject_token}"
            headers = {"Cache-Control": "no-store", "Pragma": "no-cache", **exc.headers}
            return JSONResponse({"error": exc.error, "error_description": description},
                                status_code=exc.status, headers=headers)
        headers = {} if flaws.no_cache_control else {"Cache-Control": "no-store", "Pragma": "no-cache"}
        return JSONResponse(result, headers=headers)

    # protocol --------------------------------------------------------------------------
    @staticmethod
    def _parse(content_type: str, body: bytes) -> dict[str, list[str]]:
        if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            raise Refusal("invalid_request", "The body must be application/x-www-form-urlencoded.")
        try:
            pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError) as exc:
            raise Refusal("invalid_request", "The body is not a valid form.") from exc
        params: dict[str, list[str]] = {}
        for name, value in pairs:
            if value == "":
                continue  # RFC 6749 §3.2: a parameter without a value counts as omitted.
            params.setdefault(name, []).append(value)
        for name, values in params.items():
            if len(values) > 1 and name not in REPEATABLE:
                raise Refusal("invalid_request", "A parameter is repeated.")
        return params

    def _client(self, flaws: Flaws, headers: Mapping[str, str]) -> str:
        if not flaws.confidential:
            return "public"
        challenge = {"WWW-Authenticate": 'Basic realm="token"'}
        auth = headers.get("authorization", "")
        if not auth.lower().startswith("basic "):
            raise Refusal("invalid_client", "Client authentication failed.", 401, challenge)
        try:
            raw = base64.b64decode(auth[6:], validate=True).decode("ascii")
            client_id, secret = (unquote(p) for p in raw.split(":", 1))
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refusal("invalid_client", "Client authentication failed.", 401, challenge) from exc
        if client_id != CLIENT_ID or not secrets.compare_digest(secret, CLIENT_SECRET):
            raise Refusal("invalid_client", "Client authentication failed.", 401, challenge)
        return client_id

    def _exchange(self, variant: str, flaws: Flaws, headers: Mapping[str, str],
                  params: dict[str, list[str]]) -> dict[str, Any]:
        def one(name: str) -> str | None:
            return params[name][0] if name in params else None

        client_id = self._client(flaws, headers)
        grant_type = one("grant_type")
        if grant_type is None:
            raise Refusal("invalid_request", "grant_type is missing.")
        if grant_type != TOKEN_EXCHANGE_GRANT:
            raise Refusal("unsupported_grant_type", "The grant type is not supported.")
        subject_token, subject_type = one("subject_token"), one("subject_token_type")
        if subject_token is None or subject_type is None:
            raise Refusal("invalid_request", "subject_token and subject_token_type are required.")
        if subject_type not in SUBJECT_TYPES:
            raise Refusal("invalid_request", "The subject token type is not supported.")
        actor_token, actor_type = one("actor_token"), one("actor_token_type")
        if (actor_token is None) != (actor_type is None):
            raise Refusal("invalid_request", "actor_token and actor_token_type go together.")
        if actor_type is not None and actor_type not in SUBJECT_TYPES:
            raise Refusal("invalid_request", "The actor token type is not supported.")
        requested_type = one("requested_token_type") or ACCESS_TOKEN_TYPE
        if requested_type not in ISSUABLE_TYPES:
            raise Refusal("invalid_request", "The requested token type is not supported.")
        resources = params.get("resource", [])
        for resource in resources:
            parts = urlsplit(resource)
            if not parts.scheme or not parts.netloc or "#" in resource or " " in resource:
                raise Refusal("invalid_target", "A resource is not an absolute URI without a fragment.")
        audiences = params.get("audience", [])

        now = time.time()
        subject = self._verify(subject_token, flaws, now, replay=True)
        actor = None
        if actor_token is not None:
            actor = self._verify(actor_token, flaws, now, replay=False)
            if actor.get("sub") != ACTOR:
                raise Refusal("invalid_request", "The actor is not allowed.")
        if subject.get("sub") not in (SUBJECT, f"spiffe://{SPIFFE_TRUST_DOMAIN}/workload"):
            raise Refusal("invalid_request", "The subject is not allowed.")

        targets = [*audiences, *resources]
        if not targets:
            raise Refusal("invalid_target", "Name one audience or resource.")
        if len(targets) > 1:
            raise Refusal("invalid_target", "Name exactly one audience or resource.")
        target = targets[0]
        allowed_scopes = AUDIENCES.get(target) or RESOURCES.get(target)
        if allowed_scopes is None:
            if not flaws.copy_any_audience:
                raise Refusal("invalid_target", "The target is not allowed.")
            allowed_scopes = ()
        scope_param = one("scope")
        if scope_param is None:
            granted = list(allowed_scopes[:1])
        else:
            requested = scope_param.split()
            if not flaws.no_scope_narrowing and not set(requested) <= set(allowed_scopes):
                raise Refusal("invalid_scope", "A requested scope is not allowed.")
            granted = list(dict.fromkeys(requested))

        exp = now + MAX_LIFETIME
        subject_exp = subject.get("exp")
        if isinstance(subject_exp, (int, float)):
            exp = min(exp, float(subject_exp))
        issued_at = int(now)
        claims: dict[str, Any] = {
            "iss": self.base(variant), "sub": subject["sub"], "aud": target, "iat": issued_at, "nbf": issued_at,
            "exp": int(exp), "jti": secrets.token_urlsafe(16), "client_id": client_id, "scope": " ".join(granted),
        }
        if actor is not None:
            claims["act"] = {"sub": actor["sub"]}
        token = jose.sign_compact({"alg": "ES256", "typ": "at+jwt", "kid": self.kid}, claims, self.key)
        return {"access_token": token, "issued_token_type": requested_type, "token_type": "Bearer",
                "expires_in": max(1, int(exp) - issued_at), "scope": " ".join(granted)}

    def _verify(self, token: str, flaws: Flaws, now: float, *, replay: bool) -> dict[str, Any]:
        bad = Refusal("invalid_request", "The subject or actor token is invalid.")
        try:
            header, claims, _, _ = jose.decode_unverified(token)
        except jose.JoseError as exc:
            raise bad from exc
        if "iss" not in claims:
            # JWT-SVIDs carry no issuer; OIDC tokens always do.
            return self._verify_svid(token, header, claims, now)
        if "crit" in header:
            raise bad
        if not (flaws.accept_alg_none and header.get("alg") == "none"):
            try:
                jose.verify_compact(token, self._oidc_keys.get(header.get("kid")), algorithms=ALGORITHMS)
            except jose.JoseError as exc:
                raise bad from exc
        if claims.get("iss") != self.issuer.url or not isinstance(claims.get("sub"), str):
            raise bad
        if not flaws.skip_audience_check:
            aud = claims.get("aud")
            audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if SUBJECT_AUDIENCE not in audiences:
                raise bad
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not flaws.ignore_exp:
            if not isinstance(exp, (int, float)) or exp <= now - SKEW:
                raise bad
        if not isinstance(iat, (int, float)) or iat > now + SKEW:
            raise bad
        if nbf is not None and (not isinstance(nbf, (int, float)) or nbf > now + SKEW):
            raise bad
        if isinstance(exp, (int, float)) and exp - iat > ISSUER_MAX_TOKEN_LIFETIME:
            raise bad
        if replay:
            jti = claims.get("jti")
            if not isinstance(jti, str):
                raise bad
            with self._lock:
                if jti in self._seen_jti:
                    raise bad
                self._seen_jti.add(jti)
        return claims

    def _verify_svid(self, token: str, header: dict[str, Any], claims: dict[str, Any], now: float) -> dict[str, Any]:
        bad = Refusal("invalid_request", "The subject token is invalid.")
        try:
            jose.verify_compact(token, self._bundle.get(header.get("kid")), algorithms=ALGORITHMS, use="jwt-svid")
        except jose.JoseError as exc:
            raise bad from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.startswith(f"spiffe://{SPIFFE_TRUST_DOMAIN}/"):
            raise bad
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if SPIFFE_AUDIENCE not in audiences:
            raise bad
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp <= now - SKEW:
            raise bad
        return claims


__all__ = ["VARIANTS", "Flaws", "ReferenceTarget"]
