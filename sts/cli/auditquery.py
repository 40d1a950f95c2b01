"""``sts audit list`` and ``sts inventory`` (docs/audit-queries.md).

``sts audit list`` reads audit records by request id, time window, identity, issuer, client,
grant, target, outcome and reason: the newest ``--limit`` matches, printed oldest first (like
``tail``), so that ``--follow`` continues below them as new records are committed. ``--json``
prints one JSON object per line, the fields of ``sts audit export``.

``sts inventory`` lists every workload identity the broker has seen and what it obtained;
``--unused 30d`` reviews what the trust configuration allows that nobody used in that window.
Both read the usage counters the group-commit writer keeps (sts/store/usage.py), never the
audit records.

Exit codes: 0 success (also when nothing matches, and when ``--follow`` is stopped with
Ctrl-C), 2 a user error (a bad time or duration, no database, no configuration for
``--unused``), 70 a bug.
"""

from __future__ import annotations

import re
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sts.cli.errors import UserError

_DURATION_RE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TIME_FIX = "give a duration ago (15m, 2h, 7d), an ISO 8601 time (2026-12-01, 2026-12-01T08:00:00Z) or epoch seconds"


def parse_duration(text: str) -> int | None:
    """Seconds of ``15m``, ``2h``, ``7d``, ``2w`` (or ``90s``); None if ``text`` is not one."""
    match = _DURATION_RE.fullmatch(text.strip())
    return int(match.group(1)) * _UNITS[match.group(2)] if match else None


def parse_moment(option: str, text: str, now: float) -> float:
    """A ``--since``/``--until`` value: a duration before ``now``, ISO 8601 or epoch seconds
    (parsed by sts.ops.archive, as ``sts audit export`` does)."""
    from sts.ops.archive import BadTime, parse_time

    seconds = parse_duration(text)
    if seconds is not None:
        return now - seconds
    try:
        return parse_time(text)
    except BadTime:
        raise UserError(f"{option} {text!r} is not a time", _TIME_FIX) from None


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t is not None else "-"


def _engine(database_url: str | None) -> Any:
    from sts.cli.main import _open_database, _settings

    return _open_database(_settings(database_url=database_url).database_url)


def _emit(data: Any, as_json: bool, human: str) -> None:
    from sts.cli.main import emit

    emit(data, as_json, human)


# --- sts audit list ------------------------------------------------------------------------------

_COLUMNS: tuple[tuple[str, int], ...] = (
    ("TIME", 20), ("REQUEST ID", 32), ("OUTCOME", 7), ("REASON", 18), ("IDENTITY", 24), ("GRANT", 12), ("TARGET", 0),
)  # fmt: skip


def _cells(r: dict[str, Any]) -> list[str]:
    target = r.get("granted_target") or ",".join(r.get("requested_targets") or []) or "-"
    if (r.get("count") or 1) > 1:
        target += f" (x{r['count']})"
    return [_when(r["time"]), r["request_id"], r["outcome"], r.get("reason") or "-", r.get("identity") or "-",
            r.get("grant") or "-", target]


def column_widths(rows: list[dict[str, Any]]) -> list[int]:
    """Each column as wide as its widest value (at least its heading and a usual width, so
    that records arriving under ``--follow`` mostly fit; a wider one pushes its line)."""
    widths = [max(len(name), minimum) for name, minimum in _COLUMNS]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, _cells(r), strict=True)]
    return widths


def format_row(cells: list[str], widths: list[int]) -> str:
    return " ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=False)) + " " + cells[-1]


