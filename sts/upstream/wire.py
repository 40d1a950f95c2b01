"""Each provider's token request and response, as its documentation gives them (pure).

Requests (the page and revision each follows are listed in docs/providers/README.md):

``openai``      RFC 8693 §2.1 token exchange, JSON body: ``grant_type``
                ``urn:ietf:params:oauth:grant-type:token-exchange``, ``subject_token_type``
                ``urn:ietf:params:oauth:token-type:jwt``, ``subject_token`` (our assertion),
                ``identity_provider_id``, ``service_account_id``. A ``scope`` "doesn't grant
                access", so none is sent.
``anthropic``   RFC 7523 §2.1 JWT-bearer grant, JSON body: ``grant_type``
                ``urn:ietf:params:oauth:grant-type:jwt-bearer``, ``assertion``,
                ``federation_rule_id``, ``organization_id``, ``service_account_id`` and, when
                configured, ``workspace_id``; with the ``anthropic-beta`` flags Anthropic's
                official SDK sends on this exchange (``oauth-2025-04-20``,
                ``oidc-federation-2026-04-01``).
``openrouter``  RFC 8693 §2.1, ``application/x-www-form-urlencoded``: ``grant_type``,
                ``subject_token``, ``subject_token_type`` (jwt), ``federation_policy_id``,
                ``requested_token_type`` (access_token) and ``scope`` when one is configured.
``gcp-sts``     RFC 8693 §2.1 as Google's STS ``token`` method takes it (form encoded, as
                Google's own client libraries send it): ``grant_type``, ``audience`` (the
                workload identity pool provider's full resource name), ``scope``,
                ``requested_token_type`` (access_token), ``subject_token``,
                ``subject_token_type`` (jwt).
``entra``       OAuth 2.0 client credentials (RFC 6749 §4.4) with a client assertion (RFC 7521
                §4.2, RFC 7523 §2.2): ``client_id``, ``scope``, ``grant_type``
                ``client_credentials``, ``client_assertion_type``
                ``urn:ietf:params:oauth:client-assertion-type:jwt-bearer``, ``client_assertion``.

Responses: every provider answers success with an RFC 6749 §5.1 body (``access_token``,
``token_type`` Bearer, ``expires_in``; RFC 8693 §2.2.1 adds ``issued_token_type``) and errors
with an RFC 6749 §5.2 body (``error``, ``error_description``; Entra adds ``error_codes``,
``trace_id``, ``correlation_id``). :func:`parse_token` accepts only what makes a usable token;
:func:`error_summary` keeps only a short error code for the audit record, never the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlencode

GRANT_TOKEN_EXCHANGE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
GRANT_JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_CLIENT_CREDENTIALS: Final = "client_credentials"
TOKEN_TYPE_JWT: Final = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_ACCESS_TOKEN: Final = "urn:ietf:params:oauth:token-type:access_token"
CLIENT_ASSERTION_JWT: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GOOGLE_DEFAULT_SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
# Anthropic's beta flags for the jwt-bearer exchange, as its official SDK sends them
# (anthropic-python lib/credentials: OAUTH_API_BETA_HEADER, FEDERATION_BETA_HEADER).
ANTHROPIC_BETA: Final = "oauth-2025-04-20,oidc-federation-2026-04-01"

MAX_ACCESS_TOKEN_CHARS: Final = 16 * 1024
# A provider token is cached at most this long whatever expires_in says (Google and Entra
# issue one hour; OpenRouter at most 15 minutes).
MAX_EXPIRES_IN: Final = 24 * 3600

# Response headers that carry the provider's request id, in the order they are looked for:
# Anthropic `request-id`, OpenAI and OpenRouter `x-request-id`, Entra `x-ms-request-id`.
REQUEST_ID_HEADERS: Final = ("request-id", "x-request-id", "x-ms-request-id")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """One POST to a token endpoint. ``encoding`` is ``json`` or ``form``."""

    url: str
    encoding: Literal["json", "form"]
    fields: Mapping[str, str]
    headers: Mapping[str, str] = field(default_factory=dict)

    def content(self) -> tuple[bytes, str]:
        """The body and its ``Content-Type``."""
        if self.encoding == "json":
            return json.dumps(dict(self.fields), separators=(",", ":")).encode(), "application/json"
        return urlencode(list(self.fields.items())).encode("ascii"), "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class ProviderToken:
    """A provider's access token. Invariant: ``expires_in`` in 1..MAX_EXPIRES_IN."""

    access_token: str
    expires_in: int
    scope: str | None


