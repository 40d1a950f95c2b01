"""OpenTelemetry tracing of the token endpoint, with W3C Trace Context propagation.

Off by default (``STS_OTEL_ENABLED``). When off, nothing imports this module or OpenTelemetry,
and the token endpoint pays one attribute check per request. When on, every request to the
token endpoint is a SERVER span; a valid ``traceparent`` header (Trace Context §3.2) makes it a
child of the caller's span, with ``tracestate`` (§3.3) carried along, and the audit record gets
the trace id, so an audit row leads to its trace and back. A caller chooses the trace id it
sends: it correlates, it does not identify (the audit row's own id and ``request_id`` do).

Span attributes are the audit record's decision (outcome, error, reason, issuer and grant
names, target), never a token or a claim.

The tracer provider: one the process already has (set by ``opentelemetry-instrument`` or an
embedding application) is used as it is; otherwise the broker builds one that exports with
OTLP/HTTP, configured by the standard ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_TRACES_SAMPLER``
variables (the ``otel`` extra installs the exporter).
"""

from __future__ import annotations

import contextvars
import os
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from sts.audit import AuditEvent

SERVICE_NAME = "workload-sts"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
_PROPAGATED = (b"traceparent", b"tracestate")


class TracingUnavailable(Exception):
    """Tracing is turned on but the OpenTelemetry SDK or exporter is not installed."""


class _RequestTrace:
    __slots__ = ("event", "span")

    def __init__(self, span: Any) -> None:
        self.span = span
        self.event: AuditEvent | None = None


_CURRENT: contextvars.ContextVar[_RequestTrace | None] = contextvars.ContextVar("sts_request_trace", default=None)


class Tracing:
    """Spans for token requests. Invariant: a span is ended exactly once, after the answer."""

    def __init__(self, provider: Any, *, owns_provider: bool = False) -> None:
        self._provider = provider
        self._owns_provider = owns_provider
        self._tracer = provider.get_tracer("sts.token")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_environment(cls) -> Tracing:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, trace.ProxyTracerProvider):
            return cls(provider)
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise TracingUnavailable(
                "STS_OTEL_ENABLED needs the OpenTelemetry SDK and OTLP exporter: pip install 'workload-sts[otel]'"
            ) from None
        # OTEL_SERVICE_NAME, when set, names the service; otherwise the package does.
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": SERVICE_NAME}
        sdk_provider = TracerProvider(resource=Resource.create(attributes))
        sdk_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(sdk_provider, owns_provider=True)

    def shutdown(self) -> None:
        """Flush the spans still queued (only a provider the broker built is shut down)."""
        if self._owns_provider:
            self._provider.shutdown()

    def bind(self, event: AuditEvent) -> str | None:
        """Called by the token endpoint: the audit event joins the request's span, whose trace
        id (32 lowercase hex digits) goes into the audit record."""
        current = _CURRENT.get()
        if current is None:
            return None
        current.event = event
        context = current.span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    def start(self, scope: Scope) -> tuple[Any, _RequestTrace]:
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"] if name in _PROPAGATED}
        parent = self._propagator.extract(carrier)
        method = scope["method"] if scope["method"] in _KNOWN_METHODS else "_OTHER"
        route = scope["path"]
        span = self._tracer.start_span(
            f"{method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route, "url.path": route},
        )
        return span, _RequestTrace(span)

    @staticmethod
    def finish(request: _RequestTrace, status: int | None) -> None:
        span = request.span
        attributes: dict[str, Any] = {}
        if status is not None:
            attributes["http.response.status_code"] = status
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        event = request.event
        if event is not None:
            for name, value in (("sts.outcome", event.outcome), ("sts.error", event.error), ("sts.reason", event.reason),
                                ("sts.issuer", event.issuer), ("sts.grant", event.grant),
                                ("sts.target", event.granted_target), ("sts.config_version", event.config_version),
                                ("sts.request_id", event.request_id)):
                if value is not None:
                    attributes[name] = value
        span.set_attributes(attributes)  # one call: the SDK takes its lock once
        span.end()


class TracingMiddleware:
    """ASGI middleware: a span around each request to ``path`` (the token endpoint) only."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing, path: str) -> None:
        self.app = app
        self.tracing = tracing
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        span, request = self.tracing.start(scope)
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = _CURRENT.set(request)
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=True, set_status_on_exception=True):
                await self.app(scope, receive, send_status)
        finally:
            _CURRENT.reset(token)
            self.tracing.finish(request, status)
