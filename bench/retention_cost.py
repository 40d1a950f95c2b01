"""What retention costs and saves: ``python -m bench.retention_cost [--postgres URL]``.

Three measurements, printed as a table (docs/operations.md quotes them):

1. **Cost of a refused request** on SQLite: the real app (``create_app``) in process, driven
   through httpx's ASGI transport from one peer, with N garbage requests of two kinds (a
   malformed subject token, an unknown client); audit rows and database bytes (pages after a
   WAL checkpoint) added per request, with coalescing off and on.
2. **The group-commit writer during a prune**: a database holding R expired audit records; W
   concurrent writers each commit one audit record after another through ``GroupCommitWriter``
   (as requests do), while the pruner deletes the R rows with the default batch size and
   pause, then as long again without it. Reports the writers' latency (p50, p99, p99.9, max)
   both ways, and the pruner's batches, longest batch and total time.
3. **One batch delete** of the default batch size, timed alone (median of several).

Nothing here is a test and no number is asserted; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import Engine

from sts.app import create_app
from sts.cli.devtools import init_directory
from sts.ops.retention import DAY, Pruner, RetentionPolicy
from sts.settings import Settings
from sts.store import migrate
from sts.store.db import make_engine
from sts.store.records import AuditRecord
from sts.store.retention import delete_audit_batch, pruning_connection
from sts.store.writer import GroupCommitWriter

NOW = time.time()


def record(n: int, t: float) -> AuditRecord:
    """An audit record the size of a typical issued exchange's."""
    return AuditRecord(
        time=t, request_id=secrets.token_hex(16), outcome="issued", client_id=None, issuer="github",
        external_subject="repo:acme/app:ref:refs/heads/main", identity="github:123456/7891011", grant="deploy",
        requested_targets=("https://api.example.com",), granted_target="https://api.example.com",
        requested_scopes=("read",), granted_scopes=("read",), lifetime=900, issued_jti=secrets.token_urlsafe(18),
        subject_token_sha256=secrets.token_hex(32), config_version="0123456789ab",
    )


def db_bytes(engine: Engine) -> int:
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
        size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
        free = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()
    return int((pages - free) * size)


def audit_rows(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        rows, total = conn.execute(text("SELECT count(*), coalesce(sum(count), 0) FROM audit_events")).one()
    return int(rows), int(total)


# --- 1. cost of a refused request ------------------------------------------------------------
async def refusal_cost(workdir: Path, n: int, window: float) -> dict[str, Any]:
    url = f"sqlite:///{workdir / f'refusals-{int(window)}.db'}"
    migrate.upgrade(url)
    kek = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    settings = Settings(config=workdir / "deploy" / "sts.yaml", database_url=url, dev_mode=True, kek=kek,
                        config_reload_interval=0, prune_interval=0, audit_coalesce_window=window)
    app = create_app(settings)
    engine = make_engine(url)
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}
    async with app.app.router.lifespan_context(app.app):
        before_bytes, (before_rows, _) = db_bytes(engine), audit_rows(engine)
        transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://sts.test") as client:
            started = time.perf_counter()
            for i in range(n):
                if i % 2:
                    data = {**form, "subject_token": "garbage." + secrets.token_urlsafe(24)}
                    await client.post("/token", data=data)
                else:
                    await client.post("/token", data={**form, "subject_token": "x"}, auth=("nobody", "wrong"))
            elapsed = time.perf_counter() - started
    rows, total = audit_rows(engine)
    grown = db_bytes(engine) - before_bytes
    engine.dispose()
    return {"window_s": window, "requests": n, "rows": rows - before_rows, "sum_count": total,
            "rows_per_request": (rows - before_rows) / n, "bytes_per_request": grown / n,
            "ms_per_request": 1000 * elapsed / n}


# --- 2. the writer during a prune ------------------------------------------------------------
async def writer_latencies(writer: GroupCommitWriter, writers: int, until: asyncio.Future[Any] | float) -> list[float]:
    latencies: list[float] = []

    async def one() -> None:
        while True:
            if isinstance(until, float):
                if time.perf_counter() >= until:
                    return
            elif until.done():
                return
            started = time.perf_counter()
            await writer.write(record(0, NOW))
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(writers)))
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"writes": len(ordered), "p50_ms": 1000 * ordered[len(ordered) // 2],
            "p99_ms": 1000 * ordered[int(len(ordered) * 0.99)], "p999_ms": 1000 * ordered[int(len(ordered) * 0.999)],
            "max_ms": 1000 * ordered[-1]}


