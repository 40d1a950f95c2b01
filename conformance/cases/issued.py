"""The issued token: RFC 9068 JWT access token shape, and the profile's policy on what it grants.

RFC 9068 §2.1: "JWT access tokens MUST include this media type in the typ header parameter
... "at+jwt"" and MUST NOT use "none". §2.2: iss, exp, aud, sub, client_id, iat and jti are
REQUIRED. RFC 8693 §4.1: the ``act`` claim names the acting party of a delegation.
The policy cases check the issued token against the profile: audience exactly as requested,
scopes never wider than allowed (RFC 6749 §3.3), lifetime within the declared caps.
"""

from __future__ import annotations

import time
from typing import Any

from conformance.cases.base import (
    CaseSkip,
    Context,
    audiences_of,
    case,
    expect,
    expect_issued,
    expect_refused,
    granted_scopes,
    with_allowed,
)

_REQUIRED_9068 = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")


@case("rfc9068.token.signature-verifies", source="RFC 9068 §4", level="MUST",
      title="The issued JWT verifies against the target's published JWKS with a non-none algorithm",
      needs=("jwt",))
def signature_verifies(ctx: Context) -> None:
    _, _, issued = ctx.issue_jwt()
    expect(issued.header.get("alg") not in (None, "none"), "issued token is not signed")


@case("rfc9068.token.typ-at-jwt", source="RFC 9068 §2.1", level="MUST",
      title="The issued JWT has typ at+jwt (or application/at+jwt)", needs=("rfc9068",))
def typ_at_jwt(ctx: Context) -> None:
    _, _, issued = ctx.issue_jwt()
    typ = str(issued.header.get("typ", "")).lower()
    expect(typ in ("at+jwt", "application/at+jwt"), f"issued token typ is {issued.header.get('typ')!r}")


@case("rfc9068.token.required-claims", source="RFC 9068 §2.2", level="MUST",
      title="The issued JWT carries iss, exp, aud, sub, client_id, iat and jti", needs=("rfc9068",))
def required_claims(ctx: Context) -> None:
    _, _, issued = ctx.issue_jwt()
    missing = [c for c in _REQUIRED_9068 if c not in issued.claims]
    expect(not missing, f"issued token lacks {missing}")
    for name in ("exp", "iat"):
        value = issued.claims[name]
        expect(isinstance(value, (int, float)) and not isinstance(value, bool), f"{name} is not a NumericDate")


@case("rfc9068.token.iss-matches-issuer", source="RFC 9068 §2.2", level="MUST",
      title="The issued JWT's iss is the target's issuer identifier", needs=("jwt",))
def iss_matches(ctx: Context) -> None:
    expected = ctx.target_issuer()
    if expected is None:
        raise CaseSkip("the target's issuer is unknown: set target.issuer or target.metadata_url")
    _, _, issued = ctx.issue_jwt()
    expect(issued.claims.get("iss") == expected, "issued token iss is not the target's issuer")


@case("rfc9068.token.scope-claim-format", source="RFC 9068 §2.2.3", level="MUST",
      title="The issued JWT's scope, when present, is one space-delimited string", needs=("rfc9068",))
def scope_format(ctx: Context) -> None:
    _, _, issued = ctx.issue_jwt()
    if "scope" in issued.claims:
        value = issued.claims["scope"]
        expect(isinstance(value, str), f"scope claim is a {type(value).__name__}, not a string")


@case("rfc9068.token.sub-expected", source="RFC 9068 §2.2", level="MUST",
      title="The issued JWT's sub is the subject the profile expects", needs=("jwt",))
def sub_expected(ctx: Context) -> None:
    expected = ctx.profile.choices.issued_subject
    if expected is None:
        raise CaseSkip("the profile declares no choices.issued_subject")
    _, _, issued = ctx.issue_jwt()
    expect(issued.claims.get("sub") == expected, "issued token sub is not the expected subject")


@case("hardening.token.jti-unique", source="RFC 9068 §2.2", level="HARDENING",
      title="Two exchanges yield tokens with different jti", needs=("jwt",))