class Follower:
    """Finds audit records committed after the previous poll, each exactly once.

    Records are read by id. On PostgreSQL an id is taken when a row is inserted, so a
    transaction of another replica can commit a lower id after a higher one is visible; the
    follower therefore re-reads the ids above the highest id the database held ``grace``
    seconds ago and skips those it printed. A group commit waits at most 10 s for the database
    (sts.audit), well within the default grace, so no committed record is missed. On SQLite
    ids are committed in order and the re-read finds nothing new. (A record whose transaction
    was in flight at the very start, with an id below the start, is not shown.)
    """

    def __init__(self, fetch: Callable[[int], list[dict[str, Any]]], last_id: Callable[[], int], start: int, *,
                 grace: float = 15.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._last_id = last_id
        self._floor = start
        self._grace = grace
        self._clock = clock
        self._seen: set[int] = set()
        self._marks: deque[tuple[float, int]] = deque()

    def seen(self, ids: list[int]) -> None:
        self._seen.update(i for i in ids if i > self._floor)

    def poll(self) -> list[dict[str, Any]]:
        now = self._clock()
        top = self._last_id()  # before the read: every id up to it is visible or in flight
        rows = self._fetch(self._floor)
        fresh = [r for r in rows if r["id"] not in self._seen]
        self._seen.update(r["id"] for r in fresh)
        self._marks.append((now, top))
        while self._marks and now - self._marks[0][0] >= self._grace:
            self._floor = max(self._floor, self._marks.popleft()[1])
        self._seen = {i for i in self._seen if i > self._floor}
        return fresh


@click.command("list")
@click.option("--request-id", help="the record of this request id (the `request_id` of the error answer)")
@click.option("--since", help="from this time, inclusive: a duration ago (15m, 2h, 7d), ISO 8601 or epoch seconds")
@click.option("--until", help="up to this time, exclusive, in the same forms")
@click.option("--identity", help="workload identity (as mapped, e.g. github:acme/app)")
@click.option("--issuer", help="configured issuer or trust domain name")
@click.option("--client", "client_id", help="client id")
@click.option("--grant", help="grant name")
@click.option("--target", help="granted audience or resource")
@click.option("--outcome", type=click.Choice(["issued", "denied", "error"]))
@click.option("--reason", help="refusal reason code (e.g. no_grant, scope_not_allowed)")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="at most this many records (the newest)")
@click.option("--follow", "-f", is_flag=True, help="keep printing new matching records as they are committed; stop with Ctrl-C")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True, help="with --follow: seconds between polls")
@click.option("--database-url", help="SQLAlchemy URL (STS_DATABASE_URL)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line (the fields of `sts audit export`)")
def audit_list(request_id: str | None, since: str | None, until: str | None, identity: str | None, issuer: str | None,
               client_id: str | None, grant: str | None, target: str | None, outcome: str | None, reason: str | None,
               limit: int, follow: bool, interval: float, database_url: str | None, as_json: bool) -> None:
    """Show audit records matching every filter given: the newest --limit, oldest first."""
    from sts.ops.archive import export_line
    from sts.store.queries import AuditFilter, audit_after, last_audit_id, list_audit

    now = time.time()
    start = parse_moment("--since", since, now) if since is not None else None
    end = parse_moment("--until", until, now) if until is not None else None
    if start is not None and end is not None and start >= end:
        raise UserError("--since is not before --until", "give a --since earlier than --until")
    if follow and end is not None:
        raise UserError("--follow cannot be combined with --until", "leave out --until to follow new records")
    where = AuditFilter(request_id=request_id, identity=identity, issuer=issuer, client_id=client_id, grant=grant,
                        target=target, outcome=outcome, reason=reason, since=start, until=end)
    engine = _engine(database_url)
    try:
        with engine.connect() as conn:
            top = last_audit_id(conn)
            rows = list_audit(conn, where, limit=limit)[::-1]
        widths = column_widths(rows)

        def show(batch: list[dict[str, Any]]) -> None:
            if as_json:
                for r in batch:
                    click.echo(export_line(r))
            else:
                for r in batch:
                    click.echo(format_row(_cells(r), widths))

        if not as_json and (rows or follow):
            click.echo(format_row([name for name, _ in _COLUMNS], widths).rstrip())
        show(rows)
        sys.stdout.flush()
        if not follow:
            if not rows and not as_json:
                click.echo("(no records)")
            return

        def fetch(after: int) -> list[dict[str, Any]]:
            with engine.connect() as conn:
                return audit_after(conn, where, after)

        def newest_id() -> int:
            with engine.connect() as conn:
                return last_audit_id(conn)

        follower = Follower(fetch, newest_id, top)
        follower.seen([r["id"] for r in rows])
        try:
            while True:
                time.sleep(interval)
                show(follower.poll())
                sys.stdout.flush()
        except KeyboardInterrupt:
            return
    finally:
        engine.dispose()


