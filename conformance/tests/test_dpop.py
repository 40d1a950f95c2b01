"""The kit's own DPoP proofs (RFC 9449 §4.2), and how ``Context.post`` sends them."""

from __future__ import annotations

import httpx
import pytest

from conformance import jose
from conformance.cases import Context
from conformance.dpop import DpopKey, htu
from conformance.issuer import LocalIssuer
from conformance.profile import ProfileError, parse_profile


def _profile(**client: object):  # type: ignore[no-untyped-def]
    return parse_profile({
        "name": "dpop", "target": {"token_endpoint": "http://127.0.0.1:9/token"},
        "issuer": {"audience": "https://sts.test", "subject": "workload-1"},
        "allowed": {"audiences": ["https://api.test"]}, "client": {"auth": "none", **client},
    }, env={})


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_a_proof_is_a_dpop_jwt_signed_by_the_public_key_it_carries(alg: str) -> None:
    key = DpopKey(alg)
    proof = key.proof("post", "https://sts.test:8443/token?x=1#frag", nonce="n-1")
    header, claims, signing_input, signature = jose.decode_unverified(proof)
    assert header["typ"] == "dpop+jwt" and header["alg"] == alg
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(header["jwk"])
    assert jose.raw_verify(alg, jose.key_from_jwk(header["jwk"]), signing_input, signature)
    assert claims["htm"] == "POST" and claims["htu"] == "https://sts.test:8443/token" and claims["nonce"] == "n-1"
    assert key.thumbprint == jose.jwk_thumbprint(header["jwk"])
    assert claims["jti"] != jose.decode_unverified(key.proof("POST", "https://sts.test/token"))[1]["jti"]


def test_htu_drops_query_and_fragment_only() -> None:
    assert htu("https://a.test/realms/x/token?q=1#f") == "https://a.test/realms/x/token"


def test_dpop_alg_must_be_asymmetric() -> None:
    with pytest.raises(ProfileError, match="dpop_alg"):
        _profile(dpop=True, dpop_alg="HS256")


def test_post_sends_one_fresh_proof_and_retries_once_with_a_demanded_nonce(issuer: LocalIssuer) -> None:
    seen: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get_list("dpop"))
        if len(seen) == 1:
            return httpx.Response(400, json={"error": "use_dpop_nonce"}, headers={"DPoP-Nonce": "server-nonce"})
        return httpx.Response(200, json={"access_token": "t", "token_type": "DPoP"})

    ctx = Context(profile=_profile(dpop=True), issuer=issuer, http=httpx.Client(transport=httpx.MockTransport(handler)))
    reply = ctx.post([("grant_type", "x")])
    assert reply.status == 200
    assert [len(h) for h in seen] == [1, 1]
    first, second = (jose.decode_unverified(h[0])[1] for h in seen)
    assert "nonce" not in first and second["nonce"] == "server-nonce" and first["jti"] != second["jti"]
    assert first["htu"] == "http://127.0.0.1:9/token"
    # A case's own (defective) proof is sent as is, and no proof at all without client.dpop.
    ctx.post([("grant_type", "x")], headers={"DPoP": "case-proof"})
    assert seen[-1] == ["case-proof"]
    plain = Context(profile=_profile(), issuer=issuer, http=httpx.Client(transport=httpx.MockTransport(handler)))
    plain.post([("grant_type", "x")])
    assert seen[-1] == []
