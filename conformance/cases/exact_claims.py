"""Claims compared exactly, typed strictly and parsed without ambiguity.

RFC 7519 §2 (StringOrURI): "comparisons ... MUST be performed as defined in Section 7.3" and
§7.3: no transformations or canonicalisations are applied, comparisons are case-sensitive.
OIDC Core §3.1.3.7: the issuer "MUST exactly match". RFC 8725 §3.8 (issuer) and §3.9 (audience)
require the recipient to validate these claims. RFC 7519 §4.1.4: ``exp`` "MUST be a number
containing a NumericDate value". RFC 7519 §4: "JWT parsers MUST either reject JWTs with duplicate
Claim Names or use a JSON parser that returns only the lexically last duplicate member name".

Each case forges one defect into an otherwise valid subject token signed by a trusted key.
"""

from __future__ import annotations

import json
from typing import Any

from conformance import jose
from conformance.cases.base import Context, case, expect_refused

_REFUSED = {"invalid_request"}


def _near_misses(value: str) -> list[tuple[str, str]]:
    """Values a loose comparison confuses with ``value``, each with what makes it different."""
    out = [(value + "/", "a trailing slash"), (value.upper(), "upper case"),
           (value + ".attacker.invalid", "a longer value with the same prefix"),
           (value + "/other", "a longer path with the same prefix"),
           ("https://attacker.invalid/" + value, "a value containing it")]
    if value.endswith("/"):
        out.append((value.rstrip("/"), "no trailing slash"))
    elif len(value) > 1:
        out.append((value[:-1], "a prefix of it"))
    seen: set[str] = {value}
    unique = []
    for candidate, why in out:
        if candidate not in seen:
            seen.add(candidate)
            unique.append((candidate, why))
    return unique


@case("rfc7519.claims.issuer-exact", source="RFC 7519 §7.3, OIDC Core §3.1.3.7", level="MUST",
      title="iss is compared exactly: trailing slash, case, prefix and substring look-alikes are refused",
      needs=("mint",))
def issuer_exact(ctx: Context) -> None:
    for iss, why in _near_misses(ctx.issuer.url):
        expect_refused(ctx.exchange(ctx.subject_token(iss=iss)), _REFUSED, what=f"subject token whose iss has {why}")


@case("rfc7519.claims.audience-exact", source="RFC 7519 §7.3, RFC 8725 §3.9", level="MUST",
      title="aud is compared exactly: trailing slash, case, prefix and substring look-alikes are refused",
      needs=("mint",))
def audience_exact(ctx: Context) -> None:
    for aud, why in _near_misses(ctx.profile.issuer.audience):
        expect_refused(ctx.exchange(ctx.subject_token(aud=aud)), _REFUSED, what=f"subject token whose aud has {why}")
        expect_refused(ctx.exchange(ctx.subject_token(aud=[aud])), _REFUSED,
                       what=f"subject token whose aud array holds a value with {why}")


@case("rfc7519.claims.exp-not-numeric", source="RFC 7519 §4.1.4", level="MUST",
      title="A subject token whose exp is not a NumericDate (a string, a list) is refused", needs=("mint",))
def exp_not_numeric(ctx: Context) -> None:
    past = ctx.now() - ctx.profile.issuer.clock_skew - 600
    for value, what in ((str(past), "a string"), ([past], "a list"), (True, "a boolean")):
        expect_refused(ctx.exchange(ctx.subject_token(exp=value)), _REFUSED, what=f"subject token whose exp is {what}")


def _duplicated(ctx: Context, name: str, last: Any) -> str:
    """A validly signed token whose claims name ``name`` twice: the valid value, then ``last``."""
    claims = ctx.subject_claims()
    alg = ctx.profile.issuer.algorithms[0]
    kid = ctx.issuer.default_kid(alg)
    body = json.dumps(claims, separators=(",", ":"))
    payload = body[:-1] + "," + json.dumps(name) + ":" + json.dumps(last) + "}"
    return jose.sign_compact({"alg": alg, "typ": "JWT", "kid": kid}, payload.encode("utf-8"),
                             ctx.issuer.signing_key(kid))


@case("rfc7519.claims.duplicate-names", source="RFC 7519 §4", level="MUST",
      title="With a claim named twice, the token is refused or the last value rules (parser differentials)",
      needs=("mint",))
def duplicate_names(ctx: Context) -> None:
    past = ctx.now() - ctx.profile.issuer.clock_skew - 600
    for name, last in (("aud", "https://another-service.conformance.invalid"),
                       ("iss", "https://impostor.conformance.invalid"), ("exp", past)):
        expect_refused(ctx.exchange(_duplicated(ctx, name, last)), _REFUSED,
                       what=f"subject token naming {name} twice, the last one invalid")