async def prune_cost(url: str, rows: int, writers: int, batch: int, pause: float) -> dict[str, Any]:
    migrate.upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events"))
        conn.execute(text("DELETE FROM issued_tokens"))
    writer = GroupCommitWriter(engine)
    writer.start()
    try:
        old = NOW - 400 * DAY
        for start in range(0, rows, 1000):
            await writer.write(*(record(n, old) for n in range(start, min(rows, start + 1000))))
        pruner = Pruner(engine, RetentionPolicy(audit_days=90, issued_token_days=7), batch_size=batch, pause=pause)
        run = asyncio.ensure_future(asyncio.to_thread(pruner.run_once))
        during = await writer_latencies(writer, writers, run)
        report = await run
        # As long as the prune took, so that both tails come from as many writes.
        baseline = await writer_latencies(writer, writers, time.perf_counter() + report.seconds)
        # 3. one batch delete alone, on the same database refilled
        batch_times = []
        for _ in range(7):
            await writer.write(*(record(n, old) for n in range(batch)))
            with pruning_connection(engine) as conn:
                with conn.begin():
                    started = time.perf_counter()
                    delete_audit_batch(conn, NOW - 90 * DAY, batch)
                batch_times.append(time.perf_counter() - started)
                await asyncio.sleep(0.2)
    finally:
        writer.stop()
        engine.dispose()
    return {"rows": rows, "writers": writers, "batch": batch, "pause_s": pause,
            "without_prune": summary(baseline), "during_prune": summary(during),
            "prune_batches": report.batches, "prune_seconds": report.seconds,
            "longest_batch_ms": 1000 * report.longest_batch_seconds,
            "one_batch_ms_median": 1000 * statistics.median(batch_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--batch", type=int, default=Settings.model_fields["prune_batch_size"].default)
    parser.add_argument("--pause", type=float, default=Settings.model_fields["prune_batch_pause"].default)
    parser.add_argument("--skip-refusals", action="store_true")
    parser.add_argument("--postgres", help="also measure the prune on this PostgreSQL URL (its tables are emptied!)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        init_directory(workdir / "deploy", issuer="http://127.0.0.1:8080", dev=True, force=False)
        for window in () if args.skip_refusals else (0.0, 60.0):
            r = asyncio.run(refusal_cost(workdir, args.requests, window))
            print(f"refusals, coalescing {'off' if not window else f'{window:.0f} s'}: {r['requests']} requests -> "
                  f"{r['rows']} audit rows (sum of count {r['sum_count']}), {r['rows_per_request']:.3f} rows and "
                  f"{r['bytes_per_request']:.0f} bytes per request, {r['ms_per_request']:.2f} ms per request (one at a time)")
        targets = [("sqlite", f"sqlite:///{workdir / 'prune.db'}")]
        if args.postgres:
            targets.append(("postgres", args.postgres))
        for name, url in targets:
            p = asyncio.run(prune_cost(url, args.rows, args.writers, args.batch, args.pause))
            a, b = p["without_prune"], p["during_prune"]
            print(f"{name}: prune of {p['rows']} rows, batch {p['batch']}, pause {p['pause_s']} s: {p['prune_batches']} "
                  f"batches in {p['prune_seconds']:.2f} s, longest batch {p['longest_batch_ms']:.1f} ms, one batch alone "
                  f"{p['one_batch_ms_median']:.1f} ms (median)")
            for label, lat in (("during prune", b), ("without prune", a)):
                print(f"{name}: writer latency with {p['writers']} writers {label}: p50 {lat['p50_ms']:.2f} / p99 "
                      f"{lat['p99_ms']:.2f} / p99.9 {lat['p999_ms']:.2f} / max {lat['max_ms']:.2f} ms ({lat['writes']} writes)")


if __name__ == "__main__":
    main()
