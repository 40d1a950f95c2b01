"""Fixtures for the command line: a clean working directory and environment per test."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import Run
from click.testing import CliRunner

from sts.cli.main import main


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
