"""Shortcuts taken on the request path give exactly what the straightforward code gave.

Each test pins one shortcut against its reference: the audit log object against
``dataclasses.asdict``, the identity check's ``isprintable`` fast path against the per-character
category scan, CEL activations without the string extension against expressions that need it,
the reused JSON encoders against ``json.dumps``, the audit row built in one step against the
record it stands for, the batched audit log lines against ``JSONFormatter``, and the form
decoder against ``urllib.parse.parse_qsl``.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from dataclasses import asdict
from typing import Any

import pytest
from starlette.responses import JSONResponse

from sts import jose
from sts.audit import AuditEvent
from sts.config.models import BrokerConfig
from sts.errors import InvalidRequest
from sts.http.form import MAX_FIELDS, decode_form
from sts.http.token import encode_answer
from sts.logs import JSONFormatter, JSONLinesHandler, emit_batch
from sts.store.writer import audit_row
from sts.subject.model import WorkloadIdentity
from sts.trust.cel import Activation, ExpressionError, compile_expression
from sts.trust.mapping import identity_problem
from sts.trust.policy import Allow, CompiledPolicy, Deny

FULL_EVENT = AuditEvent(
    time=1_700_000_000.5,
    request_id="req-1",
    config_version="v1",
    outcome="issued",
    error=None,
    reason="ok",
    client_id="ci",
    issuer="github",
    external_subject="repo:acme/app",
    identity="github:acme/app",
    grant="deploy",
    mode_notes=["audit rule failed"],
    requested_targets=["https://api.example.com"],
    granted_target="https://api.example.com",
    requested_scopes=["read"],
    granted_scopes=["read"],
    lifetime=900,
    issued_jti="jti-1",
    subject_token_sha256="a" * 64,
    actor_identity="k8s:ai/agent",
    detail="private",
)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(FULL_EVENT, id="full"),
        pytest.param(AuditEvent(time=1.0, request_id="r", config_version="v"), id="defaults"),
    ],
)
def test_audit_log_fields_equal_asdict(event: AuditEvent) -> None:
    fields = event.log_fields()
    assert fields == asdict(event)
    assert list(fields) == list(asdict(event))  # same key order in the log line
    fields["mode_notes"].append("changed")
    assert "changed" not in event.mode_notes  # lists are copies, as asdict made them


def test_json_formatter_line() -> None:
    record = logging.LogRecord("sts.audit", logging.INFO, "x.py", 1, "token_exchange", None, None)
    record.audit = FULL_EVENT.log_fields()
    record.odd = {1, 2}  # not JSON: rendered with str()
    line = json.loads(JSONFormatter().format(record))
    assert line["msg"] == "token_exchange" and line["logger"] == "sts.audit" and line["level"] == "info"
    assert line["audit"] == asdict(FULL_EVENT)
    assert line["odd"] == str({1, 2})


def _reference_identity_problem(value: str) -> bool:
    return any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp", "Cs"} for c in value)


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        pytest.param("repo:acme/app:ref:refs/heads/main", False, id="ascii"),
        pytest.param("k8s:équipe/ünïcode", False, id="letters"),
        pytest.param("a\u00a0b", False, id="nbsp-not-printable-but-allowed"),
        pytest.param("a\u3000b", False, id="ideographic-space-allowed"),
        pytest.param("\ue000private", False, id="private-use-allowed"),
        pytest.param("a\x00b", True, id="nul"),
        pytest.param("a\x1b[31m", True, id="escape"),
        pytest.param("a\u200bb", True, id="zero-width-space"),
        pytest.param("a\u202eb", True, id="bidi-override"),
        pytest.param("a\u2028b", True, id="line-separator"),
        pytest.param("a\u2029b", True, id="paragraph-separator"),
        pytest.param("a\ud800b", True, id="lone-surrogate"),
    ],
)
def test_identity_check_fast_path(value: str, refused: bool) -> None:
    assert _reference_identity_problem(value) is refused
    assert (identity_problem(value) is not None) is refused


def test_activation_without_extensions_still_runs_native_functions() -> None:
    claims = {"sub": "repo:acme/app", "n": 3}
    native = compile_expression('claims.sub.startsWith("repo:") && size(claims.sub) > claims.n', location="x", expect=bool)
    assert not native.uses_extensions
    assert native.evaluate(Activation({"claims": claims}, extensions=False)) is True
    ext = compile_expression('claims.sub.split(":")[1] == "acme/app"', location="y", expect=bool)
    assert ext.uses_extensions
    assert ext.evaluate(Activation({"claims": claims})) is True
    with pytest.raises(ExpressionError):
        ext.evaluate(Activation({"claims": claims}, extensions=False))


def _policy(condition: str) -> CompiledPolicy:
    config: dict[str, Any] = {
        "issuer": "https://sts.example.com",
        "issuers": [{"name": "gh", "issuer": "https://gh.example.com", "audiences": ["https://sts.example.com"]}],
        "grants": [
            {
                "name": "cond",
                "match": {"condition": condition},
                "targets": [{"audience": "https://api.example.com", "scopes": ["read"]}],
            }
        ],
    }
    return CompiledPolicy.from_config(BrokerConfig.model_validate(config))


@pytest.mark.parametrize(
    ("condition", "team", "allowed"),
    [
        pytest.param('attributes.team == "search"', "search", True, id="native-match"),
        pytest.param('attributes.team == "search"', "ops", False, id="native-no-match"),
        pytest.param('attributes.team.upperAscii() == "SEARCH"', "search", True, id="extension-match"),
        pytest.param('attributes.team.split("-")[0] == "ops"', "ops-eu", True, id="extension-split"),
        pytest.param('attributes.team.upperAscii() == "SEARCH"', "ops", False, id="extension-no-match"),
    ],
)
def test_policy_conditions_with_and_without_extensions(condition: str, team: str, allowed: bool) -> None:
    decision = _policy(condition).decide(
        identity=WorkloadIdentity("gh:x", "gh", {"team": team}),
        claims={},
        request_audiences=("https://api.example.com",),
        request_resources=(),
        requested_scopes=None,
        actor=None,
    )
    assert isinstance(decision, Allow if allowed else Deny)


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"iss": "https://sts.example.com", "n": 1, "f": 1.5, "ok": True}, id="scalars"),
        pytest.param({"sub": "ünïcode \u2028 \x00", "nested": {"a": [1, "b", None]}}, id="escapes"),
    ],
)
def test_signed_payload_is_json_dumps_output(claims: dict[str, Any]) -> None:
    key = jose.generate_private_key("ES256", kid="k1")
    token = jose.sign(claims, key, typ="at+jwt")
    header, payload, _ = token.split(".")
    assert jose.b64url_decode(header) == json.dumps({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}, separators=(",", ":")).encode()
    assert jose.b64url_decode(payload) == json.dumps(claims, separators=(",", ":")).encode()


def test_signing_refuses_nan() -> None:
    key = jose.generate_private_key("ES256", kid="k1")
    with pytest.raises(ValueError):
        jose.sign({"x": float("nan")}, key)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param({"access_token": "a.b.c", "expires_in": 900, "scope": "read write"}, id="token"),
        pytest.param({"error": "invalid_request", "error_description": "ünïcode \u2028"}, id="non-ascii"),
    ],
)
def test_token_endpoint_json_is_starlettes_json(content: dict[str, Any]) -> None:
    assert encode_answer(content).encode("utf-8") == JSONResponse(content).body


def test_token_endpoint_json_refuses_nan_like_starlette() -> None:
    with pytest.raises(ValueError):
        JSONResponse({"n": float("nan")})
    with pytest.raises(ValueError):
        encode_answer({"n": float("nan")})


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(FULL_EVENT, id="full"),
        pytest.param(AuditEvent(time=1.0, request_id="r", config_version="v"), id="defaults"),
        pytest.param(
            AuditEvent(time=2.0, request_id="r", config_version="v", client_id="c\x00\x1b[31m", detail="line\nbreak",
                       requested_targets=["https://a\x07", "https://b"], mode_notes=["ok", "t\tab"],
                       requested_scopes=["x\x00"], granted_scopes=["read"]),
            id="control-characters",
        ),
        pytest.param(AuditEvent(time=3.0, request_id="r", config_version="v", requested_scopes=[]), id="empty-scopes"),
        pytest.param(AuditEvent(time=4.0, request_id="r", config_version="v",
                                context={"chain": [{"identity": "a\x00"}], "n": 1}), id="context"),
        pytest.param(AuditEvent(time=5.0, request_id="r", config_version="v",
                                context={"big": "x" * 20000, "small": 1}), id="context-capped"),
    ],
)
def test_audit_row_in_one_step_equals_the_record_row(event: AuditEvent) -> None:
    assert event.row() == audit_row(event.to_record())


def test_batched_audit_log_lines_equal_the_formatter_lines() -> None:
    import io

    stream = io.StringIO()
    handler = JSONLinesHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("sts.test.batched")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        emit_batch(logger, "token_exchange", "audit", [FULL_EVENT.log_fields(), {"n": 1}])
        batched = [json.loads(line) for line in stream.getvalue().splitlines()]
        stream.truncate(0)
        stream.seek(0)
        logger.info("token_exchange", extra={"audit": FULL_EVENT.log_fields()})
        logger.info("token_exchange", extra={"audit": {"n": 1}})
        single = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.handlers[:] = []
    for line in batched + single:
        line.pop("time")
    assert batched == single and len(batched) == 2


def test_batched_audit_log_lines_reach_other_handlers_as_records(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sts.audit")
    emit_batch(logging.getLogger("sts.audit"), "token_exchange", "audit", [{"n": 1}, {"n": 2}])
    assert [r.audit for r in caplog.records if r.name == "sts.audit"] == [{"n": 1}, {"n": 2}]  # type: ignore[attr-defined]


def _reference_form(body: bytes) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    try:
        return parse_qsl(body.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest(reason="bad_form_encoding") from None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"a=1&b=2", id="plain"),
        pytest.param(b"a=1&&b=2&", id="empty-fields"),
        pytest.param(b"a&b=&=c&=", id="no-equals-and-blank"),
        pytest.param(b"a=1=2", id="equals-in-value"),
        pytest.param(b"sc+ope=read+write&x=%2B%26%3D", id="plus-and-escapes"),
        pytest.param(b"x=%C3%A9&y=%zz&z=%", id="utf8-and-bad-escapes"),
        pytest.param(b"x=%C3", id="truncated-utf8"),
        pytest.param(b"x=%FF", id="not-utf8"),
        pytest.param("x=\u00e9".encode(), id="non-ascii-body"),
        pytest.param(b"a=1;b=2", id="semicolon-is-not-a-separator"),
        pytest.param(b"&".join([b"a=1"] * MAX_FIELDS), id="at-the-field-cap"),
        pytest.param(b"&".join([b"a=1"] * (MAX_FIELDS + 1)), id="over-the-field-cap"),
        pytest.param(b"&" * MAX_FIELDS, id="separators-over-the-cap"),
    ],
)
def test_form_decoder_equals_parse_qsl(body: bytes) -> None:
    def outcome(decode: Any) -> Any:
        try:
            return decode(body)
        except InvalidRequest as exc:
            return exc.reason

    assert outcome(decode_form) == outcome(_reference_form)


def _reference_b64url(data: bytes) -> bytes:
    import base64
    import re

    if re.fullmatch(rb"[A-Za-z0-9_-]*", data) is None:
        raise ValueError("alphabet")
    rem = len(data) % 4
    if rem == 1:
        raise ValueError("length")
    if rem:
        index = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(data[-1:])
        if index & (0x0F if rem == 2 else 0x03):
            raise ValueError("canonical")
        data += b"=" * (4 - rem)
    return base64.urlsafe_b64decode(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"QQ", b"QR", b"QUI", b"QUJ", b"QUJD", b"-_-_", b"_w", b"A", b"QUJD\n", b" QUJD", b"QU JD", b"QUJD====",
     b"QQ==", b"Q+/A", b"ab.c", b"QUJ\x00", b"QUJ\xff", b"\xc3\xa9QUJ", b"QUJD\r", b"Q\tJD", b"!!!!", b"QUJDRA", b"QUJDRE"],
)
def test_b64url_decoder_equals_the_regex_reference(data: bytes) -> None:
    def outcome(decode: Any) -> Any:
        try:
            return decode(data)
        except ValueError:
            return ValueError

    assert outcome(jose.b64url_decode) == outcome(_reference_b64url)


def test_new_jti_has_the_shape_of_token_urlsafe_18() -> None:
    import secrets

    from sts.exchange import new_jti

    ids = {new_jti() for _ in range(200)}
    assert len(ids) == 200
    reference = secrets.token_urlsafe(18)
    assert all(len(i) == len(reference) == 24 and jose.b64url_decode(i) and "=" not in i for i in ids)


def test_an_oversized_audit_context_keeps_what_fits_and_names_what_it_dropped() -> None:
    from sts.audit import MAX_CONTEXT_CHARS, capped_context

    capped = capped_context({"big": "x" * (MAX_CONTEXT_CHARS + 1), "small": {"a": 1}})
    assert capped == {"small": {"a": 1}, "truncated": ["big"]}
    assert capped_context({"small": 1}) == {"small": 1}
    assert capped_context({}) is None
    row = AuditEvent(time=1.0, request_id="r", config_version="v", context={"big": "y" * 20000}).row()
    assert json.loads(row[-1]) == {"truncated": ["big"]}
