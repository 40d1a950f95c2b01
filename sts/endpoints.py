"""HTTP handlers: token (RFC 8693 §2, RFC 6749 §3.2/§5), metadata (RFC 8414 §3), JWKS
(RFC 7517 §5), health.

Handlers are thin: guard the transport (method, content type, size), parse once, hand the
request value to the pipeline, and write the answer. Every error goes through
``error_response`` so the RFC 6749 §5.2 shape and the no-store headers cannot be forgotten.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sts.audit import AuditEvent
from sts.errors import InvalidRequest, MethodNotAllowed, OAuthError, ServerError
from sts.protocol import MAX_BODY_BYTES, collect_parameters, parse_exchange_form
from sts.spiffe.bundle import bundle_document
from sts.spiffe.mtls import TOKEN_TYPE_MTLS, XFCC_HEADER, ClientCertificate, ForwardedCertificateRefused, client_certificate

if TYPE_CHECKING:
    from sts.app import Broker

log = logging.getLogger("sts.http")

# RFC 6749 §5.1: "The authorization server MUST include the HTTP "Cache-Control" response
# header field with a value of "no-store" in any response containing tokens, credentials, or
# other sensitive information, as well as the "Pragma" response header field with a value of
# "no-cache"." We send them on errors too: they may name what was wrong with a credential.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_of(request: Request) -> str:
    given = request.headers.get("x-request-id")
    if given and _REQUEST_ID_RE.fullmatch(given):
        return given
    # 128 random bits as 32 hex digits, like uuid4().hex without building a UUID object.
    return os.urandom(16).hex()


# One encoder for every answer: json.dumps with non-default options builds a new one per call.
_encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class OAuthJSONResponse(JSONResponse):
    """Starlette's JSONResponse with the same compact output, from a reused encoder."""

    def render(self, content: Any) -> bytes:
        return _encode_json(content).encode("utf-8")


def error_response(error: OAuthError, request_id: str) -> JSONResponse:
    headers = {**NO_STORE, **error.headers, "X-Request-Id": request_id}
    return OAuthJSONResponse(error.body(), status_code=error.status, headers=headers)


async def read_form_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("The Content-Length header is invalid.", reason="bad_content_length")
        if int(declared) > limit:
            raise InvalidRequest("The request body is too large.", reason="body_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidRequest("The request body is too large.", reason="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_form(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("ascii")
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("The request body is not a valid form.", reason="bad_form_encoding") from None


async def token_endpoint(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    request_id = request_id_of(request)
    event = AuditEvent(time=time.time(), request_id=request_id, config_version=broker.runtime().version)
    try:
        if request.method != "POST":
            raise MethodNotAllowed(reason="method_not_allowed", headers={"Allow": "POST"})
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise InvalidRequest("The request must be application/x-www-form-urlencoded.", reason="bad_content_type")
        body = await read_form_body(request, min(broker.settings.max_body_bytes, MAX_BODY_BYTES))
        params = collect_parameters(decode_form(body))
        client = await broker.runtime().clients.authenticate(request.headers.get("authorization"), params)
        event.client_id = client.client_id
        exchange_request = parse_exchange_form((k, v) for k, values in params.items() for v in values)
        peer = client_certificate_of(request, broker)
        result = await broker.exchanger.exchange(exchange_request, client, event, peer=peer)
    except OAuthError as exc:
        return await _refuse(broker, event, exc, request_id)
    except Exception as exc:  # a bug or an unavailable database: never leak what it was
        log.exception("token exchange failed", extra={"request_id": request_id})
        return await _refuse(broker, event, ServerError(reason="internal_error", detail=type(exc).__name__), request_id)
    return OAuthJSONResponse(result.body(), headers={**NO_STORE, "X-Request-Id": request_id})


def client_certificate_of(request: Request, broker: Broker) -> ClientCertificate | None:
    """The TLS client certificate (broker-terminated TLS, or forwarded by a trusted proxy);
    a forwarded-certificate header from any other peer is refused (docs/spiffe.md)."""
    try:
        return client_certificate(request.scope, request.headers.get(XFCC_HEADER), broker.trusted_proxies)
    except ForwardedCertificateRefused as exc:
        raise InvalidRequest("The forwarded client certificate is not accepted.", reason=exc.reason) from None


async def _refuse(broker: Broker, event: AuditEvent, error: OAuthError, request_id: str) -> JSONResponse:
    event.outcome = "error" if error.status >= 500 else "denied"
    event.error = error.error
    event.reason = error.reason
    event.detail = error.detail
    event.mode_notes.extend(error.notes)
    try:
        await broker.audit.record(event)
    except Exception:
        # No decision goes unrecorded: if the audit write fails, the caller gets a
        # server_error whatever the original refusal was.
        log.exception("audit write failed", extra={"request_id": request_id})
        error = ServerError(reason="audit_unavailable")
    return error_response(error, request_id)


def authorization_server_metadata(broker: Broker) -> dict[str, Any]:
    rt = broker.runtime()
    issuer = rt.issuer.rstrip("/")
    auth_methods = list(rt.client_auth_methods)
    return {
        "issuer": rt.issuer,
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        # No authorization endpoint: this server issues tokens only by exchange.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
        "scopes_supported": sorted(rt.scopes_supported),
        "subject_token_types_supported": [
            "urn:ietf:params:oauth:token-type:jwt",
            "urn:ietf:params:oauth:token-type:id_token",
            "urn:ietf:params:oauth:token-type:access_token",
        ] + ([TOKEN_TYPE_MTLS] if rt.spiffe is not None else []),
        "issued_token_types_supported": [
            "urn:ietf:params:oauth:token-type:access_token",
            "urn:ietf:params:oauth:token-type:jwt",
        ],
        "id_token_signing_alg_values_supported": sorted(rt.signing_algorithms),
    }


async def metadata_endpoint(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    return JSONResponse(authorization_server_metadata(broker), headers={"Cache-Control": "public, max-age=300"})


async def jwks_endpoint(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    return JSONResponse(
        broker.keyring.jwks(),
        media_type="application/jwk-set+json",
        headers={"Cache-Control": "public, max-age=300"},
    )


async def spiffe_bundle_endpoint(request: Request) -> Response:
    """The broker's signing keys as a SPIFFE bundle (JWT-SVID §6.1: ``use`` ``jwt-svid``, ``kid``
    set), for SPIFFE-aware relying parties that federate with the broker as a trust domain.
    No ``spiffe_sequence``: replicas derive the key set from the database at their own refresh
    moments, and a sequence that could step back between replicas would break monotonicity
    (Trust Domain and Bundle §4.1.1 makes it a SHOULD; Federation §4.2 then takes the latest)."""
    broker: Broker = request.app.state.broker
    from sts import jose

    keys = jose.parse_jwks(broker.keyring.jwks())
    return JSONResponse(
        bundle_document(keys.keys, refresh_hint=300),
        headers={"Cache-Control": "public, max-age=300"},
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    from sts.store.db import database_ok

    db_ok = await asyncio.to_thread(database_ok, broker.engine)
    keys_ok = broker.keyring.ready(broker.runtime().signing_algorithms)
    ready = db_ok and keys_ok
    # Probes need a yes or no; issuer and trust-domain names, key counts and the configuration
    # version are for operators (the `sts` CLI and logs), not for anyone who can reach the port.
    body = {"status": "ready" if ready else "not_ready", "database": db_ok, "signing_keys": keys_ok}
    return JSONResponse(body, status_code=200 if ready else 503, headers={"Cache-Control": "no-store"})
