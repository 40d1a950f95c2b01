"""The running broker against its OpenAPI description (docs/openapi.yaml), fuzzed by schemathesis.

Requests are generated from the description, valid (positive) and invalid (negative) ones, and
sent over real HTTP to a real broker. Generated requests alone rarely get past the first wrong
field, so token requests are also sent with a subject token the broker trusts, and as a granted
request with one field changed to its generated value: the fuzz then reaches every check after
token verification (targets, scopes, actor tokens, client authentication, signing, the audit
write), not only the parser. Every answer must:

* not be a server error (no 5xx), and carry no Python traceback or exception text;
* conform to the description: status code, content type, headers, body schema (schemathesis'
  own checks), so a token response is an RFC 8693 §2.2.1 object and an error an RFC 6749 §5.2
  object;
* on the token endpoint: carry ``Cache-Control: no-store`` (RFC 6749 §5.1) and have the status
  that its error code calls for; a request without the fields the description requires is
  refused (schemathesis' ``negative_data_rejection``); a fully valid request gets a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
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

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
AUDIENCE = "sts-fuzz"
TARGET = "https://api.example.com"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"

# RFC 6749 §5.2 and the broker's error table (docs/architecture.md): the status each code has.
STATUS_OF_ERROR = {
    "invalid_request": {400, 405},
    "invalid_grant": {400},  # RFC 7521 §4.1.1
    "invalid_client": {401},
    "unauthorized_client": {400},
    "unsupported_grant_type": {400},
    "invalid_scope": {400},
    "invalid_target": {400},
    "invalid_dpop_proof": {400},  # RFC 9449 §5
    "use_dpop_nonce": {400},  # RFC 9449 §8 (with STS_DPOP_REQUIRE_NONCE)
    "temporarily_unavailable": {503},
    "server_error": {500},
}
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|\bException\b|\bError:\s")

schema = schemathesis.openapi.from_path(str(OPENAPI))


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(algorithms=("ES256",)) as iss:
        yield iss


@pytest.fixture(scope="module")
def broker(issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerServer]:
    port = free_port()
    config = {
        "issuer": f"http://127.0.0.1:{port}",
        "clients": {
            "allow_public": True,
            "registered": [{"client_id": "fuzz-client", "auth_method": "client_secret_basic",
                            "secret_sha256": "0" * 64}],
        },
        "issuers": [{
            "name": "fuzz-issuer",
            "issuer": issuer.url,
            "audiences": [AUDIENCE],
            "keys": {"discovery": True},
            "allow_insecure_http": True,
            "claim_mappings": {"identity": '"wl:" + claims.sub'},
        }],
        "grants": [{
            "name": "fuzz",
            "match": {"identity_pattern": "^wl:.*$"},
            "targets": [{"audience": TARGET, "scopes": ["read", "write"], "default_scopes": ["read"]}],
            "lifetime": 300,
        }],
    }
    workdir = tmp_path_factory.mktemp("fuzz-broker")
    server = BrokerServer(config, workdir=workdir, database_url=f"sqlite:///{workdir / 'sts.db'}", port=port).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def subject_token(issuer: LocalIssuer) -> str:
    # One token for the whole run: the issuer does not require a one-time jti.
    return issuer.mint({"sub": "agent-1", "aud": AUDIENCE}, alg="ES256", lifetime=3600)


@schemathesis.check
def no_traceback(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """No stack trace or exception text in any body: errors are fixed text (sts/errors.py)."""
    found = TRACEBACK.search(response.text or "")
    if found:
        raise AssertionError(f"the response body holds exception text: {found.group(0)!r}")


@schemathesis.check
def token_endpoint_rules(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """RFC 6749 §5.1 no-store on every answer of the token endpoint; the status fits the code."""
    if case.operation.path != "/token":
        return
    assert response.headers.get("cache-control") == ["no-store"], "token endpoint answer without no-store"
    if response.status_code == 200:
        body = response.json()
        assert body["access_token"] and body["token_type"] == "Bearer"
        return
    error = response.json().get("error")
    assert response.status_code in STATUS_OF_ERROR.get(error, set()), (
        f"error {error!r} with status {response.status_code}")


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    no_traceback,
    token_endpoint_rules,
]

TOKEN = schema.include(path="/token", method="POST")
OTHERS = schema.exclude(path="/token")
REQUEST_FIELDS = sorted(
    yaml.safe_load(OPENAPI.read_text())["components"]["schemas"]["TokenExchangeRequest"]["properties"])


def valid_body(generated: Any, subject_token: str) -> dict[str, Any]:
    """A request the test broker grants, keeping the generated fields the description does not
    know (the broker must ignore them, RFC 6749 §3.2)."""
    extra = {k: v for k, v in generated.items() if k not in REQUEST_FIELDS} if isinstance(generated, dict) else {}
    return {**extra, "grant_type": GRANT_TYPE, "subject_token": subject_token, "subject_token_type": JWT_TYPE,
            "audience": [TARGET], "scope": "read"}


def send_and_check(broker: BrokerServer, case: schemathesis.Case, *, rewritten: bool = False) -> schemathesis.Response:
    with requests.Session() as session:
        response = case.call(base_url=broker.url, session=session, timeout=10)
    # A body this test rewrote is no longer what schemathesis generated, and its own idea of
    # whether the case is negative does not follow the edit reliably: it is judged by the
    # other checks only (the status must still fit the error code, see token_endpoint_rules).
    checks = [c for c in CHECKS if not (rewritten and c is negative_data_rejection)]
    case.validate_response(response, checks=checks)
    return response


@settings(max_examples=150, suppress_health_check=list(HealthCheck), deadline=None)
@given(generated=st.one_of(st.tuples(TOKEN.as_strategy(GenerationMode.POSITIVE), st.booleans()),
                           st.tuples(TOKEN.as_strategy(GenerationMode.NEGATIVE), st.just(False))))
def test_token_endpoint_answers_generated_requests(broker: BrokerServer, subject_token: str,
                                                   generated: tuple[schemathesis.Case, bool]) -> None:
    # A trusted subject token, in place of the generated one, takes the request past token
    # verification. Only valid (positive) cases are changed: a negative case must stay invalid
    # for negative_data_rejection to mean anything.
    case, trusted_subject = generated
    if trusted_subject and isinstance(case.body, dict) and "subject_token" in case.body:
        case.body = {**case.body, "subject_token": subject_token}
    send_and_check(broker, case, rewritten=trusted_subject)


@settings(max_examples=150, suppress_health_check=list(HealthCheck), deadline=None)
@given(case=TOKEN.as_strategy(GenerationMode.POSITIVE), field=st.sampled_from(REQUEST_FIELDS),
       fallback=st.one_of(st.none(), st.text(max_size=40), st.lists(st.text(max_size=20), max_size=3)))
def test_token_endpoint_answers_valid_requests_with_one_field_changed(
    broker: BrokerServer, subject_token: str, case: schemathesis.Case, field: str, fallback: Any,
) -> None:
    # Every check of the request is reached with all the others passing, instead of the fuzz
    # stopping at the first field that happens to be wrong. The field keeps its generated value,
    # or takes the fallback (None: left out) when none was generated.
    body = valid_body(case.body, subject_token)
    value = case.body.get(field, fallback) if isinstance(case.body, dict) else fallback
    if value is None:
        body.pop(field, None)
    else:
        body[field] = value
    case.body = body
    send_and_check(broker, case, rewritten=True)


@settings(max_examples=20, suppress_health_check=list(HealthCheck), deadline=None)
@given(case=TOKEN.as_strategy(GenerationMode.POSITIVE))
def test_token_endpoint_grants_a_valid_request(broker: BrokerServer, subject_token: str,
                                               case: schemathesis.Case) -> None:
    case.body = valid_body(case.body, subject_token)
    # Generated credentials cannot be valid: no Authorization, no DPoP proof (a proof that is
    # sent must be valid, RFC 9449 §4.3; the DPoP tests cover good proofs).
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ("authorization", "dpop")}
    response = send_and_check(broker, case, rewritten=True)
    assert response.status_code == 200, response.text


@settings(max_examples=40, suppress_health_check=list(HealthCheck), deadline=None)
@given(case=st.one_of(OTHERS.as_strategy(GenerationMode.POSITIVE), OTHERS.as_strategy(GenerationMode.NEGATIVE)))
def test_other_endpoints_conform(broker: BrokerServer, case: schemathesis.Case) -> None:
    send_and_check(broker, case)


@settings(max_examples=12, deadline=None)
@given(method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]), query=st.text(max_size=20))
def test_other_methods_on_the_token_endpoint_are_rfc_errors(broker: BrokerServer, method: str, query: str) -> None:
    with broker.client() as c:
        response = c.request(method, "/token", params={"q": query})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"] == "invalid_request"
