"""RFC 8414 authorization server metadata, and the JWK Set it points to (RFC 7517 §5).

RFC 8414 §3.3: "The issuer value returned MUST be identical to the authorization server's
issuer identifier value into which the well-known URI string was inserted to create the URL
used to retrieve the metadata." §2: ``token_endpoint`` and ``response_types_supported`` are
REQUIRED; ``grant_types_supported`` defaults to ``["authorization_code", "implicit"]`` when
omitted, so a token-exchange service that omits it advertises that it does not exchange.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from conformance.cases.base import CaseSkip, Context, case, expect, media_type
from conformance.profile import TOKEN_EXCHANGE_GRANT

_OAUTH_WELL_KNOWN = "/.well-known/oauth-authorization-server"
_OIDC_WELL_KNOWN = "/.well-known/openid-configuration"
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k", "oth")


def issuer_from_metadata_url(url: str) -> str | None:
    """The issuer a metadata URL was derived from (RFC 8414 §3.1; OIDC Discovery §4)."""
    parts = urlsplit(url)
    if parts.path.startswith(_OAUTH_WELL_KNOWN):
        # RFC 8414 inserts the well-known segment between host and path.
        return urlunsplit((parts.scheme, parts.netloc, parts.path[len(_OAUTH_WELL_KNOWN):], "", ""))
    if parts.path.endswith(_OIDC_WELL_KNOWN):
        # OpenID Connect Discovery appends it after the issuer's path.
        return urlunsplit((parts.scheme, parts.netloc, parts.path[: -len(_OIDC_WELL_KNOWN)], "", ""))
    return None


def _metadata(ctx: Context) -> dict[str, object]:
    meta = ctx.metadata()
    expect(meta is not None, "the metadata document could not be fetched as a JSON object")
    assert meta is not None
    return meta


@case("rfc8414.metadata.reachable", source="RFC 8414 §3.2", level="MUST",
      title="The metadata URL answers 200 with an application/json object", needs=("metadata",))
def reachable(ctx: Context) -> None:
    url = ctx.profile.target.metadata_url
    assert url is not None
    reply = ctx.request("GET", url)
    expect(reply.status == 200, f"GET metadata: {reply.describe()}")
    expect(media_type(reply.headers) == "application/json",
           f"metadata Content-Type is {reply.headers.get('content-type')!r}")
    expect(isinstance(reply.body, dict), "metadata body is not a JSON object")


@case("rfc8414.metadata.issuer-matches", source="RFC 8414 §3.3", level="MUST",
      title="issuer equals the identifier the metadata URL was built from (and the profile's issuer)",
      needs=("metadata",))
def issuer_matches(ctx: Context) -> None:
    meta = _metadata(ctx)
    issuer = meta.get("issuer")
    expect(isinstance(issuer, str) and issuer, "metadata has no issuer")
    url = ctx.profile.target.metadata_url
    assert url is not None
    derived = issuer_from_metadata_url(url)
    if derived is not None:
        expect(issuer == derived, f"metadata issuer {issuer!r} is not the issuer its URL was built from ({derived!r})")
    if ctx.profile.target.issuer:
        expect(issuer == ctx.profile.target.issuer,
               f"metadata issuer {issuer!r} differs from the profile's target.issuer")


@case("rfc8414.metadata.token-endpoint", source="RFC 8414 §2", level="MUST",
      title="token_endpoint is present and is the endpoint under test", needs=("metadata",))
def token_endpoint(ctx: Context) -> None:
    value = _metadata(ctx).get("token_endpoint")
    expect(isinstance(value, str), "metadata has no token_endpoint")
    expect(value == ctx.profile.target.token_endpoint,
           f"metadata token_endpoint {value!r} differs from the profile's token_endpoint")


@case("rfc8414.metadata.response-types", source="RFC 8414 §2", level="MUST",
      title="response_types_supported (REQUIRED) is a JSON array", needs=("metadata",))
def response_types(ctx: Context) -> None:
    value = _metadata(ctx).get("response_types_supported")
    expect(isinstance(value, list) and all(isinstance(v, str) for v in value),
           "response_types_supported is missing or not an array of strings")


@case("rfc8414.metadata.grant-types-token-exchange", source="RFC 8414 §2", level="SHOULD",
      title="grant_types_supported lists urn:ietf:params:oauth:grant-type:token-exchange", needs=("metadata",))
def grant_types(ctx: Context) -> None:
    value = _metadata(ctx).get("grant_types_supported")
    expect(isinstance(value, list), "grant_types_supported is omitted (its default excludes token exchange)")
    assert isinstance(value, list)
    expect(TOKEN_EXCHANGE_GRANT in value, "grant_types_supported does not list the token-exchange grant")


@case("rfc8414.metadata.auth-methods", source="RFC 8414 §2", level="SHOULD",
      title="token_endpoint_auth_methods_supported, when present, lists the method the kit uses",
      needs=("metadata",))
def auth_methods(ctx: Context) -> None:
    value = _metadata(ctx).get("token_endpoint_auth_methods_supported")
    if value is None:
        # Its default is client_secret_basic (RFC 8414 §2).
        expect(ctx.profile.client.auth in ("client_secret_basic",),
               f"token_endpoint_auth_methods_supported is omitted; its default excludes {ctx.profile.client.auth}")
        return
    expect(isinstance(value, list), "token_endpoint_auth_methods_supported is not an array")
    assert isinstance(value, list)
    expect(ctx.profile.client.auth in value,
           f"token_endpoint_auth_methods_supported does not list {ctx.profile.client.auth}")


@case("rfc8414.metadata.jwks-uri", source="RFC 8414 §2", level="MUST",
      title="jwks_uri answers with a JWK Set whose keys have kty (needed to verify issued JWTs)",
      needs=("metadata", "jwt"))
def jwks_uri(ctx: Context) -> None:
    meta = _metadata(ctx)
    uri = meta.get("jwks_uri")
    if not isinstance(uri, str):
        if ctx.profile.target.jwks_uri:
            raise CaseSkip("metadata has no jwks_uri; the profile names one")
        expect(False, "metadata has no jwks_uri, so issued JWTs cannot be verified")
    assert isinstance(uri, str)
    doc = ctx.get_json(uri)
    expect(isinstance(doc, dict) and isinstance(doc.get("keys"), list) and doc["keys"],
           "jwks_uri is not a non-empty JWK Set")
    expect(all(isinstance(k, dict) and isinstance(k.get("kty"), str) for k in doc["keys"]),
           "a JWK in the set has no kty")


@case("hardening.jwks.no-private-keys", source="RFC 7517 §5", level="HARDENING",
      title="The target's JWK Set carries no private or symmetric key material", needs=("jwt",))
def no_private_keys(ctx: Context) -> None:
    for jwk in ctx.target_jwks().get("keys", []):
        present = [m for m in _PRIVATE_MEMBERS if isinstance(jwk, dict) and m in jwk]
        expect(not present, f"a published JWK carries private members {present}")
