"""Token-request parsing (RFC 8693 §2.1, RFC 7523 §2.1, RFC 6749 §3.1-3.3 and §5.2, RFC 8707 §2).

``parse_exchange_form`` is pure: it takes the decoded form pairs and returns one frozen
``ExchangeRequest`` or raises an ``OAuthError``. Everything later in the pipeline trusts the
shape of that value and never looks at the raw form again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from sts.errors import InvalidRequest, InvalidScope, InvalidTarget, UnsupportedGrantType
from sts.jsonparam import JsonParameterError, decode_json_parameter
from sts.trust.authz_details import parse_authorization_details

GRANT_TYPE_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
# RFC 7523 §2.1: a JWT used as an authorization grant (MCP's workload identity federation,
# SEP-1933, and the ID-JAG of draft-ietf-oauth-identity-assertion-authz-grant; docs/jwt-bearer.md).
GRANT_TYPE_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# draft-ietf-oauth-identity-assertion-authz-grant-04 §7: the ID-JAG profile in metadata.
GRANT_PROFILE_ID_JAG = "urn:ietf:params:oauth:grant-profile:id-jag"
# The names the configuration uses for the grant types (a grant's `grant_types`).
GRANT_TYPE_NAMES = {GRANT_TYPE_TOKEN_EXCHANGE: "token_exchange", GRANT_TYPE_JWT_BEARER: "jwt_bearer"}

TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_TYPE_REFRESH_TOKEN = "urn:ietf:params:oauth:token-type:refresh_token"
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TOKEN_TYPE_SAML1 = "urn:ietf:params:oauth:token-type:saml1"
TOKEN_TYPE_SAML2 = "urn:ietf:params:oauth:token-type:saml2"

# Subject and actor token types this broker can verify: all of them are JWTs. An
# ``access_token`` is accepted only when it turns out to be a JWT from a trusted issuer.
JWT_SUBJECT_TOKEN_TYPES = frozenset({TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_ACCESS_TOKEN})

# Transaction tokens (draft-ietf-oauth-transaction-tokens-10, sts.txn): requested with this
# type, and presented with it as the subject token of a replacement.
TOKEN_TYPE_TXN_TOKEN = "urn:ietf:params:oauth:token-type:txn_token"

# What we can issue: a JWT access token (RFC 9068). Asking for ``jwt`` gets the same token,
# labelled with the type the client asked for. Transaction tokens where configured.
ISSUABLE_TOKEN_TYPES = frozenset({TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, TOKEN_TYPE_TXN_TOKEN})

CLIENT_ASSERTION_TYPE_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# RFC 8693 §2.1 lets `resource` and `audience` repeat; RFC 6749 §3.1 forbids the other
# parameters to be sent more than once. Parameters we do not know are ignored entirely.
REPEATABLE_PARAMETERS = frozenset({"resource", "audience"})
SINGLE_PARAMETERS = frozenset({
    "grant_type", "subject_token", "subject_token_type", "actor_token", "actor_token_type",
    "requested_token_type", "scope", "client_id", "client_secret", "client_assertion",
    "client_assertion_type", "assertion",
    # RFC 9396 §6; draft-ietf-oauth-transaction-tokens-10 (Txn-Token Request)
    "authorization_details", "request_context", "request_details",
})
# RFC 8693 parameters (and the transaction-token request's, which needs requested_token_type)
# that mean nothing to the RFC 7523 grant: ignored there, as RFC 6749 §3.2 asks of parameters a
# grant does not define.
_EXCHANGE_ONLY_PARAMETERS = frozenset({
    "subject_token", "subject_token_type", "actor_token", "actor_token_type", "requested_token_type",
    "request_context", "request_details",
})

MAX_BODY_BYTES = 64 * 1024
MAX_TOKEN_CHARS = 16 * 1024
MAX_TARGET_CHARS = 2048
MAX_SCOPE_CHARS = 2048


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    """A syntactically valid RFC 8693 request. Invariant: tokens are trimmed and non-empty,
    ``actor_token`` and ``actor_token_type`` are both set or both ``None``, every resource is an
    absolute URI without a fragment, and scopes are well-formed RFC 6749 §3.3 tokens."""

    grant_type: str
    subject_token: str
    subject_token_type: str
    actor_token: str | None
    actor_token_type: str | None
    requested_token_type: str
    audiences: tuple[str, ...]
    resources: tuple[str, ...]
    scopes: tuple[str, ...] | None
    # RFC 9396 §6 (sts.trust.authz_details): None when the request has no authorization_details.
    authorization_details: tuple[dict[str, Any], ...] | None = None
    # Transaction-token request parameters (sts.txn): JSON objects, None when absent.
    request_context: dict[str, Any] | None = None
    request_details: dict[str, Any] | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        """The distinct requested targets, audiences first, in request order."""
        return tuple(dict.fromkeys(self.audiences + self.resources))


def collect_parameters(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Group form pairs by name. RFC 6749 §3.1: "Parameters sent without a value MUST be
    treated as if they were omitted from the request" and "Request and response parameters
    MUST NOT be included more than once"."""
    params: dict[str, list[str]] = {}
    for name, value in pairs:
        if value == "":
            continue
        params.setdefault(name, []).append(value)
    for name, values in params.items():
        if len(values) > 1 and name in SINGLE_PARAMETERS:
            raise InvalidRequest("A parameter was sent more than once.", reason="duplicate_parameter", detail=name)
    return params


