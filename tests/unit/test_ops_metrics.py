"""sts.ops.metrics without a server: label bounding, the hot-path caches, state families, and
the state files that carry per-worker series between processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sts.config.models import BrokerConfig
from sts.ops.metrics import (
    RAW_CACHE_LIMIT,
    LabelSets,
    Metrics,
    NoMetrics,
    ReasonLabels,
    read_state_files,
    state_file,
    write_state_file,
)
from sts.store.writer import WriterStats
from sts.tokens.keyring import KeyUnavailable

CONFIG = BrokerConfig.model_validate({
    "issuer": "https://sts.example.com",
    "issuers": [{"name": "gh", "issuer": "https://token.actions.githubusercontent.com", "audiences": ["sts"]}],
    "trust_domains": [{"name": "prod.example", "bundle_endpoint": {"url": "https://bundle.example/b", "profile": "https_web"},
                       "audiences": ["sts"]}],
    "grants": [{"name": "deploy", "issuers": ["gh"], "match": {"identity": "gh:x"},
                "targets": [{"audience": "https://api.example.com", "scopes": ["read"]},
                            {"resource_prefix": "https://mcp.example.com/", "scopes": ["invoke"]},
                            {"resource_prefix": "https://mcp.example.com/tools/", "scopes": ["invoke"]}]}],
})


@pytest.mark.parametrize(("kind", "value", "label"), [
    pytest.param("issuer", "gh", "gh", id="issuer-configured"),
    pytest.param("issuer", "prod.example", "prod.example", id="issuer-trust-domain"),
    pytest.param("issuer", "https://evil.example", "other", id="issuer-unknown"),
    pytest.param("issuer", None, "none", id="issuer-absent"),
    pytest.param("grant", "deploy", "deploy", id="grant-configured"),
    pytest.param("grant", "Deploy", "other", id="grant-case-differs"),
    pytest.param("grant", None, "none", id="grant-absent"),
    pytest.param("target", "https://api.example.com", "https://api.example.com", id="target-exact"),
    pytest.param("target", "https://api.example.com/", "other", id="target-near-miss"),
    pytest.param("target", "https://mcp.example.com/tools/x?y", "https://mcp.example.com/tools/", id="target-longest-prefix"),
    pytest.param("target", "https://mcp.example.com/other", "https://mcp.example.com/", id="target-shorter-prefix"),
    pytest.param("target", "https://mcp.example.co", "other", id="target-before-prefix"),
    pytest.param("target", None, "none", id="target-absent"),
])
def test_label_sets_allow_only_configured_names(kind: str, value: str | None, label: str) -> None:
    assert getattr(LabelSets.from_config(CONFIG), kind)(value) == label


@pytest.mark.parametrize(("reason", "label"), [
    pytest.param("jti_replayed", "jti_replayed", id="code"),
    pytest.param(None, "none", id="absent"),
    pytest.param("Bad Reason", "other", id="not-an-identifier"),
    pytest.param("x" * 65, "other", id="too-long"),
    pytest.param("a\nb", "other", id="newline"),
])
def test_reason_labels(reason: str | None, label: str) -> None:
    assert ReasonLabels()(reason) == label


def test_reason_labels_are_capped() -> None:
    reasons = ReasonLabels(limit=3)
    assert [reasons(f"r{i}") for i in range(5)] == ["r0", "r1", "r2", "other", "other"]
    assert reasons("r1") == "r1"  # known ones keep their label


class FakeKeyring:
    """ES256 signs with a fallback key (its active key cannot be used); RS256 has none."""

    def __init__(self, not_after: float) -> None:
        self.not_after = not_after
        self.fallback_signatures = 4

    def peek(self, alg: str) -> Any:
        if alg != "ES256":
            raise KeyUnavailable(alg)
        return SimpleNamespace(not_after=self.not_after)

    def active(self, alg: str) -> Any:
        raise AssertionError("a scrape must not count as a signature")

    def degraded(self, algs: Any = None) -> dict[str, str]:
        return {a: "active key does not open" for a in ("ES256", "RS256") if algs is None or a in algs}


class FakeStatus:
    def __init__(self, status: dict[str, dict[str, Any]]) -> None:
        self._status = status

    def status(self) -> dict[str, dict[str, Any]]:
        return self._status

    def peek(self, keys_id: str) -> Any:
        return None


def make_metrics(directory: str | None = None) -> Metrics:
    runtime = SimpleNamespace(key_sources={"gh": "gh@1"}, signing_algorithms=frozenset({"ES256", "RS256"}))
    jwks = FakeStatus({
        "gh@1": {"keys": 2, "last_success": 100.0, "last_error": "timeout", "last_error_at": 200.0, "stale": True,
                 "fetch_successes": 3, "fetch_failures": {"timeout": 2}},
        "gone@2": {"keys": 1, "last_success": 1.0, "last_error": None, "stale": False},  # not in the runtime
    })
    bundles = FakeStatus({"prod.example": {"jwt_keys": 1, "x509_authorities": 2, "sequence": None, "last_success": 50.0,
                                           "last_error": None, "stale": False}})
    writer = SimpleNamespace(stats=WriterStats(batches=4, records=10, claims=1, max_batch_seen=5, failed_batches=1, failed_items=2))
    m = Metrics(runtime=lambda: runtime, jwks=jwks, bundles=bundles, keyring=FakeKeyring(9e9), writer=writer,
                directory=directory, clock=lambda: 1234.0)
    m.configure(CONFIG, "abc123")
    return m


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(m.registry).decode()
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "pid"))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_exchange_done_counts_with_bounded_labels() -> None:
    m = make_metrics()
    m.exchange_done("issued", None, "gh", "deploy", "https://mcp.example.com/tools/run", 0.002)
    m.exchange_done("denied", "target_not_allowed", "gh", None, "https://attacker.example/" + "x" * 100, 0.001)
    m.exchange_done("weird", "Not A Code", "nobody", "nothing", None, -1.0)
    got = samples(m)
    key = "sts_token_exchanges_total"
    assert got[(key, (("grant", "deploy"), ("issuer", "gh"), ("outcome", "issued"), ("reason", "none"),
                      ("target", "https://mcp.example.com/tools/")))] == 1
    assert got[(key, (("grant", "none"), ("issuer", "gh"), ("outcome", "denied"), ("reason", "target_not_allowed"),
                      ("target", "other")))] == 1
    assert got[(key, (("grant", "other"), ("issuer", "other"), ("outcome", "other"), ("reason", "other"),
                      ("target", "none")))] == 1
    assert got[("sts_token_request_duration_seconds_sum", (("outcome", "issued"),))] == pytest.approx(0.002)
    # A negative duration (the wall clock stepped back) counts as zero.
    assert got[("sts_token_request_duration_seconds_bucket", (("le", "0.001"), ("outcome", "other")))] == 1


def test_hot_path_caches_stay_bounded_under_a_flood_of_distinct_targets() -> None:
    m = make_metrics()
    for i in range(RAW_CACHE_LIMIT + 500):
        m.exchange_done("denied", "target_not_allowed", "gh", None, f"https://flood.example/{i}", 0.001)
    assert len(m._hot) == RAW_CACHE_LIMIT
    assert len(m._children) == 1  # one series: target "other"
    assert samples(m)[("sts_token_exchanges_total", (("grant", "none"), ("issuer", "gh"), ("outcome", "denied"),
                                                     ("reason", "target_not_allowed"), ("target", "other")))] == RAW_CACHE_LIMIT + 500


def test_reconfigure_applies_new_names_to_values_seen_before() -> None:
    m = make_metrics()
    m.exchange_done("issued", None, "gh", "deploy", "https://new.example.com", 0.001)
    doc = CONFIG.model_dump(mode="json", exclude_none=True)
    doc["grants"][0]["targets"][0]["audience"] = "https://new.example.com"
    changed = BrokerConfig.model_validate(doc)
    m.configure(changed, "def456")
    m.exchange_done("issued", None, "gh", "deploy", "https://new.example.com", 0.001)
    targets = {dict(k)["target"] for (name, k), v in samples(m).items() if name == "sts_token_exchanges_total"}
    assert targets == {"other", "https://new.example.com"}


def test_state_families() -> None:
    got = samples(make_metrics())
    assert got[("sts_config_info", (("version", "abc123"),))] == 1
    assert got[("sts_config_last_load_timestamp_seconds", ())] == 1234.0
    assert got[("sts_jwks_keys", (("issuer", "gh"),))] == 2
    assert got[("sts_jwks_stale", (("issuer", "gh"),))] == 1
    assert got[("sts_jwks_fetches_total", (("issuer", "gh"), ("result", "success")))] == 3
    assert got[("sts_jwks_fetches_total", (("issuer", "gh"), ("result", "failure")))] == 2
    assert got[("sts_jwks_fetch_failures_total", (("issuer", "gh"), ("reason", "timeout")))] == 2
    assert got[("sts_jwks_fetch_last_timestamp_seconds", (("issuer", "gh"), ("result", "failure")))] == 200.0
    assert not [k for k in got if ("issuer", "gone") in k[1]]  # entries of no configured issuer are not shown
    assert got[("sts_spiffe_bundle_keys", (("kind", "x509"), ("trust_domain", "prod.example")))] == 2
    assert got[("sts_signing_key_expiry_timestamp_seconds", (("alg", "ES256"),))] == 9e9
    assert got[("sts_signing_key_usable", (("alg", "RS256"),))] == 0
    assert got[("sts_signing_key_degraded", (("alg", "ES256"),))] == 1
    assert got[("sts_signing_key_fallback_signatures_total", ())] == 4
    assert ("sts_signing_key_expiry_timestamp_seconds", (("alg", "RS256"),)) not in got
    assert got[("sts_group_commit_records_total", ())] == 10
    assert got[("sts_group_commit_failed_items_total", ())] == 2
    assert got[("sts_group_commit_batch_size_max", ())] == 5


def test_every_state_sample_names_its_process() -> None:
    m = make_metrics()
    pids = {s.labels.get("pid") for f in m.state_families() for s in f.samples}
    assert pids == {str(os.getpid())}


def test_database_errors_are_told_apart_from_other_failures() -> None:
    from sqlalchemy.exc import OperationalError

    m = make_metrics()
    m.background_failure("key_refresh", OperationalError("select", {}, Exception("down")))
    m.background_failure("key_refresh", ValueError("kek"))
    m.database_error("readiness")
    got = samples(m)
    assert got[("sts_background_failures_total", (("task", "key_refresh"),))] == 2
    assert got[("sts_database_errors_total", (("operation", "key_refresh"),))] == 1
    assert got[("sts_database_errors_total", (("operation", "readiness"),))] == 1


def test_state_files_merge_live_workers_and_drop_dead_ones(tmp_path: Path) -> None:
    families = make_metrics().state_families()
    write_state_file(str(tmp_path), 111, families)
    write_state_file(str(tmp_path), 222, families)
    (tmp_path / "sts_state_garbage.json").write_text("{")
    both = read_state_files(str(tmp_path), alive=lambda pid: True)
    assert len(next(f for f in both if f.name == "sts_config_info").samples) == 2
    merged = read_state_files(str(tmp_path), alive=lambda pid: pid == 111)
    assert len(next(f for f in merged if f.name == "sts_config_info").samples) == 1
    assert not state_file(str(tmp_path), 222).exists()  # a dead worker's file is removed
    assert state_file(str(tmp_path), 111).exists()


def test_no_metrics_does_nothing() -> None:
    m = NoMetrics()
    m.exchange_done("issued", None, None, None, None, 0.1)
    m.config_reload(True)
    m.background_failure("x", ValueError())
    assert m.enabled is False


def test_tracing_off_imports_no_opentelemetry() -> None:
    code = ("import sys, sts.app, sts.endpoints, sts.cli.main; "
            "sys.exit(1 if [m for m in sys.modules if m.startswith('opentelemetry')] else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


def test_metrics_port_cannot_be_the_main_port() -> None:
    from pydantic import ValidationError

    from sts.settings import Settings

    with pytest.raises(ValidationError, match="metrics_port is the main port"):
        Settings(port=8080, metrics_port=8080)
    assert Settings(port=8080, metrics_port=0).metrics_port == 0
    assert Settings(port=8080, metrics_port=8080, metrics_host="127.0.0.2").metrics_port == 8080
