"""The admin API's ASGI app: authenticate, route, run a read-only handler, answer JSON.

One short path per request, in this order, so that no step can be skipped:

1. request id (the caller's safe ``X-Request-Id``, else random) and an audit event;
2. authenticate (:class:`sts.admin.auth.AdminAuth`); refused -> 401, audited;
3. route: an unknown path -> 404, a known path with another method -> 405 with ``Allow``
   (RFC 9110 §15.5.6), both audited;
4. check the query: only the route's own parameters, each at most once and within its bounds
   (a refusal -> 400, audited);
5. run the handler (an adapter in :mod:`sts.admin.views` or ``sts.explain``);
6. answer ``application/json`` with ``Cache-Control: no-store`` (RFC 9111 §5.2.2.5), after
   :func:`sts.admin.views.redact`.

Refusals carry fixed text: the detail (which parameter, which path) goes to the audit record's
``detail`` and its ``admin`` context, never a credential and never the query string. An
unauthenticated refusal is coalesced with identical ones from the same peer like a refused
token request (``sts.ops.coalesce``); an authenticated one is always written on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from sts.admin.auth import AdminAuth, AdminUnauthenticated, Principal
from sts.admin.views import redact
from sts.audit import DATABASE_WAIT_SECONDS, AuditEvent
from sts.availability import database_unavailable
from sts.http.token import request_id_of
from sts.store.errors import StoreError

if TYPE_CHECKING:
    from sts.app import Broker

log = logging.getLogger("sts.admin")

PREFIX: Final = "/admin/v1"
NOTE: Final = "endpoint:admin"
REALM: Final = 'Bearer realm="sts-admin"'
MAX_QUERY_CHARS: Final = 4096
_JSON_HEADERS: Final = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"), (b"pragma", b"no-cache"))
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str).encode


class AdminRefusal(Exception):
    """A refused admin request: ``status``, the RFC-style ``error`` code and fixed public text;
    ``reason`` and ``detail`` are for the audit record only."""

    def __init__(self, status: int, error: str, description: str, *, reason: str, detail: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.error, self.description = status, error, description
        self.reason, self.detail = reason, detail
        self.headers = dict(headers or {})

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def bad_request(reason: str, description: str, detail: str | None = None) -> AdminRefusal:
    return AdminRefusal(400, "invalid_request", description, reason=reason, detail=detail)


def unavailable(detail: str) -> AdminRefusal:
    return AdminRefusal(503, "temporarily_unavailable", "The service is temporarily unavailable; retry later.",
                        reason="database_unavailable", detail=detail, headers={"Retry-After": "5"})


# --- query parameters ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One query parameter a route accepts: at most ``max_chars`` characters, optionally of a
    ``pattern``, or an integer from ``low`` to ``high`` when ``integer``."""

    name: str
    max_chars: int = 256
    pattern: str | None = None
    integer: bool = False
    low: int = 0
    high: int = 0

    def parse(self, raw: str) -> Any:
        problem = f"The parameter {self.name} is out of range or malformed."
        if not raw or len(raw) > self.max_chars or not raw.isprintable():
            raise bad_request("admin_parameter_invalid", problem, detail=f"parameter {self.name}")
        if self.integer:
            if not re.fullmatch(r"[0-9]{1,18}", raw) or not self.low <= int(raw) <= self.high:
                raise bad_request("admin_parameter_invalid", problem, detail=f"parameter {self.name}")
            return int(raw)
        if self.pattern is not None and not re.fullmatch(self.pattern, raw):
            raise bad_request("admin_parameter_invalid", problem, detail=f"parameter {self.name}")
        return raw


def parse_query(query: bytes, params: tuple[Param, ...]) -> dict[str, Any]:
    """The route's parameters from the query string; anything else is refused, never echoed."""
    if len(query) > MAX_QUERY_CHARS:
        raise bad_request("admin_query_too_long", "The query string is too long.")
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=False, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise bad_request("admin_query_malformed", "The query string is malformed.") from None
    known = {p.name: p for p in params}
    out: dict[str, Any] = {}
    for name, raw in pairs:
        spec = known.get(name)
        if spec is None:
            raise bad_request("admin_parameter_unknown", "A query parameter is not one this resource takes.",
                              detail=f"parameter {name[:64]!r}")
        if name in out:
            raise bad_request("admin_parameter_repeated", f"The parameter {spec.name} was sent more than once.",
                              detail=f"parameter {spec.name}")
        out[name] = spec.parse(raw)
    return out


# --- routes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdminCall:
    """What a handler gets: the broker, the caller, the path and query parameters, the request."""

    broker: Broker
    principal: Principal
    path_params: dict[str, str]
    query: dict[str, Any]
    request: Request
    event: AuditEvent


Handler = Callable[[AdminCall], Awaitable[Any]]


@dataclass(frozen=True)
class Operation:
    handler: Handler
    params: tuple[Param, ...] = ()
    required: tuple[str, ...] = ()
    # Returns raw bytes with this content type instead of JSON (the YAML OpenAPI document).
    raw_content_type: str | None = None


@dataclass
class Route:
    """A path template (``{name}`` matches one segment) and its operations by method."""

    template: str
    operations: dict[str, Operation] = field(default_factory=dict)
    regex: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\\\{([a-z_]+)\\\}", r"(?P<\1>[^/]{1,256})", re.escape(self.template))
        self.regex = re.compile(pattern)


