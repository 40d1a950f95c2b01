"""The kit's issuer misbehaves on demand (issuer_faults) and recovers when the fault is cleared."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from conformance.issuer import LocalIssuer
from conformance.profile import ProfileError, parse_profile


@pytest.fixture
def own_issuer() -> Iterator[LocalIssuer]:
    # Faults are per issuer: a private one keeps the session issuer well-behaved.
    with LocalIssuer(algorithms=("ES256",)) as server:
        yield server


def _get(url: str, timeout: float = 5) -> httpx.Response:
    return httpx.get(url, trust_env=False, timeout=timeout)


def test_error_and_garbage_apply_to_key_documents_only(own_issuer: LocalIssuer) -> None:
    attacker = own_issuer.publish("/attacker/jwks.json", {"keys": []})
    with own_issuer.faults.active("error", status=500):
        assert _get(own_issuer.jwks_uri).status_code == 500
        assert _get(own_issuer.url + "/.well-known/openid-configuration").status_code == 500
        assert _get(attacker).status_code == 200
    with own_issuer.faults.active("garbage"):
        resp = _get(own_issuer.jwks_uri)
        assert resp.status_code == 200
        with pytest.raises(ValueError):
            resp.json()
    assert _get(own_issuer.jwks_uri).json() == own_issuer.jwks()


def test_jwks_is_also_served_where_services_without_discovery_look(own_issuer: LocalIssuer) -> None:
    alias = own_issuer.url + "/.well-known/jwks.json"
    assert _get(alias).json() == own_issuer.jwks()
    with own_issuer.faults.active("error"):
        assert _get(alias).status_code == 503


def test_slow_answers_after_the_delay(own_issuer: LocalIssuer) -> None:
    with own_issuer.faults.active("slow", delay=0.3):
        started = time.monotonic()
        assert _get(own_issuer.jwks_uri).json() == own_issuer.jwks()
        assert time.monotonic() - started >= 0.3
    with own_issuer.faults.active("slow", delay=5), pytest.raises(httpx.TimeoutException):
        _get(own_issuer.jwks_uri, timeout=0.2)


def test_hang_answers_nothing_until_cleared(own_issuer: LocalIssuer) -> None:
    answers: list[int] = []
    with own_issuer.faults.active("hang"):
        with pytest.raises(httpx.TimeoutException):
            _get(own_issuer.jwks_uri, timeout=0.3)
        waiter = threading.Thread(target=lambda: answers.append(_get(own_issuer.jwks_uri).status_code))
        waiter.start()
        time.sleep(0.2)
        assert answers == []
    waiter.join(timeout=5)
    assert answers == [503]
    assert _get(own_issuer.jwks_uri).status_code == 200


def test_rotated_and_retired_keys_are_published_and_withdrawn(own_issuer: LocalIssuer) -> None:
    kid = own_issuer.rotate("ES256")
    assert kid in {k["kid"] for k in _get(own_issuer.jwks_uri).json()["keys"]}
    own_issuer.retire(kid)
    assert kid not in {k["kid"] for k in _get(own_issuer.jwks_uri).json()["keys"]}


def test_key_cache_bounds_parse_and_must_be_positive() -> None:
    base = {"target": {"token_endpoint": "http://127.0.0.1:1/token"}, "allowed": {"audiences": ["https://api.example"]}}
    profile = parse_profile({**base, "key_cache": {"refetch_interval": 5, "cache_lifetime": 300, "fail_fast": 2.5}},
                            env={})
    assert (profile.key_cache.refetch_interval, profile.key_cache.cache_lifetime, profile.key_cache.fail_fast) == (
        5, 300, 2.5)
    assert parse_profile(base, env={}).key_cache.fail_fast is None
    with pytest.raises(ProfileError):
        parse_profile({**base, "key_cache": {"cache_lifetime": 0}}, env={})
    with pytest.raises(ProfileError):
        parse_profile({**base, "key_cache": {"refresh": 1}}, env={})
