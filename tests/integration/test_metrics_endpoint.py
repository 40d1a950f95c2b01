"""Metrics and tracing on the real broker over HTTP: the exposition after real exchanges,
bounded labels under hostile input, the separate metrics port, reload counters, and the W3C
traceparent carried into the audit record."""

from __future__ import annotations

import copy
import re
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from broker_harness import BrokerServer, free_port
from conformance.issuer import LocalIssuer
from integration_config import BROKER_AUDIENCE, base_config

LabelledValues = dict[tuple[tuple[str, str], ...], float]


def scrape(text: str) -> dict[str, LabelledValues]:
    """Sample name -> {sorted labels (without pid): value}, summed over pids."""
    out: dict[str, LabelledValues] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
            series = out.setdefault(sample.name, {})
            series[labels] = series.get(labels, 0.0) + sample.value
    return out


def value(samples: dict[str, LabelledValues], name: str, **labels: str) -> float:
    """The sum of the series of ``name`` whose labels include ``labels``."""
    return sum(v for key, v in samples.get(name, {}).items() if set(labels.items()) <= set(key))


@pytest.fixture(scope="module")
def metered(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    server = BrokerServer(base_config(port, issuer, replay_issuer, dead_port=free_port()),
                          workdir=tmp_path_factory.mktemp("metered"), database_url=database_url, port=port,
                          settings={"metrics_port": 0}).start()
    try:
        yield server
    finally:
        server.stop()


def get_metrics(server: BrokerServer) -> dict[str, LabelledValues]:
    with server.client() as c:
        resp = c.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return scrape(resp.text)


def test_exposition_counts_real_exchanges(metered: BrokerServer, mint: Callable[..., str]) -> None:
    before = get_metrics(metered)
    assert metered.exchange(mint("agent-1")).status_code == 200
    resp = metered.exchange(mint("agent-1"), resource="https://mcp.example.com/tools/search", scope="invoke")
    assert resp.status_code == 200, resp.text
    assert metered.exchange(mint("agent-1"), audience="https://billing.example.com").json()["error"] == "invalid_target"
    assert metered.exchange("not-a-jwt").json()["error"] == "invalid_request"
    after = get_metrics(metered)

    def delta(**labels: str) -> float:
        return value(after, "sts_token_exchanges_total", **labels) - value(before, "sts_token_exchanges_total", **labels)

    assert delta(outcome="issued", reason="none", issuer="local", grant="agents", target="https://vector.example.com") == 1
    # A resource under a resource_prefix is counted under the prefix, never its caller-chosen tail.
    assert delta(outcome="issued", issuer="local", grant="agents", target="https://mcp.example.com/tools/") == 1
    assert delta(outcome="denied", reason="target_not_allowed", issuer="local", target="https://billing.example.com") == 1
    assert delta(outcome="denied", reason="malformed", issuer="none", grant="none", target="none") == 1
    assert (value(after, "sts_token_request_duration_seconds_count", outcome="issued")
            - value(before, "sts_token_request_duration_seconds_count", outcome="issued")) == 2
    assert value(after, "sts_token_request_duration_seconds_bucket", outcome="denied", le="+Inf") >= 2

    # State read at scrape time: issuer keys, signing keys, group commit, configuration.
    now = time.time()
    assert value(after, "sts_jwks_keys", issuer="local") >= 1
    assert value(after, "sts_jwks_fetches_total", issuer="local", result="success") >= 1
    assert value(after, "sts_jwks_fetch_last_timestamp_seconds", issuer="local", result="success") <= now
    assert value(after, "sts_jwks_keys", issuer="dead") == 0
    assert value(after, "sts_jwks_fetch_failures_total", issuer="dead", reason="network") >= 1
    assert [dict(k)["hash"] for k in after["sts_jwks_fetch_last_key_set_info"] if dict(k)["issuer"] == "local"]
    assert value(after, "sts_signing_key_expiry_timestamp_seconds", alg="ES256") > now
    assert value(after, "sts_signing_key_usable", alg="ES256") == 1
    assert value(after, "sts_group_commit_records_total") - value(before, "sts_group_commit_records_total") >= 6
    assert value(after, "sts_group_commit_batches_total") >= 1
    assert value(after, "sts_config_info", version=metered.broker.runtime().version) == 1
    assert value(after, "sts_build_info") == 1


def test_openmetrics_on_request(metered: BrokerServer) -> None:
    with metered.client() as c:
        resp = c.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.rstrip().endswith("# EOF")


HOSTILE = ["x" * 3000, "https://vector.example.com\n# HELP", 'a"b\\c', "\u202e\u0000", "https://mcp.example.com/tools/\u00e9\n",
           "{{7*7}}", "https://vector.example.com.evil"]


def test_labels_stay_bounded_under_hostile_input(metered: BrokerServer, issuer: LocalIssuer, mint: Callable[..., str]) -> None:
    rogue = LocalIssuer(algorithms=("ES256",))
    sent: list[str] = []
    with rogue:
        with httpx.Client(base_url=metered.url, timeout=10) as c:
            for i in range(40):
                sent.append(secrets.token_hex(8))
                junk = HOSTILE[i % len(HOSTILE)] + sent[-1]
                kind = i % 4
                token = (mint("agent-1") if kind == 0 else mint(junk) if kind == 1
                         else rogue.mint({"sub": junk, "aud": BROKER_AUDIENCE}, alg="ES256") if kind == 2 else junk)
                data = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": token,
                        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "client_id": junk[:100]}
                data["resource" if i % 2 else "audience"] = junk if i % 3 else "https://mcp.example.com/tools/" + junk
                c.post("/token", data=data, headers={"X-Request-Id": secrets.token_hex(8)})
                c.post("/token", content=junk.encode("utf-8", "replace"), headers={"Content-Type": "text/" + secrets.token_hex(3)})
        with metered.client() as c:
            text = c.get("/metrics").text
    # No caller text reached the exposition (each request's text carried a unique marker).
    assert not [marker for marker in sent if marker in text]
    assert "\u202e" not in text and "{{7*7}}" not in text
    cfg = metered.broker.runtime()
    targets = {"https://vector.example.com", "legacy-api", "https://billing.example.com", "https://mcp.example.com/tools/"}
    allowed = {
        "issuer": set(cfg.issuer_names) | {"other", "none"},
        "grant": {"agents", "gateway", "replayed", "dead-grant", "shadow", "other", "none"},
        "target": targets | {"other", "none"},
        "outcome": {"issued", "denied", "error"},
    }
    series = scrape(text)["sts_token_exchanges_total"]
    for key in series:
        labels = dict(key)
        for name, values in allowed.items():
            assert labels[name] in values, (name, labels[name])
        assert re.fullmatch(r"[a-z][a-z0-9_]{0,63}", labels["reason"]), labels["reason"]
    # Every caller-chosen target fell into "other" or its configured prefix.
    assert any(dict(k)["target"] == "other" for k in series)
    assert len(series) < 60


