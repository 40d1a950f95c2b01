"""``POST /token`` as a raw ASGI handler (RFC 6749 §3.2 and §5, RFC 8693 §2).

The handler reads like the pipeline it calls: guard the transport (method, content type, body
size), decode the form once, authenticate the client, parse the exchange request, run the
exchange, answer. It builds no framework objects: headers are read in one pass over the ASGI
scope, the body is taken from the ``http.request`` messages as they come, and the answer is two
ASGI messages. Every error goes through ``_refuse``, which records the audit event durably and
answers in the RFC 6749 §5.2 shape with the no-store headers, so neither can be forgotten.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from sts.audit import AuditEvent
from sts.availability import database_unavailable
from sts.errors import InvalidRequest, MethodNotAllowed, OAuthError, ServerError
from sts.http.form import decode_form
from sts.protocol import MAX_BODY_BYTES, collect_parameters, parse_exchange_params
from sts.spiffe.mtls import ClientCertificate, ForwardedCertificateRefused, client_certificate

if TYPE_CHECKING:
    from sts.app import Broker

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = logging.getLogger("sts.http")

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# RFC 6749 §5.1: "The authorization server MUST include the HTTP "Cache-Control" response
# header field with a value of "no-store" in any response containing tokens, credentials, or
# other sensitive information, as well as the "Pragma" response header field with a value of
# "no-cache"." We send them on errors too: they may name what was wrong with a credential.
_ANSWER_HEADERS = (
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
)

# One encoder for every answer: json.dumps with non-default options builds a new one per call.
# Compact and refusing NaN, as Starlette's JSONResponse renders (a test pins them equal).
encode_answer = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def request_id_of(given: bytes | None) -> str:
    """The caller's ``X-Request-Id`` when it is a safe token, else 128 random bits in hex."""
    if given is not None:
        text = given.decode("latin-1")
        if _REQUEST_ID_RE.fullmatch(text):
            return text
    return os.urandom(16).hex()


class _Headers:
    """The request headers the token endpoint reads, taken in one pass over the scope (the
    first occurrence of each, as Starlette's ``Headers.get`` answers)."""

    __slots__ = ("content_type", "content_length", "authorization", "request_id", "forwarded_cert", "dpop", "dpop_repeated")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.content_type = self.content_length = self.authorization = None
        self.request_id = self.forwarded_cert = self.dpop = None
        # RFC 9449 §4.3: more than one DPoP header field is refused, so this one is counted.
        self.dpop_repeated = False
        for name, value in raw:
            if name == b"content-type":
                if self.content_type is None:
                    self.content_type = value
            elif name == b"content-length":
                if self.content_length is None:
                    self.content_length = value
            elif name == b"authorization":
                if self.authorization is None:
                    self.authorization = value
            elif name == b"x-request-id":
                if self.request_id is None:
                    self.request_id = value
            elif name == b"dpop":
                if self.dpop is None:
                    self.dpop = value
                else:
                    self.dpop_repeated = True
            elif name == b"x-forwarded-client-cert" and self.forwarded_cert is None:
                self.forwarded_cert = value


