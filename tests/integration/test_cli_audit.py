"""``sts audit prune`` and ``sts audit export`` as an operator runs them (SQLite file)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sts.cli.main import main
from sts.ops.archive import EXPORT_FIELDS
from sts.store import migrate
from sts.store.db import make_engine
from sts.store.records import AuditRecord, IssuedTokenRecord
from sts.store.retention import insert_audit_records

DAY = 86400.0
NOW = time.time()


@pytest.fixture()
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "data" / "sts.db"
    monkeypatch.setenv("STS_DATABASE_URL", f"sqlite:///{path}")
    for name in ("STS_AUDIT_RETENTION_DAYS", "STS_ISSUED_TOKEN_RETENTION_DAYS", "STS_PRUNE_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


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
        from sts.store.models import issued_tokens
        from sts.store.writer import ISSUED_COLUMNS, issued_row

        tokens = [IssuedTokenRecord(jti=f"j-{n}", identity="wl:a", issuer_name="local", audience="a", scopes="",
                                    issued_at=e - 900, expires_at=e, subject_token_sha256="a" * 64, signing_kid="k")
                  for n, e in enumerate([NOW - 8 * DAY, NOW - 6 * DAY])]
        with engine.begin() as conn:
            conn.execute(issued_tokens.insert(), [dict(zip(ISSUED_COLUMNS, issued_row(t), strict=True)) for t in tokens])
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", [["audit", "prune", "--dry-run"], ["audit", "prune"], ["audit", "export"]])
def test_no_database_is_reported_and_none_is_created(db: Path, command: list[str]) -> None:
    result = run(*command)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "no database at" in result.stderr and "Traceback" not in result.output
    assert not db.exists() and not db.parent.exists()


def test_unmigrated_database_is_refused(db: Path) -> None:
    db.parent.mkdir()
    db.touch()
    result = run("audit", "export")
    assert result.exit_code == 2 and "sts db upgrade" in result.stderr
    assert migrate.current(f"sqlite:///{db}") is None  # nothing was migrated or created in it


def test_prune_dry_run_then_prune(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    populate(db)
    result = run("audit", "prune", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dry_run"] and (report["audit_records"], report["issued_tokens"]) == (2, 1)
    assert not db.with_name("sts.db.prune-lock").exists()

    monkeypatch.setenv("STS_PRUNE_BATCH_SIZE", "1")
    result = run("audit", "prune")
    assert result.exit_code == 0, result.output
    assert "audit records: deleted 2 older than" in result.stdout and "issued tokens: deleted 1 expired before" in result.stdout

    result = run("audit", "prune", "--json")
    assert (json.loads(result.stdout)["audit_records"], json.loads(result.stdout)["issued_tokens"]) == (0, 0)


def test_prune_says_when_days_are_zero(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    populate(db)
    monkeypatch.setenv("STS_AUDIT_RETENTION_DAYS", "0")
    result = run("audit", "prune")
    assert result.exit_code == 0 and "audit records: kept forever" in result.stdout


def test_prune_while_another_pruner_runs_exits_1(db: Path) -> None:
    from sts.store.retention import pruning_connection

    populate(db)
    engine = make_engine(f"sqlite:///{db}")
    try:
        with pruning_connection(engine):
            result = run("audit", "prune")
    finally:
        engine.dispose()
    assert result.exit_code == 1 and "another replica is pruning" in result.stdout


def test_export_to_a_file_and_to_stdout(db: Path, tmp_path: Path) -> None:
    populate(db)
    out = tmp_path / "archive.jsonl"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 99 * DAY))
    result = run("audit", "export", "--since", since, "--until", str(NOW - 1), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["records"] == 2
    lines = out.read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["request_id"] for d in docs] == ["r-1", "r-2"] and [d["count"] for d in docs] == [12, 1]
    assert all(tuple(d) == EXPORT_FIELDS for d in docs)
    assert docs[0]["requested_targets"] == ["https://api.example.com"]
    assert out.stat().st_mode & 0o777 == 0o600
    assert not out.with_name("archive.jsonl.partial").exists()

    again = run("audit", "export", "--out", str(out))
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert out.read_text().splitlines() == lines

    everything = run("audit", "export")
    assert everything.exit_code == 0
    assert [json.loads(line)["request_id"] for line in everything.stdout.splitlines()] == ["r-0", "r-1", "r-2", "r-3"]


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "last tuesday"], "is not a time"),
    (["--since", "2026-02-01", "--until", "2026-01-01"], "--since must be before --until"),
])
def test_export_refuses_bad_times(db: Path, args: list[str], message: str) -> None:
    populate(db)
    result = run("audit", "export", *args)
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1
