"""The allowed exchange never pays for explaining: no call into the trace or the refusal facts.

Refusals record what explaining needs (sts.trust.explain, sts.subject.unverified); the issued
path must not run any of it. Counted with a profiler hook around one real pipeline run (the
twins of sts.explain stand in for the signer, the writer and the audit sink).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from sts import jose
from sts.audit import AuditEvent
from sts.client_auth import PUBLIC
from sts.config.loader import load_config_bytes
from sts.errors import OAuthError
from sts.exchange import TokenExchanger
from sts.explain.twins import DryRunAudit, DryRunSigner, DryRunStatusIndex, DryRunWriter, Recorder
from sts.protocol import parse_exchange_params
from sts.runtime import build_runtime
from sts.subject.fetch import Fetcher
from sts.subject.jwks import JWKSCache, StaticKeys

CONFIG = b"""
issuer: https://sts.example.com
issuers:
  - name: ci
    issuer: https://ci.example.com
    audiences: [https://sts.example.com]
    keys: {jwks: {keys: []}}
grants:
  - name: reader
    match: {identity_pattern: "^ci:job-.*$"}
    targets: [{audience: https://api.example.com, scopes: [read], default_scopes: [read]}]
"""
KEY = jose.generate_private_key("ES256", "k1")


async def run_once(token: str, scope: str) -> tuple[list[str], AuditEvent]:
    doc = CONFIG.replace(b"{jwks: {keys: []}}", b"{jwks: {keys: [" + str(KEY.public_jwk()).replace("'", '"').encode() + b"]}}")
    loaded = load_config_bytes(doc, base_dir=Path("."))
    cache = JWKSCache(Fetcher())
    runtime = build_runtime(loaded, cache, None, dev_mode=False)  # type: ignore[arg-type]
    for keys_id in runtime.key_sources.values():
        cache.register(keys_id, StaticKeys({"keys": [KEY.public_jwk()]}))
    rec = Recorder(now=time.time())
    exchanger = TokenExchanger(runtime=lambda: runtime, signer=DryRunSigner(rec), audit=DryRunAudit(rec),  # type: ignore[arg-type]
                               writer=DryRunWriter(rec), status_index=DryRunStatusIndex(rec))  # type: ignore[arg-type]
    request = parse_exchange_params({
        "grant_type": ["urn:ietf:params:oauth:grant-type:token-exchange"], "subject_token": [token],
        "subject_token_type": ["urn:ietf:params:oauth:token-type:jwt"], "audience": ["https://api.example.com"],
        "scope": [scope]})
    event = AuditEvent(time=0.0, request_id="r", config_version="v")
    called: list[str] = []

    def profile(frame: FrameType, what: str, arg: Any) -> None:
        name = frame.f_code.co_filename.replace("\\", "/")
        if what == "call" and (name.endswith("sts/trust/explain.py") or name.endswith("sts/subject/unverified.py")):
            called.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        await exchanger.exchange(request, PUBLIC, event)
    except OAuthError:
        pass
    finally:
        sys.setprofile(None)
    return called, event


def token(sub: str, **over: Any) -> str:
    now = int(time.time())
    return jose.sign({"iss": "https://ci.example.com", "aud": "https://sts.example.com", "sub": sub, "iat": now,
                      "exp": now + 300, **over}, KEY)


async def test_the_issued_path_runs_nothing_of_explain() -> None:
    called, event = await run_once(token("job-1"), "read")
    assert event.outcome == "issued"
    assert called == []
    assert event.context is None


async def test_refusals_record_their_explanation() -> None:
    called, event = await run_once(token("job-1"), "write")
    assert "explain_decision" in called and "refusal_context" in called
    assert event.context is not None and event.context["explain"]["decision"] == "scope_not_allowed"

    called, event = await run_once(token("job-1", aud="https://elsewhere"), "read")
    assert called[0] == "rejected_token_facts"
    assert event.context is not None and event.context["explain"]["audiences"] == ["https://elsewhere"]
