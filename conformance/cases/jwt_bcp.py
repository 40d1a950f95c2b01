"""How the target validates subject tokens: RFC 8725 (JWT BCP), RFC 7519 claims, RFC 7515 headers.

RFC 8725 §3.1: "Libraries MUST enable the caller to specify a supported set of algorithms and
MUST NOT use any other algorithms when performing cryptographic operations ... each key MUST be
used with exactly one algorithm". §3.8: issuers and their keys must match. §3.9: "if the
audience value is not present or not associated with the recipient, it MUST reject the JWT".
§3.10: header and claim values (``kid``, ``jku``, ``x5u``) must not be trusted blindly.
RFC 7515 §4.1.11: "If any of the listed extension Header Parameters are not understood and
supported by the recipient, then the JWS is invalid."
Every refused token is answered with ``invalid_request`` (RFC 8693 §2.2.2).
"""

from __future__ import annotations

import secrets
import time

from conformance import jose
from conformance.cases.base import CaseFailure, CaseSkip, Context, case, expect, expect_issued, expect_refused
from conformance.issuer import certificate_der_b64, self_signed_certificate

_REFUSED = {"invalid_request"}


def _refused(ctx: Context, token: str, what: str) -> None:
    expect_refused(ctx.exchange(subject_token=token), _REFUSED, what=what)


def _attacker_header(ctx: Context, header: dict[str, object], **extra: object) -> dict[str, object]:
    out: dict[str, object] = {"alg": "RS256", "typ": header.get("typ", "JWT")}
    out.update(extra)
    return out


@case("rfc8725.alg.none-refused", source="RFC 8725 §3.1", level="MUST",
      title="A subject token with alg none (and no signature) is refused")
def alg_none(ctx: Context) -> None:
    token, header, _ = ctx.valid_pair()
    forged = ctx.forge(token, header={"alg": "none", "typ": header.get("typ", "JWT")}, key=b"")
    _refused(ctx, forged, "alg none subject token")


@case("hardening.alg.none-case-variants", source="RFC 8725 §3.1", level="HARDENING",
      title="alg None / NONE / nOnE (with and without a kid) are refused")
def alg_none_variants(ctx: Context) -> None:
    token, header, _ = ctx.valid_pair()
    for alg in ("None", "NONE", "nOnE"):
        for head in ({"alg": alg}, {"alg": alg, "kid": header.get("kid", "")}):
            _refused(ctx, ctx.forge(token, header=head, key=b""), f"alg {alg} subject token")


@case("rfc8725.alg.hs256-with-public-key", source="RFC 8725 §3.1", level="MUST",
      title="HS256 keyed with the issuer's RSA public key (PEM or JWK text) is refused")
def hs256_confusion(ctx: Context) -> None:
    token, header, _ = ctx.valid_pair()
    kid = header.get("kid")
    pem = ctx.subject_issuer_public_pem(kid if isinstance(kid, str) else None)
    if pem is None:
        raise CaseSkip("the subject issuer publishes no RSA key")
    pkcs1 = ctx.subject_issuer_public_pem(kid if isinstance(kid, str) else None, pkcs1=True) or pem
    candidates = {pem, pem.strip(), pkcs1, pkcs1.strip()}
    head: dict[str, object] = {"alg": "HS256", "typ": header.get("typ", "JWT")}
    if kid is not None:
        head["kid"] = kid
    for secret in candidates:
        _refused(ctx, ctx.forge(token, header=head, key=secret), "HS256 token keyed with the public key")


@case("rfc8725.alg.not-allowed", source="RFC 8725 §3.1", level="MUST",
      title="A token signed with a published key of an algorithm the target does not allow is refused",
      needs=("mint",))
def alg_not_allowed(ctx: Context) -> None:
    alg = ctx.disallowed_algorithm
    if alg is None:
        raise CaseSkip("the kit publishes no key outside the target's algorithms")
    _refused(ctx, ctx.subject_token(alg=alg), f"{alg} subject token")


