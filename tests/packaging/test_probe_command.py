"""``sts probe ready|live``: the container health check follows the configured port and scheme."""

from __future__ import annotations

import datetime
import http.server
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker_harness import free_port
from sts.cli.probe import ProbeTarget, probe_target, run_probe


@pytest.mark.parametrize(
    ("host", "port", "tls", "expected"),
    [
        ("0.0.0.0", 8080, False, "http://127.0.0.1:8080/readyz"),
        ("", 8080, False, "http://127.0.0.1:8080/readyz"),
        ("::", 9443, True, "https://[::1]:9443/readyz"),
        ("[::]", 9000, False, "http://[::1]:9000/readyz"),
        ("127.0.0.1", 18080, True, "https://127.0.0.1:18080/readyz"),
        ("::1", 8081, False, "http://[::1]:8081/readyz"),
        ("sts.internal", 8443, True, "https://sts.internal:8443/readyz"),
    ],
    ids=["ipv4-wildcard", "empty", "ipv6-wildcard-tls", "bracketed-wildcard", "loopback-tls", "ipv6-loopback", "hostname"],
)
def test_probe_target_follows_bind_address_port_and_scheme(host: str, port: int, tls: bool, expected: str) -> None:
    assert probe_target(host, port, tls).url("/readyz") == expected


class _Health(http.server.BaseHTTPRequestHandler):
    answers: dict[str, int] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status = self.answers.get(self.path, 404)
        body = b'{"status":"x"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sts.example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("sts.example.com")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "tls.crt", tmp / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextmanager
def _server(answers: dict[str, int], tls: tuple[Path, Path] | None = None) -> Iterator[int]:
    handler = type("Handler", (_Health,), {"answers": answers})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_run_probe_reads_the_answer_status() -> None:
    with _server({"/readyz": 503, "/healthz": 200}) as port:
        target = ProbeTarget("http", "127.0.0.1", port)
        ready, live = run_probe(target, "/readyz", 2), run_probe(target, "/healthz", 2)
    assert (ready.ok, ready.status) == (False, 503)
    assert (live.ok, live.status) == (True, 200)


def test_run_probe_reports_a_closed_port() -> None:
    result = run_probe(ProbeTarget("http", "127.0.0.1", free_port()), "/healthz", 2)
    assert not result.ok and result.status is None and result.error == "connection refused"


def test_run_probe_speaks_https_to_a_certificate_for_another_name(tmp_path: Path) -> None:
    with _server({"/readyz": 200}, tls=_self_signed(tmp_path)) as port:
        over_https = run_probe(ProbeTarget("https", "127.0.0.1", port), "/readyz", 2)
        over_http = run_probe(ProbeTarget("http", "127.0.0.1", port), "/readyz", 2)
    assert over_https.ok and over_https.status == 200
    assert not over_http.ok


def _sts(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STS_")} | env
    return subprocess.run([sys.executable, "-m", "sts.cli.main", *args], env=full_env,
                          capture_output=True, text=True, timeout=60)


def test_cli_probe_uses_sts_port_and_exit_codes() -> None:
    with _server({"/readyz": 200, "/healthz": 200}) as up, _server({"/readyz": 503, "/healthz": 200}) as unready:
        ready = _sts("probe", "ready", env={"STS_HOST": "0.0.0.0", "STS_PORT": str(up)})
        not_ready = _sts("probe", "ready", "--json", env={"STS_PORT": str(unready)})
        live = _sts("probe", "live", env={"STS_PORT": str(unready)})
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.startswith(f"ready: http://127.0.0.1:{up}/readyz")
    assert not_ready.returncode == 1
    assert '"status": 503' in not_ready.stdout
    assert live.returncode == 0


def test_cli_probe_follows_tls_settings(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with _server({"/readyz": 200}, tls=(cert, key)) as port:
        result = _sts("probe", "ready", env={"STS_PORT": str(port), "STS_TLS_CERT": str(cert), "STS_TLS_KEY": str(key)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"https://127.0.0.1:{port}/readyz" in result.stdout


def test_cli_probe_bad_setting_is_one_line_exit_2() -> None:
    result = _sts("probe", "live", env={"STS_PORT": "abc"})
    assert result.returncode == 2
    assert "STS_PORT" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
