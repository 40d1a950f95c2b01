"""RFC 8693 §2.2.2 error responses and the RFC 6749 §5.2 error shape, plus client authentication.

RFC 8693 §2.2.2: "If the request itself is not valid or if either the subject_token or
actor_token are invalid for any reason, or are unacceptable based on policy, the authorization
server MUST construct an error response ... The value of the error parameter MUST be the
invalid_request error code. If the authorization server is unwilling or unable to issue a token
for any target service indicated by the resource or audience parameters, the invalid_target
error code SHOULD be used."
RFC 6749 §5.2: "Values for the error_description parameter MUST NOT include characters outside
the set %x20-21 / %x23-5B / %x5D-7E."
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from conformance import jose
from conformance.cases.base import (
    REGISTERED_ERRORS,
    Context,
    Reply,
    case,
    expect,
    expect_refused,
    media_type,
    with_allowed,
)

_DESCRIPTION_CHARS = re.compile(r"^[\x20-\x21\x23-\x5B\x5D-\x7E]*$")
_ERROR_URI_CHARS = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]*$")


def _attacker_token(ctx: Context, **claims: Any) -> str:
    """A token that looks like a valid subject token but is signed by a key nobody trusts."""
    token, header, _ = ctx.valid_pair()
    forged_header = {k: v for k, v in header.items() if k in ("typ", "kid")}
    forged_header["alg"] = "RS256"
    return ctx.forge(token, header=forged_header, key=ctx.attacker_key("RS256"), claims=claims)


def error_battery(ctx: Context) -> list[tuple[str, Reply, list[str]]]:
    """Refused requests shared by the §5.2 shape cases: (label, reply, secrets that must not echo).

    Each token carries a random marker claim so an echo of the claims is detectable.
    """
    if "errors" in ctx.memo:
        return ctx.memo["errors"]  # type: ignore[no-any-return]
    out: list[tuple[str, Reply, list[str]]] = []

    def add(label: str, token: str | None, reply: Reply, extra: list[str] | None = None) -> None:
        secrets_: list[str] = list(extra or [])
        if token:
            secrets_.append(token)
            parts = token.split(".")
            secrets_ += [p for p in parts[1:] if len(p) >= 16]
            try:
                _, claims, _, _ = jose.decode_unverified(token)
                secrets_ += [str(claims[k]) for k in ("jti", "conformance_marker") if k in claims]
            except jose.JoseError:
                pass
        out.append((label, reply, secrets_))

    marker = "marker-" + secrets.token_hex(8)
    form = [(k, v) for k, v in ctx.form() if k != "grant_type"]
    add("missing grant_type", None, ctx.post(form))
    add("unsupported grant_type", None, ctx.exchange(grant_type="urn:example:conformance:unknown-grant"))
    garbage = "conformance-garbage-" + secrets.token_hex(12)
    add("malformed subject token", garbage, ctx.exchange(subject_token=garbage), [garbage])
    forged = _attacker_token(ctx, conformance_marker=marker)
    add("untrusted signature", forged, ctx.exchange(subject_token=forged), [marker])
    if ctx.profile.forbidden.audiences:
        token = ctx.subject_token()
        add("forbidden audience", token,
            ctx.exchange(token, target=False, audience=ctx.profile.forbidden.audiences[0]))
    if ctx.profile.mints_subjects:
        now = ctx.now()
        skew = ctx.profile.issuer.clock_skew
        expired = ctx.subject_token(exp=now - skew - 600, iat=now - skew - 900, nbf=now - skew - 900,
                                    conformance_marker=marker)
        add("expired subject token", expired, ctx.exchange(expired), [marker])
        wrong_aud = ctx.subject_token(aud="https://not-this-service.conformance.invalid", conformance_marker=marker)
        add("wrong audience", wrong_aud, ctx.exchange(wrong_aud), [marker])
    if ctx.profile.mints_subjects and ctx.profile.forbidden.subjects:
        # Only a declared forbidden subject: a service may grant every subject of a trusted issuer.
        intruder = ctx.profile.forbidden.subjects[0]
        stranger = ctx.subject_token(sub=intruder, conformance_marker=marker)
        add("subject without grant", stranger, ctx.exchange(stranger), [marker, intruder])
    ctx.memo["errors"] = out
    return out


@case("rfc8693.error.subject-token-malformed", source="RFC 8693 §2.2.2", level="MUST",
      title="A subject_token that is not a JWT is refused with invalid_request")
def malformed(ctx: Context) -> None:
    expect_refused(ctx.exchange(subject_token="not-a-jwt"), {"invalid_request"})


@case("rfc8693.error.subject-token-untrusted-signature", source="RFC 8693 §2.2.2", level="MUST",
      title="A look-alike subject token signed by an untrusted key is refused with invalid_request")
def untrusted_signature(ctx: Context) -> None:
    expect_refused(ctx.exchange(subject_token=_attacker_token(ctx)), {"invalid_request"})


@case("rfc8693.error.subject-token-untrusted-issuer", source="RFC 8693 §2.2.2", level="MUST",
      title="A subject token from an issuer the target does not trust is refused with invalid_request")
def untrusted_issuer(ctx: Context) -> None:
    token = _attacker_token(ctx, iss="https://untrusted-issuer.conformance.invalid")
    expect_refused(ctx.exchange(subject_token=token), {"invalid_request"})


@case("rfc8693.error.subject-token-tampered", source="RFC 8693 §2.2.2", level="MUST",
      title="A valid subject token whose payload was altered after signing is refused with invalid_request")
def tampered(ctx: Context) -> None:
    token, _, claims = ctx.valid_pair()
    head, _, sig = token.split(".")
    altered = {**claims, "sub": f"{claims.get('sub', '')}-tampered"}
    import json

    payload = jose.b64url_encode(json.dumps(altered, separators=(",", ":")).encode())
    expect_refused(ctx.exchange(subject_token=f"{head}.{payload}.{sig}"), {"invalid_request"})


@case("rfc8693.error.subject-token-truncated-signature", source="RFC 8693 §2.2.2", level="MUST",
      title="A valid subject token with its signature removed is refused with invalid_request")
def stripped_signature(ctx: Context) -> None:
    token, _, _ = ctx.valid_pair()
    head, payload, _ = token.split(".")
    expect_refused(ctx.exchange(subject_token=f"{head}.{payload}."), {"invalid_request"})


@case("rfc8693.error.subject-not-granted", source="RFC 8693 §2.2.2", level="MUST",
      title="A valid subject token for a subject the policy grants nothing is refused",
      needs=("mint", "forbidden_subject"))
def subject_not_granted(ctx: Context) -> None:
    token = ctx.subject_token(sub=ctx.profile.forbidden.subjects[0])
    # §2.2.2 names invalid_request for a token unacceptable by policy; invalid_target fits a
    # policy read as "no target for this subject". Either is a refusal; a token is not.
    expect_refused(ctx.exchange(token), {"invalid_request", "invalid_target"})


@case("rfc8693.error.forbidden-audience-refused", source="RFC 8693 §2.2.2", level="MUST",
      title="A forbidden audience is refused (no token is issued)", needs=("forbidden_audience",),
      twin=with_allowed(audience="audiences"))
def forbidden_audience(ctx: Context) -> None:
    for audience in ctx.profile.forbidden.audiences:
        reply = ctx.exchange(target=False, audience=audience)
        expect_refused(reply, statuses=range(400, 500), what="forbidden audience")


@case("rfc8693.error.forbidden-audience-invalid-target", source="RFC 8693 §2.2.2", level="SHOULD",
      title="A forbidden audience is refused with invalid_target", needs=("forbidden_audience",),
      twin=with_allowed(audience="audiences"))
def forbidden_audience_code(ctx: Context) -> None:
    reply = ctx.exchange(target=False, audience=ctx.profile.forbidden.audiences[0])
    expect_refused(reply, {"invalid_target"}, what="forbidden audience")


@case("hardening.audience.unknown-refused", source="RFC 8693 §2.2.2", level="HARDENING",
      title="An audience nobody configured is refused, never copied into a token", needs=("audience",),
      twin=with_allowed(audience="audiences"))
def unknown_audience(ctx: Context) -> None:
    audience = f"https://unknown-{secrets.token_hex(6)}.conformance.invalid"
    reply = ctx.exchange(target=False, audience=audience)
    expect_refused(reply, statuses=range(400, 500), what="unknown audience")


@case("rfc6749.error.status-400", source="RFC 6749 §5.2", level="MUST",
      title="Error responses use HTTP 400 (401 only for invalid_client)")
def error_status(ctx: Context) -> None:
    for label, reply, _ in error_battery(ctx):
        allowed = (400, 401) if reply.error == "invalid_client" else (400,)
        expect(reply.status in allowed, f"{label}: {reply.describe()}, expected HTTP 400")


@case("rfc6749.error.content-type-json", source="RFC 6749 §5.2", level="MUST",
      title="Error responses are application/json objects")
def error_json(ctx: Context) -> None:
    for label, reply, _ in error_battery(ctx):
        expect(media_type(reply.headers) == "application/json",
               f"{label}: Content-Type is {reply.headers.get('content-type')!r}")
        expect(isinstance(reply.body, dict), f"{label}: body is not a JSON object")


@case("rfc6749.error.error-code-registered", source="RFC 6749 §5.2", level="MUST",
      title="error is a single registered ASCII error code")
def error_code(ctx: Context) -> None:
    for label, reply, _ in error_battery(ctx):
        value = reply.json_object.get("error")
        expect(isinstance(value, str), f"{label}: error is missing or not a string")
        expect(value in REGISTERED_ERRORS, f"{label}: error {value!r} is not a registered OAuth error code")


@case("rfc6749.error.description-charset", source="RFC 6749 §5.2", level="MUST",
      title="error_description, when present, is a string of %x20-21 / %x23-5B / %x5D-7E only")
def description_charset(ctx: Context) -> None:
    for label, reply, _ in error_battery(ctx):
        if "error_description" not in reply.json_object:
            continue
        value = reply.json_object["error_description"]
        expect(isinstance(value, str), f"{label}: error_description is not a string")
        expect(_DESCRIPTION_CHARS.match(value), f"{label}: error_description has characters outside the RFC 6749 set")


@case("rfc6749.error.uri-charset", source="RFC 6749 §5.2", level="MUST",
      title="error_uri, when present, is a URI of %x21 / %x23-5B / %x5D-7E only")
def uri_charset(ctx: Context) -> None:
    for label, reply, _ in error_battery(ctx):
        if "error_uri" not in reply.json_object:
            continue
        value = reply.json_object["error_uri"]
        expect(isinstance(value, str) and _ERROR_URI_CHARS.match(value) and ":" in value,
               f"{label}: error_uri is not a URI of the RFC 6749 character set")


@case("hardening.error.no-token-echo", source="RFC 6749 §5.2", level="HARDENING",
      title="Error responses never echo the subject token, a segment of it, or its claim values")
def no_token_echo(ctx: Context) -> None:
    for label, reply, secret_values in error_battery(ctx):
        text = reply.text + " ".join(f"{k}: {v}" for k, v in reply.headers.items()
                                     if k.lower() not in ("date", "content-length"))
        leaked = [s for s in secret_values if s and s in text]
        expect(not leaked, f"{label}: the error response echoes the token or its claims ({len(leaked)} item(s))")


@case("hardening.error.cache-control-no-store", source="RFC 6749 §5.2", level="HARDENING",
      title="Error responses carry Cache-Control: no-store, as RFC 6749 §5.2's example does")
def error_no_store(ctx: Context) -> None:
    for label, reply, _ in error_battery(ctx):
        directives = {d.strip().lower() for d in reply.headers.get("cache-control", "").split(",")}
        expect("no-store" in directives, f"{label}: no Cache-Control: no-store")


@case("rfc6749.client.wrong-secret", source="RFC 6749 §5.2", level="MUST",
      title="A wrong client secret is refused with invalid_client (401 + WWW-Authenticate with Basic)",
      needs=("client_auth",))
def wrong_secret(ctx: Context) -> None:
    reply = ctx.post(ctx.form(), secret="wrong-" + secrets.token_hex(8))
    if ctx.profile.client.auth == "client_secret_basic":
        expect_refused(reply, {"invalid_client"}, statuses=(401,), what="wrong client secret")
        expect(reply.headers.get("www-authenticate"),
               "401 invalid_client after Authorization header auth lacks WWW-Authenticate")
    else:
        expect_refused(reply, {"invalid_client"}, statuses=(400, 401), what="wrong client secret")


@case("rfc6749.client.missing-credentials", source="RFC 6749 §5.2", level="MUST",
      title="A request without client authentication is refused with invalid_client",
      needs=("client_required",))
def missing_credentials(ctx: Context) -> None:
    reply = ctx.post(ctx.form(), authenticate=False)
    expect_refused(reply, {"invalid_client"}, statuses=(400, 401), what="unauthenticated request")

