"""SPIFFE end to end over real HTTP(S): JWT-SVIDs from trust domains whose bundles come from a
file, an ``https_web`` endpoint (test CA) and an ``https_spiffe`` endpoint (served with an
X.509-SVID); rotated bundles; a failing endpoint; X.509-SVIDs over mTLS with the broker
terminating TLS, and through a proxy's forwarded certificate (trusted and untrusted); SPIRE's
OIDC discovery provider configured as an OIDC issuer; the broker's own SPIFFE bundle.

Every refusal is asserted as ``invalid_request`` with a fixed description that names no ID."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from broker_harness import BrokerServer, TLSBroker, decode_issued, free_port
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from spiffe_support import (
    INVALID_SPIFFE_IDS,
    BundleEndpoint,
    OIDCDiscoveryProvider,
    TrustDomain,
    WebCA,
    _usage,
    chain_token,
    ec_key,
    jwt_svid,
    pem,
    write_identity,
)

from sts.spiffe.bundle import parse_bundle

AUD = "https://sts.example.com"
API = "https://api.example.com"
MTLS = "urn:ietf:params:oauth:token-type:mtls"
BOUND_API = "https://bound-api.example.com"  # certificate-bound tokens only (RFC 8705 §3)
JWT = "urn:ietf:params:oauth:token-type:jwt"

TD = TrustDomain("example.org")
ROTATE = TrustDomain("rotate.example")
WEB = TrustDomain("web.example")
SPIRE = TrustDomain("spire.example")
FLAKY = TrustDomain("flaky.example")
DOWN = TrustDomain("down.example")
OIDC_TD = TrustDomain("oidc.example")
CA = WebCA()


class Env:
    """Everything the module's tests share."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ca_file = CA.write(workdir / "web-ca.pem")
        self.rotate_file = workdir / "rotate.json"
        self.rotate_file.write_text(json.dumps(ROTATE.bundle()))
        (workdir / "example.json").write_text(json.dumps(TD.bundle()))
        (workdir / "spire-bootstrap.json").write_text(json.dumps(SPIRE.bundle()))
        web_cert, web_key = CA.server()
        self.web = BundleEndpoint(web_cert, web_key, WEB.bundle, workdir=workdir).start()
        self.flaky = BundleEndpoint(web_cert, web_key, FLAKY.bundle, workdir=workdir).start()
        self.down = BundleEndpoint(web_cert, web_key, DOWN.bundle, workdir=workdir).start()
        self.down.status = 500
        server_svid, server_key = SPIRE.svid("/spire/server", eku=[ExtendedKeyUsageOID.SERVER_AUTH])
        self.spire = BundleEndpoint(server_svid, server_key, SPIRE.bundle, workdir=workdir, chain=[SPIRE.inter]).start()
        self.oidc = OIDCDiscoveryProvider(OIDC_TD).start()

    def stop(self) -> None:
        for server in (self.web, self.flaky, self.down, self.spire, self.oidc):
            server.stop()

    def config(self, port: int, scheme: str) -> dict[str, Any]:
        web = {"profile": "https_web", "ca_file": str(self.ca_file)}
        return {
            "issuer": f"{scheme}://127.0.0.1:{port}",
            "tokens": {"default_lifetime": 300, "max_lifetime": 900},
            "trust_domains": [
                {"name": "example.org", "bundle_file": "example.json", "audiences": [AUD],
                 "path_templates": [{"template": "/ns/{namespace}/sa/{service_account}",
                                     "identity": "k8s:{namespace}/{service_account}"}],
                 "claim_mappings": {"attributes": {"svid": "spiffe.svid"}}},
                {"name": "rotate.example", "bundle_file": str(self.rotate_file), "audiences": [AUD]},
                {"name": "web.example", "audiences": [AUD], "bundle_endpoint": {"url": self.web.url, **web}},
                {"name": "flaky.example", "audiences": [AUD], "bundle_endpoint": {"url": self.flaky.url, **web}},
                {"name": "down.example", "audiences": [AUD], "bundle_endpoint": {"url": self.down.url, **web}},
                {"name": "spire.example", "audiences": [AUD], "bundle_endpoint": {
                    "url": self.spire.url, "profile": "https_spiffe", "spiffe_id": "spiffe://spire.example/spire/server",
                    "bootstrap_bundle_file": "spire-bootstrap.json"}},
            ],
            "issuers": [
                {"name": "spire-oidc", "issuer": self.oidc.url, "audiences": [AUD], "allow_insecure_http": True,
                 "algorithms": ["ES256"], "claim_mappings": {"identity": "claims.sub"}},
            ],
            "grants": [
                {"name": "k8s-prod", "issuers": ["example.org"], "match": {"identity_pattern": "^k8s:prod/[a-z-]+$"},
                 "targets": [{"audience": API, "scopes": ["read"], "default_scopes": ["read"]},
                             {"audience": BOUND_API, "scopes": ["read"], "sender_constraint": "mtls"}],
                 "default_target": API},
                {"name": "workloads", "match": {"identity_pattern": "^spiffe://[a-z.]+/workload/[a-z0-9-]+$"},
                 "targets": [{"audience": API, "scopes": ["read"], "default_scopes": ["read"]}], "default_target": API},
            ],
        }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("spiffe"))
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture(scope="module")
def tls_broker(env: Env, database_url: str) -> Iterator[TLSBroker]:
    port = free_port()
    cert, key = CA.server()
    tls = write_identity(env.workdir, f"broker-{port}", cert, key)
    server = TLSBroker(env.config(port, "https"), workdir=env.workdir, database_url=database_url, port=port,
                       tls=tls, ca_file=env.ca_file).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxied_broker(env: Env, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    """The broker behind a proxy that terminates mTLS: plain HTTP, 127.0.0.1 trusted."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("proxied")
    for name in ("example.json", "spire-bootstrap.json", "web-ca.pem"):
        (workdir / name).write_bytes((env.workdir / name).read_bytes())
    server = BrokerServer(env.config(port, "http"), workdir=workdir, database_url=database_url, port=port,
                          settings={"trusted_proxies": ["127.0.0.1"]}).start()
    try:
        yield server
    finally:
        server.stop()


def _refused(response: httpx.Response, *, status: int = 400, error: str = "invalid_request") -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert "spiffe://" not in body["error_description"] and "example" not in body["error_description"]
    return body


def _issued(server: BrokerServer, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    _, claims = decode_issued(server, response.json()["access_token"])
    return claims


# -- JWT-SVIDs ----------------------------------------------------------------------------------


def test_jwt_svid_from_bundle_file_maps_through_path_template(tls_broker: TLSBroker) -> None:
    claims = _issued(tls_broker, tls_broker.exchange(TD.mint("/ns/prod/sa/payments", AUD)))
    assert claims["sub"] == "k8s:prod/payments" and claims["aud"] == API and claims["scope"] == "read"
    workload = claims["workload"]
    assert workload["issuer"] == "spiffe://example.org"
    assert workload["subject"] == "spiffe://example.org/ns/prod/sa/payments"
    assert workload["attributes"] == {"namespace": "prod", "service_account": "payments", "svid": "jwt"}
    assert claims["exp"] - claims["iat"] <= 300  # capped to the JWT-SVID's own lifetime


@pytest.mark.parametrize(
    "domain",
    [pytest.param(WEB, id="https_web"), pytest.param(SPIRE, id="https_spiffe"), pytest.param(FLAKY, id="https_web-2")],
)
def test_jwt_svid_from_bundle_endpoints(tls_broker: TLSBroker, domain: TrustDomain) -> None:
    claims = _issued(tls_broker, tls_broker.exchange(domain.mint("/workload/api", AUD)))
    assert claims["sub"] == f"spiffe://{domain.name}/workload/api"


def test_rotated_bundle_file_is_picked_up(env: Env, tls_broker: TLSBroker) -> None:
    kid = ROTATE.rotate_jwt()
    env.rotate_file.write_text(json.dumps(ROTATE.bundle()))
    claims = _issued(tls_broker, tls_broker.exchange(ROTATE.mint("/workload/new", AUD)))
    assert claims["sub"] == "spiffe://rotate.example/workload/new" and kid


def test_rotated_endpoint_bundle_is_picked_up(env: Env, tls_broker: TLSBroker) -> None:
    hits = env.web.hits
    WEB.rotate_jwt()
    _issued(tls_broker, tls_broker.exchange(WEB.mint("/workload/rotated", AUD)))
    assert env.web.hits == hits + 1  # one refetch on the unknown kid, no more


def test_failing_endpoint_keeps_the_last_good_bundle(env: Env, tls_broker: TLSBroker) -> None:
    env.flaky.status = 500
    try:
        _issued(tls_broker, tls_broker.exchange(FLAKY.mint("/workload/still", AUD)))
        _refused(tls_broker.exchange(FLAKY.mint("/workload/x", AUD, kid="never-published")))
    finally:
        env.flaky.status = 200


def test_endpoint_never_reached_is_temporarily_unavailable(tls_broker: TLSBroker) -> None:
    response = tls_broker.exchange(DOWN.mint("/workload/api", AUD))
    _refused(response, status=503, error="temporarily_unavailable")
    assert int(response.headers["retry-after"]) >= 1


def test_bundles_of_trust_domains_are_never_merged(tls_broker: TLSBroker) -> None:
    kid, key = WEB.jwt_keys[0]
    _refused(tls_broker.exchange(jwt_svid(key, kid, "spiffe://example.org/ns/prod/sa/payments", AUD)))


OTHER_KEY = ec_key()
JWT_SVID_CASES = [
    pytest.param(lambda: TD.mint("/ns/prod/sa/a", AUD, header={"alg": "none"}), id="alg-none"),
    pytest.param(lambda: TD.mint("/ns/prod/sa/a", AUD, header={"alg": "HS256"}), id="alg-hs256"),
    pytest.param(lambda: TD.mint("/ns/prod/sa/a", AUD, header={"typ": "at+jwt"}), id="typ"),
    pytest.param(lambda: TD.mint("/ns/prod/sa/a", AUD, header={"jku": "https://evil.example/keys"}), id="extra-header"),
    pytest.param(lambda: TD.mint("/ns/prod/sa/a", AUD, kid="unknown"), id="unknown-kid"),
    pytest.param(lambda: TD.mint("/ns/prod/sa/a", AUD, key=OTHER_KEY), id="bad-signature"),
    pytest.param(lambda: TD.mint("/ns/prod/sa/a", AUD, drop=["aud"]), id="aud-missing"),
    pytest.param(lambda: TD.mint("/ns/prod/sa/a", "another-service"), id="aud-other"),
    pytest.param(lambda: TD.mint("/ns/prod/sa/a", AUD, drop=["exp"]), id="exp-missing"),
    pytest.param(lambda: TD.mint("/ns/prod/sa/a", AUD, exp=int(time.time()) - 600, iat=int(time.time()) - 900), id="expired"),
    pytest.param(lambda: TD.mint("/ns/prod/sa/a", AUD, drop=["sub"]), id="sub-missing"),
    pytest.param(lambda: jwt_svid(OTHER_KEY, "k", "spiffe://unknown.example/workload/a", AUD), id="unknown-trust-domain"),
    pytest.param(lambda: TD.mint("/ns/staging/sa/a", AUD), id="no-grant-for-identity"),
    pytest.param(lambda: TD.mint("/other/path", AUD), id="path-matches-no-template"),
]


@pytest.mark.parametrize("make", JWT_SVID_CASES)
def test_invalid_jwt_svids_are_invalid_request(tls_broker: TLSBroker, make: Any) -> None:
    _refused(tls_broker.exchange(make()))


@pytest.mark.parametrize(("value", "reason"), [pytest.param(v, r, id=n) for v, r, n in INVALID_SPIFFE_IDS])
def test_every_invalid_spiffe_id_is_invalid_request(tls_broker: TLSBroker, value: str, reason: str) -> None:
    kid, key = TD.jwt_keys[0]
    _refused(tls_broker.exchange(jwt_svid(key, kid, value, AUD)))


def test_spire_oidc_discovery_provider_as_oidc_issuer(env: Env, tls_broker: TLSBroker) -> None:
    kid, key = OIDC_TD.jwt_keys[0]
    token = jwt_svid(key, kid, "spiffe://oidc.example/workload/api", AUD, iss=env.oidc.url)
    claims = _issued(tls_broker, tls_broker.exchange(token))
    assert claims["sub"] == "spiffe://oidc.example/workload/api"
    assert claims["workload"]["issuer"] == env.oidc.url


# -- X.509-SVIDs over mTLS ---------------------------------------------------------------------


def _mtls(server: BrokerServer, token: str, *, identity: tuple[Path, Path] | None = None,
          headers: dict[str, str] | None = None) -> httpx.Response:
    data = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": token,
            "subject_token_type": MTLS}
    client = server.client(identity) if isinstance(server, TLSBroker) else server.client()
    with client:
        return client.post("/token", data=data, headers=headers or {})


def test_certificate_bound_token_with_the_broker_terminating_tls(env: Env, tls_broker: TLSBroker) -> None:
    """RFC 8705 §3: the TLS client certificate (an X.509-SVID) binds the token: cnf.x5t#S256."""
    leaf, key = TD.svid("/ns/prod/sa/bound")
    identity = write_identity(env.workdir, "bound", leaf, key, chain=[TD.inter])
    data = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": chain_token(leaf, TD.inter),
            "subject_token_type": MTLS, "audience": BOUND_API}
    with tls_broker.client(identity) as c:
        claims = _issued(tls_broker, c.post("/token", data=data))
    digest = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest()
    assert claims["cnf"] == {"x5t#S256": base64.urlsafe_b64encode(digest).rstrip(b"=").decode()}
    # the same target over TLS without a client certificate (a JWT-SVID subject) is refused
    with tls_broker.client() as c:
        refused = c.post("/token", data={**data, "subject_token": TD.mint("/ns/prod/sa/bound", AUD),
                                          "subject_token_type": JWT})
    assert refused.status_code == 400
    assert refused.json()["error_description"] == "This target requires a TLS client certificate."
    # and an unconstrained target stays a bearer token even with a certificate (sender_constraint: none)
    with tls_broker.client(identity) as c:
        plain = _issued(tls_broker, c.post("/token", data={**data, "audience": API}))
    assert "cnf" not in plain


