"""Helpers for the command-line tests: a run's result and the one-line error it must print."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass


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