def jti_unique(ctx: Context) -> None:
    _, _, first = ctx.issue_jwt()
    _, _, second = ctx.issue_jwt()
    expect(first.claims.get("jti") and first.claims.get("jti") != second.claims.get("jti"),
           "two issued tokens share a jti (or have none)")


@case("policy.audience.exact", source="RFC 8693 §2.1", level="MUST",
      title="Each allowed audience is issued with aud exactly that audience", needs=("audience", "jwt"))
def audience_exact(ctx: Context) -> None:
    for audience in ctx.profile.allowed.audiences:
        _, _, issued = ctx.issue_jwt(audience=audience)
        got = audiences_of(issued.claims)
        expect(got == [audience], f"requested one audience, token aud has {len(got)} value(s) not exactly it")


@case("policy.audience.no-target", source="RFC 8693 §2.1", level="MUST",
      title="A request naming no target is refused, or issued for the declared default audience only")
def no_target(ctx: Context) -> None:
    choices = ctx.profile.choices
    reply = ctx.exchange(target=False)
    if choices.requires_target:
        expect_refused(reply, {"invalid_target", "invalid_request"}, what="request without a target")
        return
    body = expect_issued(reply)
    if choices.default_audience and choices.issued_token_format != "opaque":
        got = audiences_of(ctx.verify_issued(body["access_token"]).claims)
        expect(got == [choices.default_audience], "token issued without a target is not for the default audience")


def _claims_of(ctx: Context, token: str) -> dict[str, Any] | None:
    """Verified claims of an issued token, or None when the target issues opaque tokens."""
    if ctx.profile.choices.issued_token_format == "opaque":
        return None
    return ctx.verify_issued(token).claims


def _granted(ctx: Context, scope: str | None) -> set[str] | None:
    reply = ctx.exchange(scope=scope)
    body = expect_issued(reply)
    claims = None
    if ctx.profile.choices.issued_token_format != "opaque":
        claims = ctx.verify_issued(body["access_token"]).claims
    return granted_scopes(reply, claims, scope.split() if scope is not None else None)


@case("policy.scope.within-allowed", source="RFC 6749 §3.3", level="MUST",
      title="Requesting the allowed scopes grants none beyond them, and names any difference in scope",
      needs=("scopes",))
def within_allowed(ctx: Context) -> None:
    requested = list(ctx.profile.allowed.scopes)
    reply = ctx.exchange(scope=" ".join(requested))
    body = expect_issued(reply)
    claims = None
    if ctx.profile.choices.issued_token_format != "opaque":
        claims = ctx.verify_issued(body["access_token"]).claims
    granted = granted_scopes(reply, claims, requested) or set()
    extra = granted - set(requested)
    expect(not extra, f"granted {len(extra)} scope(s) beyond the allowed ones")
    if claims is not None and isinstance(claims.get("scope"), str) and set(claims["scope"].split()) != set(requested):
        # RFC 8693 §2.2.1: scope is REQUIRED in the response when it differs from the request.
        expect(isinstance(body.get("scope"), str),
               "the token's scope differs from the request but the response has no scope")


@case("policy.scope.as-requested", source="RFC 8693 §2.1", level="SHOULD",
      title="Requesting one allowed scope grants exactly that scope (least privilege)", needs=("scopes",))
def as_requested(ctx: Context) -> None:
    wanted = ctx.profile.allowed.scopes[-1]
    granted = _granted(ctx, wanted)
    expect(granted == {wanted}, f"requested one scope, granted {len(granted or ())}")


@case("policy.scope.default-within-allowed", source="RFC 6749 §3.3", level="MUST",
      title="Without a scope request, the granted scopes stay within the allowed ones", needs=("jwt",))
def default_within_allowed(ctx: Context) -> None:
    granted = _granted(ctx, None) or set()
    allowed = set(ctx.profile.allowed.scopes)
    extra = granted - allowed
    expect(not extra, f"granted {len(extra)} scope(s) the profile does not allow")


@case("policy.scope.escalation", source="RFC 6749 §5.2", level="MUST",
      title="A request for a forbidden scope is refused with invalid_scope, or narrowed with a scope response",
      needs=("forbidden_scope",), twin=with_allowed(scope="scopes"))
