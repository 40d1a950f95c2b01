"""``sts serve --tls-cert --tls-key`` as a user runs it: a real process serving HTTPS with the
protocol that also answers half-closed requests (one worker and two)."""

from __future__ import annotations

import os
import pickle
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from broker_harness import free_port, kek_for
from spiffe_support import WebCA, write_identity
from sts import jose
from sts.http.halfclose import HalfCloseHttpToolsProtocol, TLSHalfCloseHttpToolsProtocol, uvicorn_options
from sts.store import migrate

STS = Path(sys.executable).with_name("sts")


def test_tls_options_keep_the_half_close_protocol() -> None:
    options = uvicorn_options({"http": object, "ssl_context_factory": "factory"})
    assert options["http"] is TLSHalfCloseHttpToolsProtocol and options["ssl_context_factory"] == "factory"
    assert issubclass(TLSHalfCloseHttpToolsProtocol, HalfCloseHttpToolsProtocol)
    assert pickle.loads(pickle.dumps(TLSHalfCloseHttpToolsProtocol)) is TLSHalfCloseHttpToolsProtocol  # for workers
    assert uvicorn_options()["http"] is HalfCloseHttpToolsProtocol


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_with_tls_answers_over_https(tmp_path: Path, workers: int) -> None:
    ca = WebCA()
    ca_file = ca.write(tmp_path / "ca.pem")
    cert, key = ca.server()
    cert_file, key_file = write_identity(tmp_path, "server", cert, key)
    port = free_port()
    config = tmp_path / "sts.yaml"
    config.write_text(yaml.safe_dump({
        "issuer": f"https://127.0.0.1:{port}",
        "issuers": [{"name": "static", "issuer": "https://issuer.example", "audiences": [f"https://127.0.0.1:{port}"],
                     "keys": {"jwks": {"keys": [jose.generate_private_key("ES256", kid="k1").public_jwk()]}}}],
        "grants": [],
    }))
    database_url = f"sqlite:///{tmp_path / 'sts.db'}"
    migrate.upgrade(database_url)
    env = {**os.environ, "STS_DATABASE_URL": database_url, "STS_KEK": kek_for(database_url), "STS_CONFIG": str(config)}
    process = subprocess.Popen([str(STS), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                                "--tls-cert", str(cert_file), "--tls-key", str(key_file)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=context, timeout=2)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise AssertionError((process.stdout.read() if process.stdout else b"").decode()[-3000:]) from None
                time.sleep(0.2)
        assert resp.status_code == 200
        # A token request over TLS whose client half-closes after sending it still gets its answer.
        body = b"grant_type=client_credentials"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body) + body)
            answer = b""
            while b"unsupported_grant_type" not in answer:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400") and b"unsupported_grant_type" in answer
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