# --- sts inventory ---------------------------------------------------------------------------------


def _target_text(targets: list[Any]) -> str:
    return "; ".join(f"{t.target} ({' '.join(t.scopes) or 'no scope'})" for t in targets) or "-"


@click.command("inventory")
@click.option("--unused", "window", metavar="DURATION",
              help="review instead: what the configuration allows that was not used in this window (30d, 12w)")
@click.option("--config", "config", type=click.Path(path_type=Path), help="with --unused: trust configuration, a file or a directory (STS_CONFIG)")
@click.option("--identity", help="only this workload identity")
@click.option("--database-url", help="SQLAlchemy URL (STS_DATABASE_URL)")
@click.option("--json", "as_json", is_flag=True)
def inventory(window: str | None, config: Path | None, identity: str | None, database_url: str | None, as_json: bool) -> None:
    """Every workload identity the broker has seen: issuer, first and last seen, the targets
    and scopes it obtained, its refusals. With --unused: grants, issuers, targets and scopes
    the configuration allows that nobody used, and identities that matched a grant but did
    not exchange, each with what to remove."""
    from sts.store.usage import read_usage

    if window is not None:
        if identity is not None:
            raise UserError("--identity lists one identity's inventory; --unused reviews the whole configuration",
                            "leave out one of them (identities in the review say which grant they matched)")
        _unused(window, config, database_url, as_json)
        return
    from sts.ops.inventory import inventory as build

    engine = _engine(database_url)
    try:
        with engine.connect() as conn:
            entries = build(read_usage(conn, identity=identity))
    finally:
        engine.dispose()
    header = ["IDENTITY", "ISSUER", "FIRST SEEN", "LAST SEEN", "ISSUED", "DENIED", "TARGETS (SCOPES)"]
    table = [[e.identity, e.issuer or "-", _when(e.first_seen), _when(e.last_seen), str(e.issued), str(e.denied + e.errors),
              _target_text(e.targets)] for e in entries]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header) - 1)]
    lines = [format_row(header, widths).rstrip(), *(format_row(row, widths) for row in table)]
    _emit({"identities": [e.as_dict() for e in entries]}, as_json,
          "\n".join(lines) if entries else "(no workload identity has exchanged a token yet)")


def _unused(window: str, config: Path | None, database_url: str | None, as_json: bool) -> None:
    from sts.cli.main import _settings
    from sts.config.loader import load_config
    from sts.ops.inventory import unused
    from sts.store.usage import read_usage

    seconds = parse_duration(window)
    if seconds is None or seconds <= 0:
        raise UserError(f"--unused {window!r} is not a duration", "give a window such as 30d, 12w or 24h")
    settings = _settings(config=config, database_url=database_url)
    if not settings.config.exists():  # a file, or a directory of files where the loader takes one
        raise UserError(f"no configuration at {settings.config}",
                        "give --config or STS_CONFIG: the review compares what it allows with what was used")
    loaded = load_config(settings.config)
    now = time.time()
    since = now - seconds
    from sts.cli.main import _open_database

    engine = _open_database(settings.database_url)
    try:
        with engine.connect() as conn:
            in_window = read_usage(conn, since=since)
            history = read_usage(conn)
    finally:
        engine.dispose()
    findings = unused(loaded.config, in_window, history, days=seconds / 86400)
    counters_since = min((r.first_seen for r in history), default=None)
    short = counters_since is None or counters_since > since
    data = {"since": since, "until": now, "config": str(settings.config), "config_version": loaded.version,
            "counters_since": counters_since, "findings": [f.as_dict() for f in findings]}
    lines = [f.action for f in findings] or [f"nothing unused: every grant, issuer, target and scope was used since {_when(since)}"]
    if short:
        lines.append(f"note: usage counters start {_when(counters_since) if counters_since else 'with the first exchange (none yet)'}, "
                     "after the window's start: the review covers less than the window")
    _emit(data, as_json, "\n".join(lines))
