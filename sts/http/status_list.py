"""``GET {prefix}/statuslists/1``: the signed Token Status List (draft-ietf-oauth-status-list-19
§8.1), ``application/statuslist+jwt``, cacheable for what remains of its ``ttl`` (§13.7).
Public like ``/jwks``: the list reveals only which indices are revoked."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sts.audit import DATABASE_WAIT_SECONDS
from sts.lifecycle.statuslist import STATUS_LIST_MEDIA_TYPE
from sts.store.errors import StoreError
from sts.tokens.keyring import KeyUnavailable

if TYPE_CHECKING:
    from sts.app import Broker

log = logging.getLogger("sts.lifecycle")

UNAVAILABLE_TEXT = "The service is temporarily unavailable; retry later."


async def status_list_endpoint(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    publisher = broker.status_list
    try:
        token, age = await asyncio.wait_for(publisher.token_with_age(), DATABASE_WAIT_SECONDS)
    except (StoreError, KeyUnavailable, TimeoutError) as exc:
        # A relying party keeps its last good list until that list's `exp` (docs/operations.md).
        log.error("status list unavailable: %s", type(exc).__name__)
        return JSONResponse({"error": "temporarily_unavailable", "error_description": UNAVAILABLE_TEXT},
                            status_code=503, headers={"Cache-Control": "no-store", "Retry-After": "5"})
    max_age = max(0, int(publisher.ttl - age))
    return Response(token, media_type=STATUS_LIST_MEDIA_TYPE,
                    headers={"Cache-Control": f"public, max-age={max_age}"})
