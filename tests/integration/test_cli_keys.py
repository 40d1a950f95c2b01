"""``sts keys`` and ``sts serve`` against the KEK: refusals write nothing, one dev KEK location,
``--alg`` checked against the configuration, KEK rotation with ``sts keys rewrap``."""

from __future__ import annotations

import base64
import json
import re
import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from broker_harness import free_port
from sts.cli.main import main
from sts.settings import DEV_KEK_FILE, kek_id
from sts.store.db import make_engine
from sts.store.keys import KeyRepository
from sts.store.records import ReplicaRecord
from sts.store.replicas import ReplicaRepository

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("STS_KEK", "STS_KEK_FILE", "STS_KEK_PREVIOUS", "STS_KEK_PREVIOUS_FILE", "STS_DEV_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STS_DATABASE_URL", f"sqlite:///{tmp_path / 'sts.db'}")
    monkeypatch.setenv("STS_CONFIG", str(tmp_path / "deploy" / "sts.yaml"))
    monkeypatch.setenv("STS_KEK_FILE", str(tmp_path / "deploy" / "kek"))
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def new_kek(path: Path) -> bytes:
    raw = secrets.token_bytes(32)
    path.write_text(base64.urlsafe_b64encode(raw).decode().rstrip("=") + "\n")
    return raw


def stored(cli_env: Path) -> tuple[list[object], list[object]]:
    engine = make_engine(f"sqlite:///{cli_env / 'sts.db'}")
    try:
        return list(KeyRepository(engine).list()), list(ReplicaRepository(engine).list())
    finally:
        engine.dispose()


def assert_one_line_refusal(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    # `sts serve` logs JSON lines to stderr before it refuses; the refusal is the one plain line.
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("sts: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture()
def deployed(cli_env: Path) -> Path:
    """`sts init deploy`, migrated, with the first keys sealed under deploy/kek."""
    assert run("init", "deploy").exit_code == 0
    assert run("db", "upgrade").exit_code == 0
    result = run("keys", "rotate", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["ES256"]["created"], result.output
    return cli_env


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("keys", "rotate"), id="keys-rotate"),
        pytest.param(("keys", "rotate", "--alg", "ES256", "--json"), id="keys-rotate-alg"),
        pytest.param(("keys", "rewrap"), id="keys-rewrap"),
        pytest.param(("keys", "rewrap", "--dry-run", "--json"), id="keys-rewrap-dry-run"),
        pytest.param(("serve", "--config", "deploy/sts.yaml"), id="serve"),
        pytest.param(("serve", "--config", "deploy/sts.yaml", "--workers", "2"), id="serve-workers"),
    ],
)
def test_a_wrong_kek_is_refused_and_nothing_is_written(deployed: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]) -> None:
    before = stored(deployed)
    new_kek(deployed / "stray.kek")
    monkeypatch.setenv("STS_KEK_FILE", str(deployed / "stray.kek"))
    extra = ("--port", str(free_port())) if args[0] == "serve" else ()
    result = run(*args, *extra)
    assert_one_line_refusal(result, 2, "opens none of the 2 stored signing keys", "STS_KEK_FILE=", "nothing was changed")
    assert stored(deployed) == before


