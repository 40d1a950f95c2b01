"""A tiny, correct RFC 8693 token service, and deliberately broken variants of it.

It exists only to prove the kit: the kit must pass every MUST against ``reference``, and each
flawed variant must be caught by named cases. One Starlette app serves every variant under its
own path prefix (``/<variant>/token``), with its RFC 8414 metadata at
``/.well-known/oauth-authorization-server/<variant>``; one uvicorn server runs it in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conformance import jose
from conformance.client_tls import ensure_client_certificate, ensure_impostor, impostor_paths
from conformance.client_tls import thumbprint as certificate_thumbprint
from conformance.issuer import LocalIssuer, SpiffeBundleServer, write_loopback_tls_files
from conformance.tests.broken_targets import BROKEN, Flaws
from conformance.profile import ACCESS_TOKEN_TYPE, JWT_BEARER_GRANT, JWT_TYPE, TOKEN_EXCHANGE_GRANT, Profile, parse_profile

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


VARIANTS: dict[str, Flaws] = {
    "reference": Flaws(),
    "confidential": Flaws(confidential=True),
    "dpop": Flaws(confidential=True, dpop=True),
    "mtls": Flaws(mtls=True),
    "dpop-required": Flaws(confidential=True, dpop=True, dpop_required=True),
    "alg-none": Flaws(accept_alg_none=True),
    "no-audience-check": Flaws(skip_audience_check=True),
    "ignores-exp": Flaws(ignore_exp=True),
    "no-scope-narrowing": Flaws(no_scope_narrowing=True),
    "copies-audience": Flaws(copy_any_audience=True),
    "leaks-token": Flaws(leak_token_in_error=True),
    "no-cache-control": Flaws(no_cache_control=True),
    **{name: variant.flaws for name, variant in BROKEN.items()},
}

#: What the reference declares about its key cache (``[key_cache]``), and how it behaves.
REFETCH_INTERVAL = 0.2
CACHE_LIFETIME = 0.5
FAIL_FAST = 1.5
FETCH_TIMEOUT = 0.2
#: ``typ`` values of subject tokens the reference accepts (RFC 8725 §3.11: other kinds are refused).
SUBJECT_TYPS = (None, "JWT", "at+jwt", "application/at+jwt")


class Refusal(Exception):
    def __init__(self, error: str, description: str, status: int = 400, headers: Mapping[str, str] | None = None):
        super().__init__(error)
        self.error, self.description, self.status = error, description, status
        self.headers = dict(headers or {})


class KeysUnavailable(Exception):
    """The issuer's keys could not be fetched and none are cached."""


class _KeyCache:
    """A JWK Set by URL: refetched when older than ``CACHE_LIFETIME``, or for an unknown kid at
    most once per ``REFETCH_INTERVAL``; a failed fetch keeps the cached keys while they are fresh."""

    def __init__(self, http: httpx.Client, url_of: Any, flaws: Flaws) -> None:
        self._http, self._url_of, self._flaws = http, url_of, flaws
        self._doc: dict[str, Any] | None = None
        self._fetched_at = self._attempted_at = float("-inf")
        self._lock = threading.Lock()

    def get(self, kid: Any) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            stale = self._doc is None or (not self._flaws.cache_keys_forever
                                          and now - self._fetched_at > CACHE_LIFETIME)
            known = self._doc is not None and any(k.get("kid") == kid for k in self._doc.get("keys", []))
            may_retry = self._flaws.refetch_every_unknown_kid or now - self._attempted_at >= REFETCH_INTERVAL
            if stale or (not known and may_retry):
                self._attempted_at = now
                try:
                    self._doc, self._fetched_at = self._fetch(), now
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    # The fail-open flaw gives up on the cache at the first failed fetch.
                    if (self._doc is None or now - self._fetched_at > CACHE_LIFETIME
                            or self._flaws.fail_open_when_issuer_down):
                        raise KeysUnavailable from exc
            if self._doc is None:
                raise KeysUnavailable
            return self._doc

    def _fetch(self) -> dict[str, Any]:
        timeout = 30 if self._flaws.no_fetch_timeout else FETCH_TIMEOUT
        resp = self._http.get(self._url_of(), timeout=timeout)
        resp.raise_for_status()
        doc = resp.json()
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError("not a JWK Set")
        return doc


