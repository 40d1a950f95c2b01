"""``sts inventory`` and ``sts inventory --unused`` as an operator runs them (SQLite file)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_support import Run, assert_one_line_user_error

from sts.store import migrate
from sts.store.db import make_engine
from sts.store.records import AuditRecord
from sts.store.writer import GroupCommitWriter

NOW = time.time()
DAY = 86400.0

CONFIG: dict[str, Any] = {
    "issuer": "https://sts.example.com",
    "issuers": [{"name": "github", "issuer": "https://token.actions.githubusercontent.com", "audiences": ["sts"]}],
    "grants": [
        {"name": "deploy", "match": {"identity_pattern": "^github:acme/.*$"},
         "targets": [{"audience": "https://api.example.com", "scopes": ["read", "write"]},
                     {"audience": "https://old.example.com", "scopes": ["read"]}]},
        {"name": "nightly", "match": {"identity": "github:acme/nightly"}, "targets": [{"audience": "https://api.example.com"}]},
    ],
}


def record(n: int, t: float, **fields: Any) -> AuditRecord:
    base: dict[str, Any] = {
        "time": t, "request_id": f"req-{n}", "outcome": "issued", "issuer": "github", "identity": "github:acme/app",
        "grant": "deploy", "granted_target": "https://api.example.com", "granted_scopes": ("read",),
    }  # fmt: skip
    base.update(fields)
    return AuditRecord(**base)


@pytest.fixture()
def config(cli: Path) -> Path:
    path = cli / "sts.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.fixture()
def url(cli: Path) -> str:
    url = f"sqlite:///{cli / 'var' / 'sts.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    writer = GroupCommitWriter(engine)
    writer.start()
    try:
        asyncio.run(writer.write(
            record(1, NOW - 60 * DAY, identity="github:acme/retired", granted_target="https://old.example.com"),
            record(2, NOW - 2 * DAY),
            record(3, NOW - DAY),
            record(4, NOW - 3600, outcome="denied", reason="scope_not_allowed", granted_target=None, granted_scopes=()),
            record(5, NOW - 60, identity="gitlab:group/x", issuer="gitlab", outcome="denied", reason="no_grant", grant=None,
                   granted_target=None, granted_scopes=()),
        ))
    finally:
        writer.stop()
        engine.dispose()
    return url


def test_inventory_lists_every_identity(url: str, run: Callable[..., Run]) -> None:
    result = run("inventory")
    assert result.code == 0 and result.stderr == ""
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["IDENTITY", "ISSUER", "FIRST", "SEEN", "LAST", "SEEN", "ISSUED", "DENIED", "TARGETS", "(SCOPES)"]
    assert [line.split()[0] for line in lines] == ["github:acme/app", "github:acme/retired", "gitlab:group/x"]
    app = lines[0].split()
    assert app[1] == "github" and app[4:6] == ["2", "1"] and " ".join(app[6:]) == "https://api.example.com (read)"
    assert app[2] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 2 * DAY))
    assert lines[2].split()[4:] == ["0", "1", "-"]
    for heading in ("ISSUER", "FIRST SEEN", "LAST SEEN", "ISSUED", "DENIED", "TARGETS"):
        at = header.index(heading)
        assert all(line[at - 1] == " " and line[at] != " " for line in lines), heading


def test_inventory_json(url: str, run: Callable[..., Run]) -> None:
    result = run("inventory", "--json")
    assert result.code == 0
    entries = {e["identity"]: e for e in json.loads(result.stdout)["identities"]}
    app = entries["github:acme/app"]
    assert (app["issuer"], app["issued"], app["denied"], app["errors"]) == ("github", 2, 1, 0)
    assert app["targets"] == [{"target": "https://api.example.com", "scopes": ["read"], "count": 2, "last_seen": NOW - DAY}]
    assert app["denial_reasons"] == {"scope_not_allowed": 1}
    assert (app["first_seen"], app["last_seen"], app["last_issued"]) == (NOW - 2 * DAY, NOW - 3600, NOW - DAY)
    assert entries["gitlab:group/x"]["grants"] == [] and entries["gitlab:group/x"]["denial_reasons"] == {"no_grant": 1}


def test_inventory_of_one_identity(url: str, run: Callable[..., Run]) -> None:
    result = run("inventory", "--identity", "github:acme/retired", "--json")
    assert [e["identity"] for e in json.loads(result.stdout)["identities"]] == ["github:acme/retired"]


def test_empty_inventory(cli: Path, run: Callable[..., Run]) -> None:
    migrate.upgrade(f"sqlite:///{cli / 'var' / 'sts.db'}")
    result = run("inventory")
    assert (result.code, result.stdout) == (0, "(no workload identity has exchanged a token yet)\n")
    assert json.loads(run("inventory", "--json").stdout) == {"identities": []}


def test_unused_says_what_to_remove(url: str, config: Path, run: Callable[..., Run]) -> None:
    result = run("inventory", "--unused", "30d", "--config", str(config))
    assert result.code == 0, result.stderr
    day = time.strftime("%Y-%m-%d", time.gmtime(NOW - 60 * DAY))
    assert result.stdout.splitlines() == [
        "remove scope write from target https://api.example.com of grant deploy: not granted in 30 days (never used)",
        f"remove target https://old.example.com from grant deploy: issued no token for it in 30 days (last used {day})",
        f"identity github:acme/retired (github) matched grant deploy but did not exchange through it in 30 days (last used {day}): "
        "narrow the grant's match to leave it out, or retire the workload",
        "remove grant nightly (match: identity github:acme/nightly): it issued nothing in 30 days (never used)",
    ]


def test_unused_json_and_a_longer_window(url: str, config: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STS_CONFIG", str(config))
    data = json.loads(run("inventory", "--unused", "12w", "--json").stdout)
    assert [(f["kind"], f["grant"]) for f in data["findings"]] == [("scope", "deploy"), ("grant", "nightly")]
    assert data["findings"][0]["scope"] == "write" and data["findings"][0]["action"].startswith("remove scope write")
    assert data["until"] - data["since"] == pytest.approx(84 * DAY)
    assert data["counters_since"] == NOW - 60 * DAY and len(data["config_version"]) == 12


def test_unused_notes_when_the_counters_are_younger_than_the_window(url: str, config: Path, run: Callable[..., Run]) -> None:
    result = run("inventory", "--unused", "365d", "--config", str(config))
    assert result.code == 0
    assert result.stdout.splitlines()[-1].startswith("note: usage counters start ")


def test_nothing_unused(cli: Path, config: Path, run: Callable[..., Run]) -> None:
    url = f"sqlite:///{cli / 'var' / 'sts.db'}"
    migrate.upgrade(url)
    config.write_text(yaml.safe_dump({**CONFIG, "grants": [{"name": "deploy", "match": {"identity_pattern": "^github:acme/.*$"},
                                                            "targets": [{"audience": "https://api.example.com", "scopes": ["read"]}]}]}))
    engine = make_engine(url)
    writer = GroupCommitWriter(engine)
    writer.start()
    asyncio.run(writer.write(record(1, NOW - 31 * DAY), record(2, NOW - DAY)))
    writer.stop()
    engine.dispose()
    result = run("inventory", "--unused", "30d", "--config", str(config))
    assert result.code == 0 and result.stdout.startswith("nothing unused: every grant, issuer, target and scope was used since ")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--unused", "30"], ("--unused '30' is not a duration", "30d")),
        (["--unused", "0d"], ("is not a duration",)),
        (["--unused", "30d", "--config", "missing.yaml"], ("no configuration at missing.yaml", "--config or STS_CONFIG")),
        (["--unused", "30d", "--identity", "x"], ("--identity lists one identity's inventory",)),
    ],
)
def test_user_errors_are_one_line(url: str, run: Callable[..., Run], args: list[str], fragments: tuple[str, ...]) -> None:
    assert_one_line_user_error(run("inventory", *args), *fragments)


def test_an_invalid_configuration_is_a_user_error(url: str, config: Path, run: Callable[..., Run]) -> None:
    config.write_text("issuer: https://sts.example.com\ngrants: 3\n")
    result = run("inventory", "--unused", "30d", "--config", str(config))
    assert result.code == 2 and "Traceback" not in result.stderr and result.stderr.startswith("sts: ")


def test_no_database_is_a_user_error(cli: Path, run: Callable[..., Run]) -> None:
    assert_one_line_user_error(run("inventory"), "no database at", "run `sts db upgrade`")


def test_unused_reads_a_configuration_directory(url: str, run: Callable[..., Run]) -> None:
    import sts

    directory = Path(sts.__file__).parent / "examples" / "trust"  # sts.yaml, issuers/, grants/
    result = run("inventory", "--unused", "30d", "--config", str(directory), "--json")
    assert result.code == 0, result.stderr
    assert [(f["kind"], f["grant"]) for f in json.loads(result.stdout)["findings"]] == [("grant", "deploy")]
