"""``/introspect`` (RFC 7662) and ``/revoke`` (RFC 7009): thin handlers around
``sts.lifecycle.introspection``. Not the exchange hot path, so plain Starlette.

Both authenticate the caller exactly as the token endpoint does (``sts.client_auth``; RFC 6749
§2.3) and refuse public callers. Answers carry ``Cache-Control: no-store`` (RFC 7662 §2.2 holds
token metadata; RFC 6749 §5.1). Refused calls are audited like refused exchanges, with the
note ``endpoint:introspect`` or ``endpoint:revoke``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sts.audit import DATABASE_WAIT_SECONDS, AuditEvent
from sts.errors import InvalidClient, InvalidRequest, OAuthError, ServerError, TemporarilyUnavailable, UnauthorizedClient
from sts.http.form import decode_form
from sts.lifecycle.introspection import INACTIVE, introspection_response, issued_to, verify_own_token
from sts.spiffe.mtls import XFCC_HEADER, ForwardedCertificateRefused, client_certificate
from sts.store.errors import StoreError
from sts.store.lifecycle import LifecycleRepository

if TYPE_CHECKING:
    from sts.app import Broker

log = logging.getLogger("sts.lifecycle")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM_TYPE = "application/x-www-form-urlencoded"


class IntrospectionNotAllowed(UnauthorizedClient):
    """An authenticated client that is not registered with ``introspection: true``."""

    status = 403
    default_description = "The client is not allowed to introspect tokens."


async def _form(request: Request, limit: int) -> dict[str, list[str]]:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM_TYPE:
        raise InvalidRequest("The request body must be application/x-www-form-urlencoded.", reason="bad_content_type")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InvalidRequest("The request body is too large.", reason="body_too_large")
    form: dict[str, list[str]] = {}
    for name, value in decode_form(body):
        form.setdefault(name, []).append(value)
    return form


def _token(form: dict[str, list[str]]) -> str:
    # RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once."
    for name, values in form.items():
        if len(values) > 1:
            raise InvalidRequest("A parameter was sent more than once.", reason="duplicate_parameter", detail=name)
    values = form.get("token")
    if not values or not values[0]:
        raise InvalidRequest("The token parameter is missing.", reason="missing_token")
    # token_type_hint is ignored: this server issues access tokens only (RFC 7009 §2.1, RFC 7662 §2.1).
    return values[0]


async def _row(broker: Broker, jti: str) -> dict[str, Any] | None:
    try:
        return await asyncio.wait_for(asyncio.to_thread(LifecycleRepository(broker.engine).token, jti), DATABASE_WAIT_SECONDS)
    except (StoreError, TimeoutError) as exc:
        raise TemporarilyUnavailable("The service is temporarily unavailable; retry later.", reason="database_unavailable",
                                     detail=type(exc).__name__) from None


async def _authenticated(broker: Broker, request: Request, form: dict[str, list[str]], event: AuditEvent) -> str:
    try:
        peer = client_certificate(request.scope, request.headers.get(XFCC_HEADER), broker.trusted_proxies)
    except ForwardedCertificateRefused as exc:
        raise InvalidRequest("The forwarded client certificate is not accepted.", reason=exc.reason) from None
    client = await broker.runtime().clients.authenticate(request.headers.get("authorization"), form, peer)
    if client.client_id is None:
        raise InvalidClient("Client authentication is required.", reason="public_client_not_allowed")
    event.client_id = client.client_id
    return client.client_id


async def _refused(broker: Broker, event: AuditEvent, exc: OAuthError) -> Response:
    event.outcome = "error" if exc.status >= 500 else "denied"
    event.error, event.reason, event.detail = exc.error, exc.reason, exc.detail
    try:
        await broker.audit.record(event)
    except Exception:
        log.warning("the audit record of a refused %s call could not be written", event.mode_notes[0], exc_info=True)
    return JSONResponse(exc.body(), status_code=exc.status, headers={**exc.headers, **NO_STORE})


def _event(broker: Broker, endpoint: str, request: Request) -> AuditEvent:
    request_id = (request.headers.get("x-request-id") or "")[:128] or f"{endpoint}-{time.time_ns()}"
    return AuditEvent(time=time.time(), request_id=request_id, config_version=broker.runtime().version,
                      mode_notes=[f"endpoint:{endpoint}"])


async def introspect_endpoint(request: Request) -> Response:
    """RFC 7662 §2: the state of one of our tokens, for an authorized resource server."""
    broker: Broker = request.app.state.broker
    event = _event(broker, "introspect", request)
    try:
        form = await _form(request, broker.settings.max_body_bytes)
        client_id = await _authenticated(broker, request, form, event)
        if not broker.runtime().client_may_introspect(client_id):
            raise IntrospectionNotAllowed(reason="client_not_allowed_introspection")
        token = _token(form)
        claims = verify_own_token(token, issuer=broker.runtime().issuer, jwks=broker.keyring.jwks(), now=time.time())
        body: dict[str, Any] = INACTIVE
        if claims is not None:
            row = await _row(broker, claims["jti"])
            # No row: not a token this deployment recorded. Revoked: inactive at once, on every replica.
            if row is not None and row.get("revoked_at") is None:
                body = introspection_response(claims)
    except OAuthError as exc:
        return await _refused(broker, event, exc)
    except Exception as exc:
        log.exception("introspection failed")
        return await _refused(broker, event, ServerError(reason="unexpected", detail=type(exc).__name__))
    return JSONResponse(body, headers=NO_STORE)


async def revoke_endpoint(request: Request) -> Response:
    """RFC 7009 §2: a client revokes a token that was issued to it; 200 whatever the token was."""
    broker: Broker = request.app.state.broker
    event = _event(broker, "revoke", request)
    try:
        form = await _form(request, broker.settings.max_body_bytes)
        client_id = await _authenticated(broker, request, form, event)
        token = _token(form)
        claims = verify_own_token(token, issuer=broker.runtime().issuer, jwks=broker.keyring.jwks(), now=time.time())
        if claims is not None:
            row = await _row(broker, claims["jti"])
            if issued_to(row, client_id) and row is not None and row.get("revoked_at") is None:
                repo = LifecycleRepository(broker.engine)
                try:
                    await asyncio.wait_for(asyncio.to_thread(repo.revoke, [claims["jti"]], now=time.time(),
                                                             reason=f"client {client_id} (RFC 7009)"), DATABASE_WAIT_SECONDS)
                except (StoreError, TimeoutError) as exc:
                    # RFC 7009 §2.2.1: 503 tells the client to retry, as the revocation did not happen.
                    raise TemporarilyUnavailable("The service is temporarily unavailable; retry later.",
                                                 reason="database_unavailable", detail=type(exc).__name__) from None
                log.info("token revoked by its client", extra={"client_id": client_id, "jti": claims["jti"]})
    except OAuthError as exc:
        return await _refused(broker, event, exc)
    except Exception as exc:
        log.exception("revocation failed")
        return await _refused(broker, event, ServerError(reason="unexpected", detail=type(exc).__name__))
    return Response(status_code=200, headers=NO_STORE)
