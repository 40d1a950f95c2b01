"""What metrics cost: the token endpoint's one call per request, and one scrape.

    python -m bench.metrics_cost

Runs each measurement in a fresh interpreter, once in single-process mode and once in
prometheus_client's multiprocess mode (memory-mapped values, as under ``sts serve --workers N``),
and prints microseconds per call. Nothing here runs a server: it measures the calls themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import timeit

# The label mix of a busy broker: a few issuers, grants and targets, a handful of reasons.
PROBE = r"""
import json, os, timeit
from types import SimpleNamespace
from sts.config.models import BrokerConfig
from sts.ops.metrics import Metrics, NoMetrics
from sts.store.writer import WriterStats

issuers = [f"idp{i}" for i in range(4)]
config = BrokerConfig.model_validate({
    "issuer": "https://sts.example.com",
    "issuers": [{"name": n, "issuer": f"https://{n}.example.com", "audiences": ["sts"]} for n in issuers],
    "grants": [{"name": f"g{i}", "issuers": issuers, "match": {"identity": f"id{i}"},
                "targets": [{"audience": f"https://t{j}.example.com", "scopes": ["read"]} for j in range(5)]}
               for i in range(10)],
})
status = {f"{n}@x": {"keys": 2, "last_success": 1.0, "last_error": None, "last_error_at": None, "stale": False,
                     "fetch_successes": 10, "fetch_failures": {"timeout": 1}} for n in issuers}
runtime = SimpleNamespace(key_sources={n: f"{n}@x" for n in issuers}, signing_algorithms=frozenset({"ES256"}))
jwks = SimpleNamespace(status=lambda: status, peek=lambda k: None)
bundles = SimpleNamespace(status=lambda: {})
keyring = SimpleNamespace(active=lambda alg: SimpleNamespace(not_after=9e9))
writer = SimpleNamespace(stats=WriterStats())
m = Metrics(runtime=lambda: runtime, jwks=jwks, bundles=bundles, keyring=keyring, writer=writer,
            directory=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
m.configure(config, "v1")
# Fill the series a day of traffic would create: every grant x target x issuer issued, some denials.
reasons = ["jti_replayed", "signature", "target_not_allowed", "no_grant", "malformed"]
for i, iss in enumerate(issuers):
    for g in range(10):
        for t in range(5):
            m.exchange_done("issued", None, iss, f"g{g}", f"https://t{t}.example.com", 0.001)
    for r in reasons:
        m.exchange_done("denied", r, iss, None, None, 0.001)
n = 200_000
hot = timeit.timeit(lambda: m.exchange_done("issued", None, "idp1", "g3", "https://t2.example.com", 0.0012), number=n) / n
miss = timeit.timeit(lambda: m._resolve("denied", "target_not_allowed", "idp1", None, "https://flood.example/x"), number=n // 10) / (n // 10)
off = NoMetrics()
none = timeit.timeit(lambda: off.exchange_done("issued", None, "idp1", "g3", "https://t2.example.com", 0.0012), number=n) / n
empty = timeit.timeit(lambda: (lambda *a: None)("issued", None, "idp1", "g3", "https://t2.example.com", 0.0012), number=n) / n
body, _ = m.render(None)
scrapes = 50
scrape = timeit.timeit(lambda: m.render(None), number=scrapes) / scrapes
print(json.dumps({"exchange_done_us": hot * 1e6, "label_resolution_miss_us": miss * 1e6, "metrics_off_us": none * 1e6,
                  "empty_call_us": empty * 1e6, "scrape_ms": scrape * 1e3, "scrape_bytes": len(body),
                  "series": body.count(b"\n") - body.count(b"\n#")}))
"""


def measure(multiprocess: bool) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory(prefix="sts-metrics-cost-") as directory:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        out = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    for mode, multiprocess in (("single process", False), ("multiprocess (--workers N)", True)):
        r = measure(multiprocess)
        print(f"{mode}:")
        print(f"  exchange_done, warm:          {r['exchange_done_us']:.2f} µs per request")
        print(f"  first sight of a label tuple: {r['label_resolution_miss_us']:.2f} µs")
        print(f"  metrics off (NoMetrics):      {r['metrics_off_us']:.2f} µs (an empty call: {r['empty_call_us']:.2f} µs)")
        print(f"  one scrape:                   {r['scrape_ms']:.2f} ms for {r['series']:.0f} series, {r['scrape_bytes']:.0f} bytes")


if __name__ == "__main__":
    _ = timeit  # the probe uses timeit in the child interpreter
    main()
