"""Outbound exchange with model providers (docs/providers/README.md).

A target that names an upstream is answered with the provider's own access token: the broker
mints a short assertion of its own (``assertion``), exchanges it at the provider's token
endpoint in that provider's wire format (``wire``), over a bounded HTTP client with retries and
a circuit breaker (``client``), and keeps the provider's token in a bounded in-memory cache
with single-flight refresh ahead of expiry (``cache``). ``service.UpstreamTokens`` ties them
together for the pipeline's one call.

Provider tokens never reach the database or a log: the audit record holds their SHA-256.
"""

from sts.upstream.service import UpstreamResult, UpstreamTokens

__all__ = ["UpstreamResult", "UpstreamTokens"]
