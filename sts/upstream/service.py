"""The pipeline's one call for a target that names an upstream provider.

:meth:`UpstreamTokens.token` returns the provider's access token for the upstream policy
chose: from the cache, or by minting our own short assertion (RFC 7519; shaped by the
provider's profile, ``sts.tokens.profiles``: ``iss`` our issuer, ``sub`` the upstream's
subject, ``aud`` the audience the provider matches, ``iat``/``nbf``/``exp``/``jti``, ``kid``
and ``typ: JWT`` in the header, signed and self-checked like every token we sign) and
exchanging it at the provider (``wire``, ``client``).

The assertion's ``sub`` names the upstream, not the workload: the provider token stands for
the provider identity the upstream is configured with, which is why one cached token may be
handed to every workload policy allows for *that* upstream and no other (the cache key holds
the upstream's name and full provider identity, so two upstreams never share an entry).

What the audit record gets (``note("upstream", ...)``): the upstream and provider, whether
the cache answered, the provider's request id when it sent one, and the SHA-256 of the
provider token. Never the token, never our assertion.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sts.errors import OAuthError, ServerError
from sts.jose.b64 import b64url_encode
from sts.tokens.keyring import KeyUnavailable
from sts.tokens.profiles import ASSERTION_TYP
from sts.tokens.signer import LocalSigner, SelfCheckFailed
from sts.upstream.cache import TokenCache
from sts.upstream.client import Fetched, ProviderClient
from sts.upstream.wire import build_request, request_scope


@dataclass(frozen=True, slots=True)
class _Cached:
    access_token: str
    scope: str | None
    request_id: str | None
    sha256: str


@dataclass(frozen=True, slots=True)
class UpstreamResult:
    """The provider's token for one answer. ``expires_at`` is the provider's expiry."""

    access_token: str
    expires_at: float
    scope: str | None
    context: dict[str, Any]


def assertion_claims(upstream: Any, *, issuer: str, now: int, not_after: float, jti: str) -> dict[str, Any]:
    """Claims of our assertion to ``upstream`` (pure). Its lifetime is the upstream's
    ``assertion_lifetime``, cut short by the signing key's own end."""
    exp = min(now + int(upstream.assertion_lifetime), int(not_after))
    return {"iss": issuer, "sub": upstream.subject, "aud": upstream.audience_claim, "iat": now, "nbf": now, "exp": exp, "jti": jti}


class UpstreamTokens:
    """Invariant: a provider token is stored only in ``_cache`` (memory), keyed by the full
    provider identity; what leaves this object for the record is its SHA-256."""

    def __init__(self, *, signer: LocalSigner, clock: Callable[[], float], client: ProviderClient | None = None,
                 cache: TokenCache[_Cached] | None = None) -> None:
        self._signer = signer
        self._clock = clock
        self.client = client or ProviderClient(clock=clock)
        self.cache: TokenCache[_Cached] = cache or TokenCache(clock=clock)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def token(self, upstream: Any, *, issuer: str, granted_scopes: tuple[str, ...],
                    note: Callable[[str, Any], None]) -> UpstreamResult:
        scope = request_scope(upstream, granted_scopes)
        key = (upstream.name, upstream.identity, scope or "")
        context: dict[str, Any] = {"name": upstream.name, "provider": upstream.provider, "endpoint": upstream.endpoint}
        fetched: list[Fetched] = []

        async def fetch() -> tuple[_Cached, float]:
            got = await self._exchange(upstream, issuer, scope)
            fetched.append(got)
            digest = hashlib.sha256(got.token.access_token.encode()).hexdigest()
            return _Cached(got.token.access_token, got.token.scope, got.request_id, digest), self._clock() + got.token.expires_in

        try:
            entry, outcome = await self.cache.get(key, fetch)
        except OAuthError as exc:
            note("upstream", {**context, "cache": "miss" if self.cache.peek(key) is None else "expiring", "outcome": exc.reason})
            raise
        value = entry.value
        context.update(cache=outcome, token_sha256=value.sha256, expires_at=int(entry.expires_at))
        if value.request_id is not None:
            context["request_id"] = value.request_id
        if fetched:
            context["attempts"] = fetched[-1].attempts
        note("upstream", context)
        return UpstreamResult(value.access_token, entry.expires_at, value.scope, context)

    async def _exchange(self, upstream: Any, issuer: str, scope: str | None) -> Fetched:
        try:
            key = self._signer.key_for(upstream.algorithm)
        except KeyUnavailable as exc:
            raise ServerError(reason="signing_key_unavailable", detail=str(exc)) from None
        now = int(self._clock())
        claims = assertion_claims(upstream, issuer=issuer, now=now, not_after=key.not_after, jti=b64url_encode(os.urandom(18)))
        if claims["exp"] - now < 1:
            raise ServerError(reason="signing_key_unavailable", detail="the signing key expires before an assertion could")
        try:
            signed = self._signer.sign(claims, key, typ=ASSERTION_TYP)
        except SelfCheckFailed as exc:
            raise ServerError(reason="self_check_failed", detail=str(exc)) from None
        request = build_request(upstream, signed.token, scope)
        return await self.client.post(upstream.name, request, timeout=float(upstream.timeout), retries=int(upstream.retries),
                                      key=upstream.identity)
