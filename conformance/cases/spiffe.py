"""JWT-SVID subject tokens (SPIFFE JWT-SVID §3 and §4, SPIFFE Trust Domain and Bundle §4).

JWT-SVID §3: the ``sub`` claim "MUST be set to the SPIFFE ID of the workload", ``aud`` "MUST be
present", ``exp`` "MUST be set". §4: validators use the keys of the trust bundle of the SVID's
trust domain. Bundle §4.2.1: a JWK's ``use`` is ``jwt-svid`` for keys that sign JWT-SVIDs;
an ``x509-svid`` key is an X.509 authority and must not verify a JWT-SVID.
"""

from __future__ import annotations

import time
from typing import Any

from conformance.cases.base import CaseFailure, CaseSkip, Context, case, expect_issued, expect_refused
from conformance.issuer import SpiffeBundleServer


def _spiffe(ctx: Context) -> SpiffeBundleServer:
    if ctx.spiffe is None:
        raise CaseSkip("the kit's SPIFFE bundle endpoint is not running")
    return ctx.spiffe


def _svid(ctx: Context, spiffe_id: str | None = None, **kw: Any) -> str:
    p = ctx.profile.spiffe
    return _spiffe(ctx).mint_jwt_svid(spiffe_id or p.spiffe_id, kw.pop("audience", p.audience), **kw)


def _send(ctx: Context, token: str):  # type: ignore[no-untyped-def]
    return ctx.exchange(token, subject_token_type=ctx.profile.spiffe.subject_token_type)


def _refused(ctx: Context, token: str, what: str) -> None:
    expect_refused(_send(ctx, token), {"invalid_request"}, what=what)


@case("spiffe.svid.valid", source="SPIFFE JWT-SVID §4", level="MUST",
      title="A valid JWT-SVID from the trusted trust domain is exchanged", needs=("spiffe",))
def valid(ctx: Context) -> None:
    expect_issued(_send(ctx, _svid(ctx)))


@case("spiffe.svid.sub-not-spiffe-id", source="SPIFFE JWT-SVID §3", level="MUST",
      title="A JWT-SVID whose sub is not a SPIFFE ID is refused", needs=("spiffe",))
def sub_not_spiffe_id(ctx: Context) -> None:
    _refused(ctx, _svid(ctx, "workload-without-scheme"), "JWT-SVID with a non-SPIFFE sub")


@case("spiffe.svid.foreign-trust-domain", source="SPIFFE JWT-SVID §4", level="MUST",
      title="A JWT-SVID naming another trust domain is refused", needs=("spiffe",))
def foreign_trust_domain(ctx: Context) -> None:
    _refused(ctx, _svid(ctx, "spiffe://foreign.conformance.invalid/workload"), "JWT-SVID of a foreign trust domain")


@case("spiffe.svid.missing-exp", source="SPIFFE JWT-SVID §3", level="MUST",
      title="A JWT-SVID without exp is refused", needs=("spiffe",))
def missing_exp(ctx: Context) -> None:
    _refused(ctx, _svid(ctx, claims={"exp": None}), "JWT-SVID without exp")


@case("spiffe.svid.expired", source="SPIFFE JWT-SVID §4", level="MUST",
      title="An expired JWT-SVID is refused", needs=("spiffe",))
def expired(ctx: Context) -> None:
    back = ctx.now() - ctx.profile.issuer.clock_skew - 600
    _refused(ctx, _svid(ctx, claims={"exp": back, "iat": back - 300}), "expired JWT-SVID")


@case("spiffe.svid.wrong-audience", source="SPIFFE JWT-SVID §3", level="MUST",
      title="A JWT-SVID for another audience is refused", needs=("spiffe",))
def wrong_audience(ctx: Context) -> None:
    _refused(ctx, _svid(ctx, audience="spiffe-other-audience"), "JWT-SVID for another audience")


@case("spiffe.svid.untrusted-key", source="SPIFFE JWT-SVID §4", level="MUST",
      title="A JWT-SVID signed by a key outside the bundle is refused", needs=("spiffe",))
def untrusted_key(ctx: Context) -> None:
    alg = _spiffe(ctx).algorithm
    _refused(ctx, _svid(ctx, sign_with=ctx.attacker_key(alg)), "JWT-SVID signed by an unknown key")


@case("spiffe.bundle.x509-key-not-for-jwt", source="SPIFFE Trust Domain and Bundle §4.2.1", level="HARDENING",
      title="A JWT-SVID signed by the bundle's x509-svid key is refused", needs=("spiffe",))
def x509_key(ctx: Context) -> None:
    server = _spiffe(ctx)
    token = _svid(ctx, sign_with=server.x509_key, kid=server.x509_kid, alg="ES256")
    _refused(ctx, token, "JWT-SVID signed by an x509-svid key")


@case("spiffe.bundle.rotation", source="SPIFFE Trust Domain and Bundle §4.1", level="SHOULD",
      title="A JWT-SVID signed with a newly added bundle key is accepted once published", needs=("spiffe",))
def rotation(ctx: Context) -> None:
    server = _spiffe(ctx)
    kid = server.rotate()
    deadline = time.monotonic() + ctx.profile.spiffe.rotation_wait
    last = ""
    while True:
        reply = _send(ctx, _svid(ctx, kid=kid))
        if reply.status == 200:
            return
        last = reply.describe()
        if time.monotonic() >= deadline:
            server.retire(kid)
            raise CaseFailure(f"a JWT-SVID under the new bundle key was refused after "
                              f"{ctx.profile.spiffe.rotation_wait:g}s: {last}")
        time.sleep(0.5)
