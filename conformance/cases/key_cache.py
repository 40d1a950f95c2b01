"""The target's cache of the issuer's keys, under a rotating, failing or hanging issuer.

RFC 7515 §5.2: a signature must validate with a key the recipient trusts, so an issuer that
cannot be reached never makes an unverifiable token acceptable (fail closed, RFC 8725 §3.1).
OpenID Connect Core §10.1.1: keys rotate by publication in the JWK Set; a key removed from it is
no longer the issuer's. The bounds (how often the target refetches, how long a removed key stays
trusted, how fast it answers while the issuer hangs) are the target's own choices, declared in
the profile's ``[key_cache]`` section; the ``policy.keys.*`` cases hold it to them.

The kit's issuer misbehaves on demand through ``LocalIssuer.faults`` (see ``issuer_faults``).
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlsplit

import httpx

from conformance.cases.base import NEEDS, CaseFailure, CaseSkip, Context, Reply, case, expect

# Registered here rather than in base so that this module carries its own vocabulary.
NEEDS.setdefault("refetch_interval", (lambda p: p.key_cache.refetch_interval is not None,
                                      "the profile declares no key_cache.refetch_interval"))
NEEDS.setdefault("cache_lifetime", (lambda p: p.key_cache.cache_lifetime is not None,
                                    "the profile declares no key_cache.cache_lifetime"))
NEEDS.setdefault("fail_fast", (lambda p: p.key_cache.fail_fast is not None,
                               "the profile declares no key_cache.fail_fast"))

_UNKNOWN_KID_TOKENS = 8


def _unknown_kid_token(ctx: Context) -> str:
    """A token under a kid the issuer never published, signed by a key nobody trusts."""
    alg = ctx.profile.issuer.algorithms[0]
    kid = "unknown-" + secrets.token_hex(6)
    return ctx.issuer.mint(ctx.subject_claims(), alg=alg, kid=kid, sign_with=ctx.attacker_key(alg),
                           header={"kid": kid})


def _not_accepted(reply: Reply, what: str) -> None:
    expect(reply.access_token is None and reply.status != 200, f"{what} was accepted ({reply.describe()})")


def _jwks_fetches(ctx: Context) -> int:
    """JWKS fetches so far, at ``jwks_uri`` or at the ``/.well-known/jwks.json`` alias."""
    jwks_path = urlsplit(ctx.issuer.jwks_uri).path
    return sum(n for path, n in list(ctx.issuer.hits.items())
               if path == jwks_path or path.endswith("/.well-known/jwks.json"))


def _cooldown(ctx: Context) -> None:
    """Wait out the declared refetch interval, so that the next unknown kid makes the target fetch."""
    time.sleep(ctx.profile.key_cache.refetch_interval or 0)


def _accepted_within(ctx: Context, alg: str, kid: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if ctx.exchange(ctx.subject_token(alg=alg, kid=kid)).status == 200:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)


@case("policy.keys.removed-key-refused", source="OIDC Core §10.1.1; profile key_cache.cache_lifetime",
      level="MUST", title="A key removed from the issuer's JWKS is refused once the declared cache lifetime passed",
      needs=("mint", "rotation", "cache_lifetime"))
def removed_key_refused(ctx: Context) -> None:
    alg = ctx.profile.issuer.algorithms[0]
    kid = ctx.issuer.rotate(alg)
    key = ctx.issuer.signing_key(kid)
    try:
        accepted = _accepted_within(ctx, alg, kid, ctx.profile.issuer.rotation_wait)
    finally:
        ctx.issuer.retire(kid)
    if not accepted:
        raise CaseSkip("a newly published key was never accepted (see hardening.keys.rotation)")
    lifetime = ctx.profile.key_cache.cache_lifetime or 0
    time.sleep(lifetime + min(1.0, lifetime / 2 + 0.25))
    token = ctx.issuer.mint(ctx.subject_claims(), alg=alg, kid=kid, sign_with=key, header={"kid": kid})
    _not_accepted(ctx.exchange(token),
                  f"a token under a key removed from the JWKS {lifetime:g}s (the declared cache lifetime) ago")


@case("policy.keys.refetch-interval", source="RFC 8725 §3.10; profile key_cache.refetch_interval", level="MUST",
      title="A burst of unknown kids makes the target fetch the issuer's JWKS at most once per declared interval",
      needs=("mint", "rotation", "refetch_interval"))
def refetch_interval(ctx: Context) -> None:
    interval = ctx.profile.key_cache.refetch_interval or 1.0
    _cooldown(ctx)
    before = _jwks_fetches(ctx)
    started = time.monotonic()
    for _ in range(_UNKNOWN_KID_TOKENS):
        # Only the fetch count is this case's class; the error code is checked elsewhere.
        _not_accepted(ctx.exchange(_unknown_kid_token(ctx)), "a token under an unknown kid signed by an untrusted key")
    elapsed = time.monotonic() - started
    fetched = _jwks_fetches(ctx) - before
    allowed = 1 + int(elapsed // interval)
    expect(fetched <= allowed, f"{_UNKNOWN_KID_TOKENS} unknown kids in {elapsed:.1f}s made the target fetch the "
                               f"JWKS {fetched} times; the declared refetch interval ({interval:g}s) allows {allowed}")


@case("rfc8725.keys.issuer-down-fail-closed", source="RFC 7515 §5.2, RFC 8725 §3.1", level="MUST",
      title="While the issuer's key documents fail (HTTP 503, not JSON), tokens under unknown kids are refused",
      needs=("mint", "rotation"))
def issuer_down_fail_closed(ctx: Context) -> None:
    for mode in ("error", "garbage"):
        _cooldown(ctx)
        with ctx.issuer.faults.active(mode):
            reply = ctx.exchange(_unknown_kid_token(ctx))
        _not_accepted(reply, f"with the issuer answering {'HTTP 503' if mode == 'error' else 'a body that is not JSON'},"
                             " a token under an unknown kid signed by an untrusted key")


@case("policy.keys.fail-fast", source="RFC 6749 §5.2; profile key_cache.fail_fast", level="MUST",
      title="While the issuer hangs, the target answers within the declared fail-fast bound and issues nothing",
      needs=("mint", "rotation", "fail_fast"))
def fail_fast(ctx: Context) -> None:
    bound = ctx.profile.key_cache.fail_fast or 1.0
    _cooldown(ctx)
    form, headers = ctx.client_auth(ctx.form(_unknown_kid_token(ctx)))
    started = time.monotonic()
    with ctx.issuer.faults.active("hang", max_hang=bound + 30):
        try:
            resp = ctx.http.post(ctx.profile.target.token_endpoint, data=dict(form), headers=headers,
                                 timeout=bound + 1.0)
        except httpx.TimeoutException as exc:
            raise CaseFailure(f"with the issuer hanging, the target did not answer within {bound + 1:g}s "
                              f"(declared fail-fast bound {bound:g}s)") from exc
        except httpx.HTTPError as exc:
            raise CaseFailure(f"with the issuer hanging, the request failed: {type(exc).__name__}") from exc
    elapsed = time.monotonic() - started
    expect(resp.status_code != 200, "with the issuer hanging, a token under an unknown kid was accepted")
    expect(elapsed <= bound, f"with the issuer hanging, the target answered after {elapsed:.1f}s; "
                             f"the declared fail-fast bound is {bound:g}s")
