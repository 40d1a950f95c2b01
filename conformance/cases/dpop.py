"""DPoP at the token endpoint (RFC 9449), for targets whose profile declares ``client.dpop``.

RFC 9449 §5: a token issued to a request with a valid proof is bound to the proof's key and
typed ``DPoP``; §6.1: a JWT access token says so with ``cnf.jkt``, the key's RFC 7638 thumbprint.
§4.3: the server checks that ``htm`` and ``htu`` match the request it received; a proof that fails
a check is answered ``invalid_dpop_proof`` (§5). §11.1: a proof replayed within its acceptance
window must not be accepted again. §5.2: a server that requires DPoP for a client
(``dpop_bound_access_tokens``) MUST reject its token requests that carry no proof, rather than
fall back to a bearer token.

Each case sends one defective proof with an otherwise valid exchange; its valid twin is the same
exchange with a fresh, correct proof (what ``Context.post`` sends by itself).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from conformance.cases.base import Context, case, expect, expect_issued, expect_refused

_REFUSED = {"invalid_dpop_proof"}


def _post_with_proof(ctx: Context, proof: str):  # type: ignore[no-untyped-def]
    return ctx.post(ctx.form(), headers={"DPoP": proof})


@case("rfc9449.token.bound-to-proof-key", source="RFC 9449 §5, §6.1", level="MUST",
      title="An exchange with a DPoP proof yields a DPoP token bound to the proof's key (cnf.jkt)",
      needs=("dpop",))
def bound_to_proof_key(ctx: Context) -> None:
    reply = _post_with_proof(ctx, ctx.dpop_proof())
    body = expect_issued(reply)
    token_type = body.get("token_type")
    expect(isinstance(token_type, str) and token_type.lower() == "dpop",
           f"token_type is {token_type!r}, expected DPoP for a request with a proof")
    if ctx.profile.choices.issued_token_format == "opaque":
        return
    cnf = ctx.verify_issued(body["access_token"]).claims.get("cnf")
    expect(isinstance(cnf, dict) and "jkt" in cnf, "the issued token has no cnf.jkt")
    assert isinstance(cnf, dict)
    expect(cnf["jkt"] == ctx.dpop_key.thumbprint, "cnf.jkt is not the RFC 7638 thumbprint of the proof's key")


@case("rfc9449.proof.other-url", source="RFC 9449 §4.3", level="MUST",
      title="A DPoP proof whose htu names another URL is refused with invalid_dpop_proof", needs=("dpop",))
def other_url(ctx: Context) -> None:
    parts = urlsplit(ctx.profile.target.token_endpoint)
    for path, what in ((parts.path.rstrip("/") + "/other", "another path"), ("/", "the root")):
        url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        expect_refused(_post_with_proof(ctx, ctx.dpop_proof("POST", url)), _REFUSED,
                       what=f"request with a DPoP proof for {what}")


@case("rfc9449.proof.other-method", source="RFC 9449 §4.3", level="MUST",
      title="A DPoP proof whose htm is another method (GET) is refused with invalid_dpop_proof", needs=("dpop",))
def other_method(ctx: Context) -> None:
    expect_refused(_post_with_proof(ctx, ctx.dpop_proof("GET")), _REFUSED, what="request with a DPoP proof for GET")


@case("hardening.dpop.proof-replay-refused", source="RFC 9449 §11.1", level="HARDENING",
      title="A DPoP proof already used once is refused the second time", needs=("dpop",))
def proof_replay(ctx: Context) -> None:
    proof = ctx.dpop_proof()
    expect_issued(_post_with_proof(ctx, proof))
    expect_refused(_post_with_proof(ctx, proof), _REFUSED, what="request with a replayed DPoP proof")


@case("rfc9449.token.required-without-proof", source="RFC 9449 §5.2", level="MUST",
      title="Where DPoP is required, a token request without a DPoP proof is refused (no bearer fallback)",
      needs=("dpop_required",))
def required_without_proof(ctx: Context) -> None:
    reply = ctx.post(ctx.form(), dpop=False)
    expect_refused(reply, {"invalid_dpop_proof", "invalid_request"}, statuses=(400, 401),
                   what="token request without a DPoP proof")