def test_dev_mode_uses_the_kek_that_make_run_uses(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The Makefile's dev KEK is the settings' one dev KEK location.
    makefile = (REPO_ROOT / "Makefile").read_text()
    dev_dir = re.search(r"^DEV\s*:=\s*(\S+)", makefile, re.M)
    assert dev_dir is not None and "STS_KEK_FILE=$(DEV)/kek" in makefile
    assert Path(dev_dir.group(1)) / "kek" == DEV_KEK_FILE

    # `make run`: sts init var/dev --dev, then commands with STS_KEK_FILE=var/dev/kek.
    monkeypatch.setenv("STS_CONFIG", "var/dev/sts.yaml")
    monkeypatch.setenv("STS_KEK_FILE", "var/dev/kek")
    assert run("init", "var/dev", "--dev").exit_code == 0
    assert run("db", "upgrade").exit_code == 0
    assert run("keys", "rotate").exit_code == 0
    # Later, a command in dev mode without STS_KEK_FILE finds the same KEK, not a second one.
    monkeypatch.delenv("STS_KEK_FILE")
    monkeypatch.setenv("STS_DEV_MODE", "true")
    result = run("keys", "rotate", "--alg", "ES256", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ES256"]["promoted"]
    keks = sorted(str(p.relative_to(cli_env)) for p in cli_env.rglob("*kek*"))
    assert keks == ["var/dev/kek"]
    keys, _ = stored(cli_env)
    assert {k.kek_id for k in keys} == {kek_id(base64.urlsafe_b64decode((cli_env / DEV_KEK_FILE).read_text().strip() + "="))}


@pytest.mark.parametrize("args", [("keys", "rotate"), ("serve", "--config", "deploy/sts.yaml", "--dev")], ids=["keys-rotate", "serve"])
def test_dev_mode_never_writes_a_new_kek_that_opens_nothing(deployed: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]) -> None:
    before = stored(deployed)
    monkeypatch.delenv("STS_KEK_FILE")
    monkeypatch.setenv("STS_DEV_MODE", "true")
    extra = ("--port", str(free_port())) if args[0] == "serve" else ()
    result = run(*args, *extra)
    assert_one_line_refusal(result, 2, "dev KEK var/dev/kek (new)", "opens none")
    assert not (deployed / DEV_KEK_FILE).exists()
    assert stored(deployed) == before


@pytest.mark.parametrize(
    ("alg", "fragment"),
    [pytest.param("RS256", "signs with ES256 only", id="not-configured"), pytest.param("HS256", "signs with ES256 only", id="not-a-signing-alg")],
)
def test_rotate_refuses_an_algorithm_the_configuration_does_not_sign_with(cli_env: Path, alg: str, fragment: str) -> None:
    assert run("init", "deploy").exit_code == 0
    assert run("db", "upgrade").exit_code == 0
    assert_one_line_refusal(run("keys", "rotate", "--alg", alg), 2, f"--alg {alg}", fragment)
    assert stored(cli_env) == ([], [])


def test_rotate_needs_the_configuration(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("db", "upgrade").exit_code == 0
    monkeypatch.setenv("STS_CONFIG", str(cli_env / "missing.yaml"))
    assert_one_line_refusal(run("keys", "rotate"), 2, "no configuration at", "STS_CONFIG")


def test_rotate_refuses_an_unmigrated_database(cli_env: Path) -> None:
    assert run("init", "deploy").exit_code == 0
    assert_one_line_refusal(run("keys", "rotate"), 2, "sts db upgrade")


def test_keys_list_says_whether_the_kek_opens_each_key(deployed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = json.loads(run("keys", "list", "--json").stdout)
    assert len(listed) == 2 and all(k["opens"] is True for k in listed)
    new_kek(deployed / "stray.kek")
    monkeypatch.setenv("STS_KEK_FILE", str(deployed / "stray.kek"))
    result = run("keys", "list")
    assert result.exit_code == 0 and "warning: the configured KEK opens none of these keys" in result.stdout
    assert all(k["opens"] is False for k in json.loads(run("keys", "list", "--json").stdout))


def test_kek_rotation_with_rewrap(deployed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_path = deployed / "deploy" / "kek"
    new = new_kek(deployed / "new.kek")
    assert run("keys", "rotate").exit_code == 0  # a retired key too
    kids = {k.kid for k in stored(deployed)[0]}
    monkeypatch.setenv("STS_KEK_FILE", str(deployed / "new.kek"))
    monkeypatch.setenv("STS_KEK_PREVIOUS_FILE", str(old_path))

    # A running replica that holds only the old KEK blocks the rewrap.
    engine = make_engine(f"sqlite:///{deployed / 'sts.db'}")
    replicas = ReplicaRepository(engine)
    old_id = kek_id(base64.urlsafe_b64decode(old_path.read_text().strip() + "="))
    replicas.report(ReplicaRecord("web-0", frozenset({old_id}), 0.0, 1e10, 1e10 + 90))
    before = stored(deployed)
    assert_one_line_refusal(run("keys", "rewrap"), 1, "replica web-0 does not hold the new KEK", "STS_KEK_PREVIOUS")
    assert stored(deployed) == before
    replicas.report(ReplicaRecord("web-0", frozenset({old_id, kek_id(new)}), 0.0, 1e10, 1e10 + 90))
    before = stored(deployed)
    listed = run("keys", "replicas", "--json")
    assert json.loads(listed.stdout)[0]["replica_id"] == "web-0"
    engine.dispose()

    dry = run("keys", "rewrap", "--dry-run", "--json")
    assert dry.exit_code == 0 and set(json.loads(dry.stdout)["rewrapped"]) == kids
    assert stored(deployed) == before
    done = run("keys", "rewrap")
    assert done.exit_code == 0 and f"re-encrypted {len(kids)} signing key(s) under KEK id {kek_id(new)}" in done.stdout
    assert {k.kek_id for k in stored(deployed)[0]} == {kek_id(new)}
    assert "already sealed" in run("keys", "rewrap").stdout

    # The old KEK can be retired: the new one alone works, the old one alone is refused.
    monkeypatch.delenv("STS_KEK_PREVIOUS_FILE")
    assert run("keys", "rotate").exit_code == 0
    monkeypatch.setenv("STS_KEK_FILE", str(old_path))
    assert_one_line_refusal(run("keys", "rotate"), 2, "opens none")


def test_rewrap_refuses_without_the_previous_kek(deployed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new_kek(deployed / "new.kek")
    old = (deployed / "deploy" / "kek").read_text()
    # The new KEK current, the old one missing: it opens none of the keys.
    monkeypatch.setenv("STS_KEK_FILE", str(deployed / "new.kek"))
    before = stored(deployed)
    assert_one_line_refusal(run("keys", "rewrap"), 2, "opens none")
    assert stored(deployed) == before
    assert (deployed / "deploy" / "kek").read_text() == old


def test_rotate_is_refused_while_a_running_replica_cannot_open_the_next_key(deployed: Path) -> None:
    engine = make_engine(f"sqlite:///{deployed / 'sts.db'}")
    ReplicaRepository(engine).report(ReplicaRecord("web-9", frozenset({"0123456789abcdef"}), 0.0, 1e10, 1e10 + 90))
    engine.dispose()
    before = stored(deployed)
    result = run("keys", "rotate")
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith("ES256: not rotated: replica web-9 does not hold KEK id")
    assert stored(deployed) == before