class ClientGone(Exception):
    """The client closed the connection before its request body arrived."""


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("The Content-Length header is invalid.", reason="bad_content_length")
        if int(declared) > limit:
            raise InvalidRequest("The request body is too large.", reason="body_too_large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InvalidRequest("The request body is too large.", reason="body_too_large")
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


class TokenEndpoint:
    """The ASGI app serving the token endpoint of one broker. Invariant: every request gets
    exactly one answer, and exactly one audit record is durable before it is sent."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._body_limit = min(broker.settings.max_body_bytes, MAX_BODY_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        broker = self._broker
        headers = _Headers(scope["headers"])
        request_id = request_id_of(headers.request_id)
        event = AuditEvent(time=time.time(), request_id=request_id, config_version=broker.runtime().version)
        if broker.tracing is not None:
            event.trace_id = broker.tracing.bind(event)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(reason="method_not_allowed", headers={"Allow": "POST"})
            content_type = headers.content_type
            if content_type is None or content_type.split(b";", 1)[0].strip().lower() != b"application/x-www-form-urlencoded":
                raise InvalidRequest("The request must be application/x-www-form-urlencoded.", reason="bad_content_type")
            body = await read_body(receive, headers.content_length, self._body_limit)
            params = collect_parameters(decode_form(body))
            authorization = headers.authorization.decode("latin-1") if headers.authorization is not None else None
            peer = self._peer_certificate(scope, headers)
            client = await broker.runtime().clients.authenticate(authorization, params, peer)
            event.client_id = client.client_id
            exchange_request = parse_exchange_params(params)
            dpop = await broker.dpop.check(headers.dpop, repeated=headers.dpop_repeated, method="POST",
                                           issuer=broker.runtime().issuer) if headers.dpop is not None else None
            result = await broker.exchanger.exchange(exchange_request, client, event, peer=peer, dpop=dpop)
        except OAuthError as exc:
            error = exc
        except ClientGone:
            error = InvalidRequest("The request body did not arrive.", reason="client_disconnected")
        except Exception as exc:  # a bug or an unavailable database: never leak what it was
            error = _unexpected(exc, request_id)
        else:
            broker.metrics.exchange_done("issued", None, event.issuer, event.grant, event.granted_target, time.time() - event.time)
            # RFC 9449 §8.2: with server nonces on, a bound answer carries the nonce to use next.
            nonce = broker.dpop.fresh_nonce() if dpop is not None else None
            await _answer(send, 200, encode_answer(result.body()).encode("utf-8"), request_id,
                          ((b"dpop-nonce", nonce.encode("ascii")),) if nonce is not None else ())
            return
        await self._refuse(send, event, error, scope.get("client"))

    def _peer_certificate(self, scope: Scope, headers: _Headers) -> ClientCertificate | None:
        """The TLS client certificate (broker-terminated TLS, or forwarded by a trusted proxy);
        a forwarded-certificate header from any other peer is refused (docs/spiffe.md)."""
        forwarded = headers.forwarded_cert.decode("latin-1") if headers.forwarded_cert is not None else None
        try:
            return client_certificate(scope, forwarded, self._broker.trusted_proxies)
        except ForwardedCertificateRefused as exc:
            raise InvalidRequest("The forwarded client certificate is not accepted.", reason=exc.reason) from None

    async def _refuse(self, send: Send, event: AuditEvent, error: OAuthError, client: Any = None) -> None:
        event.outcome = "error" if error.status >= 500 else "denied"
        event.error = error.error
        event.reason = error.reason
        event.detail = error.detail
        event.mode_notes.extend(error.notes)
        try:
            # A repeat of an unauthenticated refusal from the same peer is counted into one
            # later record instead of written now (sts.ops.coalesce; docs/operations.md).
            if not self._broker.coalescer.absorb(event, client):
                await self._broker.audit.record(event)
        except Exception as exc:
            # No decision goes unrecorded: if the audit write fails, the caller gets a
            # server_error whatever the original refusal was, or, when the database is
            # unreachable, temporarily_unavailable (sts.availability).
            unavailable = database_unavailable(exc)
            if unavailable is not None:
                # The log pipeline keeps the record the database could not take.
                log.warning("audit write failed: database unavailable",
                            extra={"request_id": event.request_id, "detail": unavailable.detail, "audit": event.log_fields()})
                error = unavailable
            else:
                log.exception("audit write failed", extra={"request_id": event.request_id})
                error = ServerError(reason="audit_unavailable")
        self._broker.metrics.exchange_done("error" if error.status >= 500 else "denied", error.reason, event.issuer, event.grant,
                                           event.requested_targets[0] if event.requested_targets else None, time.time() - event.time)
        extra = tuple((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items())
        await _answer(send, error.status, encode_answer(error.body()).encode("utf-8"), event.request_id, extra)


def _unexpected(exc: Exception, request_id: str) -> OAuthError:
    """The answer to an exception no step turned into an OAuth error: an unreachable database
    is a 503 to retry (sts.availability), anything else a bug, logged with its trace."""
    unavailable = database_unavailable(exc)
    if unavailable is not None:
        log.warning("token exchange failed: database unavailable", extra={"request_id": request_id, "detail": unavailable.detail})
        return unavailable
    log.exception("token exchange failed", extra={"request_id": request_id})
    return ServerError(reason="internal_error", detail=type(exc).__name__)


async def _answer(send: Send, status: int, body: bytes, request_id: str, extra: tuple[tuple[bytes, bytes], ...]) -> None:
    headers = [*_ANSWER_HEADERS, *extra, (b"content-length", b"%d" % len(body)), (b"x-request-id", request_id.encode("ascii"))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
