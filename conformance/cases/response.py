"""RFC 8693 §2.2.1 successful response, and the RFC 6749 §5.1 rules it inherits.

RFC 6749 §5.1: "The parameters are included in the entity-body of the HTTP response using the
"application/json" media type ... The authorization server MUST include the HTTP
"Cache-Control" response header field with a value of "no-store" in any response containing
tokens, credentials, or other sensitive information, as well as the "Pragma" response header
field with a value of "no-cache"."
"""

from __future__ import annotations

import re

from conformance.cases.base import Context, Reply, case, expect, expect_issued, granted_scopes, media_type
from conformance.profile import ACCESS_TOKEN_TYPE, JWT_TYPE

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


def _success(ctx: Context) -> Reply:
    """One successful exchange shared by the response-shape cases of a run."""
    if "success" not in ctx.memo:
        reply = ctx.exchange()
        expect_issued(reply)
        ctx.memo["success"] = reply
    reply = ctx.memo["success"]
    assert isinstance(reply, Reply)
    return reply


@case("rfc8693.response.access-token", source="RFC 8693 §2.2.1", level="MUST",
      title="The response carries access_token as a non-empty string")
def access_token(ctx: Context) -> None:
    expect_issued(_success(ctx))


@case("rfc8693.response.issued-token-type", source="RFC 8693 §2.2.1", level="MUST",
      title="The response carries issued_token_type, an absolute URI the target declared")
def issued_token_type(ctx: Context) -> None:
    value = _success(ctx).json_object.get("issued_token_type")
    expect(isinstance(value, str) and _URI.match(value), "issued_token_type is missing or not a URI")
    expect(value in ctx.profile.choices.requested_token_types,
           f"issued_token_type {value!r} is not one of the declared requested_token_types")


@case("rfc8693.response.token-type", source="RFC 8693 §2.2.1", level="MUST",
      title="token_type is present; Bearer (any case) for access tokens, N_A otherwise")
def token_type(ctx: Context) -> None:
    body = _success(ctx).json_object
    value = body.get("token_type")
    expect(isinstance(value, str) and value, "token_type is missing")
    assert isinstance(value, str)
    if body.get("issued_token_type") in (ACCESS_TOKEN_TYPE, JWT_TYPE):
        # RFC 6749 §7.1 / RFC 6750 §4: the value is case-insensitive. RFC 9449 §5: a token
        # bound to the kit's DPoP proof is typed DPoP.
        wanted = "dpop" if ctx.profile.client.dpop else "bearer"
        expect(value.lower() == wanted, f"token_type is {value!r}, expected {'DPoP' if wanted == 'dpop' else 'Bearer'}")
    else:
        expect(value.lower() in ("bearer", "n_a"), f"token_type is {value!r}, expected Bearer or N_A")


@case("rfc8693.response.expires-in", source="RFC 8693 §2.2.1", level="SHOULD",
      title="expires_in (RECOMMENDED) is a positive JSON integer")
def expires_in(ctx: Context) -> None:
    value = _success(ctx).json_object.get("expires_in")
    expect(value is not None, "expires_in is missing")
    expect(isinstance(value, int) and not isinstance(value, bool),
           f"expires_in is a {type(value).__name__}, not an integer")
    assert isinstance(value, int)
    expect(value > 0, "expires_in is not positive")


@case("rfc8693.response.scope-when-different", source="RFC 8693 §2.2.1", level="MUST",
      title="When no scope was requested but the token carries scopes, the response names them in scope",
      needs=("jwt",))
def scope_when_different(ctx: Context) -> None:
    reply = _success(ctx)
    claims = ctx.verify_issued(reply.json_object["access_token"]).claims
    in_token = claims.get("scope")
    if not (isinstance(in_token, str) and in_token.strip()):
        from conformance.cases.base import CaseSkip

        raise CaseSkip("the token issued without a scope request carries no scope")
    response_scope = reply.json_object.get("scope")
    expect(isinstance(response_scope, str), "scope differs from the (empty) request but the response has no scope")
    granted = granted_scopes(reply, claims, None)
    expect(granted == set(in_token.split()), "the response scope differs from the token's scope claim")


@case("rfc6749.response.content-type-json", source="RFC 6749 §5.1", level="MUST",
      title="The successful response is application/json with a JSON object body")
def content_type_json(ctx: Context) -> None:
    reply = _success(ctx)
    expect(media_type(reply.headers) == "application/json",
           f"Content-Type is {reply.headers.get('content-type')!r}, expected application/json")


@case("rfc6749.response.cache-control-no-store", source="RFC 6749 §5.1", level="MUST",
      title="The successful response carries Cache-Control: no-store")
def cache_control(ctx: Context) -> None:
    value = _success(ctx).headers.get("cache-control", "")
    directives = {d.strip().lower() for d in value.split(",")}
    expect("no-store" in directives, f"Cache-Control is {value!r}, expected no-store")


@case("rfc6749.response.pragma-no-cache", source="RFC 6749 §5.1", level="MUST",
      title="The successful response carries Pragma: no-cache")
def pragma(ctx: Context) -> None:
    value = _success(ctx).headers.get("pragma", "")
    expect(value.strip().lower() == "no-cache", f"Pragma is {value!r}, expected no-cache")
