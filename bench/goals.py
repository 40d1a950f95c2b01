"""Issue 9's goals, checked against the scenarios of one run (pure: records in, rows out).

Every goal is a ratio or a figure within the same run, so it holds on a slower or busier
machine. Each row names the worst measured value and the scenario it comes from; a goal whose
scenarios did not run says "not measured" instead of passing. An open-loop latency goal is not
met when the generator could not offer the rate (``not_sent``) or answers were still missing
when the phase drained (``unanswered``), whatever the percentiles say.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CPU_VS_FLOOR_SQLITE = 1.6  # server CPU per exchange, SQLite, 1 worker
CPU_VS_FLOOR_POSTGRES = 2.0  # server + PostgreSQL CPU per exchange
THROUGHPUT_VS_PEER = 1.5  # saturation throughput against oidc-provider, 1 worker each
WORKER_SCALING_POSTGRES = 1.6  # throughput 2 workers / 1 worker on PostgreSQL
P50_RATE, P50_MS = 200.0, 2.0  # open loop, 1 worker
P99_RATE, P99_MS = 1000.0, 10.0  # open loop, 1 worker
POSTGRES_CPU_US = 60.0  # PostgreSQL CPU per exchange
CONFIG_SIZE_CPU = 1.10  # CPU per exchange, large configuration / small ("flat")

Row = dict[str, Any]
Check = Callable[[float], bool]


def _row(goal: str, target: str, values: list[tuple[float, str]], worst: str, check: Check,
         digits: int = 2, unmet: list[str] | None = None) -> Row:
    if not values:
        return {"goal": goal, "target": target, "value": None, "where": "not measured", "met": None}
    value, where = (max if worst == "max" else min)(values)
    met = check(value) and not unmet
    row = {"goal": goal, "target": target, "value": round(value, digits), "where": where, "met": met}
    if unmet:
        row["why_not"] = "; ".join(unmet[:3]) + (f"; and {len(unmet) - 3} more" if len(unmet) > 3 else "")
    return row


def _open_loop(record: Row, rate: float) -> Row | None:
    for phase in record.get("open_loop") or ():
        if abs(phase["rate"] - rate) < 1e-9:
            return dict(phase)
    return None


def evaluate(records: list[Row]) -> list[Row]:
    broker = [r for r in records if r["target"] == "broker"]
    peers = {(r["workers"], r["alg"]): r for r in records if r["target"] == "oidc-provider"}
    rows: list[Row] = []

    sqlite_1w = [r for r in broker if r["db"] == "sqlite" and r["workers"] == 1]
    rows.append(_row("server CPU per exchange / floor's, SQLite, 1 worker", f"≤ {CPU_VS_FLOOR_SQLITE:g}",
                     [(r["ratio_to_floor"], r["name"]) for r in sqlite_1w if r.get("ratio_to_floor") is not None],
                     "max", lambda v: v <= CPU_VS_FLOOR_SQLITE))
    postgres = [r for r in broker if r["db"] == "postgres"]
    rows.append(_row("(server + DB) CPU per exchange / floor's, PostgreSQL", f"≤ {CPU_VS_FLOOR_POSTGRES:g}",
                     [(r["ratio_to_floor"], r["name"]) for r in postgres if r.get("ratio_to_floor") is not None],
                     "max", lambda v: v <= CPU_VS_FLOOR_POSTGRES))

    versus_peer = []
    for r in broker:
        peer = peers.get((1, r["alg"]))
        if r["workers"] == 1 and peer and peer["exchanges_per_s"]:
            versus_peer.append((r["exchanges_per_s"] / peer["exchanges_per_s"], r["name"]))
    rows.append(_row("throughput / oidc-provider's, 1 worker each", f"≥ {THROUGHPUT_VS_PEER:g}", versus_peer,
                     "min", lambda v: v >= THROUGHPUT_VS_PEER))

    by_key = {(r["db"], r["config"], r["workers"], r["alg"]): r for r in broker}
    scaling = []
    for (db, config, workers, alg), r in by_key.items():
        one = by_key.get((db, config, 1, alg))
        if db == "postgres" and workers == 2 and one and one["exchanges_per_s"]:
            scaling.append((r["exchanges_per_s"] / one["exchanges_per_s"], r["name"]))
    rows.append(_row("throughput 2 workers / 1 worker, PostgreSQL", f"≥ {WORKER_SCALING_POSTGRES:g}", scaling,
                     "min", lambda v: v >= WORKER_SCALING_POSTGRES))

    for rate, limit, key, label in ((P50_RATE, P50_MS, "p50_ms", "p50"), (P99_RATE, P99_MS, "p99_ms", "p99")):
        values, unmet = [], []
        for r in broker:
            phase = _open_loop(r, rate) if r["workers"] == 1 else None
            if phase is None or phase.get(key) is None:
                continue
            values.append((phase[key], r["name"]))
            if phase["not_sent"]:
                unmet.append(f"{r['name']}: {phase['not_sent']:,} requests not sent (connection cap)")
            if phase["unanswered"]:
                unmet.append(f"{r['name']}: {phase['unanswered']:,} unanswered")
        rows.append(_row(f"{label} latency at {rate:,.0f}/s open loop, 1 worker (ms)", f"< {limit:g}", values,
                         "max", lambda v, limit=limit: v < limit, unmet=unmet))

    rows.append(_row("errors (non-200 and socket errors, every phase)", "= 0",
                     [(r["errors"], r["name"]) for r in broker], "max", lambda v: v == 0, digits=0))
    rows.append(_row("PostgreSQL CPU per exchange (µs)", f"≤ {POSTGRES_CPU_US:g}",
                     [(r["db_cpu_us"], r["name"]) for r in postgres if r.get("db_cpu_us") is not None],
                     "max", lambda v: v <= POSTGRES_CPU_US, digits=1))

    size = []
    for (db, config, workers, alg), r in by_key.items():
        small = by_key.get((db, "small", workers, alg))
        if config == "large" and small and small["cpu_us"]:
            size.append((r["cpu_us"] / small["cpu_us"], r["name"]))
    rows.append(_row("CPU per exchange, large configuration / small (flat)", f"≤ {CONFIG_SIZE_CPU:g}", size,
                     "max", lambda v: v <= CONFIG_SIZE_CPU))
    rows.append(memory_row(broker))
    return rows


def memory_row(broker: list[Row]) -> Row:
    """Resident memory per worker by configuration: reported, not judged (no limit was set)."""
    by_config: dict[str, list[float]] = {}
    for r in broker:
        by_config.setdefault(r["config"] or "-", []).extend(r.get("rss_mb_per_worker") or [])
    if not by_config:
        return {"goal": "memory per worker (MB)", "target": "reported", "value": None, "where": "not measured",
                "met": None}
    text = ", ".join(f"{config} {min(mb):,.0f}-{max(mb):,.0f}" for config, mb in sorted(by_config.items()) if mb)
    return {"goal": "memory per worker (MB)", "target": "reported", "value": text, "where": "all broker scenarios",
            "met": None}


def markdown(rows: list[Row]) -> list[str]:
    lines = ["| goal (issue 9) | target | worst measured | where | met |", "|---|---|---:|---|---|"]
    for g in rows:
        met = {True: "yes", False: "NO", None: "-"}[g["met"]]
        value = "-" if g["value"] is None else (f"{g['value']:,}" if not isinstance(g["value"], str) else g["value"])
        where = g["where"] + (f" ({g['why_not']})" if g.get("why_not") else "")
        lines.append(f"| {g['goal']} | {g['target']} | {value} | {where} | {met} |")
    return lines
