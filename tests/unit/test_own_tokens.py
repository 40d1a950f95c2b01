"""Verifying our own tokens when they come back as subject tokens (sts.tokens.own): only with
keys we publish, only ``at+jwt`` of our issuer, before ``exp``; the JWKS parsed once per key
ring snapshot."""

from __future__ import annotations

from typing import Any

import pytest

from sts import jose
from sts.subject.oidc import SubjectRejected
from sts.tokens.own import OwnTokenVerifier, VerifiedOwnToken

ISSUER = "https://sts.example.com"
NOW = 1_800_000_000
KEY = jose.generate_private_key("ES256", kid="k1")
OTHER = jose.generate_private_key("ES256", kid="k1")


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER, "sub": "wl:report-job", "aud": "https://gateway.example.com", "exp": NOW + 300, "iat": NOW,
        "nbf": NOW, "jti": "j0", "client_id": "wl:report-job", "scope": "docs.read",
        "workload": {"issuer": "https://idp.example.com", "subject": "report-job", "attributes": {"team": "a"}},
        "sts_chain": [{"jti": "j0", "grant": "g", "origin": "cluster"}],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def verifier(jwks: dict[str, Any] | None = None) -> OwnTokenVerifier:
    doc = jwks if jwks is not None else {"keys": [KEY.public_jwk()]}
    return OwnTokenVerifier(lambda: doc, clock=lambda: NOW)


def verify(token: str, v: OwnTokenVerifier | None = None) -> VerifiedOwnToken:
    return (v or verifier()).verify(token, issuer=ISSUER, workload_claim="workload", chain_claim="sts_chain")


def test_a_valid_token_keeps_its_identity_and_origin() -> None:
    out = verify(jose.sign(claims(), KEY, typ="at+jwt"))
    assert out.identity.identity == "wl:report-job" and out.identity.issuer_name == "cluster"
    assert out.identity.attributes == {"team": "a"}
    assert (out.issuer_name, out.origin_issuer, out.origin_subject) == ("cluster", "https://idp.example.com", "report-job")
    assert out.expires_at == NOW + 300


@pytest.mark.parametrize(("token", "reason"), [
    pytest.param(jose.sign(claims(), KEY, typ="JWT"), "own_token_typ_mismatch", id="not-an-access-token"),
    pytest.param(jose.sign(claims(), OTHER, typ="at+jwt"), "own_token_bad_signature", id="other-key-same-kid"),
    pytest.param(jose.sign(claims(), jose.generate_private_key("ES256", kid="k2"), typ="at+jwt"), "own_token_unknown_kid",
                 id="unpublished-key"),
    pytest.param(jose.sign(claims(iss="https://evil.example.com"), KEY, typ="at+jwt"), "own_token_claims", id="other-issuer"),
    pytest.param(jose.sign(claims(exp=NOW), KEY, typ="at+jwt"), "own_token_expired", id="expired"),
    pytest.param(jose.sign(claims(nbf=NOW + 120), KEY, typ="at+jwt"), "own_token_not_yet_valid", id="not-yet-valid"),
    pytest.param(jose.sign(claims(jti=None), KEY, typ="at+jwt"), "own_token_claims", id="no-jti"),
    pytest.param(jose.sign(claims(workload=None), KEY, typ="at+jwt"), "own_token_workload_claim", id="no-workload-claim"),
])
def test_refused(token: str, reason: str) -> None:
    with pytest.raises(SubjectRejected) as err:
        verify(token)
    assert err.value.reason == reason


def test_is_ours_is_a_peek_at_iss() -> None:
    assert OwnTokenVerifier.is_ours(jose.sign(claims(), KEY, typ="at+jwt"), ISSUER)
    assert not OwnTokenVerifier.is_ours(jose.sign(claims(iss="https://idp.example.com"), KEY), ISSUER)
    assert not OwnTokenVerifier.is_ours("not-a-token", ISSUER)
    # Ours are always at+jwt: anything else naming our issuer goes to the verifier of its iss
    # (where no entry trusts our URL) and is refused there.
    assert not OwnTokenVerifier.is_ours(jose.sign(claims(), KEY, typ="JWT"), ISSUER)
    assert not OwnTokenVerifier.is_ours(jose.sign(claims(), KEY), ISSUER)
    assert not OwnTokenVerifier.is_ours("e30.e30.", ISSUER)


def test_keys_are_parsed_once_per_snapshot() -> None:
    snapshots = [{"keys": [KEY.public_jwk()]}]
    v = OwnTokenVerifier(lambda: snapshots[-1], clock=lambda: NOW)
    token = jose.sign(claims(), KEY, typ="at+jwt")
    verify(token, v)
    first = v._parsed
    verify(token, v)
    assert v._parsed is first
    # The key ring swapped in a snapshot without the key: the token no longer verifies.
    snapshots.append({"keys": []})
    with pytest.raises(SubjectRejected):
        verify(token, v)
