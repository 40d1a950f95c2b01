"""SPIFFE bundle endpoints over real HTTPS on loopback (SPIFFE Federation §5.2): ``https_web``
authenticated by a test CA, ``https_spiffe`` authenticated by the endpoint's X.509-SVID, for a
self-serving endpoint (bootstrap bundle, then the latest fetched bundle) and for another trust
domain's endpoint. No broker: the bundle store alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from spiffe_support import BundleEndpoint, TrustDomain, WebCA

from sts.spiffe.bundle_source import (
    BundlePolicy,
    BundleStore,
    HttpsSpiffeEndpoint,
    HttpsWebEndpoint,
)

CA = WebCA()
SERVER_EKU = [ExtendedKeyUsageOID.SERVER_AUTH]


@pytest.fixture()
def servers() -> Iterator[list[BundleEndpoint]]:
    started: list[BundleEndpoint] = []
    yield started
    for server in started:
        server.stop()


def _serve(servers: list[BundleEndpoint], tmp_path: Path, cert: Any, key: Any, doc: Any, **kw: Any) -> BundleEndpoint:
    server = BundleEndpoint(cert, key, doc, workdir=tmp_path, **kw).start()
    servers.append(server)
    return server


def _store() -> BundleStore:
    return BundleStore(policy=BundlePolicy(unknown_key_cooldown=0, fetch_timeout=3))


async def _fetch(store: BundleStore, td: str) -> tuple[Any, str | None]:
    await store.refetch(td)
    return store.current(td), store.status()[td]["last_error"]


async def test_https_web_with_configured_ca(tmp_path: Path, servers: list[BundleEndpoint]) -> None:
    web = TrustDomain("web.example")
    server = _serve(servers, tmp_path, *CA.server(), web.bundle)
    store = _store()
    store.register("web.example", HttpsWebEndpoint(server.url, CA.write(tmp_path / "ca.pem")))
    bundle, error = await _fetch(store, "web.example")
    assert error is None and bundle is not None and bundle.x509_authorities == (web.root,)
    await store.stop()


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("no-ca-file", id="system-roots-do-not-know-the-test-ca"),
        pytest.param("other-ca", id="other-ca"),
        pytest.param("host-mismatch", id="certificate-for-another-host"),
    ],
)
async def test_https_web_refuses_unauthenticated_servers(tmp_path: Path, servers: list[BundleEndpoint], case: str) -> None:
    web = TrustDomain("web.example")
    cert, key = CA.server(ips=("10.9.9.9",), dns=("bundle.example",)) if case == "host-mismatch" else CA.server()
    server = _serve(servers, tmp_path, cert, key, web.bundle)
    ca_file = None if case == "no-ca-file" else (WebCA() if case == "other-ca" else CA).write(tmp_path / "ca.pem")
    store = _store()
    store.register("web.example", HttpsWebEndpoint(server.url, ca_file))
    bundle, error = await _fetch(store, "web.example")
    assert bundle is None and error == "tls"
    await store.stop()


async def test_https_spiffe_self_serving_bootstrap_then_latest_bundle(tmp_path: Path, servers: list[BundleEndpoint]) -> None:
    spire = TrustDomain("spire.example")
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(json.dumps(spire.bundle()))
    svid, svid_key = spire.svid("/spire/server", eku=SERVER_EKU)
    server = _serve(servers, tmp_path, svid, svid_key, spire.bundle, chain=[spire.inter])
    store = _store()
    store.register("spire.example", HttpsSpiffeEndpoint(server.url, "spiffe://spire.example/spire/server", bootstrap))
    assert store.current("spire.example") is not None  # the bootstrap bundle serves at once
    kid = spire.rotate_jwt()
    bundle, error = await _fetch(store, "spire.example")
    assert error is None and bundle.jwt_keys.find(kid, "ES256") is not None

    # The trust domain moves to a new CA; the bundle it publishes (fetched while the old CA
    # still authenticated the endpoint) is what authenticates the next connection.
    new = TrustDomain("spire.example")
    spire.root, spire.root_key, spire.inter, spire.inter_key = new.root, new.root_key, new.inter, new.inter_key
    spire.sequence += 1
    served_by_old = spire.bundle(authorities=[(new.root, new.root_key)])
    server.document = lambda: served_by_old
    bundle, error = await _fetch(store, "spire.example")
    assert error is None and bundle.x509_authorities == (new.root,)
    new_svid, new_key = spire.svid("/spire/server", eku=SERVER_EKU)
    server2 = _serve(servers, tmp_path, new_svid, new_key, spire.bundle, chain=[spire.inter])
    store.unregister("spire.example")
    # A store that only knows the old bootstrap cannot authenticate the new server...
    store.register("spire.example", HttpsSpiffeEndpoint(server2.url, "spiffe://spire.example/spire/server", bootstrap))
    bundle, error = await _fetch(store, "spire.example")
    assert error == "tls" and bundle is not None and bundle.x509_authorities != (new.root,)
    await store.stop()


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        pytest.param("/other/server", "endpoint_spiffe_id_mismatch", id="other-spiffe-id"),
        pytest.param(None, "endpoint_svid_invalid", id="server-cert-is-not-an-svid"),
    ],
)
async def test_https_spiffe_refuses_the_wrong_server(tmp_path: Path, servers: list[BundleEndpoint], path: str | None,
                                                     reason: str) -> None:
    spire = TrustDomain("spire.example")
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(json.dumps(spire.bundle()))
    if path is None:
        svid, key = spire.svid("/x", uris=[], dns=["localhost"], eku=SERVER_EKU)
    else:
        svid, key = spire.svid(path, eku=SERVER_EKU)
    server = _serve(servers, tmp_path, svid, key, spire.bundle, chain=[spire.inter])
    store = _store()
    store.register("spire.example", HttpsSpiffeEndpoint(server.url, "spiffe://spire.example/spire/server", bootstrap))
    initial = store.current("spire.example")
    bundle, error = await _fetch(store, "spire.example")
    assert error == reason and bundle is initial
    await store.stop()


async def test_https_spiffe_server_of_an_untrusted_authority(tmp_path: Path, servers: list[BundleEndpoint]) -> None:
    spire, impostor = TrustDomain("spire.example"), TrustDomain("spire.example")
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(json.dumps(spire.bundle()))
    svid, key = impostor.svid("/spire/server", eku=SERVER_EKU)
    server = _serve(servers, tmp_path, svid, key, impostor.bundle, chain=[impostor.inter])
    store = _store()
    store.register("spire.example", HttpsSpiffeEndpoint(server.url, "spiffe://spire.example/spire/server", bootstrap))
    bundle, error = await _fetch(store, "spire.example")
    assert error == "tls" and bundle is not None and bundle.x509_authorities == (spire.root,)
    await store.stop()


async def test_https_spiffe_endpoint_of_another_trust_domain(tmp_path: Path, servers: list[BundleEndpoint]) -> None:
    hub, prod = TrustDomain("hub.example"), TrustDomain("prod.example")
    hub_bootstrap = tmp_path / "hub.json"
    hub_bootstrap.write_text(json.dumps(hub.bundle()))
    svid, key = hub.svid("/bundle-server", eku=SERVER_EKU)
    hub_server = _serve(servers, tmp_path, svid, key, hub.bundle, chain=[hub.inter])
    prod_server = _serve(servers, tmp_path, svid, key, prod.bundle, chain=[hub.inter])
    store = _store()
    store.register("prod.example", HttpsSpiffeEndpoint(prod_server.url, "spiffe://hub.example/bundle-server"))
    bundle, error = await _fetch(store, "prod.example")
    assert bundle is None and error == "no_endpoint_authorities"  # hub.example is not configured yet
    store.register("hub.example", HttpsSpiffeEndpoint(hub_server.url, "spiffe://hub.example/bundle-server", hub_bootstrap))
    bundle, error = await _fetch(store, "prod.example")
    assert error is None and bundle is not None and bundle.trust_domain == "prod.example"
    assert bundle.x509_authorities == (prod.root,)  # prod's own bundle, never hub's
    await store.stop()


async def test_failing_endpoint(tmp_path: Path, servers: list[BundleEndpoint]) -> None:
    web = TrustDomain("web.example")
    server = _serve(servers, tmp_path, *CA.server(), web.bundle)
    server.status = 503
    store = _store()
    store.register("web.example", HttpsWebEndpoint(server.url, CA.write(tmp_path / "ca.pem")))
    bundle, error = await _fetch(store, "web.example")
    assert bundle is None and error == "http_status"
    server.status = 200
    bundle, error = await _fetch(store, "web.example")
    assert bundle is not None and error is None
    await store.stop()
