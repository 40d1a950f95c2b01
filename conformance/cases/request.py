"""RFC 8693 §2.1 request parameters, with RFC 6749 §3.2 and §5.2 rules for malformed requests.

RFC 8693 §2.1: "actor_token_type: An identifier ... REQUIRED when the actor_token parameter is
present in the request but MUST NOT be included otherwise."  RFC 6749 §3.2: "Parameters sent
without a value MUST be treated as if they were omitted from the request ... Request and
response parameters MUST NOT be included more than once."
"""

from __future__ import annotations

from conformance.cases.base import (
    Context,
    Reply,
    case,
    expect,
    expect_issued,
    expect_refused,
    valid_delegation,
    with_allowed,
)
from conformance.cases.base import valid_exchange as send_valid_exchange
from conformance.profile import ACCESS_TOKEN_TYPE, JWT_TYPE

UNSUPPORTED_TYPE = "urn:example:conformance:unsupported-token-type"


def _with_actor(ctx: Context) -> Reply:
    """Twin of the actor-parameter cases: actor_token and actor_token_type both present."""
    if ctx.profile.choices.supports_actor_token and ctx.profile.mints_subjects:
        return valid_delegation(ctx)
    # The base module's request, not this module's case of the same name below.
    return send_valid_exchange(ctx)


def _declared_token_type(ctx: Context) -> Reply:
    """Twin of an unsupported requested_token_type: a declared one."""
    declared = ctx.profile.choices.requested_token_types
    wanted = ACCESS_TOKEN_TYPE if ACCESS_TOKEN_TYPE in declared or not declared else declared[0]
    return ctx.exchange(requested_token_type=wanted)


@case("rfc8693.request.valid-exchange", source="RFC 8693 §2.1", level="MUST",
      title="A well-formed exchange of a valid subject token for an allowed target is answered with a token")
def valid_exchange(ctx: Context) -> None:
    expect_issued(ctx.exchange())


@case("rfc6749.request.grant-type-missing", source="RFC 6749 §5.2", level="MUST",
      title="A request without grant_type is refused with invalid_request")
def grant_type_missing(ctx: Context) -> None:
    form = [(k, v) for k, v in ctx.form() if k != "grant_type"]
    expect_refused(ctx.post(form), {"invalid_request"})


@case("rfc6749.request.grant-type-unsupported", source="RFC 6749 §5.2", level="MUST",
      title="An unknown grant_type is refused with unsupported_grant_type")
def grant_type_unsupported(ctx: Context) -> None:
    reply = ctx.exchange(grant_type="urn:example:conformance:unknown-grant")
    expect_refused(reply, {"unsupported_grant_type"})


@case("rfc8693.request.subject-token-missing", source="RFC 8693 §2.1", level="MUST",
      title="A request without subject_token is refused with invalid_request")
def subject_token_missing(ctx: Context) -> None:
    form = [(k, v) for k, v in ctx.form() if k != "subject_token"]
    expect_refused(ctx.post(form), {"invalid_request"})


@case("rfc8693.request.subject-token-type-missing", source="RFC 8693 §2.1", level="MUST",
      title="A request without subject_token_type is refused with invalid_request")
def subject_token_type_missing(ctx: Context) -> None:
    form = [(k, v) for k, v in ctx.form() if k != "subject_token_type"]
    expect_refused(ctx.post(form), {"invalid_request"})


@case("rfc6749.request.empty-subject-token", source="RFC 6749 §3.2", level="MUST",
      title="An empty subject_token counts as omitted and is refused with invalid_request")
def subject_token_empty(ctx: Context) -> None:
    expect_refused(ctx.exchange(subject_token=""), {"invalid_request"})


@case("rfc8693.request.subject-token-type-unsupported", source="RFC 8693 §2.2.2", level="MUST",
      title="An unsupported subject_token_type is refused with invalid_request")
def subject_token_type_unsupported(ctx: Context) -> None:
    expect_refused(ctx.exchange(subject_token_type=UNSUPPORTED_TYPE), {"invalid_request"})


@case("rfc8693.request.actor-token-without-type", source="RFC 8693 §2.1", level="MUST",
      title="actor_token without actor_token_type is refused with invalid_request", twin=_with_actor)
def actor_token_without_type(ctx: Context) -> None:
    actor = ctx.subject_token()
    expect_refused(ctx.exchange(actor_token=actor), {"invalid_request"})


@case("rfc8693.request.actor-token-type-without-token", source="RFC 8693 §2.1", level="MUST",
      title="actor_token_type without actor_token is refused with invalid_request", twin=_with_actor)
def actor_type_without_token(ctx: Context) -> None:
    expect_refused(ctx.exchange(actor_token_type=JWT_TYPE), {"invalid_request"})


@case("rfc6749.request.duplicate-grant-type", source="RFC 6749 §3.2", level="MUST",
      title="A repeated grant_type is refused with invalid_request")
def duplicate_grant_type(ctx: Context) -> None:
    form = ctx.form()
    form.insert(1, form[0])
    expect_refused(ctx.post(form), {"invalid_request"})


@case("rfc6749.request.duplicate-subject-token", source="RFC 6749 §3.2", level="MUST",
      title="Two subject_token parameters are refused with invalid_request")
def duplicate_subject_token(ctx: Context) -> None:
    form = ctx.form() + [("subject_token", ctx.subject_token())]
    expect_refused(ctx.post(form), {"invalid_request"})


@case("rfc6749.request.duplicate-subject-token-type", source="RFC 6749 §3.2", level="MUST",
      title="Two subject_token_type parameters are refused with invalid_request")
