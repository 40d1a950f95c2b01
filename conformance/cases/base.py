"""Case registry, the context every case runs in, and the assertions cases share.

A case is a plain function ``(ctx) -> None`` registered with ``@case(...)`` and its metadata:
a stable ``id``, the ``source`` it enforces (``"RFC 8693 §2.2.1"``), a ``level`` (MUST,
SHOULD, MAY, or HARDENING for checks beyond the RFCs) and the profile capabilities it ``needs``.
A case fails by raising ``CaseFailure`` and skips by raising ``CaseSkip``.

Cases talk to the target only over HTTP through ``Context``. Failure messages name status codes,
error codes and claim *names*; they never carry a token, so a report can be published.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from conformance import jose
from conformance.client_tls import TLS_METHODS
from conformance.dpop import DpopKey
from conformance.issuer import LocalIssuer, SpiffeBundleServer
from conformance.profile import JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT, Profile

Level = Literal["MUST", "SHOULD", "MAY", "HARDENING"]
LEVELS: tuple[Level, ...] = ("MUST", "SHOULD", "MAY", "HARDENING")

#: RFC 6749 §5.2, RFC 8707 §2 and RFC 6749 §11.4 registry codes a token endpoint may return.
REGISTERED_ERRORS = frozenset({
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
    "unsupported_grant_type", "invalid_scope", "invalid_target", "server_error",
    "temporarily_unavailable", "invalid_dpop_proof", "use_dpop_nonce", "invalid_authorization_details",
})


class CaseFailure(AssertionError):
    """The target did not do what the case's source requires."""


class CaseSkip(Exception):
    """The case does not apply to this target (profile capability, or a precondition)."""


class TargetUnreachable(Exception):
    """The HTTP exchange itself failed (refused, reset, timed out): the case cannot conclude."""


@dataclass(frozen=True)
class Case:
    id: str
    source: str
    level: Level
    title: str
    func: Callable[[Context], None]
    needs: tuple[str, ...] = ()
    #: Sends the case's valid twin; None: the valid request of the case's sanity gate.
    twin_builder: Callable[[Context], Reply] | None = None

    def twin(self, ctx: Context) -> Reply:
        """Send this case's valid twin: the same request without the one defect the case forges.

        The kit's own suite proves each twin is accepted by the reference target, so a refusal
        seen by the case is due to its defect and nothing else. Raises ``CaseSkip`` for cases
        that send no token request (``no_twin``).
        """
        reason = no_twin(self.id)
        if reason is not None:
            raise CaseSkip(reason)
        if self.twin_builder is not None:
            return self.twin_builder(ctx)
        from conformance.gate import gate_of

        return GATE_TWINS[gate_of(self.id) or "exchange"](ctx)


def no_twin(case_id: str) -> str | None:
    """Why ``case_id`` has no valid twin, or None when it has one."""
    from conformance.gate import UNGATED

    if case_id in UNGATED:
        return "sends no token request: it reads the target's published documents"
    return None


REGISTRY: dict[str, Case] = {}