def test_reloads_are_counted_and_the_version_follows(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    port = free_port()
    config = base_config(port, issuer, replay_issuer, dead_port=free_port())
    server = BrokerServer(config, workdir=tmp_path_factory.mktemp("reload"), database_url=database_url, port=port,
                          settings={"metrics_port": 0, "config_reload_interval": 0.1}).start()
    try:
        first = server.broker.runtime().version
        server.config_path.write_text("issuer: https://sts.example.com\nissuers: [{name: BAD}]\n")
        assert wait_for(lambda: value(get_metrics(server), "sts_config_reloads_total", result="failure") == 1)
        changed = copy.deepcopy(config)
        changed["grants"][0]["targets"].append({"audience": "https://new.example.com", "scopes": ["read"]})
        server.write_config(changed)
        assert wait_for(lambda: value(get_metrics(server), "sts_config_reloads_total", result="success") == 1)
        after = get_metrics(server)
        version = server.broker.runtime().version
        assert version != first
        assert value(after, "sts_config_info", version=version) == 1
        assert value(after, "sts_config_info", version=first) == 0  # the old version is gone, not left at 1
        # The new target is a label now.
        subject = issuer.mint({"sub": "agent-1", "aud": BROKER_AUDIENCE}, lifetime=600)
        assert server.exchange(subject, audience="https://new.example.com").status_code == 200
        assert value(get_metrics(server), "sts_token_exchanges_total", target="https://new.example.com") == 1
    finally:
        server.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_separate_metrics_port(issuer: LocalIssuer, replay_issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory,
                               mint: Callable[..., str]) -> None:
    port, metrics_port = free_port(), free_port()
    workdir = tmp_path_factory.mktemp("separate")
    server = BrokerServer(base_config(port, issuer, replay_issuer, dead_port=free_port()), workdir=workdir,
                          database_url=f"sqlite:///{workdir / 'sts.db'}", port=port, settings={"metrics_port": metrics_port}).start()
    try:
        assert server.exchange(mint("agent-1")).status_code == 200
        with server.client() as c:
            assert c.get("/metrics").status_code == 404  # not on the main port
        resp = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        samples = scrape(resp.text)
        assert value(samples, "sts_token_exchanges_total", outcome="issued") == 1
        # State series are read on the event loop even though the listener is another thread.
        assert value(samples, "sts_jwks_keys", issuer="local") >= 1
    finally:
        server.stop()
    with pytest.raises(httpx.TransportError):  # the listener stopped with the broker
        httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)