def duplicate_subject_token_type(ctx: Context) -> None:
    form = ctx.form() + [("subject_token_type", ctx.subject_token_type)]
    expect_refused(ctx.post(form), {"invalid_request"})


@case("rfc6749.request.duplicate-scope", source="RFC 6749 §3.2", level="MUST",
      title="Two scope parameters are refused with invalid_request", needs=("scopes",),
      twin=with_allowed(scope="scopes"))
def duplicate_scope(ctx: Context) -> None:
    first = ctx.profile.allowed.scopes[0]
    expect_refused(ctx.exchange(scope=[first, first]), {"invalid_request"})


@case("rfc8693.request.repeated-audience", source="RFC 8693 §2.1", level="MUST",
      title="Repeated audience parameters are well-formed: a token for exactly those audiences, or invalid_target",
      needs=("two_audiences",))
def repeated_audience(ctx: Context) -> None:
    wanted = list(ctx.profile.allowed.audiences[:2])
    reply = ctx.exchange(audience=wanted)
    if reply.status == 200:
        body = expect_issued(reply)
        if ctx.profile.choices.issued_token_format != "opaque":
            from conformance.cases.base import audiences_of

            got = audiences_of(ctx.verify_issued(body["access_token"]).claims)
            expect(sorted(set(got)) == sorted(wanted),
                   f"two audiences requested, token aud has {len(got)} value(s) not equal to them")
        return
    expect_refused(reply, {"invalid_target"}, what="repeated-audience request")


@case("rfc8693.request.requested-token-type-access-token", source="RFC 8693 §2.2.1", level="MUST",
      title="requested_token_type=access_token yields issued_token_type=access_token")
def requested_access_token(ctx: Context) -> None:
    if ACCESS_TOKEN_TYPE not in ctx.profile.choices.requested_token_types:
        from conformance.cases.base import CaseSkip

        raise CaseSkip("the target does not declare issuing access tokens")
    body = expect_issued(ctx.exchange(requested_token_type=ACCESS_TOKEN_TYPE))
    expect(body.get("issued_token_type") == ACCESS_TOKEN_TYPE,
           f"issued_token_type is {body.get('issued_token_type')!r}, requested {ACCESS_TOKEN_TYPE}")


@case("rfc8693.request.requested-token-types-declared", source="RFC 8693 §2.2.1", level="MUST",
      title="Every declared requested_token_type is issued with that issued_token_type")
def requested_declared_types(ctx: Context) -> None:
    others = [t for t in ctx.profile.choices.requested_token_types if t != ACCESS_TOKEN_TYPE]
    if not others:
        from conformance.cases.base import CaseSkip

        raise CaseSkip("the target declares only access_token")
    for token_type in others:
        body = expect_issued(ctx.exchange(requested_token_type=token_type))
        expect(body.get("issued_token_type") == token_type,
               f"issued_token_type is {body.get('issued_token_type')!r}, requested {token_type}")


@case("rfc8693.request.requested-token-type-unsupported", source="RFC 8693 §2.2.2", level="MUST",
      title="An unsupported requested_token_type is refused with invalid_request", twin=_declared_token_type)
def requested_unsupported(ctx: Context) -> None:
    expect_refused(ctx.exchange(requested_token_type=UNSUPPORTED_TYPE), {"invalid_request"})


@case("hardening.request.json-body-refused", source="RFC 8693 §2.1", level="HARDENING",
      title="A JSON body (not application/x-www-form-urlencoded) never yields a token")
def json_body(ctx: Context) -> None:
    import json

    body = json.dumps(dict(ctx.form()))
    reply = ctx.post(body, content_type="application/json")
    expect_refused(reply, statuses=range(400, 500), what="JSON-encoded request")


@case("hardening.request.get-never-issues", source="RFC 6749 §3.2", level="HARDENING",
      title="GET with the parameters in the query string never yields a token (tokens do not travel in URLs)")
def get_never_issues(ctx: Context) -> None:
    reply = ctx.request("GET", ctx.profile.target.token_endpoint, params=ctx.form())
    expect_refused(reply, statuses=range(400, 500), what="GET request")


@case("hardening.request.oversized-body", source="RFC 6749 §5.2", level="HARDENING",
      title="A 1 MiB subject_token is refused with a 4xx, not a 5xx or a hang")
def oversized_body(ctx: Context) -> None:
    reply = ctx.exchange(subject_token="a" * (1 << 20))
    expect_refused(reply, statuses=range(400, 500), what="oversized request")


@case("hardening.request.malformed-tokens-no-5xx", source="RFC 8693 §2.2.2", level="HARDENING",
      title="Malformed subject tokens are refused with invalid_request, never a 5xx")
def malformed_tokens(ctx: Context) -> None:
    samples = {
        "three empty segments": "..",
        "bad base64": "e@J.e@J.sig",
        "header not JSON": "bm90LWpzb24.e30.c2ln",
        "header a JSON array": "W10.e30.c2ln",
        "payload a JSON string": "eyJhbGciOiJSUzI1NiJ9.ImEi.c2ln",
        "five segments (JWE shape)": "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d",
        "non-ASCII": "eyJhbGciOiJSUzI1NiJ9.\u00e9t\u00e9.sig",
    }
    for label, token in samples.items():
        reply = ctx.exchange(subject_token=token)
        expect(reply.status < 500, f"{label}: the target answered {reply.describe()}")
        expect_refused(reply, {"invalid_request"}, what=f"subject token with {label}")
