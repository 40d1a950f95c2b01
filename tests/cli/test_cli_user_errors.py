"""Every user error of ``sts`` is one line ``sts: <problem>; <fix>`` and exit 2, never a
traceback; an unexpected exception is one line with the way to see its traceback, exit 70."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import Run, assert_one_line_user_error, new_kek

from broker_harness import postgres_base_url
from sts.settings import SettingsError, load_settings


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"STS_PORT": "abc"}, ("STS_PORT: value is not a valid integer ('abc')", "set it to a port number")),
        ({"STS_PORT": "70000"}, ("STS_PORT: must be less than or equal to 65535",)),
        ({"STS_WORKERS": "0"}, ("STS_WORKERS: must be greater than or equal to 1", "worker processes")),
        ({"STS_LOG_LEVEL": "loud"}, ("STS_LOG_LEVEL: unknown log level", "one of debug, info")),
        ({"STS_DEV_MODE": "maybe"}, ("STS_DEV_MODE: value is not true or false", "set it to true or false")),
        ({"STS_TRUSTED_PROXIES": "10.0.0.0/8"}, ("STS_TRUSTED_PROXIES:", "JSON list")),
        ({"STS_DATABASE_URL": "mysql://sts:hunter2@db/sts"},
         ("STS_DATABASE_URL: unsupported database 'mysql'", "sqlite:///path/to/sts.db or postgresql://")),
        ({"STS_DATABASE_URL": "postgresql+psycopg2://sts@db/sts"}, ("STS_DATABASE_URL:", "psycopg 3 only")),
        ({"STS_DATABASE_URL": "sqlite://"}, ("STS_DATABASE_URL: SQLite needs a database file",)),
        ({"STS_DATABASE_URL": "not a url"}, ("STS_DATABASE_URL: not a database URL",)),
    ],
    ids=["port-text", "port-range", "workers", "log-level", "dev-mode", "proxies", "mysql", "psycopg2", "sqlite-memory", "garbage"],
)
@pytest.mark.parametrize("command", [["db", "current"], ["audit", "list"], ["serve"]], ids=" ".join)
def test_bad_settings_are_one_line(cli: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch,
                                   env: dict[str, str], fragments: tuple[str, ...], command: list[str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    line = assert_one_line_user_error(run(*command), *fragments)
    assert "hunter2" not in line  # a database password is never repeated
    assert not (cli / "var").exists()


def test_a_flag_is_named_as_the_flag(cli: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(database_url="mysql://db/sts", port=None)
    assert str(info.value).startswith("--database-url: unsupported database 'mysql'")


def test_several_bad_settings_are_all_named(cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STS_PORT", "abc")
    monkeypatch.setenv("STS_WORKERS", "-1")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "STS_PORT:" in str(info.value) and "STS_WORKERS:" in str(info.value)


def test_a_key_encryption_key_is_never_repeated(cli: Path, monkeypatch: pytest.MonkeyPatch, run: Callable[..., Run]) -> None:
    assert run("init", "deploy").code == 0
    assert run("db", "upgrade").code == 0
    monkeypatch.setenv("STS_KEK", "c2VjcmV0LWJ1dC1zaG9ydA")
    line = assert_one_line_user_error(run("serve", "--config", "deploy/sts.yaml", "--port", "1"), "key-encryption key")
    assert "c2VjcmV0" not in line


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["db", "current", "--bogus"], ("No such option '--bogus'", "see `sts db current --help`")),
        (["nosuch"], ("No such command 'nosuch'", "see `sts --help`")),
        (["--bogus"], ("No such option '--bogus'", "see `sts --help`")),
        (["serve", "--port", "abc"], ("'--port'", "see `sts serve --help`")),
        (["audit", "list", "--outcome", "maybe"], ("'--outcome'", "see `sts audit list --help`")),
    ],
    ids=["option", "command", "root-option", "bad-int", "bad-choice"],
)
def test_usage_errors_are_one_line(cli: Path, run: Callable[..., Run], args: list[str], fragments: tuple[str, ...]) -> None:
    assert_one_line_user_error(run(*args), *fragments)


def test_serve_on_an_unmigrated_database(cli: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("init", "deploy").code == 0
    (cli / "var").mkdir()
    (cli / "var" / "sts.db").touch()
    monkeypatch.setenv("STS_KEK_FILE", "deploy/kek")
    assert_one_line_user_error(run("serve", "--config", "deploy/sts.yaml", "--port", "1"),
                               "the database at", "has no schema", "run `sts db upgrade`")


def test_serve_with_an_invalid_or_missing_configuration(cli: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("init", "deploy").code == 0
    assert run("db", "upgrade").code == 0
    monkeypatch.setenv("STS_KEK_FILE", "deploy/kek")
    (cli / "deploy" / "sts.yaml").write_text("issuer: https://sts.example.com\nissuers: []\ngrants: [{name: g}]\n")
    assert_one_line_user_error(run("serve", "--config", "deploy/sts.yaml", "--port", "1"),
                               "cannot start: the configuration deploy/sts.yaml is invalid", "run `sts config check deploy/sts.yaml`")
    assert_one_line_user_error(run("serve", "--config", "deploy/absent.yaml", "--port", "1"),
                               "deploy/absent.yaml does not exist", "STS_CONFIG")


def test_an_invalid_configuration_outside_serve(cli: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("init", "deploy").code == 0
    assert run("db", "upgrade").code == 0
    (cli / "deploy" / "sts.yaml").write_text("issuer: [\n")
    monkeypatch.setenv("STS_CONFIG", "deploy/sts.yaml")
    monkeypatch.setenv("STS_KEK", new_kek())
    assert_one_line_user_error(run("keys", "rotate"), "deploy/sts.yaml", "YAML syntax error", "sts config check")


def test_unreachable_database(cli: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 1 on loopback: refused at once, no traffic leaves the machine.
    monkeypatch.setenv("STS_DATABASE_URL", "postgresql://sts@127.0.0.1:1/sts?connect_timeout=2")
    assert_one_line_user_error(run("audit", "list"), "database error", "check STS_DATABASE_URL")


def test_click_exceptions_of_commands_keep_their_exit_code_and_are_one_line(cli: Path, run: Callable[..., Run]) -> None:
    assert run("init", "deploy", "--dev").code == 0
    result = run("dev", "mint", "--config", "deploy/sts.yaml", "--issuer-name", "nobody")
    assert result.code == 1 and result.error_lines == ["sts: no issuer named 'nobody' in deploy/sts.yaml"]


def test_an_unexpected_error_is_one_line_with_the_way_to_its_traceback(
        cli: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    from sts.store import migrate

    def broken() -> str:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(migrate, "head", broken)
    result = run("db", "current")
    assert result.code == 70 and "Traceback" not in result.stderr
    assert result.error_lines == [
        "sts: unexpected error (RuntimeError: boom); this is a bug: rerun with --debug (or STS_DEBUG=1) for the traceback and report it"
    ]
    debug = run("--debug", "db", "current", catch=True)
    assert isinstance(debug.exception, RuntimeError)
    monkeypatch.setenv("STS_DEBUG", "1")
    assert isinstance(run("db", "current", catch=True).exception, RuntimeError)


def _sts() -> str:
    return str(Path(sys.executable).with_name("sts"))


@pytest.mark.parametrize(
    ("env", "args", "fragment"),
    [
        ({"STS_PORT": "abc"}, ["db", "current"], "STS_PORT: value is not a valid integer ('abc')"),
        ({"STS_DATABASE_URL": "mysql://db/sts"}, ["serve"], "unsupported database 'mysql'"),
        ({}, ["keys", "list"], "no database at var/sts.db"),
    ],
    ids=["port", "database-url", "no-database"],
)
def test_real_process_prints_one_line_and_exits_2(tmp_path: Path, env: dict[str, str], args: list[str], fragment: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
    proc = subprocess.run([_sts(), *args], cwd=tmp_path, env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("sts: ") and fragment in line
    assert not (tmp_path / "var").exists()
    if env == {"STS_PORT": "abc"}:
        assert line == "sts: STS_PORT: value is not a valid integer ('abc'); set it to a port number (0-65535)"


@pytest.mark.postgres
def test_unmigrated_postgresql_schema_is_reported_and_left_alone(run: Callable[..., Run], cli: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy as sa

    from broker_harness import postgres_schema_url
    from sts.store.db import make_engine

    base = postgres_base_url()
    if not base:
        pytest.skip("STS_TEST_POSTGRES_URL is not set")
    with postgres_schema_url(base) as url:
        monkeypatch.setenv("STS_DATABASE_URL", url)
        for command in (["audit", "list"], ["keys", "list"]):
            assert_one_line_user_error(run(*command), "has no schema", "run `sts db upgrade`")
        result = run("db", "current", "--json")
        assert result.code == 1 and '"current": null' in result.stdout
        engine = make_engine(url, pool_size=1)
        try:
            with engine.connect() as conn:
                assert sa.inspect(conn).get_table_names() == []
        finally:
            engine.dispose()