def test_mtls_exchange_with_the_broker_terminating_tls(env: Env, tls_broker: TLSBroker) -> None:
    leaf, key = TD.svid("/ns/prod/sa/ledger")
    identity = write_identity(env.workdir, "ledger", leaf, key, chain=[TD.inter])
    claims = _issued(tls_broker, _mtls(tls_broker, chain_token(leaf, TD.inter), identity=identity))
    assert claims["sub"] == "k8s:prod/ledger"
    assert claims["workload"]["attributes"]["svid"] == "x509"
    assert claims["exp"] <= leaf.not_valid_after_utc.timestamp()


def test_mtls_without_client_certificate(env: Env, tls_broker: TLSBroker) -> None:
    leaf, _ = TD.svid("/ns/prod/sa/ledger")
    _refused(_mtls(tls_broker, chain_token(leaf, TD.inter)))


def test_mtls_chain_of_another_certificate(env: Env, tls_broker: TLSBroker) -> None:
    mine, key = TD.svid("/ns/prod/sa/mine")
    stolen, _ = TD.svid("/ns/prod/sa/admin")
    identity = write_identity(env.workdir, "mine", mine, key, chain=[TD.inter])
    _refused(_mtls(tls_broker, chain_token(stolen, TD.inter), identity=identity))


def test_mtls_token_type_is_advertised(tls_broker: TLSBroker) -> None:
    with tls_broker.client() as c:
        meta = c.get("/.well-known/oauth-authorization-server").json()
    assert MTLS in meta["subject_token_types_supported"]