def _single(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _token(params: dict[str, list[str]], name: str) -> str | None:
    raw = _single(params, name)
    if raw is None:
        return None
    # Clients often read tokens from files that end with a newline.
    token = raw.strip()
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidRequest("A token is too large.", reason="token_too_large", detail=name)
    return token


def is_valid_scope_token(scope: str) -> bool:
    """RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )."""
    return bool(scope) and all(c == "\x21" or "\x23" <= c <= "\x5b" or "\x5d" <= c <= "\x7e" for c in scope)


def parse_scope(raw: str) -> tuple[str, ...]:
    if len(raw) > MAX_SCOPE_CHARS:
        raise InvalidScope("The scope parameter is too large.", reason="scope_too_large")
    scopes = tuple(dict.fromkeys(s for s in raw.split(" ") if s))
    if not all(is_valid_scope_token(s) for s in scopes):
        raise InvalidScope("The scope parameter is malformed.", reason="scope_malformed")
    return scopes


def is_absolute_uri_without_fragment(value: str) -> bool:
    """RFC 8707 §2: the resource "MUST be an absolute URI ... MUST NOT include a fragment"."""
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.scheme) and "#" not in value and bool(parts.netloc or parts.path)


MAX_CONTEXT_CHARS = 4096


def parse_json_object(raw: str, name: str) -> dict[str, Any]:
    """A JSON-object parameter (``request_context``, ``request_details``), strictly decoded."""
    try:
        value = decode_json_parameter(raw, max_chars=MAX_CONTEXT_CHARS)
    except JsonParameterError as exc:
        text = f"The {name} parameter is too large." if exc.reason == "too_large" else f"The {name} parameter is not valid JSON."
        raise InvalidRequest(text, reason=f"{name}_{exc.reason}") from None
    if type(value) is not dict:
        raise InvalidRequest(f"The {name} parameter must be a JSON object.", reason=f"{name}_not_object")
    return value


def parse_exchange_form(pairs: Iterable[tuple[str, str]]) -> ExchangeRequest:
    """Turn decoded form pairs into an ``ExchangeRequest`` (RFC 8693 §2.1)."""
    return parse_exchange_params(collect_parameters(pairs))


