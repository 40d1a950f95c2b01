"""The RFC 7523 JWT-bearer authorization grant, for targets whose profile declares
``choices.supports_jwt_bearer`` (MCP's workload identity federation, SEP-1933).

RFC 7523 §2.1: ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` with one JWT in
``assertion``. §3 lists what the JWT must satisfy (``iss``, ``sub``, ``aud`` naming the
authorization server, ``exp``, a signature); RFC 7521 §4.1.1 and RFC 7523 §3.1: an assertion that
is not valid is refused with ``invalid_grant``. SEP-1933 makes ``jti`` a claim the workload JWT
MUST contain and asks for replay protection, with the token endpoint URL as ``aud``, and
requires the grant in ``grant_types_supported`` (RFC 8414).

Each case forges one defect into an otherwise valid assertion; its valid twin is a fresh valid
assertion for the primary target (``valid_jwt_bearer``), the gate every case here sits behind.
"""

from __future__ import annotations

from conformance import jose
from conformance.cases.base import Context, case, expect, expect_issued, expect_refused
from conformance.profile import JWT_BEARER_GRANT

_INVALID_GRANT = {"invalid_grant"}


@case("rfc7523.grant.valid-assertion", source="RFC 7523 §2.1, MCP SEP-1933", level="MUST",
      title="A valid JWT assertion from a trusted issuer is exchanged for an access token", needs=("jwt_bearer",))
def valid_assertion(ctx: Context) -> None:
    reply = ctx.jwt_bearer()
    body = expect_issued(reply)
    expect(body.get("scope") != "", 'the answer has "scope": "" (RFC 6749 §3.3 has no empty scope)')
    if ctx.profile.choices.issued_token_format == "opaque":
        return
    claims = ctx.verify_issued(body["access_token"]).claims
    expected = ctx.profile.choices.issued_subject
    if expected is not None:
        expect(claims.get("sub") == expected, "the issued token's sub is not the workload the assertion names")


@case("rfc7523.grant.bad-signature", source="RFC 7523 §3 item 9, §3.1", level="MUST",
      title="An assertion signed by an untrusted key is refused with invalid_grant", needs=("jwt_bearer",))
def bad_signature(ctx: Context) -> None:
    assertion = ctx.assertion()
    header = {k: v for k, v in jose.decode_unverified(assertion)[0].items() if k in ("typ", "kid")}
    forged = ctx.forge(assertion, header={**header, "alg": "RS256"}, key=ctx.attacker_key("RS256"))
    expect_refused(ctx.jwt_bearer(forged), _INVALID_GRANT, what="assertion with a forged signature")


@case("rfc7523.grant.alg-none", source="RFC 7523 §3 item 9, RFC 8725 §3.1", level="MUST",
      title="An unsigned assertion (alg none) is refused with invalid_grant", needs=("jwt_bearer",))
def alg_none(ctx: Context) -> None:
    unsigned = ctx.forge(ctx.assertion(), header={"alg": "none", "typ": "JWT"}, key=b"")
    expect_refused(ctx.jwt_bearer(unsigned), _INVALID_GRANT, what="unsigned assertion")


@case("rfc7523.grant.expired", source="RFC 7523 §3 item 4, §3.1", level="MUST",
      title="An expired assertion is refused with invalid_grant", needs=("jwt_bearer",))
def expired(ctx: Context) -> None:
    now = ctx.now()
    skew = ctx.profile.issuer.clock_skew
    old = ctx.assertion(iat=now - 600 - skew, nbf=now - 600 - skew, exp=now - 300 - skew)
    expect_refused(ctx.jwt_bearer(old), _INVALID_GRANT, what="expired assertion")


@case("rfc7523.grant.wrong-audience", source="RFC 7523 §3 item 3, §3.1", level="MUST",
      title="An assertion whose aud does not name the authorization server is refused with invalid_grant",
      needs=("jwt_bearer",))
def wrong_audience(ctx: Context) -> None:
    other = ctx.assertion(aud="https://other-authorization-server.conformance.test/token")
    expect_refused(ctx.jwt_bearer(other), _INVALID_GRANT, what="assertion for another audience")
    missing = ctx.assertion(aud=None)
    expect_refused(ctx.jwt_bearer(missing), _INVALID_GRANT, what="assertion without aud")


@case("rfc7523.grant.untrusted-issuer", source="RFC 7523 §3 item 1, MCP SEP-1933", level="MUST",
      title="An assertion naming an issuer the server does not trust is refused with invalid_grant",
      needs=("jwt_bearer",))
def untrusted_issuer(ctx: Context) -> None:
    stranger = ctx.assertion(iss="https://untrusted-issuer.conformance.test")
    expect_refused(ctx.jwt_bearer(stranger), _INVALID_GRANT, what="assertion from an untrusted issuer")


@case("rfc7523.grant.missing-jti", source="MCP SEP-1933 (JWT Format: jti)", level="MUST",
      title="An assertion without jti is refused with invalid_grant", needs=("jwt_bearer",))
def missing_jti(ctx: Context) -> None:
    expect_refused(ctx.jwt_bearer(ctx.assertion(jti=None)), _INVALID_GRANT, what="assertion without jti")


@case("rfc7523.grant.replay", source="RFC 7523 §3 item 7, MCP SEP-1933", level="SHOULD",
      title="An assertion already exchanged once is refused the second time with invalid_grant",
      needs=("jwt_bearer",))
def replay(ctx: Context) -> None:
    assertion = ctx.assertion()
    expect_issued(ctx.jwt_bearer(assertion))
    expect_refused(ctx.jwt_bearer(assertion), _INVALID_GRANT, what="replayed assertion")


@case("rfc7523.grant.missing-assertion", source="RFC 7521 §4.1, RFC 6749 §5.2", level="MUST",
      title="A JWT-bearer request without assertion is refused with invalid_request", needs=("jwt_bearer",))
def missing_assertion(ctx: Context) -> None:
    expect_refused(ctx.jwt_bearer(""), {"invalid_request"}, what="JWT-bearer request without assertion")


@case("rfc8414.metadata.grant-types-jwt-bearer", source="MCP SEP-1933, RFC 8414 §2", level="MUST",
      title="grant_types_supported lists urn:ietf:params:oauth:grant-type:jwt-bearer",
      needs=("metadata", "jwt_bearer"))
def metadata_lists_the_grant(ctx: Context) -> None:
    meta = ctx.metadata()
    expect(meta is not None, "the metadata document could not be read")
    assert meta is not None
    grants = meta.get("grant_types_supported")
    expect(isinstance(grants, list) and JWT_BEARER_GRANT in grants,
           "grant_types_supported does not list the JWT-bearer grant")
