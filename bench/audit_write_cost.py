"""What the audit-query indexes and the usage counters cost the group-commit writer:
``python -m bench.audit_write_cost [--postgres URL] [--rows N] [--batches K] [--batch B]``.

Three set-ups, each on a fresh database (SQLite file; on PostgreSQL a schema of its own,
dropped at the end) preloaded with N audit records:

* ``before``: the schema before migration ``audit_inventory`` (indexes ``time``, ``identity``),
  writer without usage counters: what an exchange paid before;
* ``indexes``: the schema at head (the filter indexes), writer without usage counters;
* ``indexes+usage``: the schema at head, writer with usage counters (the default).

Each set-up commits K group transactions of B exchanges (an audit row and an issued-token row
each) through ``GroupCommitWriter``, as the token endpoint does, from 60 identities over 3
targets. Reported per exchange: the writer thread's CPU time inside the transaction before
COMMIT (building the counters, the inserts and the upsert, where the extra cost lies; mean over
batches, divided by B; CPU time, so that other processes on the machine do not count), and the
wall time of the whole group commit (with the commit's fsync or round trip; median). Set-ups run alternately, ``--rounds``
times, to spread the machine's noise over all of them. Nothing is asserted; run it on a quiet
machine. docs/audit-queries.md quotes its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert, make_url

from sts.store import migrate
from sts.store.db import make_engine, normalise_url
from sts.store.models import audit_events
from sts.store.records import AuditRecord, IssuedTokenRecord
from sts.store.writer import AUDIT_COLUMNS, GroupCommitWriter, audit_row

TARGETS = ("https://api.example.com", "https://vector.example.com/v1", "billing")


def records(n: int, t: float) -> tuple[AuditRecord, IssuedTokenRecord]:
    identity = f"github:acme/service-{n % 60}"
    target = TARGETS[n % 3]
    jti = secrets.token_urlsafe(18)
    audit = AuditRecord(
        time=t, request_id=secrets.token_hex(16), outcome="issued", client_id=None, issuer="github",
        external_subject="repo:acme/app:ref:refs/heads/main", identity=identity, grant=f"deploy-{n % 7}",
        requested_targets=(target,), granted_target=target, requested_scopes=("read",), granted_scopes=("read",),
        lifetime=900, issued_jti=jti, subject_token_sha256=secrets.token_hex(32), config_version="0123456789ab",
    )  # fmt: skip
    issued = IssuedTokenRecord(
        jti=jti, identity=identity, issuer_name="github", audience=target, scopes="read", issued_at=t,
        expires_at=t + 900, subject_token_sha256=audit.subject_token_sha256 or "", signing_kid="kid",
    )  # fmt: skip
    return audit, issued


def preload(url: str, rows: int) -> None:
    engine = make_engine(url)
    now = time.time()
    with engine.begin() as conn:
        for start in range(0, rows, 5000):
            batch = [dict(zip(AUDIT_COLUMNS, audit_row(records(i, now - rows + i)[0]), strict=True))
                     for i in range(start, min(rows, start + 5000))]
            conn.execute(insert(audit_events), batch)
    engine.dispose()


async def drive(writer: GroupCommitWriter, batches: int, size: int) -> list[float]:
    walls = []
    n = 0
    for _ in range(batches):
        group = []
        for _ in range(size):
            n += 1
            group.append(records(n, time.time()))
        start = time.perf_counter()
        await asyncio.gather(*(writer.write(a, i) for a, i in group))
        walls.append(time.perf_counter() - start)
    return walls


def measure(url: str, *, usage: bool, batches: int, size: int) -> tuple[float, float]:
    engine = make_engine(url)
    writer = GroupCommitWriter(engine, usage=usage)
    inside: list[float] = []
    original = writer._write_rows

    def timed(*args: Any) -> Any:
        # CPU time of the writer thread: what the work costs, not how long it waited for the
        # GIL or the machine (other processes share the cores).
        start = time.thread_time()
        try:
            return original(*args)
        finally:
            inside.append(time.thread_time() - start)

    writer._write_rows = timed  # type: ignore[method-assign]
    writer.start()
    try:
        walls = asyncio.run(drive(writer, batches, size))
    finally:
        writer.stop()
        engine.dispose()
    return statistics.fmean(inside) / size * 1e6, statistics.median(walls) / size * 1e6


def setups(base: str, rows: int, postgres: bool) -> dict[str, tuple[str, bool]]:
    out = {}
    for name, revision, usage in (("before", "audit_inventory-1", False), ("indexes", "head", False), ("indexes+usage", "head", True)):
        if postgres:
            schema = f"sts_bench_{secrets.token_hex(4)}"
            admin = make_engine(base, pool_size=1)
            with admin.begin() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            admin.dispose()
            url = make_url(normalise_url(base)).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
        else:
            url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='sts-bench-')) / 'sts.db'}"
        migrate.upgrade(url, revision)
        preload(url, rows)
        out[name] = (url, usage)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", help="PostgreSQL URL (a schema per set-up is created and dropped)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    backends = [("sqlite", "", False)] + ([("postgresql", args.postgres, True)] if args.postgres else [])
    for label, base, postgres in backends:
        prepared = setups(base, args.rows, postgres)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in prepared}
        try:
            for _ in range(args.rounds):
                for name, (url, usage) in prepared.items():
                    results[name].append(measure(url, usage=usage, batches=args.batches, size=args.batch))
        finally:
            if postgres:
                admin = make_engine(base, pool_size=1)
                with admin.begin() as conn:
                    for url, _ in prepared.values():
                        schema = make_url(url).query["options"].split("=", 1)[1]  # type: ignore[union-attr]
                        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                admin.dispose()
        print(f"{label}: {args.rows} audit rows preloaded, {args.batches} group commits of {args.batch} exchanges, {args.rounds} rounds")
        print(f"  {'set-up':<15} {'writer CPU in transaction, µs/exchange':<40} whole group commit (wall), µs/exchange")
        for name, runs in results.items():
            inside = ", ".join(f"{r[0]:.1f}" for r in runs)
            whole = ", ".join(f"{r[1]:.0f}" for r in runs)
            print(f"  {name:<15} {inside:<40} {whole}")


if __name__ == "__main__":
    main()