class AdminApp:
    """The admin API. Invariant: a handler runs only for an authenticated caller, on a known
    path and method, with its query parameters checked; every other request is refused,
    audited and answered with fixed text."""

    def __init__(self, broker: Broker, auth: AdminAuth, routes: list[Route]) -> None:
        self.broker = broker
        self.auth = auth
        self.routes = routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the listener runs without a lifespan; answer one anyway
            message = await receive()
            await send({"type": f"{message['type']}.complete"})
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        broker = self.broker
        request_id = request_id_of(request.headers.get("x-request-id", "").encode("latin-1") or None)
        event = AuditEvent(time=time.time(), request_id=request_id, config_version=broker.runtime().version,
                           mode_notes=[NOTE])
        principal: Principal | None = None
        try:
            try:
                principal = self.auth.authenticate(request.headers.get("authorization"), scope)
            except AdminUnauthenticated as exc:
                challenge = REALM + (', error="invalid_token"' if exc.bad_token else "")
                raise AdminRefusal(401, "unauthorized", "Authentication is required.", reason=exc.reason,
                                   headers={"WWW-Authenticate": challenge}) from None
            operation, path_params = self._route(scope["method"], scope["path"])
            query = parse_query(scope.get("query_string", b""), operation.params)
            for name in operation.required:
                if name not in query:
                    raise bad_request("admin_parameter_missing", f"The parameter {name} is required.", detail=f"parameter {name}")
            call = AdminCall(broker, principal, path_params, query, request, event)
            result = await operation.handler(call)
        except AdminRefusal as refusal:
            await self._refuse(scope, send, event, refusal, principal)
            return
        except Exception as exc:
            refusal = self._unexpected(exc, request_id)
            await self._refuse(scope, send, event, refusal, principal)
            return
        if operation.raw_content_type is not None:
            body = result if isinstance(result, bytes) else str(result).encode("utf-8")
            headers = [(b"content-type", operation.raw_content_type.encode("ascii")), (b"cache-control", b"no-store")]
        else:
            body = _encode(redact(result)).encode("utf-8")
            headers = list(_JSON_HEADERS)
        log.info("admin request answered", extra={"request_id": request_id, "path": scope["path"][:200],
                                                  "principal": principal.describe()})
        await _send(send, 200, body, request_id, headers)

    def _route(self, method: str, path: str) -> tuple[Operation, dict[str, str]]:
        for route in self.routes:
            match = route.regex.fullmatch(path)
            if match is None:
                continue
            operation = route.operations.get(method)
            if operation is None:
                raise AdminRefusal(405, "method_not_allowed", "The method is not allowed for this resource.",
                                   reason="admin_method_not_allowed", headers={"Allow": ", ".join(sorted(route.operations))})
            return operation, match.groupdict()
        raise AdminRefusal(404, "not_found", "There is no such resource.", reason="admin_unknown_path")

    @staticmethod
    def _unexpected(exc: Exception, request_id: str) -> AdminRefusal:
        if isinstance(exc, (SQLAlchemyError, StoreError)) or database_unavailable(exc) is not None:
            log.warning("admin request failed: database unavailable", extra={"request_id": request_id})
            return unavailable(type(exc).__name__)
        log.exception("admin request failed", extra={"request_id": request_id})
        return AdminRefusal(500, "server_error", "The server encountered an internal error.", reason="admin_internal_error",
                            detail=type(exc).__name__)

    async def _refuse(self, scope: dict[str, Any], send: Any, event: AuditEvent, refusal: AdminRefusal,
                      principal: Principal | None) -> None:
        broker = self.broker
        event.outcome = "error" if refusal.status >= 500 else "denied"
        event.error, event.reason = refusal.error, refusal.reason
        event.detail = f"{scope['method'][:16]} {scope['path'][:200]}" + (f": {refusal.detail}" if refusal.detail else "")
        event.add_context("admin", {"method": scope["method"][:16], "path": scope["path"][:200],
                                    "principal": principal.describe() if principal is not None else None})
        status, body, headers = refusal.status, refusal.body(), refusal.headers
        try:
            # Unauthenticated floods cost at most a row per peer and kind per window, as on the
            # token endpoint; a refusal of an authenticated caller is always written.
            if principal is not None or not broker.coalescer.absorb(event, scope.get("client")):
                await asyncio.wait_for(broker.audit.record(event), DATABASE_WAIT_SECONDS)
        except Exception as exc:
            # No refusal goes unrecorded: if its record cannot be written, the answer says so.
            log.warning("the audit record of a refused admin request could not be written",
                        extra={"request_id": event.request_id, "audit": event.log_fields()}, exc_info=True)
            replacement = unavailable(type(exc).__name__) if database_unavailable(exc) is not None else AdminRefusal(
                500, "server_error", "The server encountered an internal error.", reason="audit_unavailable")
            status, body, headers = replacement.status, replacement.body(), replacement.headers
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await _send(send, status, _encode(body).encode("utf-8"), event.request_id, [*_JSON_HEADERS, *extra])


async def _send(send: Any, status: int, body: bytes, request_id: str, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", b"%d" % len(body)), (b"x-request-id", request_id.encode("ascii"))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
