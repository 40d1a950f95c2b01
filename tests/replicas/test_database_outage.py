"""Database outage: the broker answers 503 ``temporarily_unavailable`` with ``Retry-After``
within a bounded time, issues no token it could not record, reports itself not ready, and
recovers by itself when the database is back (docs/operations.md, "Failure behaviour").

PostgreSQL is reached through a TCP proxy that the test cuts: ``refuse`` looks like a stopped
server (connections reset, new ones refused), ``blackhole`` like an unreachable host (new
connections never answered, so only the connection timeout ends the attempt).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conformance.issuer import LocalIssuer
from replica_support import AUDIENCE, BrokerProcess, TcpProxy, broker_config, issued_rows, through, wait_until, write_config
from sts import jose
from sts.audit import DATABASE_WAIT_SECONDS
from sts.availability import DATABASE_RETRY_AFTER_SECONDS

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CONNECT_TIMEOUT = 2  # libpq's minimum; the default is 5 (sts.store.db.POSTGRES_CONNECT_DEFAULTS)
# The documented bound while the database is down: the failed wait plus the refusal's own
# audit write, each at most DATABASE_WAIT_SECONDS. A request still open after it (with a
# margin for a busy machine) counts as hanging and fails the test.
ANSWER_BOUND = 2 * DATABASE_WAIT_SECONDS + 5


def test_database_outage_answers_503_and_recovers(issuer: LocalIssuer, replay_issuer: LocalIssuer, postgres_url: str,
                                                  proxy: TcpProxy, kek: str, tmp_path: Path) -> None:
    config = tmp_path / "sts.yaml"
    write_config(config, broker_config(issuer, replay_issuer))
    broker = BrokerProcess(config=config, database_url=through(proxy, postgres_url, connect_timeout=CONNECT_TIMEOUT), kek=kek,
                           log_path=tmp_path / "broker.log").start()
    subject = issuer.mint({"sub": "agent-1", "aud": AUDIENCE}, alg="ES256", lifetime=600)
    answered: set[str] = set()

    def exchange(token: str) -> httpx.Response:
        response = broker.exchange(token, timeout=ANSWER_BOUND)
        if response.status_code == 200:
            answered.add(jose.unsafe_decode(response.json()["access_token"]).claims["jti"])
        return response

    try:
        assert exchange(subject).status_code == 200
        for mode in ("refuse", "blackhole"):
            proxy.cut(mode)
            # A one-time token whose claim cannot be recorded is refused, not used up.
            once = replay_issuer.mint({"sub": "agent-1", "aud": AUDIENCE}, alg="ES256", lifetime=600)
            with ThreadPoolExecutor(max_workers=4) as pool:
                responses = list(pool.map(exchange, [subject, subject, subject, once]))
            for response in responses:
                assert response.status_code == 503, (mode, response.text)
                assert response.json()["error"] == "temporarily_unavailable"
                assert response.headers["Retry-After"] == str(DATABASE_RETRY_AFTER_SECONDS)
                assert "access_token" not in response.json()
            ready = httpx.get(broker.url + "/readyz", timeout=ANSWER_BOUND)
            assert ready.status_code == 503 and ready.json()["database"] is False
            # What needs no database keeps answering.
            assert httpx.get(broker.url + "/jwks", timeout=10).status_code == 200

            proxy.restore()
            assert wait_until(lambda: exchange(subject).status_code == 200, 30, 0.2), mode
            assert exchange(once).status_code == 200
            assert httpx.get(broker.url + "/readyz", timeout=10).status_code == 200
    finally:
        broker.stop()

    # Every token the client received has its rows, and no token was issued during the outage
    # (nothing in the database that the client did not receive).
    issued, audited = issued_rows(postgres_url)
    assert set(issued) == answered
    assert answered <= set(audited)
    # The operator sees an outage in the log as such: a warning, not a traceback of a bug.
    broker_log = broker.log_path.read_text()
    assert "token exchange failed: database unavailable" in broker_log
    assert '"exc"' not in _lines_with(broker_log, "token exchange failed")
    # A refusal the database could not take is kept in the log.
    assert '"reason":"database_unavailable"' in _lines_with(broker_log, "audit write failed: database unavailable")


def _lines_with(text: str, needle: str) -> str:
    return "\n".join(line for line in text.splitlines() if needle in line)
