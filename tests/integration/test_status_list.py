"""Token Status List (draft-ietf-oauth-status-list-19) end to end, over real HTTP on SQLite and
PostgreSQL, read by a relying party written here from the draft alone: it never imports the
broker's encoder, and verifies the list's signature with joserfc against the broker's /jwks."""

from __future__ import annotations

import base64
import copy
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from joserfc import jwt as rfc_jwt
from joserfc.jwk import KeySet

from broker_harness import BrokerServer, decode_issued, free_port
from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE, base_config
from sts.store.db import make_engine
from sts.store.lifecycle import LifecycleRepository

VECTOR = "https://vector.example.com"
TTL = 1


# --- the relying party's side, from the draft -------------------------------------------------

def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def status_at(status_list: dict[str, Any], idx: int) -> int:
    """§4.1: ``lst`` is the base64url (no padding) of the ZLIB/DEFLATE-compressed byte array;
    with ``bits`` b, index i lives in byte i*b//8, counted from the least significant bit."""
    bits = status_list["bits"]
    assert bits in (1, 2, 4, 8)
    array = zlib.decompress(b64url_decode(status_list["lst"]))
    per_byte = 8 // bits
    if idx // per_byte >= len(array):
        raise IndexError("index out of bounds of the status list")  # §8.3: the token is rejected
    return (array[idx // per_byte] >> ((idx % per_byte) * bits)) & ((1 << bits) - 1)


def fetch_status_list(client: httpx.Client, uri: str) -> tuple[httpx.Response, dict[str, Any], dict[str, Any]]:
    """§8.1 request, §8.3 validation: typ, signature with the issuer's keys, sub == uri."""
    r = client.get(uri, headers={"Accept": "application/statuslist+jwt"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == "application/statuslist+jwt"
    keys = KeySet.import_key_set(client.get("/jwks").json())
    token = rfc_jwt.decode(r.text, keys, algorithms=["ES256", "RS256", "EdDSA"])
    assert token.header["typ"] == "statuslist+jwt"
    claims = token.claims
    assert claims["sub"] == uri
    assert isinstance(claims["iat"], int) and claims["exp"] > time.time()
    assert isinstance(claims["ttl"], int) and claims["ttl"] > 0
    return r, token.header, claims


def test_decoder_reads_the_drafts_example() -> None:
    # §4.1 example: 16 one-bit statuses 1,0,0,1,1,1,0,1, 1,1,0,0,0,1,0,1 -> bytes B9 A3.
    example = {"bits": 1, "lst": "eNrbuRgAAhcBXQ"}
    assert [status_at(example, i) for i in range(16)] == [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]
    with pytest.raises(IndexError):
        status_at(example, 16)


# --- the broker -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    config = copy.deepcopy(base_config(port, issuer, replay_issuer, dead_port=free_port()))
    agents = next(g for g in config["grants"] if g["name"] == "agents")
    next(t for t in agents["targets"] if t.get("audience") == VECTOR)["status_list"] = True
    server = BrokerServer(config, workdir=tmp_path_factory.mktemp("statuslist"), database_url=database_url, port=port,
                          settings={"audit_coalesce_window": 0, "status_list_ttl": TTL}).start()
    try:
        yield server
    finally:
        server.stop()


def issue(server: BrokerServer, issuer: LocalIssuer, sub: str, audience: str | None = None) -> dict[str, Any]:
    subject = issuer.mint({"sub": sub, "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=600)
    r = server.exchange(subject, audience=audience)
    assert r.status_code == 200, r.text
    return decode_issued(server, r.json()["access_token"])[1]


def test_revoked_token_bit_is_set_and_the_other_is_not(live: BrokerServer, issuer: LocalIssuer) -> None:
    first = issue(live, issuer, "agent-status-a")
    second = issue(live, issuer, "agent-status-b")
    ref_a, ref_b = first["status"]["status_list"], second["status"]["status_list"]
    uri = f"{live.url}/statuslists/1"
    assert ref_a["uri"] == ref_b["uri"] == uri
    assert isinstance(ref_a["idx"], int) and ref_a["idx"] != ref_b["idx"]

    engine = make_engine(live.database_url)
    try:
        assert LifecycleRepository(engine).revoke([first["jti"]], now=time.time(), reason="test") == 1
    finally:
        engine.dispose()

    with live.client() as client:
        deadline = time.monotonic() + 10 * TTL + 5
        while True:
            r, _header, claims = fetch_status_list(client, uri)
            if status_at(claims["status_list"], ref_a["idx"]) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        lst = claims["status_list"]
        assert lst["bits"] == 1
        assert status_at(lst, ref_a["idx"]) == 1  # §7.1 0x01 INVALID
        assert status_at(lst, ref_b["idx"]) == 0  # §7.1 0x00 VALID
        cache_control = r.headers["cache-control"]
        assert "max-age=" in cache_control
        assert 0 <= int(cache_control.split("max-age=")[1].split(",")[0]) <= claims["ttl"] == TTL


def test_token_without_the_flag_has_no_status_claim(live: BrokerServer, issuer: LocalIssuer) -> None:
    claims = issue(live, issuer, "agent-status-c", audience="legacy-api")
    assert "status" not in claims
    engine = make_engine(live.database_url)
    try:
        with engine.connect() as conn:
            idx = conn.execute(sa.text("SELECT status_idx FROM issued_tokens WHERE jti = :j"), {"j": claims["jti"]}).scalar()
    finally:
        engine.dispose()
    assert idx is None