#: Capability name -> (predicate over the profile, reason shown when it is false).
NEEDS: dict[str, tuple[Callable[[Profile], bool], str]] = {
    "mint": (lambda p: p.mints_subjects,
             "subject tokens come from the target's own issuer; the kit cannot sign crafted ones"),
    "jwt": (lambda p: p.choices.issued_token_format != "opaque", "issued tokens are opaque"),
    "rfc9068": (lambda p: p.choices.issued_token_format == "rfc9068",
                "issued tokens are not declared as RFC 9068 JWT access tokens"),
    "metadata": (lambda p: p.target.metadata_url is not None, "the profile names no metadata_url"),
    "scopes": (lambda p: bool(p.allowed.scopes), "the profile names no allowed scopes"),
    "forbidden_scope": (lambda p: bool(p.forbidden.scopes), "the profile names no forbidden scopes"),
    "forbidden_audience": (lambda p: bool(p.forbidden.audiences), "the profile names no forbidden audiences"),
    "forbidden_resource": (lambda p: bool(p.forbidden.resources) and p.choices.supports_resource,
                           "the profile names no forbidden resources"),
    "forbidden_subject": (lambda p: bool(p.forbidden.subjects), "the profile names no forbidden subjects"),
    "audience": (lambda p: bool(p.allowed.audiences), "the profile names no allowed audiences"),
    "two_audiences": (lambda p: len(p.allowed.audiences) >= 2, "the profile names fewer than two audiences"),
    "resource": (lambda p: p.choices.supports_resource, "the target does not support `resource`"),
    "allowed_resource": (lambda p: p.choices.supports_resource and bool(p.allowed.resources),
                         "the profile names no allowed resources"),
    "actor": (lambda p: p.choices.supports_actor_token, "the target does not support actor tokens"),
    "replay": (lambda p: p.choices.replay_protection, "the target does not declare replay protection"),
    "subject_cap": (lambda p: p.choices.caps_to_subject_lifetime,
                    "the target does not declare capping lifetimes to the subject token"),
    "rotation": (lambda p: p.issuer.keys != "static", "the target reads the issuer's keys from a static file"),
    "spiffe": (lambda p: p.choices.supports_spiffe, "the target does not declare SPIFFE support"),
    "client_auth": (lambda p: p.client.auth != "none", "the kit uses no client authentication"),
    "client_required": (lambda p: p.client.auth != "none" and p.client.required,
                        "client authentication is not required"),
    "issuer_lifetime_cap": (lambda p: p.issuer.max_token_lifetime is not None,
                            "the profile declares no issuer max_token_lifetime"),
    "dpop": (lambda p: p.client.dpop, "the profile does not declare DPoP (client.dpop)"),
    "dpop_required": (lambda p: p.client.dpop_required, "the profile does not declare that DPoP is required (client.dpop_required)"),
    "jwt_bearer": (lambda p: p.choices.supports_jwt_bearer and p.mints_subjects,
                   "the target does not declare the JWT-bearer grant (choices.supports_jwt_bearer)"),
}


def case(id: str, *, source: str, level: Level, title: str,  # noqa: A002 - the natural name
         needs: Sequence[str] = (), twin: Callable[[Context], Reply] | None = None
         ) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
    """Register a case function; ``twin`` sends its valid twin when that is not its gate's valid
    request (the defect sits in a parameter, not in the subject token)."""
    unknown = [n for n in needs if n not in NEEDS]
    if unknown or level not in LEVELS:
        raise ValueError(f"case {id}: unknown needs {unknown} or level {level}")

    def register(func: Callable[[Context], None]) -> Callable[[Context], None]:
        if id in REGISTRY:
            raise ValueError(f"duplicate case id {id}")
        REGISTRY[id] = Case(id=id, source=source, level=level, title=title, func=func, needs=tuple(needs),
                            twin_builder=twin)
        return func

    return register


def missing_needs(c: Case, profile: Profile) -> str | None:
    for need in c.needs:
        predicate, reason = NEEDS[need]
        if not predicate(profile):
            return reason
    return None


@dataclass
class Reply:
    """One HTTP response from the target, decoded once."""

    status: int
    headers: httpx.Headers
    text: str
    body: Any
    #: The target refused the TLS client certificate (or its absence) in the handshake (mTLS
    #: client authentication only): a refusal, with no HTTP answer.
    tls_refused: bool = False

    @property
    def json_object(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}

    @property
    def error(self) -> str | None:
        value = self.json_object.get("error")
        return value if isinstance(value, str) else None

    @property
    def access_token(self) -> str | None:
        value = self.json_object.get("access_token")
        return value if isinstance(value, str) and value else None

    def describe(self) -> str:
        # Never the body, which may hold a token: status, error code and the redacted description.
        from conformance.redact import describe_error

        if self.tls_refused:
            return "refused in the TLS handshake"
        return describe_error(self.status, self.error, self.json_object.get("error_description"))


@dataclass
class Issued:
    """A verified issued JWT: header and claims (``verified`` is False for opaque tokens)."""

    header: dict[str, Any]
    claims: dict[str, Any]


def _tls_refusal(exc: httpx.TransportError) -> bool:
    """Whether a connection failed because the TLS peer refused the handshake (an alert such as
    bad_certificate / certificate_required / unknown_ca), not because it is unreachable."""
    text = str(exc).lower()
    return any(marker in text for marker in ("alert", "certificate", "handshake", "unknown ca", "sslv3"))


