"""Sender-constrained tokens over real HTTP: DPoP (RFC 9449) and certificate binding through a
trusted proxy's forwarded certificate (RFC 8705 §3), on SQLite and PostgreSQL.

Two brokers share one database, as two replicas do: a proof used at one is a replay at the
other, and a nonce issued by one is accepted by the other.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa
from broker_harness import BrokerServer, decode_issued, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dpop_support import dpop_key, make_proof

from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE, CLIENT_SECRET
from sts.jose import generate_private_key, jwk_thumbprint

OPEN = "https://open.example.com"
DPOP = "https://dpop.example.com"
MTLS = "https://mtls.example.com"
BOUND = "https://bound.example.com"
GRANT_WIDE = "https://grant-wide.example.com"


def dpop_config(port: int, issuer: LocalIssuer) -> dict[str, Any]:
    return {
        "issuer": f"http://127.0.0.1:{port}",
        "tokens": {"default_lifetime": 900, "max_lifetime": 3600, "algorithm": "ES256"},
        "clients": {
            "allow_public": True,
            "registered": [{"client_id": "basic-client", "auth_method": "client_secret_basic",
                            "secret_sha256": hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()}],
        },
        "issuers": [{"name": "local", "issuer": issuer.url, "audiences": [BROKER_AUDIENCE], "keys": {"discovery": True},
                     "allow_insecure_http": True, "claim_mappings": {"identity": '"wl:" + claims.sub'}}],
        "grants": [
            {"name": "agents", "issuers": ["local"], "match": {"identity_pattern": "^wl:agent-[a-z0-9-]+$"},
             "targets": [
                 {"audience": OPEN, "scopes": ["read"]},
                 {"audience": DPOP, "scopes": ["read"], "sender_constraint": "dpop"},
                 {"audience": MTLS, "scopes": ["read"], "sender_constraint": "mtls"},
                 {"audience": BOUND, "scopes": ["read"], "sender_constraint": "required"},
             ]},
            {"name": "strict", "issuers": ["local"], "match": {"identity_pattern": "^wl:agent-[a-z0-9-]+$"},
             "sender_constraint": "dpop", "targets": [{"audience": GRANT_WIDE, "scopes": ["read"]}]},
        ],
    }


@pytest.fixture(scope="module")
def replicas(issuer: LocalIssuer, database_url: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerServer, BrokerServer]]:
    """Two brokers on one database with one issuer URL (as behind one load balancer): the
    first without server nonces, the second requiring them."""
    port = free_port()
    config = dpop_config(port, issuer)
    settings = {"audit_coalesce_window": 0, "trusted_proxies": ["127.0.0.1"]}
    first = BrokerServer(config, workdir=tmp_path_factory.mktemp("dpop-a"), database_url=database_url, port=port,
                         settings=settings).start()
    second = BrokerServer(config, workdir=tmp_path_factory.mktemp("dpop-b"), database_url=database_url, port=free_port(),
                          settings={**settings, "dpop_require_nonce": True}).start()
    try:
        yield first, second
    finally:
        second.stop()
        first.stop()


@pytest.fixture(scope="module")
def broker(replicas: tuple[BrokerServer, BrokerServer]) -> BrokerServer:  # the test module's own broker
    return replicas[0]


def token_url(server: BrokerServer) -> str:
    return server.url + "/token"


def post(server: BrokerServer, subject: str, *, proofs: tuple[str, ...] = (), target: str = DPOP,
         auth: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    data = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": subject,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "audience": target}
    raw_headers = [("DPoP", p) for p in proofs] + list((headers or {}).items())
    with server.client() as c:
        return c.post("/token", data=data, auth=auth, headers=raw_headers)


def audit_reason(server: BrokerServer, response: httpx.Response) -> tuple[str, str]:
    request_id = response.headers["x-request-id"]
    with server.broker.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT error, reason FROM audit_events WHERE request_id = :r"), {"r": request_id}).one()
    return row[0], row[1]


def test_good_proof_binds_the_token_to_the_key(broker: BrokerServer, mint: Any) -> None:
    key = dpop_key("ES256")
    response = post(broker, mint(), proofs=(make_proof(token_url(broker), key=key),))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "DPoP"
    _, claims = decode_issued(broker, body["access_token"])
    public = key.public_jwk()
    assert claims["cnf"] == {"jkt": jwk_thumbprint(public)}
    assert claims["aud"] == DPOP


@pytest.mark.parametrize("alg", ["EdDSA", "PS256"])
def test_other_algorithms_and_public_clients_with_authentication(broker: BrokerServer, mint: Any, alg: str) -> None:
    key = dpop_key(alg)
    response = post(broker, mint(), proofs=(make_proof(token_url(broker), key=key),), target=OPEN,
                    auth=("basic-client", CLIENT_SECRET))
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"
    _, claims = decode_issued(broker, response.json()["access_token"])
    assert claims["cnf"]["jkt"] == jwk_thumbprint(key.public_jwk()) and claims["client_id"] == "basic-client"


def test_no_proof_on_an_unconstrained_target_is_a_bearer_token(broker: BrokerServer, mint: Any) -> None:
    response = post(broker, mint(), target=OPEN)
    assert response.status_code == 200 and response.json()["token_type"] == "Bearer"
    _, claims = decode_issued(broker, response.json()["access_token"])
    assert "cnf" not in claims


@pytest.mark.parametrize("target", [DPOP, BOUND, GRANT_WIDE])
def test_bearer_request_for_a_constrained_target_is_refused(broker: BrokerServer, mint: Any, target: str) -> None:
    response = post(broker, mint(), target=target)
    assert response.status_code == 400
    body = response.json()
    if target == BOUND:
        assert body == {"error": "invalid_request", "error_description":
                        "This target requires a sender-constrained token: send a DPoP proof or use a TLS client certificate."}
        assert audit_reason(broker, response) == ("invalid_request", "sender_constraint_required")
    else:
        assert body == {"error": "invalid_dpop_proof", "error_description": "This target requires a DPoP proof."}
        assert audit_reason(broker, response) == ("invalid_dpop_proof", "dpop_required")


def _bad_proofs(url: str) -> list[tuple[str, dict[str, Any], str]]:
    other = generate_private_key("ES256")
    return [
        ("malformed", {"raw": "not-a-jwt"}, "dpop_malformed"),
        ("typ", {"header": {"typ": "JWT"}}, "dpop_typ"),
        ("alg_hs256", {"header": {"alg": "HS256"}}, "dpop_alg_not_allowed"),
        ("jwk_missing", {"drop_header": ("jwk",)}, "dpop_jwk_missing"),
        ("jwk_symmetric", {"header": {"jwk": {"kty": "oct", "k": "c2VjcmV0"}}}, "dpop_jwk_private"),
        ("forged_signature", {"sign_with": other}, "dpop_signature"),
        ("htm", {"method": "GET"}, "dpop_htm"),
        ("htu_other_host", {"claims": {"htu": "http://localhost:1/token"}}, "dpop_htu"),
        ("htu_other_path", {"claims": {"htu": url.replace("/token", "/jwks")}}, "dpop_htu"),
        ("iat_old", {"iat": time.time() - 600}, "dpop_iat_window"),
        ("iat_future", {"iat": time.time() + 600}, "dpop_iat_window"),
        ("jti_missing", {"drop": ("jti",)}, "dpop_jti"),
    ]


BAD_KINDS = [b[0] for b in _bad_proofs("http://x/token")]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_bad_proof_is_refused(broker: BrokerServer, mint: Any, kind: str) -> None:
    _, build, reason = next(b for b in _bad_proofs(token_url(broker)) if b[0] == kind)
    build = dict(build)
    proof = build.pop("raw") if "raw" in build else make_proof(token_url(broker), **build)
    # Even on a target that does not require DPoP: a proof that is sent must be valid.
    response = post(broker, mint(), proofs=(proof,), target=OPEN)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_dpop_proof", "error_description": "The DPoP proof is invalid."}
    assert response.headers["cache-control"] == "no-store"
    assert audit_reason(broker, response) == ("invalid_dpop_proof", reason)


def test_two_dpop_headers_are_refused(broker: BrokerServer, mint: Any) -> None:
    url = token_url(broker)
    response = post(broker, mint(), proofs=(make_proof(url), make_proof(url)))
    assert response.status_code == 400 and response.json()["error"] == "invalid_dpop_proof"
    assert audit_reason(broker, response) == ("invalid_dpop_proof", "dpop_multiple_headers")


def test_a_replayed_proof_is_refused_by_every_replica(replicas: tuple[BrokerServer, BrokerServer], mint: Any) -> None:
    first, second = replicas
    proof = make_proof(token_url(first))
    accepted = post(first, mint(), proofs=(proof,))
    assert accepted.status_code == 200 and "dpop-nonce" not in accepted.headers  # nonces off here
    again = post(first, mint(), proofs=(proof,))
    assert again.status_code == 400
    assert again.json() == {"error": "invalid_dpop_proof", "error_description": "The DPoP proof was already used."}
    assert audit_reason(first, again) == ("invalid_dpop_proof", "dpop_replayed")
    # the other replica (same database, same issuer URL) knows the proof too; it asks for a
    # nonce first, so the replayed proof carries one it issued
    nonce = post(second, mint(), proofs=(make_proof(token_url(first)),)).headers["dpop-nonce"]
    proof = make_proof(token_url(first), nonce=nonce)
    assert post(second, mint(), proofs=(proof,)).status_code == 200
    elsewhere = post(first, mint(), proofs=(proof,))
    assert elsewhere.status_code == 400 and audit_reason(first, elsewhere)[1] == "dpop_replayed"


def test_nonce_flow(replicas: tuple[BrokerServer, BrokerServer], mint: Any) -> None:
    first, second = replicas
    url = token_url(first)  # both replicas serve the configured issuer's token endpoint
    key = dpop_key("ES256")
    asked = post(second, mint(), proofs=(make_proof(url, key=key),))
    assert asked.status_code == 400
    assert asked.json() == {"error": "use_dpop_nonce", "error_description": "Authorization server requires nonce in DPoP proof."}
    nonce = asked.headers["dpop-nonce"]
    assert nonce and audit_reason(second, asked) == ("use_dpop_nonce", "dpop_nonce_missing")
    wrong = post(second, mint(), proofs=(make_proof(url, key=key, nonce="bm90LWEtbm9uY2U"),))
    assert wrong.status_code == 400 and wrong.json()["error"] == "use_dpop_nonce" and wrong.headers["dpop-nonce"]
    assert audit_reason(second, wrong)[1] == "dpop_nonce_invalid"
    good = post(second, mint(), proofs=(make_proof(url, key=key, nonce=nonce),))
    assert good.status_code == 200, good.text
    assert good.headers["dpop-nonce"]  # RFC 9449 §8.2: the nonce to use next
    _, claims = decode_issued(first, good.json()["access_token"])
    assert claims["cnf"] == {"jkt": jwk_thumbprint(key.public_jwk())}
    # a bad proof is refused as bad, never answered with a nonce request
    bad = post(second, mint(), proofs=(make_proof(url, key=key, method="GET"),))
    assert bad.json()["error"] == "invalid_dpop_proof" and "dpop-nonce" not in bad.headers


def test_metadata_advertises_dpop_algorithms(broker: BrokerServer) -> None:
    with broker.client() as c:
        meta = c.get("/.well-known/oauth-authorization-server").json()
    assert "ES256" in meta["dpop_signing_alg_values_supported"]
    assert "none" not in meta["dpop_signing_alg_values_supported"]
    assert not any(alg.startswith("HS") for alg in meta["dpop_signing_alg_values_supported"])
    assert meta["tls_client_certificate_bound_access_tokens"] is True


def _client_certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent-1")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://example.org/agent-1")]),
                           critical=False)
            .sign(key, hashes.SHA256()))


def _xfcc(cert: x509.Certificate) -> str:
    der = cert.public_bytes(serialization.Encoding.DER)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return f'By=spiffe://example.org/envoy;Hash={hashlib.sha256(der).hexdigest()};Cert="{quote(pem, safe="")}"'


@pytest.mark.parametrize("target", [MTLS, BOUND])
def test_certificate_bound_token_through_a_trusted_proxy(broker: BrokerServer, mint: Any, target: str) -> None:
    cert = _client_certificate()
    response = post(broker, mint(), target=target, headers={"x-forwarded-client-cert": _xfcc(cert)})
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"
    _, claims = decode_issued(broker, response.json()["access_token"])
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    assert claims["cnf"] == {"x5t#S256": base64.urlsafe_b64encode(digest).rstrip(b"=").decode()}


def test_mtls_target_without_a_certificate_is_refused(broker: BrokerServer, mint: Any) -> None:
    response = post(broker, mint(), target=MTLS, proofs=(make_proof(token_url(broker)),))
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": "This target requires a TLS client certificate."}
    assert audit_reason(broker, response) == ("invalid_request", "mtls_required")


def test_certificate_and_proof_together_bind_both(broker: BrokerServer, mint: Any) -> None:
    cert = _client_certificate()
    key = dpop_key("ES256")
    response = post(broker, mint(), target=MTLS, proofs=(make_proof(token_url(broker), key=key),),
                    headers={"x-forwarded-client-cert": _xfcc(cert)})
    assert response.status_code == 200 and response.json()["token_type"] == "DPoP"
    _, claims = decode_issued(broker, response.json()["access_token"])
    assert set(claims["cnf"]) == {"jkt", "x5t#S256"}
