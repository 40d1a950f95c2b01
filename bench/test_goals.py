"""Issue 9's goals computed from one run's scenarios (bench/goals.py)."""

from __future__ import annotations

from typing import Any

from bench import goals


def _phase(rate: float, p50: float, p99: float, *, not_sent: int = 0, unanswered: int = 0) -> dict[str, Any]:
    return {"rate": rate, "p50_ms": p50, "p99_ms": p99, "not_sent": not_sent, "unanswered": unanswered}


def _record(target: str, db: str | None, config: str | None, workers: int, **figures: Any) -> dict[str, Any]:
    name = "/".join([target, *(x for x in (db, config) if x), f"{workers}w", "ES256"])
    base = {
        "name": name, "target": target, "db": db, "config": config, "workers": workers, "alg": "ES256",
        "exchanges_per_s": 1000.0, "cpu_us": 400.0, "ratio_to_floor": 1.2, "db_cpu_us": None, "errors": 0,
        "rss_mb_per_worker": [100.0], "open_loop": [_phase(200, 1.0, 3.0), _phase(1000, 1.5, 6.0)],
    }
    return {**base, **figures}


def _records(**overrides: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [
        _record("floor", None, None, 1),
        _record("oidc-provider", None, None, 1, exchanges_per_s=600.0),
        _record("broker", "sqlite", "small", 1, exchanges_per_s=1000.0),
        _record("broker", "sqlite", "large", 1, exchanges_per_s=1000.0, cpu_us=420.0, rss_mb_per_worker=[180.0]),
        _record("broker", "postgres", "small", 1, exchanges_per_s=900.0, db_cpu_us=50.0, ratio_to_floor=1.8),
        _record("broker", "postgres", "small", 2, exchanges_per_s=1530.0, db_cpu_us=55.0, ratio_to_floor=1.9),
    ]
    for row in rows:
        row.update(overrides.get(row["name"], {}))
    return rows


def _by_goal(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["goal"]: r for r in rows}


def test_all_goals_met() -> None:
    rows = _by_goal(goals.evaluate(_records()))
    judged = {name: r for name, r in rows.items() if r["target"] != "reported"}
    assert all(r["met"] is True for r in judged.values()), [r for r in judged.values() if not r["met"]]
    assert rows["throughput / oidc-provider's, 1 worker each"]["value"] == 1.5  # 900 / 600, the worst
    assert rows["throughput 2 workers / 1 worker, PostgreSQL"]["value"] == 1.7
    assert rows["memory per worker (MB)"]["value"] == "large 180-180, small 100-100"


def test_each_goal_can_fail() -> None:
    rows = _by_goal(goals.evaluate(_records(**{
        "broker/sqlite/small/1w/ES256": {"ratio_to_floor": 1.7, "errors": 2},
        "broker/postgres/small/2w/ES256": {"exchanges_per_s": 1400.0, "db_cpu_us": 61.0, "ratio_to_floor": 2.1},
        "oidc-provider/1w/ES256": {"exchanges_per_s": 700.0},
        "broker/sqlite/large/1w/ES256": {"cpu_us": 480.0,
                                         "open_loop": [_phase(200, 2.5, 3.0), _phase(1000, 1.0, 11.0)]},
    })))
    assert not rows["server CPU per exchange / floor's, SQLite, 1 worker"]["met"]
    assert not rows["(server + DB) CPU per exchange / floor's, PostgreSQL"]["met"]
    assert not rows["throughput / oidc-provider's, 1 worker each"]["met"]
    assert not rows["throughput 2 workers / 1 worker, PostgreSQL"]["met"]
    assert rows["p50 latency at 200/s open loop, 1 worker (ms)"]["where"] == "broker/sqlite/large/1w/ES256"
    assert not rows["p50 latency at 200/s open loop, 1 worker (ms)"]["met"]
    assert not rows["p99 latency at 1,000/s open loop, 1 worker (ms)"]["met"]
    assert rows["errors (non-200 and socket errors, every phase)"]["value"] == 2
    assert not rows["PostgreSQL CPU per exchange (µs)"]["met"]
    assert not rows["CPU per exchange, large configuration / small (flat)"]["met"]


def test_a_rate_not_offered_in_full_fails_the_latency_goal() -> None:
    rows = _by_goal(goals.evaluate(_records(**{
        "broker/sqlite/small/1w/ES256": {"open_loop": [_phase(200, 1.0, 3.0), _phase(1000, 1.0, 5.0, not_sent=40)]},
    })))
    p99 = rows["p99 latency at 1,000/s open loop, 1 worker (ms)"]
    assert p99["value"] == 6.0 and p99["met"] is False
    assert "40 requests not sent" in p99["why_not"]


def test_missing_scenarios_are_not_measured_not_met() -> None:
    rows = _by_goal(goals.evaluate([_record("floor", None, None, 1)]))
    peer = rows["throughput / oidc-provider's, 1 worker each"]
    assert peer["met"] is None and peer["where"] == "not measured"
    lines = goals.markdown(list(rows.values()))
    assert lines[0].startswith("| goal (issue 9) |")
    assert "| throughput / oidc-provider's, 1 worker each | ≥ 1.5 | - | not measured | - |" in lines
