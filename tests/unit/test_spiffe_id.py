"""Strict SPIFFE ID parsing (sts.spiffe.id): every valid and invalid form of SPIFFE-ID.md §2."""

from __future__ import annotations

import pytest
from spiffe_support import INVALID_SPIFFE_IDS

from sts.spiffe.id import InvalidSpiffeID, SpiffeID, parse_spiffe_id, parse_trust_domain

VALID = [
    pytest.param("spiffe://example.org", "example.org", "", id="trust-domain-only"),
    pytest.param("spiffe://example.org/workload", "example.org", "/workload", id="one-segment"),
    pytest.param("spiffe://k8s-west.example.com/ns/staging/sa/default", "k8s-west.example.com", "/ns/staging/sa/default",
                 id="kubernetes"),
    pytest.param("spiffe://td_1.example-2/a.b/C-D_e/9", "td_1.example-2", "/a.b/C-D_e/9", id="all-allowed-chars"),
    pytest.param("spiffe://192.168.0.1/x", "192.168.0.1", "/x", id="ipv4-looking-trust-domain"),
    pytest.param("spiffe://example.org/...", "example.org", "/...", id="three-dots-is-a-name"),
    pytest.param("spiffe://example.org/" + "a" * 2000, "example.org", "/" + "a" * 2000, id="long-2020-bytes"),
]

INVALID = [pytest.param(value, reason, id=name) for value, reason, name in INVALID_SPIFFE_IDS]


@pytest.mark.parametrize(("value", "trust_domain", "path"), VALID)
def test_valid_ids(value: str, trust_domain: str, path: str) -> None:
    parsed = parse_spiffe_id(value)
    assert parsed == SpiffeID(trust_domain, path)
    assert str(parsed) == value
    assert parsed.member_of(trust_domain)


@pytest.mark.parametrize(("value", "reason"), INVALID)
def test_invalid_ids_are_refused_never_normalised(value: str, reason: str) -> None:
    with pytest.raises(InvalidSpiffeID) as info:
        parse_spiffe_id(value)
    assert info.value.reason == reason
    assert value[9:] not in str(info.value) or not value[9:]  # the message never echoes the ID


def test_segments() -> None:
    assert parse_spiffe_id("spiffe://td/ns/a/sa/b").segments == ("ns", "a", "sa", "b")
    assert parse_spiffe_id("spiffe://td").segments == ()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param("", "empty_trust_domain", id="empty"),
        pytest.param("Example.org", "trust_domain_char", id="uppercase"),
        pytest.param("example.org:443", "port", id="port"),
        pytest.param("spiffe://example.org", "port", id="with-scheme"),
        pytest.param("example.org/path", "trust_domain_char", id="with-path"),
        pytest.param("a" * 256, "too_long", id="too-long"),
    ],
)
def test_invalid_trust_domain_names(value: str, reason: str) -> None:
    with pytest.raises(InvalidSpiffeID) as info:
        parse_trust_domain(value)
    assert info.value.reason == reason


def test_valid_trust_domain_name() -> None:
    assert parse_trust_domain("prod.example_1-a") == "prod.example_1-a"