def _xfcc(cert: Any) -> str:
    der = cert.public_bytes(serialization.Encoding.DER)
    return f'By=spiffe://example.org/envoy;Hash={hashlib.sha256(der).hexdigest()};Cert="{quote(pem(cert).decode(), safe="")}"'


def test_forwarded_certificate_from_trusted_proxy(proxied_broker: BrokerServer) -> None:
    leaf, _ = TD.svid("/ns/prod/sa/ledger")
    claims = _issued(proxied_broker, _mtls(proxied_broker, chain_token(leaf, TD.inter),
                                           headers={"x-forwarded-client-cert": _xfcc(leaf)}))
    assert claims["sub"] == "k8s:prod/ledger"


def test_forwarded_certificate_from_untrusted_peer_is_refused(env: Env, tls_broker: TLSBroker) -> None:
    leaf, key = TD.svid("/ns/prod/sa/ledger")
    identity = write_identity(env.workdir, "ledger2", leaf, key, chain=[TD.inter])
    # Even a request whose own TLS certificate is valid: the header itself is refused.
    _refused(_mtls(tls_broker, chain_token(leaf, TD.inter), identity=identity,
                   headers={"x-forwarded-client-cert": _xfcc(leaf)}))
    # And on any token type: a forwarded certificate from a peer that is not a trusted proxy.
    _refused(_post_jwt_with_header(tls_broker, TD.mint("/ns/prod/sa/payments", AUD), _xfcc(leaf)))