@case("rfc8725.alg.key-alg-mismatch", source="RFC 8725 §3.1", level="MUST",
      title="A trusted RSA key used with another algorithm than its JWK alg is refused", needs=("mint",))
def key_alg_mismatch(ctx: Context) -> None:
    rsa_algs = [a for a in ctx.issuer.algorithms if jose.family(a) == "RSA"]
    if not rsa_algs:
        raise CaseSkip("the kit's issuer publishes no RSA key")
    key_alg = rsa_algs[0]
    kid = ctx.issuer.default_kid(key_alg)
    # Prefer an algorithm the target otherwise accepts, so only the key/alg binding can refuse it.
    accepted = [a for a in ctx.profile.issuer.algorithms if jose.family(a) == "RSA" and a != key_alg]
    other = accepted[0] if accepted else ("RS512" if key_alg != "RS512" else "RS384")
    token = ctx.issuer.mint(ctx.subject_claims(), alg=other, kid=kid, sign_with=ctx.issuer.signing_key(kid),
                            header={"kid": kid})
    _refused(ctx, token, f"{key_alg} key used with {other}")


@case("rfc8725.alg.accepted", source="RFC 8725 §3.2", level="MUST",
      title="Each algorithm the target declares accepting is accepted", needs=("mint",))
def accepted_algorithms(ctx: Context) -> None:
    for alg in ctx.profile.issuer.algorithms:
        reply = ctx.exchange(ctx.subject_token(alg=alg))
        if reply.status != 200:
            raise CaseFailure(f"a valid {alg} subject token was refused: {reply.describe()}")


@case("rfc8725.header.embedded-jwk", source="RFC 8725 §3.10", level="MUST",
      title="A token signed by an attacker key embedded as a jwk header is refused")
def embedded_jwk(ctx: Context) -> None:
    token, header, _ = ctx.valid_pair()
    key = ctx.attacker_key("RS256")
    jwk = jose.public_jwk(key, kid="attacker", alg="RS256")
    for kid in ("attacker", header.get("kid")):
        head = _attacker_header(ctx, header, jwk=jwk, **({"kid": kid} if kid else {}))
        _refused(ctx, ctx.forge(token, header=head, key=key), "token with an embedded jwk")


def _attacker_documents(ctx: Context) -> tuple[str, str, str]:
    """Publish an attacker JWK Set and certificate on the kit's server; return (jku, x5u, path prefix)."""
    if "attacker_docs" not in ctx.memo:
        key = ctx.attacker_key("RS256")
        prefix = f"/attacker-{secrets.token_hex(6)}"
        jku = ctx.issuer.publish(prefix + "/jwks.json", {"keys": [jose.public_jwk(key, kid="attacker", alg="RS256")]})
        cert = self_signed_certificate(key, "attacker")
        from cryptography.hazmat.primitives import serialization

        x5u = ctx.issuer.publish(prefix + "/cert.pem", cert.public_bytes(serialization.Encoding.PEM),
                                 content_type="application/pem-certificate-chain")
        ctx.memo["attacker_docs"] = (jku, x5u, prefix)
    docs = ctx.memo["attacker_docs"]
    assert isinstance(docs, tuple)
    return docs  # type: ignore[return-value]


@case("rfc8725.header.jku", source="RFC 8725 §3.10", level="MUST",
      title="A token naming an attacker JWK Set in jku and signed by its key is refused")
def jku(ctx: Context) -> None:
    token, header, _ = ctx.valid_pair()
    url, _, _ = _attacker_documents(ctx)
    for kid in ("attacker", header.get("kid")):
        head = _attacker_header(ctx, header, jku=url, **({"kid": kid} if kid else {}))
        _refused(ctx, ctx.forge(token, header=head, key=ctx.attacker_key("RS256")), "token with a jku header")