class BadProviderResponse(Exception):
    """A success status whose body is not a usable token (``reason`` names what is wrong)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def request_scope(upstream: Any, granted: tuple[str, ...]) -> str | None:
    """The scope sent to the provider: the scopes policy granted for the target, else the
    upstream's configured scope (Google's default scope for gcp-sts); None where the provider
    takes no scope (OpenAI, Anthropic)."""
    if upstream.provider in ("openai", "anthropic"):
        return None
    if granted:
        return " ".join(granted)
    if upstream.scope is not None:
        return str(upstream.scope)
    return GOOGLE_DEFAULT_SCOPE if upstream.provider == "gcp-sts" else None


def build_request(upstream: Any, assertion: str, scope: str | None) -> OutboundRequest:
    """The token request for ``upstream`` (an ``UpstreamConfig``) carrying ``assertion``."""
    p = upstream.provider
    fields: dict[str, str]
    if p == "openai":
        fields = {"grant_type": GRANT_TOKEN_EXCHANGE, "subject_token_type": TOKEN_TYPE_JWT, "subject_token": assertion,
                  "identity_provider_id": upstream.identity_provider_id, "service_account_id": upstream.service_account_id}
        return OutboundRequest(upstream.endpoint, "json", fields)
    if p == "anthropic":
        fields = {"grant_type": GRANT_JWT_BEARER, "assertion": assertion, "federation_rule_id": upstream.federation_rule_id,
                  "organization_id": upstream.organization_id, "service_account_id": upstream.service_account_id}
        if upstream.workspace_id is not None:
            fields["workspace_id"] = upstream.workspace_id
        return OutboundRequest(upstream.endpoint, "json", fields, {"anthropic-beta": ANTHROPIC_BETA})
    if p == "openrouter":
        fields = {"grant_type": GRANT_TOKEN_EXCHANGE, "subject_token": assertion, "subject_token_type": TOKEN_TYPE_JWT,
                  "federation_policy_id": upstream.federation_policy_id, "requested_token_type": TOKEN_TYPE_ACCESS_TOKEN}
        if scope:
            fields["scope"] = scope
        return OutboundRequest(upstream.endpoint, "form", fields)
    if p == "gcp-sts":
        fields = {"grant_type": GRANT_TOKEN_EXCHANGE, "audience": upstream.audience, "scope": scope or GOOGLE_DEFAULT_SCOPE,
                  "requested_token_type": TOKEN_TYPE_ACCESS_TOKEN, "subject_token": assertion,
                  "subject_token_type": TOKEN_TYPE_JWT}
        return OutboundRequest(upstream.endpoint, "form", fields)
    if p == "entra":
        fields = {"client_id": upstream.client_id, "scope": scope or upstream.scope, "grant_type": GRANT_CLIENT_CREDENTIALS,
                  "client_assertion_type": CLIENT_ASSERTION_JWT, "client_assertion": assertion}
        return OutboundRequest(upstream.endpoint, "form", fields)
    raise ValueError(f"unknown provider {p!r}")


def _object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadProviderResponse("not_json") from None
    if not isinstance(value, dict):
        raise BadProviderResponse("not_object")
    return value


def parse_token(body: bytes) -> ProviderToken:
    """The token of a 200 answer (RFC 6749 §5.1, RFC 8693 §2.2.1), or ``BadProviderResponse``."""
    doc = _object(body)
    token = doc.get("access_token")
    if not isinstance(token, str) or not token or len(token) > MAX_ACCESS_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise BadProviderResponse("access_token")
    token_type = doc.get("token_type")
    # RFC 6749 §7.1: the type tells the client how to use the token; we hand out Bearer only.
    if token_type is not None and (not isinstance(token_type, str) or token_type.lower() != "bearer"):
        raise BadProviderResponse("token_type")
    issued = doc.get("issued_token_type")
    if issued is not None and issued != TOKEN_TYPE_ACCESS_TOKEN:
        raise BadProviderResponse("issued_token_type")
    expires = doc.get("expires_in")
    # Entra's v1 endpoint sent expires_in as a string; accept digits, nothing else.
    if isinstance(expires, str) and expires.isdigit():
        expires = int(expires)
    if isinstance(expires, bool) or not isinstance(expires, int) or expires < 1:
        raise BadProviderResponse("expires_in")
    scope = doc.get("scope")
    return ProviderToken(token, min(expires, MAX_EXPIRES_IN), scope if isinstance(scope, str) and scope.isprintable() else None)


def error_summary(status: int, body: bytes) -> str:
    """``HTTP <status>`` plus the RFC 6749 §5.2 ``error`` code (and Entra's first AADSTS code)
    when they are short tokens: what the audit record keeps. Never the description."""
    text = f"HTTP {status}"
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return text
    if not isinstance(doc, dict):
        return text
    error = doc.get("error")
    if isinstance(error, str) and _ERROR_CODE.fullmatch(error):
        text += f" {error}"
    codes = doc.get("error_codes")
    if isinstance(codes, list) and codes and isinstance(codes[0], int) and not isinstance(codes[0], bool):
        text += f" AADSTS{codes[0]}"
    return text


def request_id(headers: Mapping[str, str]) -> str | None:
    """The provider's request id from the response headers, when it is a plain identifier."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value and _SAFE_ID.fullmatch(value):
            return value
    return None