def parse_exchange_params(params: dict[str, list[str]]) -> ExchangeRequest:
    """``parse_exchange_form`` for parameters already grouped by ``collect_parameters`` (the
    token endpoint groups them once, for client authentication and for this)."""
    grant_type = _single(params, "grant_type")
    if grant_type is None:
        raise InvalidRequest("The grant_type parameter is missing.", reason="missing_grant_type")
    if grant_type == GRANT_TYPE_JWT_BEARER:
        return parse_jwt_bearer_params(params)
    if grant_type != GRANT_TYPE_TOKEN_EXCHANGE:
        raise UnsupportedGrantType(reason="unsupported_grant_type")

    subject_token = _token(params, "subject_token")
    if subject_token is None:
        raise InvalidRequest("The subject_token parameter is missing.", reason="missing_subject_token")
    subject_token_type = _single(params, "subject_token_type")
    if subject_token_type is None:
        raise InvalidRequest("The subject_token_type parameter is missing.", reason="missing_subject_token_type")

    actor_token = _token(params, "actor_token")
    actor_token_type = _single(params, "actor_token_type")
    # RFC 8693 §2.1: actor_token_type "is REQUIRED when the actor_token parameter is present
    # in the request but MUST NOT be included otherwise."
    if actor_token is not None and actor_token_type is None:
        raise InvalidRequest("The actor_token_type parameter is required with actor_token.", reason="missing_actor_token_type")
    if actor_token is None and actor_token_type is not None:
        raise InvalidRequest("The actor_token_type parameter is sent without actor_token.", reason="unexpected_actor_token_type")

    requested_token_type = _single(params, "requested_token_type") or TOKEN_TYPE_ACCESS_TOKEN
    if requested_token_type not in ISSUABLE_TOKEN_TYPES:
        raise InvalidRequest("The requested token type is not supported.", reason="unsupported_requested_token_type")

    audiences = tuple(params.get("audience", ()))
    resources = tuple(params.get("resource", ()))
    for target in audiences + resources:
        if len(target) > MAX_TARGET_CHARS:
            raise InvalidTarget("A requested target is too large.", reason="target_too_large")
        if not target.isprintable():
            raise InvalidTarget("A requested target contains control characters.", reason="target_malformed")
    for resource in resources:
        if not is_absolute_uri_without_fragment(resource):
            raise InvalidTarget("A resource must be an absolute URI without a fragment.", reason="resource_malformed")

    raw_scope = _single(params, "scope")
    scopes = parse_scope(raw_scope) if raw_scope is not None else None
    # JSON-valued parameters (RFC 9396 §6; transaction tokens): plain lookups when absent.
    raw_details = params.get("authorization_details")
    raw_context, raw_txn_details = params.get("request_context"), params.get("request_details")

    return ExchangeRequest(
        grant_type=grant_type,
        subject_token=subject_token,
        subject_token_type=subject_token_type,
        actor_token=actor_token,
        actor_token_type=actor_token_type,
        requested_token_type=requested_token_type,
        audiences=audiences,
        resources=resources,
        scopes=scopes,
        authorization_details=parse_authorization_details(raw_details[0]) if raw_details is not None else None,
        request_context=parse_json_object(raw_context[0], "request_context") if raw_context is not None else None,
        request_details=parse_json_object(raw_txn_details[0], "request_details") if raw_txn_details is not None else None,
    )


def parse_jwt_bearer_params(params: dict[str, list[str]]) -> ExchangeRequest:
    """An RFC 7523 §2.1 request (``grant_type`` jwt-bearer, ``assertion``, and the ``resource``,
    ``audience`` and ``scope`` parameters of RFC 8707 §2, RFC 8693 §2.1 and RFC 6749 §3.3) as
    the same ``ExchangeRequest`` a token exchange parses into: the assertion is the subject
    token (a JWT), ``grant_type`` records the grant, and the targets and scope are read by the
    very same code. Every later step is therefore shared; the steps that differ by RFC (the
    error codes, the assertion's audience and one-time ``jti``) look at ``grant_type``.

    RFC 7521 §4.1: "assertion REQUIRED"; a missing one is a malformed request (RFC 6749 §5.2
    ``invalid_request``), while an unacceptable one is ``invalid_grant`` (RFC 7521 §4.1.1),
    decided by the pipeline."""
    assertion = _token(params, "assertion")
    if assertion is None:
        raise InvalidRequest("The assertion parameter is missing.", reason="missing_assertion")
    common = {name: values for name, values in params.items() if name not in _EXCHANGE_ONLY_PARAMETERS}
    common["grant_type"] = [GRANT_TYPE_TOKEN_EXCHANGE]
    common["subject_token"] = [assertion]
    common["subject_token_type"] = [TOKEN_TYPE_JWT]
    return replace(parse_exchange_params(common), grant_type=GRANT_TYPE_JWT_BEARER)