@case("rfc8725.header.x5u", source="RFC 8725 §3.10", level="MUST",
      title="A token naming an attacker certificate in x5u and signed by its key is refused")
def x5u(ctx: Context) -> None:
    token, header, _ = ctx.valid_pair()
    _, url, _ = _attacker_documents(ctx)
    head = _attacker_header(ctx, header, x5u=url)
    _refused(ctx, ctx.forge(token, header=head, key=ctx.attacker_key("RS256")), "token with an x5u header")


@case("rfc8725.header.x5c", source="RFC 8725 §3.10", level="MUST",
      title="A token carrying an attacker certificate in x5c and signed by its key is refused")
def x5c(ctx: Context) -> None:
    token, header, _ = ctx.valid_pair()
    key = ctx.attacker_key("RS256")
    cert = self_signed_certificate(key, "attacker")
    head = _attacker_header(ctx, header, x5c=[certificate_der_b64(cert)])
    _refused(ctx, ctx.forge(token, header=head, key=key), "token with an x5c header")


@case("hardening.header.urls-not-fetched", source="RFC 8725 §3.10", level="HARDENING",
      title="The target never dereferences jku or x5u from a token header (no SSRF)")
def urls_not_fetched(ctx: Context) -> None:
    token, header, _ = ctx.valid_pair()
    jku_url, x5u_url, prefix = _attacker_documents(ctx)
    key = ctx.attacker_key("RS256")
    for extra in ({"jku": jku_url, "kid": "attacker"}, {"x5u": x5u_url}):
        ctx.exchange(subject_token=ctx.forge(token, header=_attacker_header(ctx, header, **extra), key=key))
    fetched = sum(n for path, n in ctx.issuer.hits.items() if path.startswith(prefix))
    expect(fetched == 0, f"the target fetched a URL named in a token header ({fetched} time(s))")


@case("hardening.header.kid-injection", source="RFC 8725 §3.10", level="HARDENING",
      title="kid values shaped as paths or SQL, with HS256 and an empty or trivial key, are refused")
def kid_injection(ctx: Context) -> None:
    token, _, _ = ctx.valid_pair()
    for kid, secret in (("../../../../../../dev/null", b""), ("' OR '1'='1", b""), ("../../../../etc/hostname", b"\n")):
        _refused(ctx, ctx.forge(token, header={"alg": "HS256", "typ": "JWT", "kid": kid}, key=secret),
                 "token with an injected kid")


@case("rfc7515.header.crit-unknown", source="RFC 7515 §4.1.11", level="MUST",
      title="A validly signed token with an unknown critical header parameter is refused", needs=("mint",))
def crit_unknown(ctx: Context) -> None:
    name = "urn:example:conformance:critical"
    token = ctx.subject_token(header={"crit": [name], name: True})
    _refused(ctx, token, "token with an unknown crit parameter")


@case("rfc7519.claims.expired", source="RFC 7519 §4.1.4", level="MUST",
      title="An expired subject token is refused", needs=("mint",))
def expired(ctx: Context) -> None:
    now = ctx.now()
    back = ctx.profile.issuer.clock_skew + 600
    _refused(ctx, ctx.subject_token(exp=now - back, iat=now - back - 300, nbf=now - back - 300),
             "expired subject token")


@case("rfc7519.claims.nbf-future", source="RFC 7519 §4.1.5", level="MUST",
      title="A subject token not valid before a future time is refused", needs=("mint",))
def nbf_future(ctx: Context) -> None:
    ahead = ctx.now() + ctx.profile.issuer.clock_skew + 600
    _refused(ctx, ctx.subject_token(nbf=ahead, exp=ahead + 300), "subject token with nbf in the future")


@case("rfc8725.claims.wrong-audience", source="RFC 8725 §3.9", level="MUST",
      title="A subject token for another audience is refused", needs=("mint",))
