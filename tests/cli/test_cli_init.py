"""``sts init DIR`` never writes into a directory that already holds something unless --force."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cli_support import Run, assert_one_line_user_error


def test_init_refuses_a_non_empty_directory(cli: Path, run: Callable[..., Run]) -> None:
    assert run("init", "deploy").code == 0
    kek = (cli / "deploy" / "kek").read_text()
    config = (cli / "deploy" / "sts.yaml").read_text()
    assert_one_line_user_error(run("init", "deploy"), "deploy already exists and is not empty", "--force")
    assert_one_line_user_error(run("init", "deploy", "--dev", "--json"), "already exists")
    assert (cli / "deploy" / "kek").read_text() == kek
    assert (cli / "deploy" / "sts.yaml").read_text() == config
    assert not (cli / "deploy" / "dev").exists()


def test_init_with_force_overwrites(cli: Path, run: Callable[..., Run]) -> None:
    assert run("init", "deploy").code == 0
    kek = (cli / "deploy" / "kek").read_text()
    result = run("init", "deploy", "--force")
    assert result.code == 0 and "created deploy/kek" in result.stdout
    assert (cli / "deploy" / "kek").read_text() != kek


def test_init_into_an_existing_empty_directory(cli: Path, run: Callable[..., Run]) -> None:
    (cli / "deploy").mkdir()
    result = run("init", "deploy")
    assert result.code == 0 and (cli / "deploy" / "sts.yaml").is_file()


def test_init_refuses_a_directory_holding_an_unrelated_file(cli: Path, run: Callable[..., Run]) -> None:
    (cli / "deploy").mkdir()
    (cli / "deploy" / "notes.txt").write_text("mine")
    assert_one_line_user_error(run("init", "deploy"), "already exists and is not empty")
    assert sorted(p.name for p in (cli / "deploy").iterdir()) == ["notes.txt"]
