"""Brokers as real processes (``sts serve``), and a TCP proxy that can cut the database.

``BrokerProcess`` starts ``sts serve`` exactly as an operator would (a configuration file,
``STS_*`` environment, a free loopback port), with its JSON log in a file the test can read.
``TcpProxy`` forwards a loopback port to PostgreSQL on an asyncio loop of its own thread; the
test cuts the database away (``refuse``: like a stopped server, connections reset and new ones
refused; ``blackhole``: like an unreachable host, new connections accepted and never answered)
and restores it, without touching the PostgreSQL server that other tests share.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml

from broker_harness import free_port
from conformance.issuer import LocalIssuer
from sts.store.db import make_engine

STS = str(Path(sys.executable).with_name("sts"))
AUDIENCE = "sts-replicas"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
CLIENT_SECRET = "replicas-secret-0123456789abcdef"


def new_kek() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def broker_config(issuer: LocalIssuer, replay_issuer: LocalIssuer, *, extra_audiences: tuple[str, ...] = ()) -> dict[str, Any]:
    """Two issuers (one asks for one-time jtis) and one grant: enough to tell a new policy from
    an old one (``extra_audiences``) and to exercise the shared replay guard."""
    targets: list[dict[str, Any]] = [{"audience": "https://api.example.com", "scopes": ["read"], "default_scopes": ["read"]}]
    targets += [{"audience": a, "scopes": ["read"], "default_scopes": ["read"]} for a in extra_audiences]
    return {
        "issuer": "https://sts.replicas.example.com",
        "tokens": {"default_lifetime": 600, "max_lifetime": 3600, "algorithm": "ES256"},
        "clients": {
            "allow_public": True,
            "registered": [{"client_id": "worker", "auth_method": "client_secret_post",
                            "secret_sha256": hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()}],
        },
        "issuers": [
            {"name": "local", "issuer": issuer.url, "audiences": [AUDIENCE], "keys": {"jwks_uri": issuer.jwks_uri},
             "allow_insecure_http": True, "claim_mappings": {"identity": '"wl:" + claims.sub'}},
            {"name": "once", "issuer": replay_issuer.url, "audiences": [AUDIENCE], "keys": {"jwks_uri": replay_issuer.jwks_uri},
             "allow_insecure_http": True, "require_jti": True, "claim_mappings": {"identity": '"wl:" + claims.sub'}},
        ],
        "grants": [{"name": "agents", "issuers": ["local", "once"], "match": {"identity_pattern": "^wl:agent-[a-z0-9-]+$"},
                    "targets": targets, "default_target": "https://api.example.com", "lifetime": 600}],
    }


def write_config(path: Path, config: dict[str, Any]) -> None:
    # Written whole then renamed: a broker polling the file never reads half of it.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, path)


def exchange_form(subject_token: str, **params: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "subject_token": subject_token, "subject_token_type": JWT_TYPE, **params}


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class BrokerProcess:
    """One ``sts serve`` process on a free loopback port. ``env`` adds ``STS_*`` settings."""

    def __init__(self, *, config: Path, database_url: str, kek: str, log_path: Path,
                 workers: int = 1, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "STS_DEV_MODE": "true",
            "STS_DATABASE_URL": database_url,
            "STS_KEK": kek,
            "STS_CONFIG": str(config),
            "STS_LOG_LEVEL": "info",
            **(env or {}),
        }
        self.args = [STS, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> BrokerProcess:
        with self.log_path.open("ab") as log:
            # Its own session: a signal meant for the broker never reaches the test runner.
            self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        if not wait_until(self._ready, timeout, 0.1):
            self.stop()
            raise AssertionError(f"broker did not become ready:\n{self.log_path.read_text()[-4000:]}")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"broker exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}")
        try:
            return httpx.get(self.url + "/readyz", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no chance to finish anything in flight."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        # Workers of a supervisor that was killed must not outlive the test.
        for pid in child_pids(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def logs(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        return records

    def client(self, timeout: float = 10) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def exchange(self, subject_token: str, *, timeout: float = 10, **params: str) -> httpx.Response:
        # A fresh connection per call, so that with several workers the kernel may hand each
        # request to any of them.
        return httpx.post(self.url + "/token", data=exchange_form(subject_token, **params), timeout=timeout)


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc)."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (2nd field) is in parentheses and may hold spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def issued_rows(database_url: str) -> tuple[dict[str, str | None], dict[str, str]]:
    """Issued-token rows (jti -> signing kid) and the jtis of ``issued`` audit records
    (jti -> request id), read directly from the database."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            issued = {r[0]: r[1] for r in conn.execute(sa.text("SELECT jti, signing_kid FROM issued_tokens"))}
            audited = {r[0]: r[1] for r in conn.execute(
                sa.text("SELECT issued_jti, request_id FROM audit_events WHERE outcome = 'issued'"))}
    finally:
        engine.dispose()
    return issued, audited


class TcpProxy:
    """A loopback TCP proxy to ``target`` that a test can cut and restore.

    ``cut("refuse")`` resets every open connection and stops listening, as a stopped or
    restarting server looks to its clients. ``cut("blackhole")`` resets the open connections
    and then accepts new ones but never forwards a byte, as an unreachable host looks (the
    client's connection attempt times out). ``restore()`` forwards again on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.mode = "up"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tcp-proxy-{self.port}", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # --- control (test thread) ---------------------------------------------------------------
    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self, mode: str) -> None:
        assert mode in ("refuse", "blackhole")
        self._call(self._cut(mode))

    def restore(self) -> None:
        self._call(self._restore())

    def stop(self) -> None:
        self._call(self._cut("refuse"))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=10)

    # --- proxy loop --------------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _cut(self, mode: str) -> None:
        self.mode = mode
        for writer in list(self._writers):
            # abort(): an RST, not a FIN, as a killed server's kernel would send.
            writer.transport.abort()
        self._writers.clear()
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        elif mode == "blackhole" and self._server is None:
            await self._listen()

    async def _restore(self) -> None:
        self.mode = "up"
        if self._server is None:
            await self._listen()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.mode != "up":
            # Black hole: hold the connection open, read and drop whatever comes, answer nothing.
            with contextlib.suppress(ConnectionError, OSError):
                while await reader.read(65536):
                    pass
            self._writers.discard(writer)
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._writers.discard(writer)
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


def through(proxy: TcpProxy, url: str, *, connect_timeout: int = 2) -> str:
    """``url`` with its connections sent through ``proxy`` (which the test can cut), and a
    short libpq connect timeout (2 s is libpq's minimum)."""
    from sqlalchemy import make_url

    from sts.store.db import normalise_url

    parsed = make_url(normalise_url(url)).set(host="127.0.0.1", port=proxy.port)
    return parsed.update_query_dict({"connect_timeout": str(connect_timeout)}).render_as_string(hide_password=False)
