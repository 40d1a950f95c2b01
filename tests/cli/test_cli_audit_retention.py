"""``sts audit prune`` and ``sts audit export`` as an operator runs them (SQLite file)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import Run, assert_one_line_user_error

from sts.ops.archive import EXPORT_FIELDS
from sts.store import migrate
from sts.store.db import make_engine
from sts.store.models import issued_tokens
from sts.store.records import AuditRecord, IssuedTokenRecord
from sts.store.retention import insert_audit_records, pruning_connection
from sts.store.writer import ISSUED_COLUMNS, issued_row

DAY = 86400.0
NOW = time.time()


@pytest.fixture()
def db(cli: Path) -> Path:
    return cli / "var" / "sts.db"


def record(n: int, t: float, **fields: object) -> AuditRecord:
    return AuditRecord(time=t, request_id=f"r-{n}", outcome="denied", error="invalid_request", reason="bad_form",
                       requested_targets=("https://api.example.com",), **fields)  # type: ignore[arg-type]


def populate(db: Path) -> None:
    url = f"sqlite:///{db}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        insert_audit_records(engine, [record(0, NOW - 100 * DAY), record(1, NOW - 95 * DAY, count=12),
                                      record(2, NOW - DAY), record(3, NOW)])
        tokens = [IssuedTokenRecord(jti=f"j-{n}", identity="wl:a", issuer_name="local", audience="a", scopes="",
                                    issued_at=e - 900, expires_at=e, subject_token_sha256="a" * 64, signing_kid="k")
                  for n, e in enumerate([NOW - 8 * DAY, NOW - 6 * DAY])]
        with engine.begin() as conn:
            conn.execute(issued_tokens.insert(), [dict(zip(ISSUED_COLUMNS, issued_row(t), strict=True)) for t in tokens])
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", [["audit", "prune", "--dry-run"], ["audit", "prune"], ["audit", "export"]], ids=" ".join)
def test_no_database_is_reported_and_none_is_created(db: Path, run: Callable[..., Run], command: list[str]) -> None:
    assert_one_line_user_error(run(*command), f"no database at {db}", "run `sts db upgrade`")
    assert not db.parent.exists()


def test_unmigrated_database_is_refused(db: Path, run: Callable[..., Run]) -> None:
    db.parent.mkdir()
    db.touch()
    assert_one_line_user_error(run("audit", "export"), "has no schema", "run `sts db upgrade`")
    assert migrate.current(f"sqlite:///{db}") is None


def test_prune_dry_run_then_prune(db: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    populate(db)
    result = run("audit", "prune", "--dry-run", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] and (report["audit_records"], report["issued_tokens"]) == (2, 1)
    assert not db.with_name("sts.db.prune-lock").exists()

    monkeypatch.setenv("STS_PRUNE_BATCH_SIZE", "1")
    result = run("audit", "prune")
    assert result.code == 0, result.stderr
    assert "audit records: deleted 2 older than" in result.stdout and "issued tokens: deleted 1 expired before" in result.stdout

    again = json.loads(run("audit", "prune", "--json").stdout)
    assert (again["audit_records"], again["issued_tokens"]) == (0, 0)


def test_prune_says_when_days_are_zero(db: Path, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    populate(db)
    monkeypatch.setenv("STS_AUDIT_RETENTION_DAYS", "0")
    result = run("audit", "prune")
    assert result.code == 0 and "audit records: kept forever" in result.stdout


def test_prune_while_another_pruner_runs_exits_1(db: Path, run: Callable[..., Run]) -> None:
    populate(db)
    engine = make_engine(f"sqlite:///{db}")
    try:
        with pruning_connection(engine):
            result = run("audit", "prune")
    finally:
        engine.dispose()
    assert result.code == 1 and "another replica is pruning" in result.stdout


def test_export_to_a_file_and_to_stdout(db: Path, cli: Path, run: Callable[..., Run]) -> None:
    populate(db)
    out = cli / "archive.jsonl"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 99 * DAY))
    result = run("audit", "export", "--since", since, "--until", str(NOW - 1), "--out", str(out), "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["records"] == 2
    lines = out.read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["request_id"] for d in docs] == ["r-1", "r-2"] and [d["count"] for d in docs] == [12, 1]
    assert all(tuple(d) == EXPORT_FIELDS for d in docs)
    assert docs[0]["requested_targets"] == ["https://api.example.com"]
    assert out.stat().st_mode & 0o777 == 0o600
    assert not out.with_name("archive.jsonl.partial").exists()

    assert_one_line_user_error(run("audit", "export", "--out", str(out)), "already exists", "choose a new file name")
    assert out.read_text().splitlines() == lines

    everything = run("audit", "export")
    assert everything.code == 0
    assert [json.loads(line)["request_id"] for line in everything.stdout.splitlines()] == ["r-0", "r-1", "r-2", "r-3"]


@pytest.mark.parametrize(("args", "fragments"), [
    (["--since", "last tuesday"], ("is not a time", "give ISO 8601")),
    (["--since", "2026-02-01", "--until", "2026-01-01"], ("--since is not before --until",)),
], ids=["not-a-time", "since-after-until"])
def test_export_refuses_bad_times(db: Path, run: Callable[..., Run], args: list[str], fragments: tuple[str, ...]) -> None:
    populate(db)
    assert_one_line_user_error(run("audit", "export", *args), *fragments)