def escalation(ctx: Context) -> None:
    requested = [*ctx.profile.allowed.scopes[:1], ctx.profile.forbidden.scopes[0]]
    reply = ctx.exchange(scope=" ".join(requested))
    if ctx.profile.choices.scope_escalation == "refuse":
        expect_refused(reply, {"invalid_scope"}, what="request for a forbidden scope")
        return
    body = expect_issued(reply)
    # RFC 8693 §2.2.1: scope is REQUIRED when it differs from the request.
    expect(isinstance(body.get("scope"), str), "narrowed scope is not returned in the response scope")
    claims = _claims_of(ctx, body["access_token"])
    granted = granted_scopes(reply, claims, requested) or set()
    forbidden = granted & set(ctx.profile.forbidden.scopes)
    expect(not forbidden, "a forbidden scope was granted")
    if claims is not None and isinstance(claims.get("scope"), str):
        expect(not set(claims["scope"].split()) & set(ctx.profile.forbidden.scopes),
               "the token's scope claim holds a forbidden scope")


@case("policy.scope.all-forbidden", source="RFC 6749 §5.2", level="MUST",
      title="A request for forbidden scopes only is never answered with those scopes",
      needs=("forbidden_scope",), twin=with_allowed(scope="scopes"))
def all_forbidden(ctx: Context) -> None:
    requested = list(ctx.profile.forbidden.scopes)
    reply = ctx.exchange(scope=" ".join(requested))
    if reply.status != 200:
        expect_refused(reply, {"invalid_scope"}, what="request for forbidden scopes")
        return
    expect(ctx.profile.choices.scope_escalation == "narrow",
           "a forbidden-scope request was answered with a token although the profile says refuse")
    claims = _claims_of(ctx, reply.access_token or "")
    granted = granted_scopes(reply, claims, requested) or set()
    expect(not granted & set(requested), "a forbidden scope was granted")


@case("hardening.scope.unknown-never-granted", source="RFC 6749 §3.3", level="HARDENING",
      title="A scope nobody configured is never granted", needs=("jwt",),
      twin=with_allowed(scope="scopes"))
def unknown_scope(ctx: Context) -> None:
    name = "conformance-unknown-scope"
    reply = ctx.exchange(scope=name)
    if reply.status != 200:
        expect_refused(reply, statuses=range(400, 500), what="unknown scope")
        return
    claims = ctx.verify_issued(reply.access_token or "").claims
    granted = granted_scopes(reply, claims, [name]) or set()
    expect(name not in granted, "an unknown scope was granted")


@case("policy.lifetime.cap", source="RFC 6749 §5.1", level="MUST",
      title="expires_in and exp - iat stay within the declared max_lifetime")
def lifetime_cap(ctx: Context) -> None:
    cap = ctx.profile.choices.max_lifetime
    reply, body = ctx.issue()
    expires_in = body.get("expires_in")
    if isinstance(expires_in, int):
        expect(0 < expires_in <= cap, f"expires_in {expires_in} exceeds max_lifetime {cap}")
    if ctx.profile.choices.issued_token_format != "opaque":
        claims = ctx.verify_issued(body["access_token"]).claims
        exp, iat = claims.get("exp"), claims.get("iat")
        expect(isinstance(exp, (int, float)), "issued token has no exp")
        assert isinstance(exp, (int, float))
        expect(exp - time.time() <= cap + ctx.profile.issuer.clock_skew, f"token expires more than {cap}s from now")
        if isinstance(iat, (int, float)):
            expect(exp - iat <= cap, f"token lifetime exp - iat = {exp - iat} exceeds {cap}")


@case("policy.lifetime.expires-in-matches-exp", source="RFC 6749 §5.1", level="SHOULD",
      title="expires_in agrees with the issued token's exp", needs=("jwt",))
def expires_in_matches(ctx: Context) -> None:
    _, body, issued = ctx.issue_jwt()
    expires_in = body.get("expires_in")
    if not isinstance(expires_in, int):
        raise CaseSkip("the response has no integer expires_in")
    remaining = float(issued.claims.get("exp", 0)) - time.time()
    expect(abs(remaining - expires_in) <= 5 + ctx.profile.issuer.clock_skew,
           f"expires_in {expires_in} is off the token's remaining lifetime {int(remaining)}")


