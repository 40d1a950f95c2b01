"""Kill -9 of a broker under load loses no record of an answered request: every 200 a client
received has its ``issued`` audit record and its issued-token row in the database, after the
process was killed in the middle of the load and started again (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from conformance.issuer import LocalIssuer
from replica_support import AUDIENCE, BrokerProcess, broker_config, exchange_form, issued_rows, write_config
from sts import jose

pytestmark = pytest.mark.slow

CONNECTIONS = 8
KILL_AFTER = 200  # answered exchanges before the kill
MAX_REQUESTS = 3000  # a guard against a load that never ends


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


def test_kill_9_under_load_loses_no_record(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str,
                                           kek: str, tmp_path: Path) -> None:
    config = tmp_path / "sts.yaml"
    write_config(config, broker_config(issuer, replay_issuer))
    broker = BrokerProcess(config=config, database_url=database_url, kek=kek, log_path=tmp_path / "first.log").start()
    subjects = [issuer.mint({"sub": f"agent-{i}", "aud": AUDIENCE}, alg="ES256", lifetime=600) for i in range(CONNECTIONS)]
    try:
        answered, unanswered = asyncio.run(_load_then_kill(broker, subjects))
    finally:
        broker.stop()
    assert broker.process is not None and broker.process.returncode == -9
    assert len(answered) >= KILL_AFTER
    # The load was still running: requests went unanswered (those in flight at the kill may or
    # may not have a record; what matters is that no answered one lacks it).
    assert unanswered >= 1

    restarted = BrokerProcess(config=config, database_url=database_url, kek=kek, log_path=tmp_path / "second.log").start()
    try:
        assert restarted.exchange(subjects[0]).status_code == 200
    finally:
        restarted.stop()

    issued, audited = issued_rows(database_url)
    missing_issued = {jti for jti in answered if jti not in issued}
    missing_audit = {jti for jti in answered if jti not in audited}
    assert not missing_issued and not missing_audit, (len(answered), len(missing_issued), len(missing_audit))
    # Each row is the token the client holds: signed by the key the row names.
    assert all(issued[jti] == kid for jti, kid in answered.items())


async def _load_then_kill(broker: BrokerProcess, subjects: list[str]) -> tuple[dict[str, str], int]:
    """Run CONNECTIONS clients in a loop; SIGKILL the broker once KILL_AFTER exchanges were
    answered; return the answered tokens (jti -> kid) and how many requests got no answer."""
    answered: dict[str, str] = {}
    unanswered = 0
    sent = 0
    killed = asyncio.Event()

    async def client(subject: str) -> None:
        nonlocal unanswered, sent
        async with httpx.AsyncClient(base_url=broker.url, timeout=10) as http:
            while sent < MAX_REQUESTS:
                sent += 1
                try:
                    response = await http.post("/token", data=exchange_form(subject))
                except httpx.HTTPError:
                    unanswered += 1
                    if killed.is_set():
                        return
                    continue
                assert response.status_code == 200, response.text
                header, claims = _decode(response.json()["access_token"])
                answered[claims["jti"]] = header["kid"]
                if len(answered) >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    broker.kill()

    await asyncio.gather(*(client(s) for s in subjects))
    return answered, unanswered


def _decode(token: str) -> tuple[dict[str, str], dict[str, str]]:
    decoded = jose.unsafe_decode(token)
    return decoded.header, decoded.claims
