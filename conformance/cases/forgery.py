"""Signatures that are not signatures, keys named by the token, and tokens of another kind.

RFC 7515 §5.2: a JWS is valid only when its signature validates with a key the recipient trusts
for it. RFC 8725 §3.1: only allowlisted algorithms; §3.10: header values such as ``kid`` must not
be used to look up files or database rows unsanitised. RFC 7518 §3.4 with FIPS 186-4 §6.4: an
ECDSA signature with r or s equal to 0 is invalid (CVE-2022-21449, "psychic signatures").
RFC 8725 §2.8 and §3.11-§3.12: a JWT of another kind (DPoP proof, logout token, security event
token) must not be taken for a subject token. RFC 7515 §2: base64url without padding; a replay
check must not be fooled by another encoding of the same token.
"""

from __future__ import annotations

from conformance import jose
from conformance.cases.base import CaseSkip, Context, case, expect_issued, expect_refused

_REFUSED = {"invalid_request"}


def _refused(ctx: Context, token: str, what: str) -> None:
    expect_refused(ctx.exchange(subject_token=token), _REFUSED, what=what)


@case("rfc8725.header.kid-path-traversal", source="RFC 8725 §3.1, §3.10", level="MUST",
      title="HS256 tokens whose kid names a file (/dev/null, ../ paths) and keyed with its content are refused")
def kid_path_traversal(ctx: Context) -> None:
    if "HS256" in ctx.profile.issuer.algorithms:
        raise CaseSkip("the target accepts HS256 from the issuer")
    token, _, _ = ctx.valid_pair()
    for kid in ("../../../../../../../../dev/null", "/dev/null", "..\\..\\..\\..\\dev\\null"):
        _refused(ctx, ctx.forge(token, header={"alg": "HS256", "typ": "JWT", "kid": kid}, key=b""),
                 f"HS256 token with kid {kid!r} and an empty key")


@case("rfc7515.signature.stripped", source="RFC 7515 §5.2", level="MUST",
      title="A valid token with its signature removed (empty third part) is refused")
def stripped(ctx: Context) -> None:
    token, _, _ = ctx.valid_pair()
    head, payload, _ = token.split(".")
    _refused(ctx, f"{head}.{payload}.", "subject token with an empty signature")


@case("rfc7518.ecdsa.zero-signature", source="RFC 7518 §3.4, CVE-2022-21449", level="MUST",
      title="An ES256 token whose signature is r = s = 0 (psychic signature) is refused", needs=("mint",))
def ecdsa_zero(ctx: Context) -> None:
    if "ES256" not in ctx.profile.issuer.algorithms:
        raise CaseSkip("the target does not accept ES256 from the issuer")
    kid = ctx.issuer.default_kid("ES256")
    good = ctx.subject_token(alg="ES256")
    head, payload, _ = good.split(".")
    _refused(ctx, f"{head}.{payload}.{jose.b64url_encode(bytes(64))}", f"ES256 token (kid {kid}) with r = s = 0")


#: ``typ`` values of JWTs that are validly signed by the same issuers but are not subject tokens.
OTHER_KINDS = ("dpop+jwt", "logout+jwt", "secevent+jwt")


@case("rfc8725.typ.other-jwt-kinds", source="RFC 8725 §3.11, §3.12", level="SHOULD",
      title="A validly signed JWT explicitly typed as another kind (DPoP proof, logout, event) is refused",
      needs=("mint",))
def other_jwt_kinds(ctx: Context) -> None:
    for typ in OTHER_KINDS:
        _refused(ctx, ctx.subject_token(header={"typ": typ}), f"subject token typed {typ}")


def _re_encoded(token: str) -> list[tuple[str, str]]:
    """Other encodings of ``token``'s signature that lenient base64 decoders map to the same bytes."""
    head, payload, signature = token.split(".")
    out = [(f"{head}.{payload}.{signature}" + "=" * (-len(signature) % 4 or 4), "padded")]
    if len(signature) % 4:
        # The last character carries unused low bits: flipping one keeps the decoded bytes.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(signature[-1])
        out.append((f"{head}.{payload}.{signature[:-1]}{alphabet[last ^ 1]}", "with non-canonical trailing bits"))
    return out


@case("hardening.replay.re-encoded", source="RFC 7515 §2, RFC 8693 §2.2.2", level="HARDENING",
      title="After an exchange, other base64 encodings of the same subject token are refused too",
      needs=("replay",))
def replay_re_encoded(ctx: Context) -> None:
    token = ctx.subject_token()
    expect_issued(ctx.exchange(token))
    for variant, how in _re_encoded(token):
        _refused(ctx, variant, f"replayed subject token, signature re-encoded {how}")
