"""``sts audit list`` as an operator runs it (SQLite file): every filter, the human table, JSON
lines, times and durations, ``--follow``, and the errors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import Run, assert_one_line_user_error

from sts.cli.auditquery import Follower, parse_duration
from sts.ops.archive import EXPORT_FIELDS
from sts.store import migrate
from sts.store.db import make_engine
from sts.store.records import AuditRecord
from sts.store.writer import GroupCommitWriter

NOW = time.time()


def record(n: int, t: float, **fields: Any) -> AuditRecord:
    base: dict[str, Any] = {
        "time": t, "request_id": f"req-{n}", "outcome": "issued", "issuer": "github", "client_id": "ci",
        "identity": "github:acme/app", "grant": "deploy", "requested_targets": ("https://api.example.com",),
        "granted_target": "https://api.example.com", "granted_scopes": ("read",), "requested_scopes": ("read",),
    }  # fmt: skip
    base.update(fields)
    return AuditRecord(**base)


def write(url: str, *records: AuditRecord) -> None:
    engine = make_engine(url)
    writer = GroupCommitWriter(engine)
    writer.start()
    try:
        asyncio.run(writer.write(*records))
    finally:
        writer.stop()
        engine.dispose()


RECORDS = [
    record(1, NOW - 3 * 86400, identity="github:acme/old"),
    record(2, NOW - 3600, identity="gitlab:group/project", issuer="gitlab", client_id="deployer", grant="gl",
           granted_target="https://gl.example.com"),
    record(3, NOW - 1800, outcome="denied", error="invalid_scope", reason="scope_not_allowed", granted_target=None, granted_scopes=()),
    record(4, NOW - 600, outcome="error", error="server_error", reason="signing_key_unavailable", granted_target=None,
           granted_scopes=()),
    record(5, NOW - 60, identity="a-much-longer-workload-identity:team/service-with-a-long-name"),
]


@pytest.fixture()
def url(cli: Path) -> str:
    url = f"sqlite:///{cli / 'var' / 'sts.db'}"
    migrate.upgrade(url)
    write(url, *RECORDS)
    return url


def ids(result: Run) -> list[str]:
    assert result.code == 0, result.stderr
    return [json.loads(line)["request_id"] for line in result.stdout.splitlines()]


def test_human_table_newest_at_the_bottom_with_aligned_columns(url: str, run: Callable[..., Run]) -> None:
    result = run("audit", "list")
    assert result.code == 0 and result.stderr == ""
    header, *lines = result.stdout.splitlines()
    assert header.split()[:3] == ["TIME", "REQUEST", "ID"]
    assert [line.split()[1] for line in lines] == ["req-1", "req-2", "req-3", "req-4", "req-5"]
    # Aligned: every column starts where its heading does.
    for heading in ("REQUEST ID", "OUTCOME", "REASON", "IDENTITY", "GRANT", "TARGET"):
        at = header.index(heading)
        assert all(line[at - 1] == " " and line[at] != " " for line in lines), heading
    first = lines[0].split()
    assert first[0] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(RECORDS[0].time))
    assert first[2:] == ["issued", "-", "github:acme/old", "deploy", "https://api.example.com"]
    denied = lines[2].split()
    assert denied[2:4] == ["denied", "scope_not_allowed"] and denied[-1] == "https://api.example.com"  # the requested target


def test_json_lines_carry_the_export_fields(url: str, run: Callable[..., Run]) -> None:
    result = run("audit", "list", "--json")
    assert result.code == 0
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["request_id"] for d in docs] == ["req-1", "req-2", "req-3", "req-4", "req-5"]
    assert all(list(d) == list(EXPORT_FIELDS) for d in docs)
    assert docs[0]["granted_scopes"] == ["read"] and docs[0]["time_utc"].endswith("Z")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--request-id", "req-3"], ["req-3"]),
        (["--identity", "gitlab:group/project"], ["req-2"]),
        (["--issuer", "gitlab"], ["req-2"]),
        (["--client", "deployer"], ["req-2"]),
        (["--grant", "gl"], ["req-2"]),
        (["--target", "https://gl.example.com"], ["req-2"]),
        (["--outcome", "denied"], ["req-3"]),
        (["--outcome", "error"], ["req-4"]),
        (["--reason", "signing_key_unavailable"], ["req-4"]),
        (["--since", "2h"], ["req-2", "req-3", "req-4", "req-5"]),
        (["--since", "45m", "--until", "5m"], ["req-3", "req-4"]),
        (["--since", str(int(NOW - 2 * 86400))], ["req-2", "req-3", "req-4", "req-5"]),
        (["--until", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 86400))], ["req-1"]),
        (["--limit", "2"], ["req-4", "req-5"]),
        (["--outcome", "issued", "--identity", "github:acme/app"], []),
        (["--identity", "nobody"], []),
    ],
    # Absolute times are named by their kind, not their value: ids must be the same in every
    # process that collects them (pytest-xdist compares them).
    ids=lambda v: " ".join("<time>" if a[:1].isdigit() and len(a) >= 8 else a for a in v)
    if isinstance(v, list) and v and v[0].startswith("--") else None,
)
def test_filters(url: str, run: Callable[..., Run], args: list[str], expected: list[str]) -> None:
    assert ids(run("audit", "list", "--json", *args)) == expected


def test_nothing_matching_says_so(url: str, run: Callable[..., Run]) -> None:
    result = run("audit", "list", "--identity", "nobody")
    assert (result.code, result.stdout) == (0, "(no records)\n")
    assert run("audit", "list", "--identity", "nobody", "--json").stdout == ""


def test_database_url_option(url: str, run: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STS_DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert ids(run("audit", "list", "--json", "--database-url", url, "--limit", "1")) == ["req-5"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--since", "yesterday"], ("--since 'yesterday' is not a time", "duration ago (15m, 2h, 7d)")),
        (["--until", "2026-13-01"], ("--until '2026-13-01' is not a time",)),
        (["--since", "1h", "--until", "2h"], ("--since is not before --until",)),
        (["--follow", "--until", "1h"], ("--follow cannot be combined with --until",)),
        (["--limit", "0"], ("'--limit'",)),
        (["--outcome", "refused"], ("'--outcome'",)),
    ],
)
def test_user_errors_are_one_line(url: str, run: Callable[..., Run], args: list[str], fragments: tuple[str, ...]) -> None:
    assert_one_line_user_error(run("audit", "list", *args), *fragments)


def test_no_database_is_a_user_error(cli: Path, run: Callable[..., Run]) -> None:
    assert_one_line_user_error(run("audit", "list", "--since", "1h"), "no database at", "run `sts db upgrade`")


@pytest.fixture()
def follow_stops_after(monkeypatch: pytest.MonkeyPatch, url: str) -> Iterator[list[list[AuditRecord]]]:
    """Each poll of ``--follow`` first commits the next list of records; Ctrl-C after the last."""
    batches: list[list[AuditRecord]] = []

    def sleep(_: float) -> None:
        if not batches:
            raise KeyboardInterrupt
        write(url, *batches.pop(0))

    monkeypatch.setattr("sts.cli.auditquery.time.sleep", sleep)
    yield batches


def test_follow_prints_new_matching_records_and_stops_cleanly_on_ctrl_c(
        follow_stops_after: list[list[AuditRecord]], run: Callable[..., Run]) -> None:
    follow_stops_after.extend([
        [record(6, time.time()), record(7, time.time(), identity="wl:other")],
        [],
        [record(8, time.time())],
    ])
    result = run("audit", "list", "--follow", "--identity", "github:acme/app", "--limit", "1", "--json")
    assert result.code == 0 and "Aborted" not in result.stdout + result.stderr
    assert ids(result) == ["req-4", "req-6", "req-8"]


def test_follow_human_output_keeps_the_columns(follow_stops_after: list[list[AuditRecord]], run: Callable[..., Run]) -> None:
    follow_stops_after.append([record(9, time.time(), outcome="denied", reason="no_grant", grant=None, granted_target=None)])
    result = run("audit", "list", "-f", "--outcome", "denied")
    assert result.code == 0
    header, *lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["req-3", "req-9"]
    at = header.index("REASON")
    assert lines[1][at:].startswith("no_grant")


def test_follow_with_nothing_yet_prints_the_header(follow_stops_after: list[list[AuditRecord]], run: Callable[..., Run]) -> None:
    result = run("audit", "list", "--follow", "--identity", "nobody")
    assert result.code == 0 and result.stdout.startswith("TIME") and len(result.stdout.splitlines()) == 1


def test_follower_catches_a_lower_id_committed_late_and_prints_each_once() -> None:
    # PostgreSQL: replica B inserted id 7 before replica A's id 8 was visible, but committed after.
    committed: dict[int, dict[str, Any]] = {}
    clock = [0.0]

    def fetch(after: int) -> list[dict[str, Any]]:
        return [committed[i] for i in sorted(committed) if i > after]

    follower = Follower(fetch, lambda: max(committed, default=5), 5, grace=10, clock=lambda: clock[0])
    committed[6] = {"id": 6}
    committed[8] = {"id": 8}
    assert [r["id"] for r in follower.poll()] == [6, 8]
    clock[0] = 3
    committed[7] = {"id": 7}
    assert [r["id"] for r in follower.poll()] == [7]
    clock[0] = 6
    assert follower.poll() == []
    clock[0] = 20  # past the grace: the floor moves up and the re-read stops at it
    committed[9] = {"id": 9}
    assert [r["id"] for r in follower.poll()] == [9]
    reads: list[int] = []
    follower._fetch = lambda after: reads.append(after) or []  # type: ignore[assignment,func-returns-value]
    clock[0] = 40
    follower.poll()
    clock[0] = 41
    follower.poll()
    assert reads == [8, 9]  # each poll re-reads only above what the database held 10 s before


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("2h", 7200), ("7d", 604800), ("2w", 1209600), ("90s", 90),
                                               ("1.5h", None), ("h", None), ("-1d", None), ("2026-12-01", None)])
def test_durations(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds
