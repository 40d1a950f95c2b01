"""OpenRouter's token endpoint for workload identity federation.

Follows OpenRouter's "Workload Identity Federation" guide and its API reference "Exchange a
workload identity token" (openrouter.ai/docs/guides/overview/auth/workload-identity-federation,
openrouter.ai/docs/api/api-reference/oauth/exchange-a-workload-identity-token, OpenAPI
``TokenExchangeRequest``; read 2026-12-03): ``POST https://openrouter.ai/api/v1/oauth/token``,
``application/x-www-form-urlencoded``, RFC 8693: ``grant_type`` (token exchange),
``subject_token``, ``subject_token_type`` (must be jwt), ``federation_policy_id`` (binds the
exchange to one organization), optional ``requested_token_type`` (must be access_token) and
``scope`` (only ``inference``). The policy names the token's ``sub`` and ``aud``. Access tokens
"live for 15 minutes at most, and never longer than the JWT that was exchanged for them".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provider_fakes.base import FakeProvider, Refusal

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


class FakeOpenRouter(FakeProvider):
    path = "/api/v1/oauth/token"
    encoding = "form"
    request_id_header = "x-request-id"
    token_prefix = "sk-or-wif-"

    def __init__(self, *, policies: tuple[str, ...] = ("4b2f7d1e-8c3a-4e5f-9a6b-1c2d3e4f5a6b",), **kw: Any) -> None:
        kw.setdefault("expires_in", 900)
        super().__init__(**kw)
        self.policies = policies

    def check(self, fields: dict[str, str]) -> tuple[str, str]:
        self.expect_fields(fields, {"grant_type": TOKEN_EXCHANGE, "subject_token": None,
                                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "federation_policy_id": None},
                           {"requested_token_type": ACCESS_TOKEN, "scope": "inference"})
        if fields["federation_policy_id"] not in self.policies:
            raise self.refusal("unknown federation policy")
        return fields["federation_policy_id"][:8], fields["subject_token"]

    def refusal(self, why: str) -> Refusal:
        return Refusal(400, {"error": "invalid_grant", "error_description": "The subject token is not accepted by the policy."}, why)

    def success(self, token: str, fields: Mapping[str, str], claims: Mapping[str, Any]) -> dict[str, Any]:
        # "never longer than the JWT that was exchanged for them", 15 minutes at most.
        import time

        life = max(1, min(self.expires_in, 900, int(claims["exp"] - time.time())))
        return {"access_token": token, "issued_token_type": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": life}
