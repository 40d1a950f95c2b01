"""The benchmark must keep working: a few-second smoke run plus checks of its own parts.

No timing is asserted anywhere (the machine is shared and small); what is asserted is that the
run completes with zero errors, that the report has the keys the docs describe, and that the
floor really does the verification it claims to do (a floor that skipped a check would make
every ratio to it a lie).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from bench import configgen, floor, jwtutil, loadgen, run
from bench.issuer import MiniIssuer

REPO = Path(__file__).resolve().parent.parent

SCENARIO_KEYS = {
    "name", "target", "db", "config", "workers", "alg", "exchanges_per_s", "open_loop",
    "server_cpu_us", "db_cpu_us", "cpu_us", "floor_cpu_us", "ratio_to_floor", "rss_mb_per_worker", "loadgen",
    "loadgen_cpu_pct_sat", "loadgen_cpu_pct_paced", "errors", "saturation", "paced",
    "other_cpu_pct", "steal_pct", "unanswered", "not_sent",
}
OPEN_LOOP_KEYS = {
    "rate", "offered_rate", "answered_rate", "p50_ms", "p99_ms", "p999_ms", "max_ms", "service_p50_ms",
    "dispatch_lag_p50_ms", "dispatch_lag_p99_ms", "not_sent", "max_in_flight", "connections", "errors",
    "unanswered", "overloaded", "server_cpu_us", "loadgen_cpu_pct",
}


def test_smoke_run_completes_without_errors(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert {"generated_at", "machine", "options", "scenarios", "goals", "notes"} <= report.keys()
    assert {"nproc", "cpu_model", "python"} <= report["machine"].keys()
    targets = {r["target"] for r in report["scenarios"]}
    peer_skipped = any(note.startswith("oidc-provider scenarios skipped") for note in report["notes"])
    assert targets == {"floor", "broker"} | (set() if peer_skipped else {"oidc-provider"}), report["notes"]
    for record in report["scenarios"]:
        assert SCENARIO_KEYS <= record.keys(), record["name"]
        assert record["errors"] == 0, (record["name"], record["error_samples"])
        assert record["unanswered"] == 0, record["name"]
        assert record["not_sent"] == 0, record["name"]
        assert record["saturation"]["ok"] > 0
        assert sorted(record["paced"]) == ["100", "200"]
        for paced in record["paced"].values():
            assert paced["ok"] == paced["sent"] == paced["due"] > 0, record["name"]
        assert [p["rate"] for p in record["open_loop"]] == [100.0, 200.0]
        for phase in record["open_loop"]:
            assert OPEN_LOOP_KEYS <= phase.keys()
            assert phase["offered_rate"] > 0 and phase["p50_ms"] is not None
        assert record["server_cpu_us"] > 0
        assert record["rss_mb_per_worker"] and all(mb > 0 for mb in record["rss_mb_per_worker"])
        assert record["ratio_to_floor"] is not None
    assert {g["goal"] for g in report["goals"]} >= {"errors (non-200 and socket errors, every phase)"}
    markdown = (tmp_path / "latest.md").read_text()
    assert "broker/sqlite/small/1w/ES256" in markdown and "floor/1w/ES256" in markdown
    assert "| goal (issue 9) |" in markdown and "| dispatch lag p50 / p99 ms |" in markdown
    if not peer_skipped:
        assert "oidc-provider/1w/ES256" in markdown


@pytest.fixture(scope="module")
def issuer() -> MiniIssuer:
    return MiniIssuer(algorithms=("RS256", "ES256"))


def _form(token: str) -> bytes:
    return urlencode({
        "grant_type": floor.GRANT_TYPE, "subject_token": token, "subject_token_type": floor.JWT_TYPE,
        "audience": configgen.TARGET,
    }).encode()


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
@pytest.mark.parametrize(
    ("case", "status"),
    [
        pytest.param("valid", 200, id="valid"),
        pytest.param("forged", 400, id="forged-signature"),
        pytest.param("expired", 400, id="expired"),
        pytest.param("wrong-aud", 400, id="wrong-audience"),
        pytest.param("wrong-iss", 400, id="wrong-issuer"),
    ],
)
async def test_floor_verifies_what_it_claims(issuer: MiniIssuer, alg: str, case: str, status: int) -> None:
    app = floor.create_app(jwks=issuer.jwks(), subject_issuer=issuer.url, audience=configgen.SUBJECT_AUDIENCE)
    claims = configgen.subject_claims(0)
    lifetime = 600
    if case == "expired":
        claims.update(iat=int(time.time()) - 1000, exp=int(time.time()) - 10)
    elif case == "wrong-aud":
        claims["aud"] = "https://elsewhere.example"
    elif case == "wrong-iss":
        claims["iss"] = "https://elsewhere.example"
    token = issuer.mint(claims, alg=alg, lifetime=lifetime)
    if case == "forged":
        head, payload, _ = token.split(".")
        token = f"{head}.{payload}." + jwtutil.b64e(jwtutil.sign(f"{head}.{payload}".encode(), jwtutil.generate_key(alg)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://floor") as client:
        resp = await client.post("/token", content=_form(token),
                                 headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == status
    if status == 200:
        issued = resp.json()["access_token"].split(".")
        assert json.loads(jwtutil.b64d(issued[0]))["alg"] == "ES256"
        assert json.loads(jwtutil.b64d(issued[1]))["sub"] == claims["sub"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([], {"p50": None, "p99": None}, id="empty"),
        pytest.param([0.001] * 99 + [0.1], {"p50": 1.0, "p99": 1.0}, id="one-outlier-above-p99"),
        pytest.param([i / 1000 for i in range(1, 1001)], {"p50": 500.0, "p99": 990.0}, id="uniform"),
    ],
)
def test_percentiles_are_nearest_rank(values: list[float], expected: dict[str, float | None]) -> None:
    got = loadgen.percentiles(values)
    assert {k: got[k] for k in expected} == expected


def test_profile_collapse_counts_self_and_inclusive() -> None:
    raw = "main (a.py);handle (b.py);verify (c.py) 6\nmain (a.py);handle (b.py) 3\nmain (a.py);sign (d.py) 1\n"
    total, self_top, incl_top = run.collapse_top(raw)
    assert total == 10
    assert dict(self_top) == {"verify (c.py)": 6, "handle (b.py)": 3, "sign (d.py)": 1}
    assert dict(incl_top)["main (a.py)"] == 10 and dict(incl_top)["handle (b.py)"] == 9


def test_large_config_keeps_the_measured_issuers_grants() -> None:
    small = configgen.build_config("http://127.0.0.1:1", issuers=1, grants=10)
    large = configgen.build_config("http://127.0.0.1:1", issuers=500, grants=10_000)
    assert (len(small["issuers"]), len(small["grants"])) == (1, 10)
    assert (len(large["issuers"]), len(large["grants"])) == (500, 10_000)
    measured = [g for g in large["grants"] if g["issuers"] == [configgen.MEASURED_ISSUER]]
    assert measured == small["grants"]
    assert len({g["name"] for g in large["grants"]}) == 10_000
