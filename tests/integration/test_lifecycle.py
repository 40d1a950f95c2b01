"""Configuration reload and signing-key rotation on a running broker."""

from __future__ import annotations

import copy
import gc
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from broker_harness import BrokerServer, decode_issued, free_port
from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE, base_config


@pytest.fixture()
def live(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    server = BrokerServer(base_config(port, issuer, replay_issuer, dead_port=free_port()),
                          workdir=tmp_path_factory.mktemp("live"), database_url=database_url, port=port,
                          settings={"config_reload_interval": 0.1})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_invalid_reload_is_refused_and_old_config_keeps_serving(live: BrokerServer, issuer: LocalIssuer) -> None:
    subject = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, lifetime=600)
    before = live.broker.runtime().version
    live.config_path.write_text("issuer: https://sts.example.com\nissuers: [{name: BAD}]\n")
    time.sleep(0.6)
    assert live.broker.runtime().version == before
    assert live.exchange(subject).status_code == 200


def test_valid_reload_swaps_configuration(live: BrokerServer, issuer: LocalIssuer, replay_issuer: LocalIssuer) -> None:
    subject = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, lifetime=600)
    assert live.exchange(subject, audience="https://new.example.com").json()["error"] == "invalid_target"
    config = copy.deepcopy(base_config(live.port, issuer, replay_issuer, dead_port=free_port()))
    config["grants"][0]["targets"].append({"audience": "https://new.example.com", "scopes": ["read"]})
    before = live.broker.runtime().version
    live.write_config(config)
    assert wait_for(lambda: live.broker.runtime().version != before)
    # Cached keys of unchanged issuers survived the reload: no refetch was needed.
    hits = issuer.hits["/jwks"]
    resp = live.exchange(subject, audience="https://new.example.com")
    assert resp.status_code == 200, resp.text
    assert issuer.hits["/jwks"] == hits


def test_key_rotation_publishes_before_signing(live: BrokerServer, issuer: LocalIssuer) -> None:
    subject = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, lifetime=600)
    ring = live.broker.keyring
    old_kid = decode_issued(live, live.exchange(subject).json()["access_token"])[0]["kid"]
    next_kid = next(r.kid for r in ring.rows() if r.alg == "ES256" and r.state == "next")
    with live.client() as c:
        assert next_kid in {k["kid"] for k in c.get("/jwks").json()["keys"]}

    assert ring.rotate("ES256") == next_kid
    new_kid = decode_issued(live, live.exchange(subject).json()["access_token"])[0]["kid"]
    assert new_kid == next_kid != old_kid
    with live.client() as c:
        published = {k["kid"] for k in c.get("/jwks").json()["keys"]}
    states = {r.kid: r.state for r in ring.rows() if r.alg == "ES256"}
    assert states[old_kid] == "retired" and old_kid in published  # still verifiable
    assert {kid for kid, state in states.items() if state == "next"} <= published


def test_refused_reload_never_changes_which_keys_verify_an_issuer(live: BrokerServer, issuer: LocalIssuer,
                                                                   replay_issuer: LocalIssuer) -> None:
    """A reload that points `local` at another issuer's keys and is then refused must leave the
    running configuration verifying `local` with `local`'s own keys."""
    genuine = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, lifetime=600)
    forged = replay_issuer.mint({"iss": issuer.url, "sub": "agent-1", "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=600)
    assert live.exchange(genuine).status_code == 200
    before = live.broker.runtime().version

    config = copy.deepcopy(base_config(live.port, issuer, replay_issuer, dead_port=free_port()))
    config["issuers"][0]["keys"] = {"jwks": replay_issuer.jwks()}
    config["grants"][0]["lifetime"] = 999_999  # over tokens.max_lifetime: the reload is refused
    live.write_config(config)
    time.sleep(0.6)
    assert live.broker.runtime().version == before
    assert live.exchange(forged).status_code == 400
    assert live.exchange(genuine).status_code == 200


def test_reload_that_fails_to_build_leaves_no_new_cache_entries(live: BrokerServer, issuer: LocalIssuer,
                                                                 replay_issuer: LocalIssuer) -> None:
    genuine = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, lifetime=600)
    forged = replay_issuer.mint({"iss": issuer.url, "sub": "agent-1", "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=600)
    entries = set(live.broker.jwks.status())
    config = copy.deepcopy(base_config(live.port, issuer, replay_issuer, dead_port=free_port()))
    config["issuers"][0]["keys"] = {"jwks": replay_issuer.jwks()}
    # A static key set with no usable key is only found when the runtime is built.
    config["issuers"][1]["keys"] = {"jwks": {"keys": [{"kty": "oct", "kid": "x"}]}}
    live.write_config(config)
    time.sleep(0.6)
    assert set(live.broker.jwks.status()) == entries
    assert live.exchange(forged).status_code == 400
    assert live.exchange(genuine).status_code == 200


def test_reload_frees_the_previous_configuration(live: BrokerServer, issuer: LocalIssuer, replay_issuer: LocalIssuer) -> None:
    # The broker freezes long-lived objects after start and after each reload (sts.gcpolicy);
    # the configuration a reload replaces must still be freed, not kept by the freeze.
    assert gc.get_freeze_count() > 0
    previous = weakref.ref(live.broker.runtime())
    config = copy.deepcopy(base_config(live.port, issuer, replay_issuer, dead_port=free_port()))
    config["grants"][0]["targets"].append({"audience": "https://other.example.com", "scopes": ["read"]})
    live.write_config(config)
    assert wait_for(lambda: previous() is None)
