"""CPU by part from collapsed stacks: assignment rules and the table (bench/parts.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import parts

ROOT = "/src/repo"
SITE = "/venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"
LOOP = f"run (uvicorn/server.py);run_until_complete ({STDLIB}/asyncio/base_events.py)"
APP = f"{LOOP};__call__ ({SITE}/starlette/applications.py);token_endpoint ({ROOT}/sts/endpoints.py)"

# A tiny profile: 100 busy samples whose parts are known by construction, and 32 idle ones.
COLLAPSED = "\n".join([
    f"{APP};exchange ({ROOT}/sts/exchange.py);LocalSigner.sign ({ROOT}/sts/tokens/signer.py);check_own_token "
    f"({ROOT}/sts/tokens/signer.py);verify ({ROOT}/sts/jose/jws.py) 20",
    f"{APP};exchange ({ROOT}/sts/exchange.py);sign ({ROOT}/sts/tokens/signer.py);_b64 ({ROOT}/sts/jose/b64.py) 10",
    f"{APP};exchange ({ROOT}/sts/exchange.py);TokenExchanger._verify ({ROOT}/sts/exchange.py);"
    f"verify ({ROOT}/sts/subject/oidc.py) 15",
    f"{APP};exchange ({ROOT}/sts/exchange.py);record ({ROOT}/sts/audit.py);info ({STDLIB}/logging/__init__.py) 5",
    f"{APP};exchange ({ROOT}/sts/exchange.py);record ({ROOT}/sts/audit.py);to_record ({ROOT}/sts/audit.py) 5",
    f"{APP};exchange ({ROOT}/sts/exchange.py);decide ({ROOT}/sts/trust/policy.py) 5",
    f"{APP};parse_exchange_form ({ROOT}/sts/protocol.py);parse_qsl ({STDLIB}/urllib/parse.py) 5",
    f"{APP};render ({SITE}/starlette/responses.py);dumps ({STDLIB}/json/__init__.py) 5",
    f"{APP};exchange ({ROOT}/sts/exchange.py) 5",
    f"{LOOP};data_received ({SITE}/uvicorn/protocols/http/httptools_impl.py) 15",
    f"Thread._bootstrap ({STDLIB}/threading.py);GroupCommitWriter._commit ({ROOT}/sts/store/writer.py);"
    "execute (sqlite3) 8",
    f"Thread._bootstrap ({STDLIB}/threading.py);_read_bundle_file ({ROOT}/sts/spiffe/bundle_source.py) 2",
    # Waiting in SimpleQueue.get, which py-spy counts as busy: idle, left out of the shares.
    f"Thread._bootstrap ({STDLIB}/threading.py);GroupCommitWriter._run ({ROOT}/sts/store/writer.py) 30",
    f"Thread._bootstrap ({STDLIB}/threading.py);_worker ({STDLIB}/concurrent/futures/thread.py) 2",
    "",  # blank and malformed lines are ignored
    "not a stack line",
])


def test_short_frame_strips_machine_directories() -> None:
    assert parts.short_frame(f"exchange ({ROOT}/sts/exchange.py)", ROOT) == "exchange (sts/exchange.py)"
    assert parts.short_frame(f"form ({SITE}/starlette/requests.py)", ROOT) == "form (starlette/requests.py)"
    assert parts.short_frame(f"parse_qsl ({STDLIB}/urllib/parse.py)", ROOT) == "parse_qsl (urllib/parse.py)"
    assert parts.short_frame("<native>", ROOT) == "<native>"


def test_every_sample_lands_in_its_part() -> None:
    counts = parts.by_part(parts.parse_collapsed(COLLAPSED, ROOT))
    assert dict(counts) == {
        "self-check of issued token": 20,
        "sign": 10,
        "subject-token verify": 15,
        "JSON log line": 5,
        "audit record building": 5,
        "policy/CEL": 5,
        "form parsing": 5,
        "framework Request/Response": 5,
        "pipeline glue": 5,
        "HTTP server and loop": 15,
        "writer thread": 8,
        "other threads": 2,
        parts.IDLE: 32,
    }


@pytest.mark.parametrize(
    ("stack", "part"),
    [
        pytest.param(["main (x.py)", "helper (somewhere/else.py)"], parts.OTHER, id="nothing-matches"),
        pytest.param(["run (uvicorn/server.py)", "__call__ (starlette/routing.py)", "token_endpoint (sts/endpoints.py)"],
                     "pipeline glue", id="deepest-fallback-wins"),
        pytest.param(["token_endpoint (sts/endpoints.py)", "send (starlette/responses.py)"],
                     "framework Request/Response", id="framework-inside-glue"),
        pytest.param(["exchange (bench/floor.py)", "verify (bench/jwtutil.py)"], "subject-token verify", id="floor-verify"),
        pytest.param(["exchange (bench/floor.py)", "sign (bench/jwtutil.py)"], "sign", id="floor-sign"),
        pytest.param(["exchange (sts/exchange.py)", "gc_collect_main (python3.11)"], "GC", id="native-gc"),
        # the raw ASGI token handler (sts/http/)
        pytest.param(["TokenEndpoint.__call__ (sts/http/token.py)", "decode_form (sts/http/form.py)"], "form parsing",
                     id="raw-form"),
        pytest.param(["TokenEndpoint.__call__ (sts/http/token.py)", "_answer (sts/http/token.py)"],
                     "framework Request/Response", id="raw-answer"),
        pytest.param(["TokenEndpoint.__call__ (sts/http/token.py)", "_answer (sts/http/token.py)",
                      "RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py)"],
                     "HTTP server and loop", id="raw-answer-send"),
        pytest.param(["TokenEndpoint.__call__ (sts/http/token.py)"], "pipeline glue", id="raw-handler-itself"),
        pytest.param(["HalfCloseHttpToolsProtocol.eof_received (sts/http/halfclose.py)"], "HTTP server and loop",
                     id="half-close"),
        pytest.param(["LocalSigner.sign (sts/tokens/signer.py)", "check_own_signature (sts/tokens/signer.py)"],
                     "self-check of issued token", id="self-check"),
        pytest.param(["Thread._bootstrap (threading.py)", "GroupCommitWriter._process (sts/store/writer.py)",
                      "audit_log_lines (sts/audit.py)", "emit_batch (sts/logs.py)"],
                     "JSON log line (writer thread)", id="writer-log-lines"),
    ],
)
def test_classify(stack: list[str], part: str) -> None:
    assert parts.classify(stack) == part


def test_table_multiplies_shares_by_measured_cpu() -> None:
    counts = parts.by_part(parts.parse_collapsed(COLLAPSED, ROOT))
    rows = parts.table(counts, cpu_us=1000.0)
    assert rows[0] == "| part | µs/exchange | % samples |"
    assert "| self-check of issued token | 200 | 20.0 |" in rows  # 20 of 100 samples of 1,000 µs
    assert "| other threads | 20 | 2.0 |" in rows
    assert "| **total** (measured CPU per exchange) | 1,000 | 100.0 |" in rows
    assert rows[-1] == f"| {parts.IDLE}: 32 samples, 24.2% of all | - | - |"
    assert parts.table(parts.by_part([]), 1000.0)[2:] == []


def test_rules_can_be_replaced_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(COLLAPSED)
    rules = tmp_path / "rules.json"
    rules.write_text('[{"part": "idle", "tier": "idle", "patterns": ["\\\\._run ", "^_worker "]},'
                     ' {"part": "token endpoint", "tier": "specific", "patterns": ["^token_endpoint "]}]')
    assert parts.main([str(stacks), "--cpu-us", "500", "--rules", str(rules), "--repo-root", ROOT]) == 0
    out = capsys.readouterr().out
    assert "| token endpoint | 375 | 75.0 |" in out  # 75 of the 100 samples pass through the endpoint
