"""Runs the real broker over real HTTP on loopback for integration tests.

``BrokerServer`` writes a configuration file, migrates a fresh database (SQLite file, or a
fresh PostgreSQL schema), builds the app with ``create_app`` exactly as ``sts serve`` does, and
serves it with uvicorn in a background thread.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from sts.app import create_app
from sts.http.halfclose import uvicorn_options
from sts.settings import Settings
from sts.store import migrate

POSTGRES_ENV = "STS_TEST_POSTGRES_URL"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_base_url() -> str | None:
    """The PostgreSQL URL for tests; under CI=true its absence is an error, not a skip."""
    url = os.environ.get(POSTGRES_ENV)
    if not url and os.environ.get("CI", "").lower() == "true":
        raise RuntimeError(f"CI=true but {POSTGRES_ENV} is not set: the PostgreSQL tests must run in CI")
    return url


@contextlib.contextmanager
def postgres_schema_url(base: str) -> Iterator[str]:
    """A URL whose connections use a fresh schema, dropped afterwards."""
    import sqlalchemy as sa

    schema = f"sts_it_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


_KEKS: dict[str, str] = {}


def kek_for(database_url: str) -> str:
    """One KEK per database, as in a deployment: keys sealed by one broker open in the next."""
    if database_url not in _KEKS:
        _KEKS[database_url] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return _KEKS[database_url]


class BrokerServer:
    """A running broker. ``url`` is its issuer URL; ``broker`` is the live ``Broker``."""

    def __init__(self, config: dict[str, Any], *, workdir: Path, database_url: str, port: int,
                 settings: dict[str, Any] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.config_path = workdir / "sts.yaml"
        self.write_config(config)
        self.database_url = database_url
        migrate.upgrade(database_url)
        values: dict[str, Any] = {"config": self.config_path, "database_url": database_url, "dev_mode": True,
                                  "kek": kek_for(database_url), "config_reload_interval": 0}
        self.settings = Settings(**{**values, **(settings or {})})
        self.app = create_app(self.settings)
        self.broker = self.app.state.broker
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_config=None, lifespan="on",
                                                     **uvicorn_options()))  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._server.run, name=f"broker-{port}", daemon=True)

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self) -> BrokerServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("broker did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)

    def exchange(self, subject_token: str, *, auth: Any = None, **params: Any) -> httpx.Response:
        data: dict[str, Any] = {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": subject_token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        }
        data.update({k: v for k, v in params.items() if v is not None})
        with self.client() as c:
            return c.post("/token", data=data, auth=auth)


class TLSBroker(BrokerServer):
    """The real broker terminating TLS itself, as ``sts serve --tls-cert --tls-key
    [--tls-client-ca]`` runs it. ``ca_file`` is the CA its clients trust for its certificate."""

    def __init__(self, config: dict[str, Any], *, workdir: Path, database_url: str, port: int,
                 tls: tuple[Path, Path], ca_file: Path, client_ca: Path | None = None,
                 settings: dict[str, Any] | None = None) -> None:
        from sts.spiffe.tls import uvicorn_tls_options

        super().__init__(config, workdir=workdir, database_url=database_url, port=port,
                         settings={"tls_cert": tls[0], "tls_key": tls[1], "tls_client_ca": client_ca, **(settings or {})})
        # The protocol `sts serve` runs: TLS with client certificates, half-closed requests answered.
        options = uvicorn_options(uvicorn_tls_options(tls[0], tls[1], client_ca))
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_config=None,
                                                     lifespan="on", **options))
        self._thread = threading.Thread(target=self._server.run, name=f"tls-broker-{port}", daemon=True)
        self.url = f"https://127.0.0.1:{port}"
        self.ca_file = ca_file

    def client(self, identity: tuple[Path, Path] | None = None) -> httpx.Client:  # type: ignore[override]
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if identity is not None:
            ctx.load_cert_chain(str(identity[0]), str(identity[1]))
        return httpx.Client(base_url=self.url, timeout=10, verify=ctx)


def decode_issued(server: BrokerServer, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify an issued token against the broker's published JWKS, as a relying party would."""
    from sts import jose

    with server.client() as c:
        keys = jose.parse_jwks(c.get("/jwks").json())
    decoded = jose.unsafe_decode(token)
    alg = jose.check_header(decoded.header, allowed_algorithms=("ES256", "RS256", "EdDSA"), expected_typ="at+jwt")
    key = keys.find(decoded.header.get("kid"), alg)
    assert key is not None, "issued token's kid is not published"
    jose.verify_signature(decoded, key, alg)
    return decoded.header, decoded.claims