def test_metrics_off_by_default(broker: BrokerServer) -> None:
    with broker.client() as c:
        assert c.get("/metrics").status_code == 404
    assert broker.broker.metrics.enabled is False


# --- tracing ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spans() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="module")
def traced(issuer: LocalIssuer, replay_issuer: LocalIssuer, database_url: str, spans: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    server = BrokerServer(base_config(port, issuer, replay_issuer, dead_port=free_port()),
                          workdir=tmp_path_factory.mktemp("traced"), database_url=database_url, port=port,
                          settings={"otel_enabled": True}).start()
    try:
        yield server
    finally:
        server.stop()


def audit_trace_id(server: BrokerServer, request_id: str) -> str | None:
    engine = sa.create_engine(server.database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT trace_id FROM audit_events WHERE request_id = :r"), {"r": request_id}).all()
    finally:
        engine.dispose()
    assert len(rows) == 1
    return rows[0][0]


def test_traceparent_is_honoured_and_lands_in_the_audit_record(traced: BrokerServer, spans: Any, mint: Callable[..., str]) -> None:
    trace_id, parent_span = secrets.token_hex(16), secrets.token_hex(8)
    request_id = "trace-" + secrets.token_hex(6)
    data = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": mint("agent-1"),
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}
    with traced.client() as c:
        resp = c.post("/token", data=data, headers={"traceparent": f"00-{trace_id}-{parent_span}-01", "X-Request-Id": request_id})
    assert resp.status_code == 200
    assert audit_trace_id(traced, request_id) == trace_id
    span = next(s for s in spans.get_finished_spans() if s.attributes.get("sts.request_id") == request_id)
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent_span
    assert span.name == "POST /token"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["sts.outcome"] == "issued" and span.attributes["sts.grant"] == "agents"


def test_without_traceparent_a_new_trace_is_recorded(traced: BrokerServer, spans: Any) -> None:
    request_id = "fresh-" + secrets.token_hex(6)
    with traced.client() as c:
        resp = c.post("/token", data={"grant_type": "password"}, headers={"X-Request-Id": request_id,
                                                                          "traceparent": "00-zz-not-valid"})
    assert resp.status_code == 400
    recorded = audit_trace_id(traced, request_id)
    span = next(s for s in spans.get_finished_spans() if s.attributes.get("sts.request_id") == request_id)
    assert recorded == format(span.context.trace_id, "032x")
    assert span.parent is None  # an invalid traceparent is ignored (Trace Context §3.2.2.3)
    assert span.attributes["sts.outcome"] == "denied"


def test_other_paths_are_not_traced(traced: BrokerServer, spans: Any) -> None:
    spans.clear()
    with traced.client() as c:
        assert c.get("/jwks").status_code == 200
    assert spans.get_finished_spans() == ()


def test_trace_id_is_empty_when_tracing_is_off(broker: BrokerServer, mint: Callable[..., str]) -> None:
    request_id = "untraced-" + secrets.token_hex(6)
    data = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": mint("agent-1"),
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}
    with broker.client() as c:
        c.post("/token", data=data, headers={"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
                                             "X-Request-Id": request_id})
    assert audit_trace_id(broker, request_id) is None
