"""The oidc-provider peer does the work the comparison claims (like the floor's refusal tests).

The peer runs as the benchmark runs it (``node bench/node/server.js``, dependencies from
``npm ci``) on a free loopback port; the tests send it real RFC 8693 requests. A peer that
accepted a forged or expired subject token would make every throughput ratio against it a lie.
Skipped, with the reason, when Node.js 20+ and npm are missing or the install fails.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.exceptions import InvalidSignature

from bench import configgen, jwtutil, nodepeer, run
from bench.issuer import MiniIssuer


@pytest.fixture(scope="module")
def issuer() -> MiniIssuer:
    return MiniIssuer(algorithms=("RS256", "ES256"))


@pytest.fixture(scope="module")
def peer(issuer: MiniIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    node, why_not = nodepeer.prepare()
    if node is None:
        pytest.skip(f"oidc-provider peer unavailable: {why_not}")
    tmp = tmp_path_factory.mktemp("peer")
    jwks = tmp / "issuer.jwks.json"
    issuer.write_jwks(jwks)
    port = run.free_port()
    env = nodepeer.environment(
        port=port, workers=1, jwks=jwks, subject_issuer=issuer.url,
        subject_audience=configgen.SUBJECT_AUDIENCE, target=configgen.TARGET,
    )
    server = run.Server("oidc-provider/1w", nodepeer.command(node), env, nodepeer.NODE_DIR, port, tmp / "peer.log")
    server.start(ready_timeout=60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _exchange(base: str, token: str, **extra: str) -> httpx.Response:
    form = {
        "grant_type": run.GRANT_TYPE, "subject_token": token, "subject_token_type": run.JWT_TYPE,
        "audience": configgen.TARGET, "client_id": nodepeer.CLIENT_ID, **extra,
    }
    return httpx.post(f"{base}/token", content=urlencode(form).encode(),
                      headers={"content-type": "application/x-www-form-urlencoded"}, timeout=10)


def _claims(case: str) -> dict[str, Any]:
    claims = configgen.subject_claims(0)
    if case == "expired":
        claims.update(iat=int(time.time()) - 1000, nbf=int(time.time()) - 1000, exp=int(time.time()) - 10)
    elif case == "wrong-aud":
        claims["aud"] = "https://elsewhere.example"
    elif case == "wrong-iss":
        claims["iss"] = "https://elsewhere.example"
    return claims


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
@pytest.mark.parametrize("case", ["forged", "expired", "wrong-aud", "wrong-iss"])
def test_peer_refuses_subject_tokens_it_must_refuse(peer: str, issuer: MiniIssuer, alg: str, case: str) -> None:
    token = issuer.mint(_claims(case), alg=alg, lifetime=600)
    if case == "forged":
        head, payload, _ = token.split(".")
        forged = jwtutil.sign(f"{head}.{payload}".encode(), jwtutil.generate_key(alg))
        token = f"{head}.{payload}.{jwtutil.b64e(forged)}"
    resp = _exchange(peer, token)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_request"


def test_peer_refuses_an_unknown_audience(peer: str, issuer: MiniIssuer) -> None:
    resp = _exchange(peer, issuer.mint(_claims("valid"), alg="ES256", lifetime=600), audience="https://other.example")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_target"


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_peer_issues_an_es256_jwt_for_a_valid_subject_token(peer: str, issuer: MiniIssuer, alg: str) -> None:
    claims = _claims("valid")
    resp = _exchange(peer, issuer.mint(claims, alg=alg, lifetime=600))
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 600
    head_b64, payload_b64, sig_b64 = body["access_token"].split(".")
    header = json.loads(jwtutil.b64d(head_b64))
    payload = json.loads(jwtutil.b64d(payload_b64))
    assert header["alg"] == "ES256" and header["typ"] == "at+jwt"
    assert payload["sub"] == claims["sub"] and payload["aud"] == configgen.TARGET
    # The signature is real: it verifies with the peer's published key and fails with another.
    jwks = httpx.get(f"{peer}/jwks", timeout=10).json()
    key = jwtutil.key_from_jwk(next(k for k in jwks["keys"] if k["kid"] == header["kid"]))
    signing_input = f"{head_b64}.{payload_b64}".encode()
    jwtutil.verify(signing_input, jwtutil.b64d(sig_b64), key, "ES256")
    with pytest.raises(InvalidSignature):
        jwtutil.verify(signing_input + b"x", jwtutil.b64d(sig_b64), key, "ES256")


def test_peer_dependencies_are_locked() -> None:
    lock = json.loads((nodepeer.NODE_DIR / "package-lock.json").read_text())
    provider = lock["packages"]["node_modules/oidc-provider"]["version"]
    assert provider.split(".")[0] == "9"
    assert (Path(nodepeer.NODE_DIR) / "server.js").exists()