@case("hardening.lifetime.capped-to-subject", source="RFC 8693 §2.1", level="HARDENING",
      title="An issued token never outlives its subject token", needs=("mint", "subject_cap", "jwt"))
def capped_to_subject(ctx: Context) -> None:
    token = ctx.subject_token(lifetime=90)
    subject_exp = ctx.now() + 90
    body = expect_issued(ctx.exchange(token))
    claims = ctx.verify_issued(body["access_token"]).claims
    expect(float(claims.get("exp", 1e18)) <= subject_exp + 1, "issued token outlives its subject token")
    expires_in = body.get("expires_in")
    if isinstance(expires_in, int):
        expect(expires_in <= 91, "expires_in exceeds the subject token's remaining lifetime")


@case("hardening.replay.refused", source="RFC 8693 §2.2.2", level="HARDENING",
      title="A subject token is exchanged once; its replay is refused with invalid_request", needs=("replay",))
def replay(ctx: Context) -> None:
    token = ctx.subject_token()
    expect_issued(ctx.exchange(token))
    expect_refused(ctx.exchange(token), {"invalid_request"}, what="replayed subject token")


@case("hardening.replay.jti-required", source="RFC 8693 §2.2.2", level="HARDENING",
      title="With replay protection, a subject token without jti is refused with invalid_request",
      needs=("replay", "mint"))
def jti_required(ctx: Context) -> None:
    expect_refused(ctx.exchange(ctx.subject_token(jti=None)), {"invalid_request"}, what="subject token without jti")


def _actor_token(ctx: Context, subject: str) -> str:
    return ctx.subject_token(sub=subject)


@case("rfc8693.actor.delegation", source="RFC 8693 §4.1", level="MUST",
      title="An allowed actor token yields a token whose act claim names the actor",
      needs=("actor", "mint"))
def delegation(ctx: Context) -> None:
    actor = _actor_token(ctx, ctx.profile.actor.subject)
    reply = ctx.exchange(actor_token=actor, actor_token_type=ctx.profile.actor.token_type)
    body = expect_issued(reply)
    if ctx.profile.choices.issued_token_format == "opaque":
        return
    claims = ctx.verify_issued(body["access_token"]).claims
    act = claims.get("act")
    expect(isinstance(act, dict), "issued token has no act claim object")
    assert isinstance(act, dict)
    expect(isinstance(act.get("sub"), str), "act claim has no sub")


@case("rfc8693.actor.not-allowed", source="RFC 8693 §2.2.2", level="MUST",
      title="An actor the policy does not allow is refused with invalid_request", needs=("actor", "mint"))
def actor_not_allowed(ctx: Context) -> None:
    actor = _actor_token(ctx, ctx.profile.actor.forbidden_subject)
    reply = ctx.exchange(actor_token=actor, actor_token_type=ctx.profile.actor.token_type)
    expect_refused(reply, {"invalid_request"}, what="request with a disallowed actor")


@case("rfc8693.actor.invalid-token", source="RFC 8693 §2.2.2", level="MUST",
      title="An unsigned (alg none) actor token is refused with invalid_request", needs=("actor", "mint"))
def actor_invalid(ctx: Context) -> None:
    actor = ctx.issuer.mint_unsigned(ctx.subject_claims(sub=ctx.profile.actor.subject))
    reply = ctx.exchange(actor_token=actor, actor_token_type=ctx.profile.actor.token_type)
    expect_refused(reply, {"invalid_request"}, what="request with an unsigned actor token")


@case("rfc8693.actor.expired-token", source="RFC 8693 §2.2.2", level="MUST",
      title="An expired actor token is refused with invalid_request", needs=("actor", "mint"))
def actor_expired(ctx: Context) -> None:
    now = ctx.now()
    back = ctx.profile.issuer.clock_skew + 600
    actor = ctx.subject_token(sub=ctx.profile.actor.subject, exp=now - back, iat=now - back - 60, nbf=now - back - 60)
    reply = ctx.exchange(actor_token=actor, actor_token_type=ctx.profile.actor.token_type)
    expect_refused(reply, {"invalid_request"}, what="request with an expired actor token")

