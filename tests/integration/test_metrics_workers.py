"""``sts serve --workers 2`` as real processes: the counters of both workers reach one scrape,
through either worker on the main port or through the supervising process on a separate port,
and the private multiprocess directory is removed on exit."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from broker_harness import free_port
from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE
from test_metrics_endpoint import scrape, value

STS = str(Path(sys.executable).with_name("sts"))


def config(port: int, issuer: LocalIssuer) -> dict[str, object]:
    return {
        "issuer": f"http://127.0.0.1:{port}",
        "tokens": {"algorithm": "ES256"},
        "clients": {"allow_public": True},
        "issuers": [{"name": "local", "issuer": issuer.url, "audiences": [BROKER_AUDIENCE], "keys": {"discovery": True},
                     "allow_insecure_http": True, "claim_mappings": {"identity": '"local:" + claims.sub'}}],
        "grants": [{"name": "agents", "issuers": ["local"], "match": {"identity_pattern": "^local:.*$"},
                    "default_target": "https://vector.example.com",
                    "targets": [{"audience": "https://vector.example.com", "scopes": ["read"], "default_scopes": ["read"]}]}],
    }


@pytest.mark.slow
@pytest.mark.parametrize("separate_port", [False, True], ids=["main-port", "separate-port"])
def test_two_workers_counters_reach_one_scrape(tmp_path: Path, separate_port: bool) -> None:
    port = free_port()
    metrics_port = free_port() if separate_port else 0
    temp = tmp_path / "tmp"
    temp.mkdir()
    with LocalIssuer(algorithms=("ES256",)) as issuer:
        config_path = tmp_path / "sts.yaml"
        config_path.write_text(yaml.safe_dump(config(port, issuer)))
        env = {
            **os.environ,
            "STS_DEV_MODE": "true",
            "STS_DATABASE_URL": f"sqlite:///{tmp_path / 'sts.db'}",
            "STS_KEK": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
            "STS_METRICS_PORT": str(metrics_port),
            "STS_METRICS_STATE_INTERVAL": "0.3",
            "STS_LOG_LEVEL": "warning",
            "TMPDIR": str(temp),
            # An inherited directory must not be used: sts serve makes its own.
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        }
        subprocess.run([STS, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
        log = (tmp_path / "broker.log").open("w")
        server = subprocess.Popen([STS, "serve", "--config", str(config_path), "--port", str(port), "--workers", "2"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if separate_port else base + "/metrics"
        try:
            wait_ready(server, base, tmp_path / "broker.log")

            def exchange(_: int) -> int:
                subject = issuer.mint({"sub": secrets.token_hex(4), "aud": BROKER_AUDIENCE}, alg="ES256", lifetime=600)
                # A new connection each time, so that either worker may accept it.
                return httpx.post(base + "/token", timeout=10, data={
                    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": subject,
                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}).status_code

            sent = 0
            deadline = time.monotonic() + 40
            with ThreadPoolExecutor(8) as pool:
                while True:
                    statuses = list(pool.map(exchange, range(16)))
                    assert statuses == [200] * 16
                    sent += 16
                    time.sleep(0.4)  # both workers publish their state files meanwhile
                    text = httpx.get(metrics_url, timeout=10).text
                    served = per_pid(text, "sts_group_commit_records_total")
                    if len([pid for pid, n in served.items() if n > 0]) >= 2:
                        break
                    assert time.monotonic() < deadline, f"one worker answered everything: {served}"
            samples = scrape(text)
            # Every answered request is counted once, whichever worker answered it.
            assert value(samples, "sts_token_exchanges_total", outcome="issued", grant="agents", issuer="local") == sent
            assert value(samples, "sts_token_request_duration_seconds_count", outcome="issued") == sent
            assert len(per_pid(text, "sts_build_info")) == 2
            assert sum(served.values()) == 2 * sent  # an audit row and an issued-token row per exchange
            if separate_port:
                assert httpx.get(base + "/metrics", timeout=10).status_code == 404
                # A worker killed with SIGKILL: its counts stay in the sums, its state series go.
                victim = sorted(served)[0]
                os.kill(int(victim), signal.SIGKILL)
                deadline = time.monotonic() + 20
                while victim in per_pid(text := httpx.get(metrics_url, timeout=10).text, "sts_build_info"):
                    assert time.monotonic() < deadline, "a dead worker's state series stayed"
                    time.sleep(0.3)
                assert value(scrape(text), "sts_token_exchanges_total", outcome="issued") == sent
            else:
                # Either worker's answer holds both workers' counts.
                again = scrape(httpx.get(metrics_url, timeout=10).text)
                assert value(again, "sts_token_exchanges_total", outcome="issued") == sent
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
    assert list(temp.iterdir()) == []  # the private multiprocess directory was removed
    assert not list(tmp_path.glob("*.db")) or {p.name for p in tmp_path.glob("*.db")} == {"sts.db"}


def per_pid(text: str, name: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[sample.labels["pid"]] = out.get(sample.labels["pid"], 0.0) + sample.value
    return out


def wait_ready(server: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 40
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