class ReferenceTarget:
    """The reference token service and its variants, served on loopback by one uvicorn thread."""

    def __init__(self, issuer: LocalIssuer, spiffe: SpiffeBundleServer) -> None:
        self.issuer, self.spiffe = issuer, spiffe
        self.key = jose.generate_key("ES256")
        self.kid = "reference-" + secrets.token_hex(4)
        self._http = httpx.Client(trust_env=False, timeout=5)
        self._oidc_keys = {name: _KeyCache(self._http, self._issuer_jwks_uri, flaws) for name, flaws in VARIANTS.items()}
        self._bundle = _KeyCache(self._http, lambda: spiffe.bundle_url, Flaws())
        self._jwks_uri: str | None = None
        self._seen_jti: set[str] = set()
        self._seen_proofs: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        # The https listener for mTLS client authentication (RFC 8705 §2).
        self._tls_dir = tempfile.TemporaryDirectory(prefix="reference-mtls-")
        self._tls_server: uvicorn.Server | None = None
        self._tls_thread: threading.Thread | None = None
        self.tls_port = 0

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
        self._server, self._thread = self._serve(config, "reference-target")
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self._start_tls()
        return self

    def _start_tls(self) -> None:
        """The same app over https, asking for client certificates. The handshake accepts the
        kit's certificate and its impostor (both self-signed, so both are listed as trusted): the
        application, not OpenSSL, must tell them apart, which is what the mTLS variants get wrong."""
        from sts.spiffe.tls import uvicorn_tls_options

        d = Path(self._tls_dir.name)
        self.tls_ca, server_cert, server_key = write_loopback_tls_files(d, "reference")
        self.client_cert, self.client_key = str(d / "client.pem"), str(d / "client.key")
        ensure_client_certificate(self.client_cert, self.client_key, CLIENT_ID)
        self.impostor_cert, self.impostor_key = impostor_paths(self.client_cert)
        ensure_impostor(self.client_cert, self.impostor_cert, self.impostor_key)
        handshake = d / "handshake-trust.pem"
        handshake.write_bytes(Path(self.client_cert).read_bytes() + Path(self.impostor_cert).read_bytes())
        self.client_thumbprint = certificate_thumbprint(self.client_cert)
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                loop="asyncio", ws="none", access_log=False,
                                **uvicorn_tls_options(server_cert, server_key, handshake))
        self._tls_server, self._tls_thread = self._serve(config, "reference-target-tls")
        self.tls_port = self._tls_server.servers[0].sockets[0].getsockname()[1]

    @staticmethod
    def _serve(config: uvicorn.Config, name: str) -> tuple[uvicorn.Server, threading.Thread]:
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=name, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.01)
        return server, thread

    def stop(self) -> None:
        for server in (self._server, self._tls_server):
            if server is not None:
                server.should_exit = True
        for thread in (self._thread, self._tls_thread):
            if thread is not None:
                thread.join(timeout=10)
        self._http.close()
        self._tls_dir.cleanup()

    def base(self, variant: str) -> str:
        if VARIANTS[variant].mtls:
            return f"https://127.0.0.1:{self.tls_port}/{variant}"
        return f"http://127.0.0.1:{self.port}/{variant}"

    def profile(self, variant: str, *, key_cache: bool = True) -> Profile:
        """The profile describing ``variant`` as the reference behaves (flaws are not declared).

        ``key_cache=False`` leaves the key-cache bounds undeclared (their cases, which wait out
        cache lifetimes, are then skipped)."""
        flaws = VARIANTS[variant]
        return parse_profile({
            **({"key_cache": {"refetch_interval": REFETCH_INTERVAL, "cache_lifetime": CACHE_LIFETIME,
                              "fail_fast": FAIL_FAST}} if key_cache else {}),
            "name": f"reference target ({variant})",
            "target": {
                "token_endpoint": self.base(variant) + "/token",
                "metadata_url": self.base(variant).rsplit("/", 1)[0] + f"/.well-known/oauth-authorization-server/{variant}",
                "timeout": 5,
                **({"ca_file": str(self.tls_ca)} if flaws.mtls else {}),
            },
            "issuer": {"audience": SUBJECT_AUDIENCE, "subject": SUBJECT, "algorithms": list(ALGORITHMS),
                       "clock_skew": SKEW, "max_token_lifetime": ISSUER_MAX_TOKEN_LIFETIME, "rotation_wait": 2},
            "client": {**self._client_profile(flaws), "dpop": flaws.dpop, "dpop_required": flaws.dpop_required},
            "allowed": {"audiences": list(AUDIENCES), "resources": list(RESOURCES), "scopes": ["read", "write"]},
            "forbidden": {"audiences": ["https://admin.conformance.test"], "scopes": ["admin"],
                          "resources": ["https://mcp.conformance.test/admin"], "subjects": ["intruder-1"]},
            "choices": {"scope_escalation": "refuse", "requires_target": True, "max_lifetime": MAX_LIFETIME,
                        "caps_to_subject_lifetime": True, "replay_protection": True,
                        "supports_actor_token": True, "supports_resource": True, "supports_spiffe": True,
                        "supports_jwt_bearer": True,
                        "requested_token_types": [ACCESS_TOKEN_TYPE, JWT_TYPE],
                        "issued_token_format": "rfc9068", "issued_subject": SUBJECT},
            "actor": {"subject": ACTOR},
            "spiffe": {"trust_domain": SPIFFE_TRUST_DOMAIN, "spiffe_id": f"spiffe://{SPIFFE_TRUST_DOMAIN}/workload",
                       "audience": SPIFFE_AUDIENCE, "rotation_wait": 2},
        }, env={})

    def _client_profile(self, flaws: Flaws) -> dict[str, Any]:
        if flaws.mtls:
            return {"auth": "self_signed_tls_client_auth", "id": CLIENT_ID, "tls_cert_file": self.client_cert,
                    "tls_key_file": self.client_key, "tls_impostor_cert_file": self.impostor_cert,
                    "tls_impostor_key_file": self.impostor_key}
        if flaws.confidential:
            return {"auth": "client_secret_basic", "id": CLIENT_ID, "secret": CLIENT_SECRET}
        return {"auth": "none"}

    def _issuer_jwks_uri(self) -> str:
        if self._jwks_uri is None:
            resp = self._http.get(self.issuer.url + "/.well-known/openid-configuration", timeout=FETCH_TIMEOUT)
            resp.raise_for_status()
            self._jwks_uri = str(resp.json()["jwks_uri"])
        return self._jwks_uri

    # endpoints -------------------------------------------------------------------------
    async def _jwks_endpoint(self, request: Request) -> Response:
        return JSONResponse({"keys": [jose.public_jwk(self.key, kid=self.kid, alg="ES256")]})

    async def _metadata_endpoint(self, request: Request) -> Response:
        variant = request.path_params["variant"]
        if variant not in VARIANTS:
            return JSONResponse({"error": "not_found"}, status_code=404)
        base = self.base(variant)
        flaws = VARIANTS[variant]
        methods = ["self_signed_tls_client_auth"] if flaws.mtls else ["client_secret_basic"] if flaws.confidential else ["none"]
        return JSONResponse({
            "issuer": base, "token_endpoint": base + "/token", "jwks_uri": base + "/jwks",
            "grant_types_supported": [TOKEN_EXCHANGE_GRANT, JWT_BEARER_GRANT], "response_types_supported": [],
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
            subject_token = (params.get("subject_token") or params.get("assertion") or [""])[0]
            jkt = self._dpop(flaws, request.headers.getlist("dpop"), self.base(variant) + "/token")
            if jkt is None and flaws.dpop_required and not flaws.dpop_required_bearer_fallback:
                # RFC 9449 §5.2: DPoP is required of this client; no proof, no token.
                raise Refusal("invalid_dpop_proof", "A DPoP proof is required.")
            certificate = _client_certificate(request)
            result = await run_in_threadpool(self._exchange, variant, flaws, request.headers, params, certificate)
            if jkt is not None:
                result = self._bind(variant, result, jkt)
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

    def _dpop(self, flaws: Flaws, proofs: list[str], url: str) -> str | None:
        """RFC 9449 §4.3: the proof's key thumbprint, or None without a proof."""
        if not proofs:
            return None
        bad = Refusal("invalid_dpop_proof", "The DPoP proof is invalid.")
        if len(proofs) != 1:
            raise bad
        try:
            header, claims, signing_input, signature = jose.decode_unverified(proofs[0])
            jwk = header.get("jwk")
            if (header.get("typ") != "dpop+jwt" or header.get("alg") not in jose.ASYMMETRIC_ALGORITHMS
                    or not isinstance(jwk, dict) or "d" in jwk):
                raise bad
            if not jose.raw_verify(header["alg"], jose.key_from_jwk(jwk), signing_input, signature):
                raise bad
            thumbprint = jose.jwk_thumbprint(jwk)
        except (jose.JoseError, KeyError, TypeError, ValueError) as exc:
            raise bad from exc
        iat, jti = claims.get("iat"), claims.get("jti")
        if not _numeric(iat) or abs(time.time() - iat) > SKEW or not isinstance(jti, str) or not jti:
            raise bad
        if not flaws.dpop_ignore_htm_htu and (claims.get("htm") != "POST" or claims.get("htu") != url):
            raise bad
        if not flaws.dpop_no_replay_check:
            with self._lock:
                if (thumbprint, jti) in self._seen_proofs:
                    raise bad
                self._seen_proofs.add((thumbprint, jti))
        return thumbprint

    def _bind(self, variant: str, result: dict[str, Any], jkt: str) -> dict[str, Any]:
        """RFC 9449 §5, §6.1: the issued token, re-signed with ``cnf.jkt`` and typed DPoP."""
        header, claims, _, _ = jose.decode_unverified(result["access_token"])
        token = jose.sign_compact(header, {**claims, "cnf": {"jkt": jkt}}, self.key)
        return {**result, "access_token": token, "token_type": "DPoP"}

    def _client(self, flaws: Flaws, headers: Mapping[str, str], params: dict[str, list[str]],
                certificate: x509.Certificate | None) -> str:
        if flaws.mtls:
            return self._tls_client(flaws, params, certificate)
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

    def _tls_client(self, flaws: Flaws, params: dict[str, list[str]], certificate: x509.Certificate | None) -> str:
        """RFC 8705 §2.2: client_id names the client, the registered certificate authenticates it."""
        if (params.get("client_id") or [None])[0] != CLIENT_ID:
            raise Refusal("invalid_client", "Client authentication failed.", 401)
        if certificate is None:
            if flaws.mtls_client_id_alone:
                return CLIENT_ID
            raise Refusal("invalid_client", "Client authentication failed.", 401)
        if flaws.mtls_any_certificate:
            return CLIENT_ID
        if flaws.mtls_subject_only:
            registered = x509.load_pem_x509_certificate(Path(self.client_cert).read_bytes())
            if certificate.subject == registered.subject:
                return CLIENT_ID
            raise Refusal("invalid_client", "Client authentication failed.", 401)
        presented = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
        if not secrets.compare_digest(presented, self.client_thumbprint):
            raise Refusal("invalid_client", "Client authentication failed.", 401)
        return CLIENT_ID

    def _exchange(self, variant: str, flaws: Flaws, headers: Mapping[str, str],
                  params: dict[str, list[str]], certificate: x509.Certificate | None = None) -> dict[str, Any]:
        def one(name: str) -> str | None:
            return params[name][0] if name in params else None

        client_id = self._client(flaws, headers, params, certificate)
        grant_type = one("grant_type")
        if grant_type is None:
            raise Refusal("invalid_request", "grant_type is missing.")
        if grant_type not in (TOKEN_EXCHANGE_GRANT, JWT_BEARER_GRANT):
            raise Refusal("unsupported_grant_type", "The grant type is not supported.")
        # RFC 7523 §2.1: the assertion takes the subject token's place; a refused one is
        # invalid_grant (RFC 7521 §4.1.1) where token exchange says invalid_request.
        jwt_bearer = grant_type == JWT_BEARER_GRANT
        refused = "invalid_grant" if jwt_bearer else "invalid_request"
        actor_token = actor_type = None
        requested_type = ACCESS_TOKEN_TYPE
        if jwt_bearer:
            subject_token = one("assertion")
            if subject_token is None:
                raise Refusal("invalid_request", "assertion is required.")
        else:
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
        subject = self._verify(subject_token, variant, now, replay=True, error=refused,
                               audience=self.base(variant) + "/token" if jwt_bearer else SUBJECT_AUDIENCE)
        actor = None
        if actor_token is not None:
            actor = self._verify(actor_token, variant, now, replay=False)
            if actor.get("sub") != ACTOR:
                raise Refusal("invalid_request", "The actor is not allowed.")
        if subject.get("sub") not in (SUBJECT, f"spiffe://{SPIFFE_TRUST_DOMAIN}/workload"):
            raise Refusal(refused, "The subject is not allowed.")

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

    def _verify(self, token: str, variant: str, now: float, *, replay: bool, error: str = "invalid_request",
                audience: str = SUBJECT_AUDIENCE) -> dict[str, Any]:
        flaws = VARIANTS[variant]
        bad = Refusal(error, "The subject or actor token is invalid.")
        text = token
        if flaws.replay_by_token_text:
            token = _lenient_canonical(token)
        try:
            header, claims, signing_input, signature = jose.decode_unverified(token)
        except jose.JoseError as exc:
            raise bad from exc
        if flaws.first_duplicate_wins:
            claims = json.loads(jose.b64url_decode(token.split(".")[1]), object_pairs_hook=_first_wins)
        if "iss" not in claims:
            if error != "invalid_request":
                raise bad
            # JWT-SVIDs carry no issuer; OIDC tokens always do.
            return self._verify_svid(token, header, claims, now, VARIANTS[variant])
        if "crit" in header and not flaws.ignore_crit:
            raise bad
        if header.get("typ") not in SUBJECT_TYPS and not flaws.ignore_typ:
            raise bad
        if not self._signature_ok(token, variant, header, signing_input, signature):
            raise bad
        iss = claims.get("iss")
        if not isinstance(iss, str) or not _same(iss, self.issuer.url, prefix=flaws.issuer_prefix_match,
                                                 normalise=flaws.issuer_normalised):
            raise bad
        if not isinstance(claims.get("sub"), str):
            raise bad
        if not flaws.skip_audience_check:
            aud = claims.get("aud")
            audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not any(isinstance(a, str) and _same(a, audience, substring=flaws.audience_substring_match,
                                                    normalise=flaws.audience_normalised) for a in audiences):
                raise bad
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not flaws.ignore_exp:
            if flaws.exp_checked_only_when_numeric:
                if _numeric(exp) and exp <= now - SKEW:
                    raise bad
            elif not _numeric(exp) or exp <= now - SKEW:
                raise bad
        if not _numeric(iat) or (iat > now + SKEW and not flaws.ignore_iat):
            raise bad
        if nbf is not None and not flaws.ignore_nbf and (not _numeric(nbf) or nbf > now + SKEW):
            raise bad
        if _numeric(exp) and exp - iat > ISSUER_MAX_TOKEN_LIFETIME and not flaws.no_lifetime_cap:
            raise bad
        if replay and not flaws.no_replay_check:
            key = text if flaws.replay_by_token_text else claims.get("jti")
            if not isinstance(key, str) or (flaws.replay_by_token_text and not isinstance(claims.get("jti"), str)):
                raise bad
            with self._lock:
                if key in self._seen_jti:
                    raise bad
                self._seen_jti.add(key)
        return claims

    def _signature_ok(self, token: str, variant: str, header: dict[str, Any], signing_input: bytes,
                      signature: bytes) -> bool:
        """RFC 7515 §5.2 with the allowlist of RFC 8725 §3.1; each flaw re-opens one known hole."""
        flaws = VARIANTS[variant]
        alg, kid = header.get("alg"), header.get("kid")
        if flaws.accept_alg_none and alg == "none":
            return True
        if flaws.accept_empty_signature and signature == b"":
            return True
        if flaws.accept_zero_ecdsa and alg == "ES256" and signature == bytes(64):
            return True
        if flaws.trust_embedded_jwk and isinstance(header.get("jwk"), dict):
            return _verifies(token, {"keys": [header["jwk"]]})
        if flaws.trust_jku and isinstance(header.get("jku"), str) and header["jku"].startswith("http://127.0.0.1:"):
            try:
                return _verifies(token, self._http.get(header["jku"], timeout=FETCH_TIMEOUT).json())
            except (httpx.HTTPError, ValueError):
                return False
        if flaws.trust_x5c and isinstance(header.get("x5c"), list) and header["x5c"]:
            # The flaw: the leaf certificate in the header is taken as the key, with no path to
            # any trust anchor.
            return _verifies(token, {"keys": [_certificate_jwk(base64.b64decode(header["x5c"][0]), alg, kid)]})
        if flaws.trust_x5u and isinstance(header.get("x5u"), str) and header["x5u"].startswith("http://127.0.0.1:"):
            try:
                pem = self._http.get(header["x5u"], timeout=FETCH_TIMEOUT).content
                return _verifies(token, {"keys": [_certificate_jwk(x509.load_pem_x509_certificate(pem)
                                                                   .public_bytes(serialization.Encoding.DER), alg, kid)]})
            except (httpx.HTTPError, ValueError):
                return False
        if flaws.kid_as_path and alg == "HS256" and isinstance(kid, str) and "dev" in kid and "null" in kid:
            # The flaw: the kid is read as a file path, and /dev/null reads as an empty key.
            return jose.raw_verify("HS256", b"", signing_input, signature)
        try:
            jwks = self._oidc_keys[variant].get(kid)
        except KeysUnavailable:
            return flaws.fail_open_when_issuer_down
        if flaws.hmac_with_public_key and alg == "HS256":
            for jwk in jwks.get("keys", []):
                if jwk.get("kty") == "RSA":
                    pem = jose.public_pem(jose.key_from_jwk(jwk))  # type: ignore[arg-type]
                    if any(jose.raw_verify("HS256", secret, signing_input, signature) for secret in (pem, pem.strip())):
                        return True
        if flaws.ignore_crit and "crit" in header:
            # The flaw: a verifier that never looks at crit (the kit's own jose refuses it).
            return any(jwk.get("kid") == kid and alg in ALGORITHMS
                       and jose.raw_verify(str(alg), jose.key_from_jwk(jwk), signing_input, signature)
                       for jwk in jwks.get("keys", []))
        return _verifies(token, jwks)

    def _verify_svid(self, token: str, header: dict[str, Any], claims: dict[str, Any], now: float,
                     flaws: Flaws) -> dict[str, Any]:
        bad = Refusal("invalid_request", "The subject token is invalid.")
        bundle = self._bundle.get(header.get("kid"))
        if flaws.spiffe_any_key_use:
            # The flaw: every bundle key verifies JWT-SVIDs, x509-svid ones included.
            bundle = {"keys": [{k: v for k, v in jwk.items() if k != "use"} for jwk in bundle.get("keys", [])]}
        try:
            jose.verify_compact(token, bundle, algorithms=ALGORITHMS, use="jwt-svid")
        except jose.JoseError as exc:
            raise bad from exc
        sub = claims.get("sub")
        prefix = "spiffe://" if flaws.spiffe_any_trust_domain else f"spiffe://{SPIFFE_TRUST_DOMAIN}/"
        if not isinstance(sub, str) or not sub.startswith(prefix):
            raise bad
        if flaws.spiffe_any_trust_domain:
            # The flaw, as it ships: the trust domain is not checked against the bundle that
            # verified the token, and the workload is named by its path alone.
            claims = {**claims, "sub": f"spiffe://{SPIFFE_TRUST_DOMAIN}/" + sub.split("/", 3)[-1]}
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if SPIFFE_AUDIENCE not in audiences and not flaws.spiffe_no_audience_check:
            raise bad
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp <= now - SKEW:
            raise bad
        return claims


def _certificate_jwk(der: bytes, alg: Any, kid: Any) -> dict[str, Any]:
    """The public key of a DER certificate as a JWK for ``alg`` (what a verifier that trusts
    certificates from token headers ends up verifying with)."""
    public = x509.load_der_x509_certificate(der).public_key()
    return jose.public_jwk(public, kid=kid if isinstance(kid, str) else None, alg=alg if isinstance(alg, str) else None)  # type: ignore[arg-type]


def _client_certificate(request: Request) -> x509.Certificate | None:
    """The TLS client certificate of the request (the ASGI TLS extension), if any."""
    chain = (request.scope.get("extensions") or {}).get("tls", {}).get("client_cert_chain") or []
    return x509.load_pem_x509_certificate(chain[0].encode("ascii")) if chain else None


def _verifies(token: str, jwks: Any) -> bool:
    try:
        jose.verify_compact(token, jwks if isinstance(jwks, dict) else {}, algorithms=ALGORITHMS)
    except jose.JoseError:
        return False
    return True


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(value: str, expected: str, *, prefix: bool = False, substring: bool = False, normalise: bool = False) -> bool:
    """RFC 7519 §7.3 exact comparison, unless a flaw loosens it."""
    if prefix:
        return value.startswith(expected) or expected.startswith(value)
    if substring:
        return expected in value or value in expected
    if normalise:
        return value.lower().rstrip("/") == expected.lower().rstrip("/")
    return value == expected


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        out.setdefault(name, value)
    return out


def _lenient_canonical(token: str) -> str:
    """The token re-encoded canonically after lenient base64 decoding (padding and +/ accepted)."""
    parts = token.split(".")
    try:
        return ".".join(jose.b64url_encode(base64.urlsafe_b64decode(p.replace("+", "-").replace("/", "_").rstrip("=")
                                                                     + "=" * (-len(p.rstrip("=")) % 4)))
                        for p in parts)
    except ValueError:
        return token


__all__ = ["VARIANTS", "Flaws", "ReferenceTarget"]