def media_type(headers: httpx.Headers) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def audiences_of(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return list(aud)
    return []


@dataclass
class Context:
    """Everything a case may use: the profile, the kit's issuers, and HTTP to the target."""

    profile: Profile
    issuer: LocalIssuer
    spiffe: SpiffeBundleServer | None = None
    http: httpx.Client = field(default_factory=lambda: httpx.Client(follow_redirects=False, trust_env=False))
    #: Algorithm of a key the kit publishes but the target must refuse (not in issuer.algorithms).
    disallowed_algorithm: str | None = None
    _metadata: Any = None
    _metadata_fetched: bool = False
    _target_jwks: dict[str, Any] | None = None
    _attacker: dict[str, jose.PrivateKey] = field(default_factory=dict)
    _dpop_key: DpopKey | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Results shared between cases of one run (e.g. the error-response battery).
    memo: dict[str, Any] = field(default_factory=dict)
    #: Builds an HTTP client to the target presenting another TLS client certificate (a (cert,
    #: key) pair) or none (None): the mTLS cases' wrong and missing credentials.
    http_for: Any = None
    _extra_http: dict[Any, httpx.Client] = field(default_factory=dict)

    def http_presenting(self, certificate: tuple[str, str] | None) -> httpx.Client:
        """An HTTP client to the target presenting ``certificate`` (None: no certificate)."""
        with self._lock:
            if certificate not in self._extra_http:
                factory = self.http_for or (lambda _: httpx.Client(follow_redirects=False, trust_env=False))
                self._extra_http[certificate] = factory(certificate)
            return self._extra_http[certificate]

    def close_extra_clients(self) -> None:
        for client in self._extra_http.values():
            client.close()
        self._extra_http.clear()

    # time ------------------------------------------------------------------------------
    @staticmethod
    def now() -> int:
        return int(time.time())

    # keys ------------------------------------------------------------------------------
    def attacker_key(self, alg: str = "RS256") -> jose.PrivateKey:
        """A key nobody trusts, generated once per run and per key family."""
        kind = jose.family(alg) if alg != "ES256" else "EC256"
        with self._lock:
            if kind not in self._attacker:
                self._attacker[kind] = jose.generate_key(alg)
            return self._attacker[kind]

    @property
    def dpop_key(self) -> DpopKey:
        """The key the kit's DPoP proofs are signed with (one per run)."""
        with self._lock:
            if self._dpop_key is None:
                self._dpop_key = DpopKey(self.profile.client.dpop_alg)
            return self._dpop_key

    def dpop_proof(self, method: str = "POST", url: str | None = None, **claims: Any) -> str:
        return self.dpop_key.proof(method, url or self.profile.target.token_endpoint, **claims)

    # subject tokens --------------------------------------------------------------------
    def subject_claims(self, **overrides: Any) -> dict[str, Any]:
        """Claims of a valid subject token, with ``overrides`` (None removes a claim)."""
        p = self.profile.issuer
        now = self.now()
        claims: dict[str, Any] = {"iss": self.issuer.url, "sub": p.subject, "aud": p.audience, "iat": now,
                                  "nbf": now, "exp": now + 300, "jti": secrets.token_urlsafe(16), **p.claims}
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def subject_token(self, *, alg: str | None = None, lifetime: int = 300, header: Mapping[str, Any] | None = None,
                      kid: str | None = None, **claims: Any) -> str:
        """A subject token the target should accept, unless ``claims``/``header`` break it."""
        if not self.profile.mints_subjects:
            if claims or header or alg or kid:
                raise CaseSkip("the kit cannot sign crafted subject tokens for this target")
            return self.external_subject_token()
        now = self.now()
        base = self.subject_claims(exp=now + lifetime)
        for name, value in claims.items():
            base[name] = value
        return self.issuer.mint(base, alg=alg or self.profile.issuer.algorithms[0], kid=kid,
                                lifetime=lifetime, header=header)

    @property
    def subject_token_type(self) -> str:
        if self.profile.mints_subjects:
            return self.profile.issuer.subject_token_type
        return self.profile.subject_source.subject_token_type

    def external_subject_token(self) -> str:
        """A fresh subject token from the configured token endpoint (client_credentials/password)."""
        src = self.profile.subject_source
        form: list[tuple[str, str]] = []
        auth: tuple[str, str] | None = None
        if src.kind == "client_credentials":
            form.append(("grant_type", "client_credentials"))
        else:
            form += [("grant_type", "password"), ("username", src.username or ""),
                     ("password", src.password or "")]
        if src.scope:
            form.append(("scope", src.scope))
        if src.auth_method == "client_secret_basic":
            auth = (src.client_id or "", src.client_secret or "")
        else:
            form += [("client_id", src.client_id or ""), ("client_secret", src.client_secret or "")]
        url = src.token_endpoint or self.profile.target.token_endpoint
        resp = self.http.post(url, data=dict(form), timeout=self.profile.target.timeout,
                              auth=auth if auth else httpx.USE_CLIENT_DEFAULT)
        if resp.status_code != 200 or "access_token" not in resp.text:
            raise CaseFailure(f"could not obtain a subject token from the subject source (HTTP {resp.status_code})")
        token = resp.json()["access_token"]
        return str(token)

    def forge(self, token: str, *, header: Mapping[str, Any], key: Any, claims: Mapping[str, Any] | None = None) -> str:
        """A look-alike of ``token`` (same claims unless overridden) with ``header``, signed by ``key``."""
        _, original, _, _ = jose.decode_unverified(token)
        payload = {**original, **dict(claims or {})}
        return jose.sign_compact(dict(header), payload, key)

    def valid_pair(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """A valid subject token with its header and claims, from whichever source applies."""
        token = self.subject_token()
        header, claims, _, _ = jose.decode_unverified(token)
        return token, header, claims

    def subject_issuer_public_pem(self, kid: str | None, *, pkcs1: bool = False) -> bytes | None:
        """PEM of the trusted RSA key that signs subject tokens (for key-confusion forgeries)."""
        if self.profile.mints_subjects:
            rsa_algs = [a for a in self.issuer.algorithms if jose.family(a) == "RSA"]
            if not rsa_algs:
                return None
            return self.issuer.public_pem(self.issuer.default_kid(rsa_algs[0]), pkcs1=pkcs1)
        uri = self.profile.subject_source.jwks_uri or self.target_jwks_uri()
        if uri is None:
            return None
        jwks = self.get_json(uri)
        for jwk in jwks.get("keys", []) if isinstance(jwks, dict) else []:
            if jwk.get("kty") == "RSA" and (kid is None or jwk.get("kid") == kid):
                return jose.public_pem(jose.key_from_jwk(jwk), pkcs1=pkcs1)  # type: ignore[arg-type]
        return None

    # requests --------------------------------------------------------------------------
    def form(self, subject_token: str | None = None, *, target: bool = True,
             **params: str | Sequence[str] | None) -> list[tuple[str, str]]:
        """A token-exchange form: grant_type, subject token and type, primary target, ``params``.

        A parameter given as None is left out; a list is sent as a repeated parameter.
        """
        fields: dict[str, Any] = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": subject_token if subject_token is not None else self.subject_token(),
            "subject_token_type": self.subject_token_type,
        }
        if target:
            for name, value in self.profile.primary_target():
                fields[name] = value
        fields.update(params)
        out: list[tuple[str, str]] = []
        for name, value in fields.items():
            if value is None:
                continue
            if isinstance(value, (list, tuple)):
                out += [(name, str(v)) for v in value]
            else:
                out.append((name, str(value)))
        return out

    def client_auth(self, form: list[tuple[str, str]], *, secret: str | None = None
                    ) -> tuple[list[tuple[str, str]], dict[str, str]]:
        c = self.profile.client
        secret = c.secret if secret is None else secret
        if c.auth == "client_secret_basic":
            import base64
            from urllib.parse import quote

            # RFC 6749 §2.3.1: id and secret are form-urlencoded before the Basic encoding.
            raw = f"{quote(c.id or '', safe='')}:{quote(secret or '', safe='')}".encode()
            return form, {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
        if c.auth == "client_secret_post":
            return form + [("client_id", c.id or ""), ("client_secret", secret or "")], {}
        if c.auth == "private_key_jwt":
            # A "wrong secret" for this method: an assertion signed by a key nobody registered.
            return form + self.client_assertion_form(forged=secret is not None and secret != c.secret), {}
        if c.auth in TLS_METHODS:
            # RFC 8705 §2: client_id in the body; the certificate is presented by the TLS layer
            # (the "wrong secret" is the impostor certificate: see post()).
            return form + [("client_id", c.id or "")], {}
        return form, {}

    def client_assertion_form(self, *, forged: bool = False) -> list[tuple[str, str]]:
        from conformance import client_assertion as ca

        c = self.profile.client
        assert c.id is not None and c.private_key_file is not None
        kid, key = ca.ensure_client_key(c.private_key_file, c.assertion_alg)
        signer = self.attacker_key(c.assertion_alg) if forged else key
        audience = c.assertion_audience or self.profile.target.token_endpoint
        return ca.assertion_form(c.id, ca.client_assertion(c.id, audience, signer, kid, c.assertion_alg))

    def post(self, form: Sequence[tuple[str, str]] | str | bytes, *, authenticate: bool = True,
             headers: Mapping[str, str] | None = None, secret: str | None = None,
             content_type: str = "application/x-www-form-urlencoded", dpop: bool = True) -> Reply:
        """POST to the token endpoint (form pairs are urlencoded, preserving repeats and order)."""
        from urllib.parse import urlencode

        extra: dict[str, str] = {}
        if isinstance(form, (str, bytes)):
            body = form.encode() if isinstance(form, str) else form
        else:
            pairs = list(form)
            if authenticate:
                pairs, extra = self.client_auth(pairs, secret=secret)
            elif self.profile.client.auth in TLS_METHODS:
                # Unauthenticated, mTLS: the client still names itself (the identifier is not the
                # credential); only the certificate is missing (RFC 8705 §2).
                pairs = pairs + [("client_id", self.profile.client.id or "")]
            body = urlencode(pairs).encode("ascii")
        all_headers = {"Content-Type": content_type, "Accept": "application/json", **extra, **dict(headers or {})}
        url = self.profile.target.token_endpoint
        via = self._tls_identity(authenticate=authenticate, wrong=secret is not None and secret != self.profile.client.secret)
        if not (dpop and self.profile.client.dpop) or any(name.lower() == "dpop" for name in all_headers):
            # No proof, or the case sends its own (a defective one).
            return self.request("POST", url, content=body, headers=all_headers, via=via)
        reply = self.request("POST", url, content=body, headers={**all_headers, "DPoP": self.dpop_proof("POST", url)}, via=via)
        nonce = reply.headers.get("dpop-nonce")
        if reply.error == "use_dpop_nonce" and nonce:
            # RFC 9449 §8: the server demands its nonce; the same request again, once, with it.
            reply = self.request("POST", url, content=body,
                                 headers={**all_headers, "DPoP": self.dpop_proof("POST", url, nonce=nonce)}, via=via)
        return reply

    def _tls_identity(self, *, authenticate: bool, wrong: bool) -> httpx.Client | None:
        """For mTLS client authentication: the client without a certificate (unauthenticated
        requests) or presenting the impostor (a wrong credential); None: the usual client."""
        c = self.profile.client
        if c.auth not in TLS_METHODS:
            return None
        if not authenticate:
            return self.http_presenting(None)
        return self.http_presenting(c.impostor_files()) if wrong else None

    def exchange(self, subject_token: str | None = None, *, target: bool = True,
                 **params: str | Sequence[str] | None) -> Reply:
        return self.post(self.form(subject_token, target=target, **params))

    def assertion(self, **claims: Any) -> str:
        """A JWT-bearer assertion (RFC 7523 §3) the target should accept: a token of the kit's
        issuer with the token endpoint as ``aud`` (MCP SEP-1933) and a fresh ``jti``, unless
        ``claims`` (None removes one; ``header=`` changes the JWS header) break it."""
        header = claims.pop("header", None)
        return self.subject_token(header=header, **{"aud": self.profile.target.token_endpoint, **claims})

    def jwt_bearer(self, assertion: str | None = None, *, target: bool = True,
                   **params: str | Sequence[str] | None) -> Reply:
        """POST an RFC 7523 §2.1 request: grant_type, ``assertion`` (a fresh valid one when None;
        leave it out with ``assertion=""``), the primary target and ``params``."""
        form = [("grant_type", JWT_BEARER_GRANT)]
        value = self.assertion() if assertion is None else assertion
        if value:
            form.append(("assertion", value))
        if target:
            form += self.profile.primary_target()
        for name, v in params.items():
            if v is None:
                continue
            form += [(name, str(x)) for x in v] if isinstance(v, (list, tuple)) else [(name, str(v))]
        return self.post(form)

    def request(self, method: str, url: str, *, via: httpx.Client | None = None, **kwargs: Any) -> Reply:
        try:
            resp = (via or self.http).request(method, url, timeout=self.profile.target.timeout, **kwargs)
        except httpx.TransportError as exc:
            # TLS 1.3 reports a refused client certificate on the first read, not at connect.
            if via is not None and _tls_refusal(exc):
                # The target refused the certificate (or its absence) in the TLS handshake: a
                # refusal of the client's authentication, as RFC 8705 §2 lets a server do.
                return Reply(status=0, headers=httpx.Headers(), text="", body=None, tls_refused=True)
            raise TargetUnreachable(f"{method} {url} failed: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise TargetUnreachable(f"{method} {url} failed: {type(exc).__name__}") from exc
        body: Any = None
        if resp.content:
            try:
                body = resp.json()
            except ValueError:
                body = None
        return Reply(status=resp.status_code, headers=resp.headers, text=resp.text, body=body)

    def get_json(self, url: str) -> Any:
        reply = self.request("GET", url)
        if reply.status != 200 or reply.body is None:
            raise CaseFailure(f"GET {url}: {reply.describe()} (expected a JSON document)")
        return reply.body

    # the target's published documents -------------------------------------------------
    def metadata(self) -> dict[str, Any] | None:
        url = self.profile.target.metadata_url
        if url is None:
            return None
        with self._lock:
            if not self._metadata_fetched:
                self._metadata_fetched = True
                try:
                    reply = self.request("GET", url)
                    self._metadata = reply.body if reply.status == 200 and isinstance(reply.body, dict) else None
                except TargetUnreachable:
                    self._metadata = None
        return self._metadata

    def target_issuer(self) -> str | None:
        if self.profile.target.issuer:
            return self.profile.target.issuer
        meta = self.metadata()
        value = meta.get("issuer") if meta else None
        return value if isinstance(value, str) else None

    def target_jwks_uri(self) -> str | None:
        if self.profile.target.jwks_uri:
            return self.profile.target.jwks_uri
        meta = self.metadata()
        value = meta.get("jwks_uri") if meta else None
        return value if isinstance(value, str) else None

    def target_jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        if self._target_jwks is None or refresh:
            uri = self.target_jwks_uri()
            if uri is None:
                raise CaseSkip("the target's JWKS is unknown: set target.jwks_uri or target.metadata_url")
            doc = self.get_json(uri)
            if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
                raise CaseFailure("the target's JWKS is not a JWK Set (RFC 7517 §5)")
            self._target_jwks = doc
        return self._target_jwks

    def verify_issued(self, token: str) -> Issued:
        """Verify an issued JWT's signature against the target's JWKS (keys by kid only)."""
        try:
            header, claims = jose.verify_compact(token, self.target_jwks())
        except jose.JoseError:
            try:
                # A key may have been added since the JWKS was cached.
                header, claims = jose.verify_compact(token, self.target_jwks(refresh=True))
            except jose.JoseError as exc:
                raise CaseFailure(f"issued token does not verify against the target's JWKS: {exc}") from exc
        return Issued(header=header, claims=claims)

    def issue(self, **params: str | Sequence[str] | None) -> tuple[Reply, dict[str, Any]]:
        """A successful exchange for the primary target (plus ``params``); fails the case otherwise."""
        reply = self.exchange(**params)  # type: ignore[arg-type]  # params never name subject_token/target
        return reply, expect_issued(reply)

    def issue_jwt(self, **params: str | Sequence[str] | None) -> tuple[Reply, dict[str, Any], Issued]:
        reply, body = self.issue(**params)
        return reply, body, self.verify_issued(body["access_token"])


# valid twins ---------------------------------------------------------------------------
def valid_exchange(ctx: Context) -> Reply:
    """A fresh valid subject token exchanged for the primary target (gate ``exchange``)."""
    return ctx.exchange()


def valid_delegation(ctx: Context) -> Reply:
    """A valid exchange with an allowed actor token (gate ``actor``)."""
    actor = ctx.subject_token(sub=ctx.profile.actor.subject)
    return ctx.exchange(actor_token=actor, actor_token_type=ctx.profile.actor.token_type)


def valid_svid_exchange(ctx: Context) -> Reply:
    """A valid JWT-SVID from the kit's trust domain exchanged (gate ``spiffe``)."""
    if ctx.spiffe is None:
        raise CaseSkip("the kit's SPIFFE bundle endpoint is not running")
    p = ctx.profile.spiffe
    return ctx.exchange(ctx.spiffe.mint_jwt_svid(p.spiffe_id, p.audience), subject_token_type=p.subject_token_type)


def valid_jwt_bearer(ctx: Context) -> Reply:
    """A fresh valid assertion presented with the JWT-bearer grant (gate ``jwt_bearer``)."""
    return ctx.jwt_bearer()


def with_allowed(**fields: str) -> Callable[[Context], Reply]:
    """A twin that asks for the first allowed value of each named profile list instead of the
    case's defective one: ``with_allowed(audience="audiences")`` sends ``audience=<allowed>``."""
    def send(ctx: Context) -> Reply:
        params = {param: getattr(ctx.profile.allowed, name)[0] for param, name in fields.items()
                  if getattr(ctx.profile.allowed, name)}
        if not params:
            return ctx.exchange()
        target = not ({"audience", "resource"} & set(params))
        return ctx.exchange(target=target, **params)

    return send


GATE_TWINS: dict[str, Callable[[Context], Reply]] = {
    "exchange": valid_exchange, "actor": valid_delegation, "spiffe": valid_svid_exchange,
    "jwt_bearer": valid_jwt_bearer,
}


# assertions ---------------------------------------------------------------------------
def expect(condition: object, message: str) -> None:
    if not condition:
        raise CaseFailure(message)


def expect_issued(reply: Reply) -> dict[str, Any]:
    """A 200 JSON object with a non-empty string ``access_token`` (RFC 8693 §2.2.1)."""
    expect(reply.status == 200, f"expected a token, got {reply.describe()}")
    expect(isinstance(reply.body, dict), "successful response body is not a JSON object")
    expect(reply.access_token is not None, "successful response has no string access_token")
    return reply.json_object


def expect_refused(reply: Reply, codes: Iterable[str] | None = None, *, statuses: Iterable[int] = (400,),
                   what: str = "request") -> None:
    """No token; the status is one of ``statuses``; the error code one of ``codes`` (if given).
    A TLS handshake that refused the client's certificate counts as refused (mTLS only)."""
    if reply.tls_refused:
        return
    expect(reply.access_token is None, f"the {what} was answered with a token ({reply.describe()})")
    allowed_status = tuple(statuses)
    expect(reply.status in allowed_status,
           f"the {what} was not refused with HTTP {'/'.join(map(str, allowed_status))}: got {reply.describe()}")
    if codes is not None:
        wanted = sorted(set(codes))
        expect(reply.error in wanted,
               f"the {what} was refused with error={reply.error!r}, expected {' or '.join(wanted)}")


def granted_scopes(reply: Reply, claims: Mapping[str, Any] | None, requested: Iterable[str] | None) -> set[str] | None:
    """Scopes actually granted: the response ``scope``, else the token's, else the requested ones
    (RFC 8693 §2.2.1: ``scope`` may be omitted only when identical to the request)."""
    body = reply.json_object
    if isinstance(body.get("scope"), str):
        return set(body["scope"].split())
    if claims is not None and isinstance(claims.get("scope"), str):
        return set(claims["scope"].split())
    return set(requested) if requested is not None else None