def wrong_audience(ctx: Context) -> None:
    _refused(ctx, ctx.subject_token(aud="https://another-service.conformance.invalid"),
             "subject token for another audience")
    _refused(ctx, ctx.subject_token(aud=["https://another-service.conformance.invalid"]),
             "subject token for another audience (array)")


@case("rfc8725.claims.missing-audience", source="RFC 8725 §3.9", level="MUST",
      title="A subject token without aud is refused", needs=("mint",))
def missing_audience(ctx: Context) -> None:
    _refused(ctx, ctx.subject_token(aud=None), "subject token without aud")


@case("rfc8725.claims.wrong-issuer", source="RFC 8725 §3.8", level="MUST",
      title="A token signed by a trusted key but naming another issuer is refused", needs=("mint",))
def wrong_issuer(ctx: Context) -> None:
    _refused(ctx, ctx.subject_token(iss="https://impostor.conformance.invalid"), "subject token naming another issuer")


@case("rfc8725.claims.attacker-key-trusted-kid", source="RFC 8725 §3.1", level="MUST",
      title="A token signed by an attacker key under a trusted kid is refused")
def attacker_trusted_kid(ctx: Context) -> None:
    token, header, _ = ctx.valid_pair()
    alg = str(header.get("alg", "RS256"))
    if jose.family(alg) not in ("RSA", "EC", "OKP"):
        raise CaseSkip("the subject token is not asymmetrically signed")
    forged = ctx.forge(token, header=dict(header), key=ctx.attacker_key(alg))
    _refused(ctx, forged, "token signed by an attacker key under a trusted kid")


@case("hardening.claims.missing-exp", source="RFC 8725 §3.1", level="HARDENING",
      title="A subject token without exp is refused", needs=("mint",))
def missing_exp(ctx: Context) -> None:
    _refused(ctx, ctx.subject_token(exp=None), "subject token without exp")


@case("hardening.claims.iat-future", source="RFC 7519 §4.1.6", level="HARDENING",
      title="A subject token issued an hour in the future is refused", needs=("mint",))
def iat_future(ctx: Context) -> None:
    ahead = ctx.now() + 3600
    _refused(ctx, ctx.subject_token(iat=ahead, nbf=None, exp=ahead + 300), "subject token with iat in the future")


@case("hardening.claims.overlong-lifetime", source="RFC 8725 §3.1", level="HARDENING",
      title="A subject token living longer than the issuer's declared maximum is refused",
      needs=("mint", "issuer_lifetime_cap"))
def overlong(ctx: Context) -> None:
    cap = ctx.profile.issuer.max_token_lifetime or 0
    now = ctx.now()
    _refused(ctx, ctx.subject_token(iat=now, nbf=now, exp=now + 2 * cap + 60),
             "subject token with an overlong lifetime")


@case("rfc8725.claims.sub-type", source="RFC 7519 §4.1.2", level="HARDENING",
      title="A subject token whose sub is not a string is refused", needs=("mint",))
def sub_type(ctx: Context) -> None:
    _refused(ctx, ctx.subject_token(sub={"nested": ctx.profile.issuer.subject}), "subject token with an object sub")


@case("hardening.keys.rotation", source="OIDC Core §10.1.1", level="SHOULD",
      title="A token signed with a newly rotated issuer key is accepted once published",
      needs=("mint", "rotation"))
def rotation(ctx: Context) -> None:
    alg = ctx.profile.issuer.algorithms[0]
    kid = ctx.issuer.rotate(alg)
    deadline = time.monotonic() + ctx.profile.issuer.rotation_wait
    last = ""
    while True:
        reply = ctx.exchange(ctx.subject_token(alg=alg, kid=kid))
        if reply.status == 200:
            expect_issued(reply)
            return
        last = reply.describe()
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    # Later cases mint with the default key: put the old one back so one failure does not cascade.
    ctx.issuer.retire(kid)
    raise CaseFailure(f"a token under the rotated key was still refused after "
                      f"{ctx.profile.issuer.rotation_wait:g}s: {last}")

