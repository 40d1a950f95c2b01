"""Commands that only read never create a database (nor its directory) where none exists;
they say where they looked and how to create it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import Run, assert_one_line_user_error, new_kek


@pytest.fixture()
def nowhere(cli: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A database URL inside a directory that does not exist."""
    path = cli / "missing-dir" / "sts.db"
    monkeypatch.setenv("STS_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("STS_KEK", new_kek())
    return path


@pytest.mark.parametrize(
    "command",
    [["keys", "list"], ["keys", "list", "--json"], ["audit", "list"], ["audit", "list", "--json"], ["keys", "rotate"], ["serve", "--port", "1"],
     ["config", "history"], ["config", "show", "abcd"], ["config", "diff", "sts.yaml", "--against-running"]],
    ids=" ".join,
)
def test_commands_refuse_a_missing_database_and_create_nothing(nowhere: Path, run: Callable[..., Run], command: list[str]) -> None:
    assert_one_line_user_error(run(*command), f"no database at {nowhere}", "run `sts db upgrade`")
    assert not nowhere.parent.exists()


def test_db_current_reports_a_missing_database_and_creates_nothing(nowhere: Path, run: Callable[..., Run]) -> None:
    result = run("db", "current", "--json")
    assert result.code == 1
    data = json.loads(result.stdout)
    assert data["exists"] is False and data["current"] is None and data["up_to_date"] is False
    human = run("db", "current")
    assert human.code == 1 and f"no database at {nowhere}" in human.stdout and "sts db upgrade" in human.stdout
    assert not nowhere.parent.exists()


def test_db_upgrade_is_what_creates_it(nowhere: Path, run: Callable[..., Run]) -> None:
    assert run("db", "upgrade").code == 0
    assert nowhere.is_file()
    assert run("keys", "list").code == 0
    empty = run("audit", "list", "--json")
    assert (empty.code, empty.stdout) == (0, "")  # JSON lines: no record, no line


def test_an_empty_file_is_an_unmigrated_database(nowhere: Path, run: Callable[..., Run]) -> None:
    nowhere.parent.mkdir()
    nowhere.touch()
    for command in (["keys", "list"], ["audit", "list"]):
        assert_one_line_user_error(run(*command), f"the database at {nowhere} has no schema", "run `sts db upgrade`")
    result = run("db", "current", "--json")
    assert result.code == 1 and json.loads(result.stdout)["exists"] is True