def _post_jwt_with_header(server: BrokerServer, token: str, xfcc: str) -> httpx.Response:
    data = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": token, "subject_token_type": JWT}
    with server.client() as c:
        return c.post("/token", data=data, headers={"x-forwarded-client-cert": xfcc})


def _bad_svids() -> list[Any]:
    now = dt.datetime.now(dt.UTC)
    foreign = TrustDomain("foreign.example")
    cases = {
        "leaf-is-ca": lambda: TD.svid("/ns/prod/sa/a", ca=True, key_usage=_usage(digital_signature=True)),
        "no-key-usage": lambda: TD.svid("/ns/prod/sa/a", key_usage=None),
        "keyCertSign": lambda: TD.svid("/ns/prod/sa/a", key_usage=_usage(digital_signature=True, cert_sign=True)),
        "cRLSign": lambda: TD.svid("/ns/prod/sa/a", key_usage=_usage(digital_signature=True, crl_sign=True)),
        "no-digitalSignature": lambda: TD.svid("/ns/prod/sa/a", key_usage=_usage(key_agreement=True)),
        "no-uri-san": lambda: TD.svid("/ns/prod/sa/a", uris=[], dns=["a.example.org"]),
        "two-uri-sans": lambda: TD.svid("/ns/prod/sa/a", uris=["spiffe://example.org/ns/prod/sa/a", "spiffe://example.org/b"]),
        "not-spiffe-uri": lambda: TD.svid("/ns/prod/sa/a", uris=["https://example.org/ns/prod/sa/a"]),
        "invalid-spiffe-id": lambda: TD.svid("/ns/prod/sa/a", uris=["spiffe://example.org/ns//sa/a"]),
        "trust-domain-id": lambda: TD.svid("/ns/prod/sa/a", uris=["spiffe://example.org"]),
        "san-not-critical": lambda: TD.svid("/ns/prod/sa/a", san_critical=False),
        "server-only-eku": lambda: TD.svid("/ns/prod/sa/a", eku=[ExtendedKeyUsageOID.SERVER_AUTH]),
        "expired": lambda: TD.svid("/ns/prod/sa/a", not_before=now - dt.timedelta(hours=2), not_after=now - dt.timedelta(hours=1)),
        "not-yet-valid": lambda: TD.svid("/ns/prod/sa/a", not_before=now + dt.timedelta(hours=1),
                                         not_after=now + dt.timedelta(hours=2)),
        "unknown-critical-extension": lambda: TD.svid("/ns/prod/sa/a", extra=[(x509.UnrecognizedExtension(
            x509.ObjectIdentifier("1.3.6.1.4.1.99999.7"), b"\x05\x00"), True)]),
        "other-trust-domain-ca": lambda: (foreign.svid("/ns/prod/sa/a", uris=["spiffe://example.org/ns/prod/sa/a"])[0], None),
        "unconfigured-trust-domain": lambda: foreign.svid("/ns/prod/sa/a"),
    }
    return [pytest.param(make, id=name) for name, make in cases.items()]


