"""``sts serve`` with the admin API (docs/admin-api.md): every refused admin setting, an unusable
token file and a taken admin address are one line and exit 2, before anything listens."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import Run, assert_one_line_user_error


@pytest.fixture()
def deployed(cli: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> Path:
    assert run("init", "deploy").code == 0
    assert run("db", "upgrade").code == 0
    monkeypatch.setenv("STS_KEK_FILE", "deploy/kek")
    (cli / "admin-token").write_text("a" * 40 + "\n")
    return cli


@pytest.mark.parametrize(("env", "fragments"), [
    ({"STS_ADMIN_LISTEN": "nope"}, ("STS_ADMIN_LISTEN: admin_listen must be host:port", "127.0.0.1:9443")),
    ({"STS_ADMIN_LISTEN": "127.0.0.1:9443"}, ("needs STS_ADMIN_TOKEN_FILE or STS_ADMIN_ALLOWED_CERT_SHA256",)),
    ({"STS_ADMIN_LISTEN": "0.0.0.0:9443", "STS_ADMIN_TOKEN_FILE": "admin-token"}, ("not a loopback address", "HTTPS")),
    ({"STS_ADMIN_LISTEN": "127.0.0.1:9443", "STS_ADMIN_ALLOWED_CERT_SHA256": '["zz"]'},
     ("STS_ADMIN_ALLOWED_CERT_SHA256", "64 hex digits")),
    ({"STS_ADMIN_LISTEN": "127.0.0.1:9443", "STS_ADMIN_TOKEN_FILE": "absent"},
     ("the admin token file absent is unusable", "openssl rand -hex 32")),
], ids=["malformed", "no-auth", "public-plain-http", "bad-thumbprint", "no-token-file"])
def test_refused_admin_settings_are_one_line(deployed: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch,
                                             env: dict[str, str], fragments: tuple[str, ...]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert_one_line_user_error(run("serve", "--config", "deploy/sts.yaml", "--port", "1"), *fragments)


def test_a_short_token_is_one_line(deployed: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    (deployed / "admin-token").write_text("short\n")
    monkeypatch.setenv("STS_ADMIN_LISTEN", "127.0.0.1:9443")
    monkeypatch.setenv("STS_ADMIN_TOKEN_FILE", "admin-token")
    line = assert_one_line_user_error(run("serve", "--config", "deploy/sts.yaml", "--port", "1"), "32 to 512 characters")
    assert "short" not in line.split("unusable")[1]  # the file's content is never repeated


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_admin_address_is_one_line(deployed: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch,
                                           workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        monkeypatch.setenv("STS_ADMIN_LISTEN", address)
        monkeypatch.setenv("STS_ADMIN_TOKEN_FILE", "admin-token")
        assert_one_line_user_error(run("serve", "--config", "deploy/sts.yaml", "--port", "1", "--workers", workers),
                                   f"cannot listen on the admin address {address}", "STS_ADMIN_LISTEN")
