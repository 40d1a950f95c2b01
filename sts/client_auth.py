"""Client authentication at the token endpoint (RFC 6749 §2.3, RFC 7521 §4.2, RFC 7523 §2.2/§3,
RFC 8705 §2).

Supported: none (public exchange, when the deployment allows it), ``client_secret_basic``,
``client_secret_post``, ``private_key_jwt``, and mutual TLS (``tls_client_auth``,
``self_signed_tls_client_auth``: the rules are in :mod:`sts.client_tls`). RFC 6749 §2.3: "The client MUST NOT use more
than one authentication method in each request." Secrets are compared as SHA-256 digests in
constant time; they are generated with high entropy (``sts clients secret``), so a slow hash
would only add latency to every exchange without adding strength.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote_plus

from sts import jose
from sts.client_tls import TlsClientRule, check as check_tls_certificate
from sts.errors import InvalidClient, InvalidRequest
from sts.protocol import CLIENT_ASSERTION_TYPE_JWT_BEARER
from sts.subject.claims import ClaimError, ClaimRules, validate_claims

CLIENT_ID_RE = re.compile(r"[A-Za-z0-9._~-]{1,128}")
MAX_ASSERTION_LIFETIME = 3600
CLIENT_ASSERTION_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    client_id: str
    auth_method: str
    secret_sha256: bytes | None
    keys: jose.KeySet | None
    token_exchange: bool
    tls: TlsClientRule | None = None  # RFC 8705 §2 methods only


@dataclass(frozen=True, slots=True)
class AuthenticatedClient:
    """The caller. ``client_id`` is ``None`` for a public exchange."""

    client_id: str | None
    method: str


PUBLIC = AuthenticatedClient(client_id=None, method="none")


class PeerCertificate(Protocol):
    """The TLS client certificate as the HTTP layer found it (sts.spiffe.mtls.ClientCertificate)."""

    @property
    def sha256(self) -> bytes: ...

    @property
    def der(self) -> bytes | None: ...


def replay_namespace(kind: str, name: str) -> str:
    """The replay-guard namespace for one client or issuer; long names are hashed to fit the
    column while staying distinct."""
    value = f"{kind}:{name}"
    return value if len(value) <= 100 else f"{kind}#sha256:{hashlib.sha256(name.encode()).hexdigest()}"

ClaimOnce = Callable[[str, str, float], Awaitable[bool]]


def _basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        raise InvalidClient("Unsupported authorization scheme.", reason="unsupported_auth_scheme")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidClient("Malformed Basic credentials.", reason="malformed_basic") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("Malformed Basic credentials.", reason="malformed_basic")
    # RFC 6749 §2.3.1: both parts are application/x-www-form-urlencoded before base64.
    return unquote_plus(client_id), unquote_plus(secret)


class ClientAuthenticator:
    """Authenticates the caller against the registered clients of the configuration."""

    def __init__(
        self,
        clients: Mapping[str, RegisteredClient],
        *,
        allow_public: bool,
        assertion_audiences: frozenset[str],
        claim_once: ClaimOnce,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clients = dict(clients)
        self._allow_public = allow_public
        self._assertion_audiences = assertion_audiences
        self._claim_once = claim_once
        self._clock = clock

    async def authenticate(self, authorization: str | None, form: Mapping[str, list[str]],
                           peer: PeerCertificate | None = None) -> AuthenticatedClient:
        """The caller. ``peer`` is the TLS client certificate (broker-terminated TLS, or forwarded
        by a trusted proxy), which only the RFC 8705 methods look at."""

        def one(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        body_id, body_secret = one("client_id"), one("client_secret")
        assertion, assertion_type = one("client_assertion"), one("client_assertion_type")
        methods = [m for m, present in (
            ("client_secret_basic", authorization is not None),
            ("client_secret_post", body_secret is not None),
            ("private_key_jwt", assertion is not None or assertion_type is not None),
        ) if present]
        if len(methods) > 1:
            raise InvalidRequest("More than one client authentication method was used.", reason="multiple_client_auth")

        if not methods:
            registered = self._clients.get(body_id) if body_id is not None else None
            if registered is not None and registered.tls is not None:
                return self._check_certificate(registered, peer)
            if registered is not None:
                raise InvalidClient("Client authentication is required.", reason="missing_client_credentials")
            if not self._allow_public:
                raise InvalidClient("Client authentication is required.", reason="public_exchange_disabled")
            return PUBLIC

        method = methods[0]
        if method == "client_secret_basic":
            assert authorization is not None
            client_id, secret = _basic_credentials(authorization)
            if body_id is not None and body_id != client_id:
                raise InvalidRequest("client_id differs from the authenticated client.", reason="client_id_mismatch")
            return self._check_secret(client_id, secret, method)
        if method == "client_secret_post":
            if body_id is None:
                raise InvalidClient("client_id is missing.", reason="missing_client_id", scheme="Basic")
            assert body_secret is not None
            return self._check_secret(body_id, body_secret, method)
        return await self._check_assertion(body_id, assertion, assertion_type)

    def _client(self, client_id: str, method: str) -> RegisteredClient:
        client = self._clients.get(client_id) if CLIENT_ID_RE.fullmatch(client_id) else None
        if client is None or client.auth_method != method:
            raise InvalidClient(reason="unknown_client_or_method", detail=client_id[:128])
        return client

    def _check_certificate(self, client: RegisteredClient, peer: PeerCertificate | None) -> AuthenticatedClient:
        # RFC 8705 §2: the client_id parameter names the client; the certificate of the TLS
        # connection authenticates it. No certificate, or one that does not fit, is invalid_client.
        assert client.tls is not None
        reason = check_tls_certificate(client.tls, peer.sha256 if peer is not None else None,
                                       peer.der if peer is not None else None, self._clock())
        if reason is not None:
            raise InvalidClient(reason=reason, detail=client.client_id)
        return AuthenticatedClient(client_id=client.client_id, method=client.auth_method)

    def _check_secret(self, client_id: str, secret: str, method: str) -> AuthenticatedClient:
        client = self._client(client_id, method)
        digest = hashlib.sha256(secret.encode("utf-8")).digest()
        if client.secret_sha256 is None or not hmac.compare_digest(digest, client.secret_sha256):
            raise InvalidClient(reason="bad_client_secret", detail=client_id)
        return AuthenticatedClient(client_id=client_id, method=method)

    async def _check_assertion(self, body_id: str | None, assertion: str | None, assertion_type: str | None) -> AuthenticatedClient:
        if assertion_type != CLIENT_ASSERTION_TYPE_JWT_BEARER or not assertion:
            raise InvalidClient("Unsupported client assertion.", reason="bad_assertion_type")
        try:
            unverified = jose.unsafe_decode(assertion.strip(), max_length=8192)
            alg = jose.check_header(unverified.header, allowed_algorithms=CLIENT_ASSERTION_ALGORITHMS)
        except jose.JOSEError as exc:
            raise InvalidClient("The client assertion is invalid.", reason=f"assertion_{exc.reason}") from None
        claims: dict[str, Any] = unverified.claims
        # RFC 7523 §3: iss and sub are both the client_id.
        client_id = claims.get("sub")
        if not isinstance(client_id, str) or claims.get("iss") != client_id:
            raise InvalidClient("The client assertion is invalid.", reason="assertion_iss_sub")
        if body_id is not None and body_id != client_id:
            raise InvalidClient("The client assertion is invalid.", reason="assertion_client_id_mismatch")
        client = self._client(client_id, "private_key_jwt")
        kid = unverified.header.get("kid")
        key = client.keys.find(kid if isinstance(kid, str) else None, alg) if client.keys else None
        if key is None:
            raise InvalidClient("The client assertion is invalid.", reason="assertion_unknown_key")
        try:
            jose.verify_signature(unverified, key, alg)
        except jose.JOSEError:
            raise InvalidClient("The client assertion is invalid.", reason="assertion_bad_signature") from None
        now = self._clock()
        rules = ClaimRules(
            issuer=client_id,
            audiences=self._assertion_audiences,
            leeway=30,
            max_lifetime=MAX_ASSERTION_LIFETIME,
            require_sub=True,
            require_jti=True,
        )
        try:
            validate_claims(claims, rules, now)
        except ClaimError as exc:
            raise InvalidClient("The client assertion is invalid.", reason=f"assertion_{exc.reason}") from None
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise InvalidClient("The client assertion is invalid.", reason="assertion_jti")
        # RFC 7523 §3 item 7: the jti may be used once; replicas share the guard through the DB.
        # Assertions are accepted until exp + leeway, so the guard must outlive that.
        if not await self._claim_once(replay_namespace("client", client_id), jti, float(claims["exp"]) + rules.leeway):
            raise InvalidClient("The client assertion was already used.", reason="assertion_replayed")
        return AuthenticatedClient(client_id=client_id, method="private_key_jwt")
