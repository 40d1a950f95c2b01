"""The admin API against its OpenAPI description (docs/admin-openapi.yaml), fuzzed by schemathesis.

Generated requests, valid and invalid, go over real HTTP to a real broker's admin listener, with
the admin bearer token (and, for a share of them, without it). Every answer must conform to the
description (status, content type, headers, body schema), never be a 5xx, carry
``Cache-Control: no-store``, hold no exception text and no token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from broker_harness import BrokerServer, free_port
from conformance.issuer import LocalIssuer

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "admin-openapi.yaml"
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")
JOSE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.")

schema = schemathesis.openapi.from_path(str(OPENAPI))


class Admin:
    def __init__(self, server: BrokerServer, url: str, token: str) -> None:
        self.server, self.url, self.token = server, url, token


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    workdir = tmp_path_factory.mktemp("fuzz-admin")
    token = "fuzz-admin-token-0123456789abcdef0123"
    (workdir / "admin-token").write_text(token)
    with LocalIssuer(algorithms=("ES256",)) as issuer:
        port, admin_port = free_port(), free_port()
        config = {
            "issuer": f"http://127.0.0.1:{port}",
            "clients": {"allow_public": True},
            "issuers": [{"name": "fuzz-issuer", "issuer": issuer.url, "audiences": ["sts-fuzz"], "keys": {"discovery": True},
                         "allow_insecure_http": True, "claim_mappings": {"identity": '"wl:" + claims.sub'}}],
            "grants": [{"name": "fuzz", "match": {"identity_pattern": "^wl:.*$"},
                        "targets": [{"audience": "https://api.example.com", "scopes": ["read"]}]}],
        }
        server = BrokerServer(config, workdir=workdir, database_url=f"sqlite:///{workdir / 'sts.db'}", port=port,
                              settings={"admin_listen": f"127.0.0.1:{admin_port}", "admin_token_file": workdir / "admin-token",
                                        "audit_coalesce_window": 0}).start()
        try:
            yield Admin(server, f"http://127.0.0.1:{admin_port}", token)
        finally:
            server.stop()


@schemathesis.check
def admin_rules(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    assert response.headers.get("cache-control") == ["no-store"], "admin answer without no-store"
    text = response.text or ""
    found = TRACEBACK.search(text)
    assert not found, f"exception text in the answer: {found.group(0)!r}" if found else ""
    assert not JOSE.search(text), "a token-shaped string in an admin answer"


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, admin_rules]


@settings(max_examples=120, suppress_health_check=list(HealthCheck), deadline=None)
@given(case=st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)),
       authenticated=st.sampled_from([True, True, True, False]))
def test_admin_api_conforms(admin: Admin, case: schemathesis.Case, authenticated: bool) -> None:
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    if authenticated:
        headers["Authorization"] = f"Bearer {admin.token}"
    case.headers = headers
    with requests.Session() as session:
        response = case.call(base_url=admin.url, session=session, timeout=30)
    checks = CHECKS if authenticated else [c for c in CHECKS if c is not negative_data_rejection]
    case.validate_response(response, checks=checks)
    if not authenticated:
        assert response.status_code == 401