@pytest.mark.parametrize("make", _bad_svids())
def test_invalid_x509_svids_are_invalid_request(proxied_broker: BrokerServer, make: Any) -> None:
    leaf = make()[0]
    response = _mtls(proxied_broker, chain_token(leaf, TD.inter), headers={"x-forwarded-client-cert": _xfcc(leaf)})
    _refused(response)


@pytest.mark.parametrize(
    "token",
    [pytest.param("not json", id="not-json"), pytest.param("[]", id="empty"), pytest.param('["AAAA"]', id="not-der")],
)
def test_malformed_mtls_tokens(proxied_broker: BrokerServer, token: str) -> None:
    leaf, _ = TD.svid("/ns/prod/sa/a")
    _refused(_mtls(proxied_broker, token, headers={"x-forwarded-client-cert": _xfcc(leaf)}))


# -- the broker's own bundle --------------------------------------------------------------------


def test_broker_publishes_its_keys_as_a_spiffe_bundle(tls_broker: TLSBroker) -> None:
    with tls_broker.client() as c:
        doc = c.get("/bundle.spiffe").json()
        jwks = c.get("/jwks").json()
    bundle = parse_bundle(doc, "sts.example.com")
    assert {k.kid for k in bundle.jwt_keys.keys} == {k["kid"] for k in jwks["keys"]}
    assert all(k["use"] == "jwt-svid" for k in doc["keys"]) and doc["spiffe_refresh_hint"] == 300
    status = tls_broker.broker.bundles.status()
    assert status["example.org"]["x509_authorities"] == 1 and status["example.org"]["stale"] is False
    assert status["down.example"]["stale"] is True and status["down.example"]["last_error"] == "http_status"


# -- reload -------------------------------------------------------------------------------------


def test_reload_drops_a_removed_trust_domain_and_keeps_the_others(env: Env, database_url: str,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    port = free_port()
    workdir = tmp_path_factory.mktemp("reload")
    for name in ("example.json", "spire-bootstrap.json"):
        (workdir / name).write_bytes((env.workdir / name).read_bytes())
    config = env.config(port, "http")
    server = BrokerServer(config, workdir=workdir, database_url=database_url, port=port,
                          settings={"config_reload_interval": 0.05}).start()
    try:
        assert server.exchange(ROTATE.mint("/workload/a", AUD)).status_code == 200
        fetched = env.web.hits
        config["trust_domains"] = [td for td in config["trust_domains"] if td["name"] != "rotate.example"]
        server.write_config(config)
        deadline = time.monotonic() + 5
        while server.broker.bundles.registered("rotate.example") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not server.broker.bundles.registered("rotate.example")
        _refused(server.exchange(ROTATE.mint("/workload/a", AUD)))
        assert server.exchange(WEB.mint("/workload/a", AUD)).status_code == 200
        assert env.web.hits == fetched  # unchanged sources keep their bundles: no refetch
    finally:
        server.stop()
