"""RFC 8707 §2 ``resource`` rules as used by RFC 8693 §2.1.

RFC 8707 §2: "Its value MUST be an absolute URI, as specified by Section 4.3 of [RFC3986]. The
URI MUST NOT include a fragment component." and "invalid_target: The requested resource is
invalid, missing, unknown, or malformed." The authorization server "SHOULD audience-restrict
issued access tokens to the resource(s) indicated by the resource parameter".
"""

from __future__ import annotations

from conformance.cases.base import Context, audiences_of, case, expect, expect_issued, expect_refused, with_allowed

_MALFORMED = {"invalid_target", "invalid_request"}
#: Every resource case's valid twin: an allowed resource instead of the defective one.
_ALLOWED_RESOURCE = with_allowed(resource="resources")


def _a_resource(ctx: Context) -> str:
    if ctx.profile.allowed.resources:
        return ctx.profile.allowed.resources[0]
    return "https://resource.conformance.invalid/api"


@case("rfc8707.resource.relative-uri", source="RFC 8707 §2", level="MUST",
      title="A relative resource URI is refused with invalid_target (or invalid_request)", needs=("resource",),
      twin=_ALLOWED_RESOURCE)
def relative(ctx: Context) -> None:
    expect_refused(ctx.exchange(target=False, resource="/relative/path"), _MALFORMED, what="relative resource")


@case("rfc8707.resource.fragment", source="RFC 8707 §2", level="MUST",
      title="A resource URI with a fragment is refused with invalid_target (or invalid_request)",
      needs=("resource",), twin=_ALLOWED_RESOURCE)
def fragment(ctx: Context) -> None:
    reply = ctx.exchange(target=False, resource=_a_resource(ctx) + "#fragment")
    expect_refused(reply, _MALFORMED, what="resource with a fragment")


@case("rfc8707.resource.not-a-uri", source="RFC 8707 §2", level="MUST",
      title="A resource that is not a URI is refused with invalid_target (or invalid_request)",
      needs=("resource",), twin=_ALLOWED_RESOURCE)
def not_a_uri(ctx: Context) -> None:
    reply = ctx.exchange(target=False, resource="not a uri at all")
    expect_refused(reply, _MALFORMED, what="resource that is not a URI")


@case("rfc8707.resource.forbidden", source="RFC 8707 §2", level="MUST",
      title="A forbidden resource is refused with invalid_target", needs=("forbidden_resource",),
      twin=_ALLOWED_RESOURCE)
def forbidden(ctx: Context) -> None:
    for resource in ctx.profile.forbidden.resources:
        expect_refused(ctx.exchange(target=False, resource=resource), {"invalid_target"}, what="forbidden resource")


@case("rfc8707.resource.allowed-issued", source="RFC 8707 §2", level="MUST",
      title="Each allowed resource is answered with a token", needs=("allowed_resource",))
def allowed(ctx: Context) -> None:
    for resource in ctx.profile.allowed.resources:
        expect_issued(ctx.exchange(target=False, resource=resource))


@case("rfc8707.resource.audience-restricted", source="RFC 8707 §2", level="SHOULD",
      title="A token issued for a resource is audience-restricted to exactly that resource",
      needs=("allowed_resource", "jwt"))
def audience_restricted(ctx: Context) -> None:
    for resource in ctx.profile.allowed.resources:
        body = expect_issued(ctx.exchange(target=False, resource=resource))
        got = audiences_of(ctx.verify_issued(body["access_token"]).claims)
        expect(got == [resource], f"token for one resource has aud with {len(got)} value(s), not exactly it")
