"""Fixtures for the command line: a clean working directory and environment per test."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from sts.cli.main import main


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.splitlines()


def new_kek() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@pytest.fixture()
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs in an empty directory with no STS_* setting but a database inside it."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("STS_") and not name.startswith("STS_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STS_DATABASE_URL", f"sqlite:///{tmp_path / 'var' / 'sts.db'}")
    return tmp_path


@pytest.fixture()
def run() -> Callable[..., Run]:
    def invoke(*args: str, catch: bool = False) -> Run:
        result = CliRunner().invoke(main, list(args), catch_exceptions=catch, prog_name="sts")
        return Run(result.exit_code, result.stdout, result.stderr, result.exception)

    return invoke


def assert_one_line_user_error(result: Run, *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one line ``sts: <problem>; <fix>`` on stderr."""
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.error_lines
    assert line.startswith("sts: ") and "; " in line, line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line
