"""The benchmark orchestrator: ``python -m bench.run`` (``make bench``).

It starts what a user would start (a local OIDC issuer, the real ``sts`` server on a real
database, a trust configuration with that issuer found through discovery), pre-mints a pool of
subject tokens, and drives the broker on 127.0.0.1 with RFC 8693 exchanges. Two references are
measured in the same run with the same tokens: the floor (``bench/floor.py``, the least work
any exchange needs) and panva's ``oidc-provider`` with a token-exchange grant
(``bench/node/server.js``, skipped with one line when Node.js or npm is missing), so the
broker's cost is reported as ratios that hold on a noisy machine. For each scenario it reports:

* exchanges per second at saturation (closed loop, ``wrk`` when installed);
* p50/p99/p99.9 latency under open-loop arrivals at 200/s and 1,000/s (arrivals never wait for
  answers; measured from the intended send time), the rate actually offered and the
  generator's own dispatch lag;
* server CPU per exchange from ``/proc`` accounting of the server's process tree, and database
  CPU per exchange from the PostgreSQL server processes;
* resident memory per worker, the load generator's own CPU, and errors (anything but 200);

and checks issue 9's goals against them (``bench/goals.py``). Results go to
``bench/results/latest.json`` and ``latest.md``; the tables are printed. ``--quick`` runs a
three-minute subset, ``--smoke`` one tiny scenario per target for ``make test``; ``--profile``
samples the broker's worker and the floor with py-spy under saturation and writes the
CPU-by-part table (``bench/parts.py``) and the top frames.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench import configgen, goals, loadgen, nodepeer, parts, procstat
from bench.issuer import Issuer, start_issuer

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
DEFAULT_ADMIN_PG = "postgresql://postgres@127.0.0.1:5432/test"



@dataclass
class Options:
    smoke: bool = False
    warmup: float = 2.0
    duration: float = 6.0
    segments: int = 3
    paced_duration: float = 8.0  # per open-loop rate
    rates: list[float] = field(default_factory=lambda: [200.0, 1000.0])
    max_connections: int = 1024  # open loop: a due request never waits for an answer up to this many
    tokens: int = 2000
    connections: int = 32
    generator: str = "auto"  # auto | wrk | python (saturation only; paced is always python)
    algs: list[str] = field(default_factory=lambda: ["ES256", "RS256"])
    dbs: list[str] = field(default_factory=lambda: ["sqlite", "postgres"])
    configs: list[str] = field(default_factory=lambda: ["small", "large"])
    workers: list[int] = field(default_factory=lambda: [1, 2])
    floor_only: bool = False
    peer: bool = True  # oidc-provider, when Node.js and npm are present
    quick: bool = False
    require_postgres: bool = False
    out: Path = RESULTS
    profile: bool = False
    profile_seconds: float = 15.0
    profile_native: bool = False


# --------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sts_command() -> list[str]:
    """The broker's CLI as installed beside this interpreter (the project's venv)."""
    exe = Path(sys.executable).with_name("sts")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("sts")
    if found:
        return [found]
    return [sys.executable, "-m", "sts.cli.main"]


class Server:
    """A server process we started (in its own session, so we can stop exactly it)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, port: int, log: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.cwd = cwd
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready_timeout: float) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + ready_timeout
        url = f"http://127.0.0.1:{self.port}/readyz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {ready_timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def postgres_commits(url: str) -> int:
    """Committed transactions in ``url``'s database so far (pg_stat_database.xact_commit)."""
    import psycopg

    time.sleep(1.0)  # statistics of backends that just went idle or exited are flushed lazily
    with psycopg.connect(_pg_conninfo(url), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def postgres_available(admin_url: str) -> str | None:
    """None when reachable, else why not."""
    try:
        import psycopg

        with psycopg.connect(_pg_conninfo(admin_url), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 (any failure means: no PostgreSQL for this run)
        return f"{type(exc).__name__}: {exc}".strip()
    return None


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database for one server start, dropped afterwards; yields the broker's URL."""
    import psycopg

    name = f"sts_bench_{secrets.token_hex(4)}"
    with psycopg.connect(_pg_conninfo(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = _pg_conninfo(admin_url).rsplit("/", 1)[0]
    try:
        yield base.replace("postgresql://", "postgresql+psycopg://", 1) + "/" + name
    finally:
        with psycopg.connect(_pg_conninfo(admin_url), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------------------------
# load phases


def python_loadgen(
    port: int, bodies: Path, mode: str, duration: float, opts: Options, rate: float = 0.0
) -> dict[str, Any]:
    """The Python generator in its own process, so it never shares a GIL with anything here."""
    cmd = [
        sys.executable, "-m", "bench.loadgen", "--port", str(port), "--bodies", str(bodies), "--mode", mode,
        "--duration", str(duration), "--connections", str(opts.connections if mode == "saturation" else 16),
        "--rate", str(rate or 1.0), "--max-connections", str(opts.max_connections),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return dict(json.loads(done.stdout))


def saturate(port: int, bodies: Path, duration: float, opts: Options) -> dict[str, Any]:
    use_wrk = opts.generator == "wrk" or (opts.generator == "auto" and loadgen.wrk_available())
    if use_wrk and duration >= 1:
        return loadgen.run_wrk(
            host="127.0.0.1", port=port, path="/token", bodies_file=bodies, duration=duration,
            connections=opts.connections,
        )
    return python_loadgen(port, bodies, "saturation", duration, opts)


def measured(server: Server, with_db: bool, phase: Any) -> dict[str, Any]:
    """Run ``phase`` and charge it the server's (and the database's) CPU from /proc.

    Also records what the rest of the machine burned meanwhile (``other_cpu_pct``: busy CPU
    not used by the server, the database or the generator, in % of one core) and hypervisor
    steal: a figure taken while something else ran is flagged by those two, not hidden.
    """
    cpu0, kernel0 = procstat.tree_cpu_split(server.pid)
    db0 = procstat.postgres_cpu_seconds() if with_db else 0.0
    busy0, steal0 = procstat.system_cpu_seconds()
    wall0 = time.monotonic()
    report: dict[str, Any] = phase()
    # The window, not the generator's "elapsed": it includes process start-up and the drain.
    window = max(time.monotonic() - wall0, 1e-9)
    busy1, steal1 = procstat.system_cpu_seconds()
    cpu1, kernel1 = procstat.tree_cpu_split(server.pid)
    cpu = cpu1 - cpu0
    db = procstat.postgres_cpu_seconds() - db0 if with_db else None
    done = max(1, report["completed"])
    elapsed = max(report["elapsed"], 1e-9)
    report["server_cpu_s"] = round(cpu, 3)
    report["server_cpu_us"] = round(cpu / done * 1e6, 1)
    report["server_kernel_pct"] = round((kernel1 - kernel0) / max(cpu, 1e-9) * 100, 1)
    report["db_cpu_s"] = round(db, 3) if db is not None else None
    report["db_cpu_us"] = round(db / done * 1e6, 1) if db is not None else None
    report["loadgen_cpu_pct"] = round(report["loadgen_cpu_s"] / elapsed * 100, 1)
    other = (busy1 - busy0) - cpu - (db or 0.0) - report["loadgen_cpu_s"]
    report["other_cpu_pct"] = round(max(0.0, other) / window * 100, 1)
    report["steal_pct"] = round((steal1 - steal0) / window * 100, 1)
    return report


def saturation_segments(server: Server, bodies: Path, opts: Options, *, with_db: bool) -> dict[str, Any]:
    """Saturate in ``segments`` equal runs; CPU per exchange is the median segment's, which a
    burst of unrelated work on the shared machine moves far less than a single long run."""
    n = max(1, opts.segments)
    length = opts.duration / n
    runs = [measured(server, with_db, lambda: saturate(server.port, bodies, length, opts)) for _ in range(n)]
    by_cpu = sorted(runs, key=lambda r: r["server_cpu_us"] + (r["db_cpu_us"] or 0.0))
    median = by_cpu[len(by_cpu) // 2]
    merged = dict(median)
    elapsed = sum(r["elapsed"] for r in runs)
    completed = sum(r["completed"] for r in runs)
    for key in ("sent", "completed", "ok", "non_200", "socket_errors", "lost", "errors"):
        merged[key] = sum(r[key] for r in runs)
    merged["elapsed"] = round(elapsed, 4)
    merged["throughput"] = round(completed / elapsed, 1) if elapsed > 0 else 0.0
    merged["error_samples"] = [e for r in runs for e in r.get("error_samples") or []][:5]
    merged["loadgen_cpu_s"] = round(sum(r["loadgen_cpu_s"] for r in runs), 4)
    merged["loadgen_cpu_pct"] = round(merged["loadgen_cpu_s"] / max(elapsed, 1e-9) * 100, 1)
    merged["other_cpu_pct"] = max(r["other_cpu_pct"] for r in runs)
    merged["steal_pct"] = max(r["steal_pct"] for r in runs)
    merged["segments"] = [
        {k: r[k] for k in ("throughput", "server_cpu_us", "server_kernel_pct", "db_cpu_us", "other_cpu_pct", "errors")}
        for r in runs
    ]
    return merged


def open_loop_summary(rate: float, paced: dict[str, Any], saturation_throughput: float) -> dict[str, Any]:
    """One open-loop phase in the shape of the report's latency table."""
    lat = paced["latency_ms"]
    lag = paced["dispatch_lag_ms"]
    return {
        "rate": rate,
        "offered_rate": paced["offered_rate"],
        "answered_rate": paced["throughput"],
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "p999_ms": lat["p999"],
        "max_ms": lat["max"],
        "service_p50_ms": paced["service_ms"]["p50"],
        "dispatch_lag_p50_ms": lag["p50"],
        "dispatch_lag_p99_ms": lag["p99"],
        # Requests due while every allowed connection was busy: the rate was not offered in full.
        "not_sent": paced["not_sent"],
        "max_in_flight": paced["max_in_flight"],
        "connections": paced["connections"],
        "errors": paced["errors"],
        "unanswered": paced["lost"],
        # Offered more than the scenario serves at saturation: the backlog grows for the whole
        # phase, so the latency figures measure the queue, not the service.
        "overloaded": rate > saturation_throughput,
        "server_cpu_us": paced["server_cpu_us"],
        "db_cpu_us": paced["db_cpu_us"],
        "loadgen_cpu_pct": paced["loadgen_cpu_pct"],
    }


def drive(server: Server, bodies: Path, opts: Options, *, with_db: bool) -> dict[str, Any]:
    """Warm up, saturate, then offer each open-loop rate; returns the per-scenario figures."""
    warm_completed = 0
    if opts.warmup > 0:
        warm = saturate(server.port, bodies, opts.warmup, opts)
        warm_completed = warm["completed"]
        if warm["ok"] == 0:
            raise RuntimeError(f"{server.name}: no successful exchange while warming up: {warm['error_samples']}\n"
                               f"{server.log_tail()}")
    sat = saturation_segments(server, bodies, opts, with_db=with_db)
    rss = [round(procstat.rss_bytes(pid) / 2**20, 1) for pid in procstat.worker_pids(server.pid)]
    paced: dict[str, dict[str, Any]] = {}
    for rate in opts.rates:
        paced[f"{rate:g}"] = measured(
            server, with_db,
            lambda rate=rate: python_loadgen(server.port, bodies, "paced", opts.paced_duration, opts, rate),
        )
    open_loop = [open_loop_summary(float(rate), p, sat["throughput"]) for rate, p in paced.items()]
    server_us = sat["server_cpu_us"]
    db_us = sat["db_cpu_us"]
    phases = [sat, *paced.values()]
    return {
        "exchanges_per_s": sat["throughput"],
        "open_loop": open_loop,
        "server_cpu_us": server_us,
        "db_cpu_us": db_us,
        "cpu_us": round(server_us + (db_us or 0.0), 1),
        "server_kernel_pct": sat["server_kernel_pct"],
        "rss_mb_per_worker": rss,
        "loadgen": sat["generator"],
        "loadgen_cpu_pct_sat": sat["loadgen_cpu_pct"],
        "loadgen_cpu_pct_paced": max((p["loadgen_cpu_pct"] for p in paced.values()), default=None),
        "other_cpu_pct": max(p["other_cpu_pct"] for p in phases),
        "steal_pct": max(p["steal_pct"] for p in phases),
        "errors": sum(p["errors"] for p in phases),
        "unanswered": sum(p["lost"] for p in phases),
        "not_sent": sum(p["not_sent"] for p in paced.values()),
        "error_samples": [e for p in phases for e in p.get("error_samples") or []][:10],
        "saturation": sat,
        "paced": paced,
        "exchanges_total": warm_completed + sum(p["completed"] for p in phases),
    }


# --------------------------------------------------------------------------------------------
# scenarios


@dataclass
class Workspace:
    tmp: Path
    issuer: Issuer
    bodies: dict[str, Path]
    jwks: Path
    configs: dict[str, Path]
    # The same subject tokens with the peer's public client_id added (oidc-provider identifies
    # the client of every token request, RFC 6749 §3.2.1; the broker's scenario needs none).
    peer_bodies: dict[str, Path] = field(default_factory=dict)


def prepare(opts: Options, tmp: Path) -> Workspace:
    issuer = start_issuer(("RS256", "ES256"))
    bodies: dict[str, Path] = {}
    peer_bodies: dict[str, Path] = {}
    for alg in opts.algs:
        path = tmp / f"bodies-{alg}.txt"
        peer_path = tmp / f"bodies-peer-{alg}.txt"
        with open(path, "w", encoding="ascii") as fh, open(peer_path, "w", encoding="ascii") as peer_fh:
            for i in range(opts.tokens):
                token = issuer.mint(configgen.subject_claims(i), alg=alg, lifetime=4 * 3600)
                form = {
                    "grant_type": GRANT_TYPE,
                    "subject_token": token,
                    "subject_token_type": JWT_TYPE,
                    "audience": configgen.TARGET,
                }
                fh.write(urlencode(form) + "\n")
                peer_fh.write(urlencode({**form, "client_id": nodepeer.CLIENT_ID}) + "\n")
        bodies[alg] = path
        peer_bodies[alg] = peer_path
    jwks = tmp / "issuer.jwks.json"
    issuer.write_jwks(jwks)
    configs: dict[str, Path] = {}
    if not opts.floor_only:
        for name in opts.configs:
            n_issuers, n_grants = configgen.CONFIGS[name]
            configs[name] = configgen.write_config(tmp / f"sts-{name}.yaml", issuer.url, issuers=n_issuers, grants=n_grants)
    return Workspace(tmp=tmp, issuer=issuer, bodies=bodies, jwks=jwks, configs=configs, peer_bodies=peer_bodies)


def floor_server(ws: Workspace, workers: int) -> Server:
    port = free_port()
    env = dict(os.environ)
    env.update(
        BENCH_FLOOR_JWKS=str(ws.jwks),
        BENCH_FLOOR_SUBJECT_ISSUER=ws.issuer.url,
        BENCH_FLOOR_AUDIENCE=configgen.SUBJECT_AUDIENCE,
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    cmd = [
        sys.executable, "-m", "uvicorn", "--factory", "bench.floor:create_app", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning",
    ]
    return Server(f"floor/{workers}w", cmd, env, REPO, port, ws.tmp / f"floor-{workers}w.log")


def peer_server(ws: Workspace, node: str, workers: int) -> Server:
    port = free_port()
    env = nodepeer.environment(
        port=port, workers=workers, jwks=ws.jwks, subject_issuer=ws.issuer.url,
        subject_audience=configgen.SUBJECT_AUDIENCE, target=configgen.TARGET,
    )
    return Server(f"oidc-provider/{workers}w", nodepeer.command(node), env, nodepeer.NODE_DIR, port,
                  ws.tmp / f"oidc-provider-{workers}w.log")


def broker_env(database_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        STS_DATABASE_URL=database_url,
        STS_DEV_MODE="true",
        STS_KEK=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
    )
    return env


def broker_server(ws: Workspace, config: str, workers: int, database_url: str, tag: str) -> Server:
    port = free_port()
    env = broker_env(database_url)
    run_dir = ws.tmp / f"run-{tag}"
    run_dir.mkdir(exist_ok=True)
    upgrade = subprocess.run(
        [*sts_command(), "db", "upgrade"], env=env, cwd=run_dir, capture_output=True, timeout=300, check=False
    )
    if upgrade.returncode != 0:
        raise RuntimeError(f"sts db upgrade failed: {(upgrade.stdout + upgrade.stderr).decode(errors='replace')[-3000:]}")
    cmd = [
        *sts_command(), "serve", "--config", str(ws.configs[config]), "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers),
    ]
    return Server(f"broker/{tag}", cmd, env, run_dir, port, ws.tmp / f"broker-{tag}.log")


def scenario_record(
    target: str, db: str | None, config: str | None, workers: int, alg: str, figures: dict[str, Any]
) -> dict[str, Any]:
    parts = [target] + ([db] if db else []) + ([config] if config else []) + [f"{workers}w", alg]
    return {"name": "/".join(parts), "target": target, "db": db, "config": config, "workers": workers, "alg": alg, **figures}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_floor(ws: Workspace, opts: Options, workers: int) -> list[dict[str, Any]]:
    out = []
    server = floor_server(ws, workers)
    server.start(ready_timeout=60)
    try:
        for alg in opts.algs:
            log(f"floor {workers}w {alg}")
            out.append(scenario_record("floor", None, None, workers, alg, drive(server, ws.bodies[alg], opts, with_db=False)))
    finally:
        server.stop()
    return out


def run_peer(ws: Workspace, opts: Options, node: str, workers: int) -> list[dict[str, Any]]:
    out = []
    server = peer_server(ws, node, workers)
    server.start(ready_timeout=60)
    try:
        for alg in opts.algs:
            log(f"oidc-provider {workers}w {alg}")
            figures = drive(server, ws.peer_bodies[alg], opts, with_db=False)
            out.append(scenario_record("oidc-provider", None, None, workers, alg, figures))
    finally:
        server.stop()
    return out


def run_broker(ws: Workspace, opts: Options, db: str, config: str, workers: int, admin_pg: str) -> list[dict[str, Any]]:
    out = []
    tag = f"{db}-{config}-{workers}w"

    @contextmanager
    def database() -> Iterator[str]:
        if db == "postgres":
            with postgres_database(admin_pg) as url:
                yield url
        else:
            yield f"sqlite:///{ws.tmp / f'sts-{tag}.db'}"

    with database() as url:
        server = broker_server(ws, config, workers, url, tag)
        log(f"starting broker {tag}")
        server.start(ready_timeout=300)
        commits0 = postgres_commits(url) if db == "postgres" else None
        try:
            for alg in opts.algs:
                log(f"broker {tag} {alg}")
                figures = drive(server, ws.bodies[alg], opts, with_db=db == "postgres")
                out.append(scenario_record("broker", db, config, workers, alg, figures))
        finally:
            server.stop()
        if commits0 is not None:
            # The server's backends flush their statistics when they exit, so read after stop.
            # One figure for the server's whole life (warm-up, saturation and paced phases):
            # how well the group-commit writer groups, where 1.0 means one commit per exchange.
            exchanges = sum(r["exchanges_total"] for r in out)
            per_exchange = round((postgres_commits(url) - commits0) / max(1, exchanges), 3)
            for r in out:
                r["db_commits_per_exchange"] = per_exchange
    return out


# --------------------------------------------------------------------------------------------
# report


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = None
    if shutil.which("git"):
        probe = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, check=False)
        commit = probe.stdout.decode().strip() or None
    wrk_version = None
    if loadgen.wrk_available():
        probe = subprocess.run(["wrk", "--version"], capture_output=True, check=False)
        wrk_version = (probe.stdout + probe.stderr).decode(errors="replace").split("Copyright")[0].strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": wrk_version,
        "node": _node_version(),
        "commit": commit,
    }


def _node_version() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    probe = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return probe.stdout.strip().lstrip("v") or None


def attach_ratios(records: list[dict[str, Any]]) -> None:
    floors = {(r["workers"], r["alg"]): r for r in records if r["target"] == "floor"}
    for r in records:
        floor = floors.get((r["workers"], r["alg"])) or floors.get((1, r["alg"]))
        r["floor_cpu_us"] = floor["server_cpu_us"] if floor else None
        r["ratio_to_floor"] = round(r["cpu_us"] / floor["server_cpu_us"], 2) if floor and floor["server_cpu_us"] else None


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(report: dict[str, Any]) -> str:
    rates = sorted(report["options"]["rates"])
    low, high = (rates[0], rates[-1]) if rates else (None, None)

    def latency(r: dict[str, Any], rate: float | None, key: str) -> str:
        phase = next((p for p in r.get("open_loop") or () if p["rate"] == rate), None)
        if phase is None:
            return "-"
        mark = " !" if phase["not_sent"] else (" *" if phase["overloaded"] else "")
        return _fmt(phase[key], 2) + mark

    def errors(r: dict[str, Any]) -> str:
        text = str(r["errors"])
        if r.get("unanswered"):
            text += f" (+{r['unanswered']:,} unanswered)"
        if r.get("not_sent"):
            text += f" (+{r['not_sent']:,} not sent)"
        return text

    lines = [
        f"| scenario | exch/s (sat) | p50 ms @{low:g}/s | p99 ms @{high:g}/s | server CPU µs/exch | DB CPU µs/exch "
        "| ratio to floor | RSS MB/worker | loadgen CPU % core (sat/paced) | other CPU % core | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["scenarios"]:
        lines.append(
            f"| {r['name']} | {_fmt(r['exchanges_per_s'])} | {latency(r, low, 'p50_ms')} | {latency(r, high, 'p99_ms')} "
            f"| {_fmt(r['server_cpu_us'])} | {_fmt(r['db_cpu_us'])} "
            f"| {_fmt(r['ratio_to_floor'], 2)} | {' / '.join(_fmt(x) for x in r['rss_mb_per_worker'])} "
            f"| {_fmt(r['loadgen_cpu_pct_sat'])} / {_fmt(r['loadgen_cpu_pct_paced'])} | {_fmt(r['other_cpu_pct'])} "
            f"| {errors(r)} |"
        )
    m = report["machine"]
    lines += [
        "",
        "Latency: open loop (arrivals never wait for answers), from the intended send time. * the rate is above the "
        "scenario's saturation throughput, so the figure is the growing queue; ! some requests were not sent because "
        f"all {report['options']['max_connections']:,} allowed connections were busy (the rate was not offered in "
        f"full). Saturation generator: {', '.join(sorted({r['loadgen'] for r in report['scenarios']}))}. "
        f"Machine: {m['nproc']} cores, {m['cpu_model'] or 'unknown CPU'}, Python {m['python']}"
        + (f", Node.js {m['node']}" if m.get("node") else "")
        + (f", commit {m['commit']}" if m.get("commit") else "") + f", {report['generated_at']}.",
        "",
        "| scenario | rate /s | offered /s | answered /s | p50 ms | p99 ms | p99.9 ms | max ms | service p50 ms "
        "| dispatch lag p50 / p99 ms | max in flight | not sent | loadgen CPU % core | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["scenarios"]:
        for p in r.get("open_loop") or ():
            lines.append(
                f"| {r['name']} | {p['rate']:,.0f} | {_fmt(p['offered_rate'])} | {_fmt(p['answered_rate'])} "
                f"| {_fmt(p['p50_ms'], 2)} | {_fmt(p['p99_ms'], 2)} | {_fmt(p['p999_ms'], 2)} | {_fmt(p['max_ms'], 2)} "
                f"| {_fmt(p['service_p50_ms'], 2)} | {_fmt(p['dispatch_lag_p50_ms'], 3)} / "
                f"{_fmt(p['dispatch_lag_p99_ms'], 3)} | {_fmt(p['max_in_flight'])} | {_fmt(p['not_sent'])} "
                f"| {_fmt(p['loadgen_cpu_pct'])} | {p['errors']}"
                + (f" (+{p['unanswered']:,} unanswered)" if p["unanswered"] else "") + " |"
            )
    commits = [(r["name"].rsplit("/", 1)[0], r["db_commits_per_exchange"]) for r in report["scenarios"]
               if r.get("db_commits_per_exchange") is not None]
    if commits:
        lines += ["", "PostgreSQL commits per exchange over each server's life (group commit: lower is better): "
                  + ", ".join(f"{name} {value:g}" for name, value in dict(commits).items()) + "."]
    if report["goals"]:
        lines += ["", *goals.markdown(report["goals"])]
    for note in report.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# profile


def collapse_top(raw: str, top: int = 30) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Self and inclusive sample counts per frame from py-spy's raw (collapsed) output."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(f) for f in stack.split(";")]
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl_counts[frame] += count
    return total, self_counts.most_common(top), incl_counts.most_common(top)


def _short_frame(frame: str) -> str:
    """Drop this machine's directories from a frame's file name."""
    return parts.short_frame(frame, str(REPO))


def profile_target(server: Server, bodies: Path, opts: Options, label: str) -> str:
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        found = shutil.which("py-spy")
        if not found:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        py_spy = Path(found)
    if opts.warmup > 0:
        saturate(server.port, bodies, opts.warmup, opts)
    # CPU per exchange without the sampler (py-spy pauses the process for each sample): the
    # figure the parts' shares are multiplied by.
    base = measured(server, False, lambda: saturate(server.port, bodies, max(2.0, opts.profile_seconds / 3), opts))
    worker = procstat.worker_pids(server.pid)[0]
    raw = server.log.with_suffix(".pyspy.txt")
    spy = subprocess.Popen(
        [str(py_spy), "record", "--pid", str(worker), "--duration", str(int(opts.profile_seconds)), "--rate", "250",
         "--format", "raw", "--nolineno", "--output", str(raw), *(["--native"] if opts.profile_native else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    sat = measured(server, False, lambda: saturate(server.port, bodies, opts.profile_seconds - 2, opts))
    _, err = spy.communicate(timeout=opts.profile_seconds + 60)
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')}")
    opts.out.mkdir(parents=True, exist_ok=True)
    # Collapsed stacks, kept for questions the top-30 lists do not answer (flamegraph.pl reads them).
    shutil.copyfile(raw, opts.out / f"profile-{label}.collapsed.txt")
    text = raw.read_text()
    total, self_top, incl_top = collapse_top(text)
    by_part = parts.by_part(parts.parse_collapsed(text, str(REPO)))
    out = [
        f"## {label}: {base['throughput']:,.0f} exchanges/s and {base['server_cpu_us']:,.0f} µs server CPU per "
        f"exchange without the sampler; {sat['throughput']:,.0f}/s and {sat['server_cpu_us']:,.0f} µs under py-spy; "
        f"{total} samples at 250 Hz, errors {base['errors'] + sat['errors']}",
        "",
        "### CPU by part (µs per exchange = share of samples × CPU per exchange without the sampler; "
        "rules in bench/parts.py)",
        "",
        *parts.table(by_part, base["server_cpu_us"]),
        "",
        "### top frames by own time (self %)",
    ]
    out += [f"{n / total * 100:6.1f}%  {frame}" for frame, n in self_top]
    out += ["", "### top frames by inclusive time (% of samples with the frame on the stack)"]
    out += [f"{n / total * 100:6.1f}%  {frame}" for frame, n in incl_top]
    return "\n".join(out) + "\n"


def run_profile(opts: Options, ws: Workspace) -> Path:
    alg = opts.algs[0]
    sections = [
        f"# py-spy profile, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {alg} subject tokens, 1 worker, "
        f"SQLite, small config; saturation with {opts.connections} connections",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="sts-bench-db-") as db_dir:
        if not opts.floor_only:
            server = broker_server(ws, "small", 1, f"sqlite:///{Path(db_dir) / 'sts.db'}", "profile")
            server.start(ready_timeout=300)
            try:
                sections.append(profile_target(server, ws.bodies[alg], opts, "broker"))
            finally:
                server.stop()
    floor = floor_server(ws, 1)
    floor.start(ready_timeout=60)
    try:
        sections.append(profile_target(floor, ws.bodies[alg], opts, "floor"))
    finally:
        floor.stop()
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"profile-{dt.date.today():%Y%m%d}.txt"
    path.write_text("\n".join(sections))
    return path


# --------------------------------------------------------------------------------------------
# main


def run(opts: Options) -> dict[str, Any]:
    admin_pg = os.environ.get("BENCH_POSTGRES_URL", DEFAULT_ADMIN_PG)
    notes: list[str] = []
    dbs = list(opts.dbs)
    if "postgres" in dbs and not opts.floor_only:
        why = postgres_available(admin_pg)
        if why is not None:
            if opts.require_postgres:
                raise RuntimeError(f"PostgreSQL unreachable: {why}")
            dbs.remove("postgres")
            notes.append(f"PostgreSQL scenarios skipped: server unreachable ({why.splitlines()[0]})")
    node = None
    if opts.peer and not opts.floor_only and not opts.profile:
        node, why_not = nodepeer.prepare()
        if why_not is not None:
            line = f"oidc-provider scenarios skipped: {why_not}"
            log(line)
            notes.append(line)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sts-bench-") as tmp_name:
        tmp = Path(tmp_name)
        log(f"minting {opts.tokens} subject tokens per algorithm")
        ws = prepare(opts, tmp)
        try:
            if opts.profile:
                path = run_profile(opts, ws)
                print(path.read_text())
                return {"profile": str(path)}
            records: list[dict[str, Any]] = []
            for workers in opts.workers:
                records += run_floor(ws, opts, workers)
            if node is not None:
                for workers in opts.workers:
                    records += run_peer(ws, opts, node, workers)
            if not opts.floor_only:
                for db in dbs:
                    for config in opts.configs:
                        for workers in opts.workers:
                            records += run_broker(ws, opts, db, config, workers, admin_pg)
        except BaseException:
            for log_file in sorted(tmp.glob("*.log")):
                tail = log_file.read_text(errors="replace").splitlines()[-20:]
                sys.stderr.write(f"--- {log_file.name} (tail)\n" + "\n".join(tail) + "\n")
            raise
        finally:
            ws.issuer.stop()
    attach_ratios(records)
    options = asdict(opts)
    options["out"] = None
    report = {
        "generated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_seconds": round(time.monotonic() - started, 1),
        "machine": machine_info(),
        "options": options,
        "scenarios": records,
        "goals": goals.evaluate(records),
        "notes": notes,
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (opts.out / "latest.md").write_text(markdown(report))
    return report


QUICK = dict(
    quick=True, warmup=1.0, duration=3.0, segments=3, paced_duration=4.0, tokens=500,
    algs=["ES256"], dbs=["sqlite", "postgres"], configs=["small"], workers=[1, 2],
)
SMOKE = dict(
    smoke=True, warmup=0.5, duration=2.0, segments=2, paced_duration=1.0, rates=[100.0, 200.0], tokens=40,
    connections=4, algs=["ES256"], dbs=["sqlite"], configs=["small"], workers=[1],
)


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.run", description="Benchmark the broker against the floor.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="a few seconds, tiny counts (for make test)")
    mode.add_argument("--quick", action="store_true",
                      help="about 3 minutes: SQLite and PostgreSQL, small config, 1 and 2 workers, ES256, short phases")
    p.add_argument("--warmup", type=float)
    p.add_argument("--duration", type=float, help="saturation seconds per scenario")
    p.add_argument("--segments", type=int, help="saturation runs per scenario (CPU/exchange is their median)")
    p.add_argument("--paced-duration", type=float, help="open-loop seconds per rate per scenario")
    p.add_argument("--rate", action="append", type=float, dest="rates",
                   help="open-loop exchanges per second (repeatable; default 200 and 1000)")
    p.add_argument("--max-connections", type=int, help="open loop: connections the generator may open (default 1024)")
    p.add_argument("--tokens", type=int, help="pre-minted subject tokens per algorithm")
    p.add_argument("--connections", type=int, help="connections at saturation")
    p.add_argument("--generator", choices=("auto", "wrk", "python"), help="saturation load generator")
    p.add_argument("--alg", action="append", choices=("ES256", "RS256"), help="subject token algorithm (repeatable)")
    p.add_argument("--db", action="append", choices=("sqlite", "postgres"), help="database (repeatable)")
    p.add_argument("--config", action="append", choices=tuple(configgen.CONFIGS), help="trust configuration (repeatable)")
    p.add_argument("--workers", action="append", type=int, help="server workers (repeatable)")
    p.add_argument("--floor-only", action="store_true", help="measure only the floor")
    p.add_argument("--no-peer", action="store_true", help="skip the oidc-provider scenarios")
    p.add_argument("--require-postgres", action="store_true", help="fail instead of skipping when PostgreSQL is down")
    p.add_argument("--out", type=Path, help="results directory (default bench/results; smoke: a temporary one)")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the broker and the floor under saturation; writes the CPU-by-part table")
    p.add_argument("--profile-seconds", type=float)
    p.add_argument("--profile-native", action="store_true",
                   help="py-spy --native: C frames too (needed to see garbage collection), slower")
    a = p.parse_args(argv)
    opts = Options(**SMOKE) if a.smoke else Options(**QUICK) if a.quick else Options()  # type: ignore[arg-type]
    tunables = ("warmup", "duration", "segments", "paced_duration", "rates", "max_connections", "tokens",
                "connections", "generator", "profile_seconds")
    for name in tunables:
        value = getattr(a, name)
        if value is not None:
            setattr(opts, name, value)
    opts.algs = a.alg or opts.algs
    opts.dbs = a.db or opts.dbs
    opts.configs = a.config or opts.configs
    opts.workers = a.workers or opts.workers
    opts.floor_only = a.floor_only
    opts.peer = not a.no_peer
    opts.require_postgres = a.require_postgres
    opts.profile = a.profile
    opts.profile_native = a.profile_native
    if a.out is not None:
        opts.out = a.out
    elif a.smoke:
        opts.out = Path(tempfile.mkdtemp(prefix="sts-bench-smoke-"))
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    report = run(opts)
    if "scenarios" in report:
        print(markdown(report))
        print(f"results: {opts.out / 'latest.json'}")
        return 1 if any(r["errors"] for r in report["scenarios"]) else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
