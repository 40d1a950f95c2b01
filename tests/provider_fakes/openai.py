"""OpenAI's token endpoint for workload identity federation.

Follows the "Workload identity token exchange" API reference
(developers.openai.com/api/reference/workload-identity-federation, revision of 2026-06-09 as
archived, read 2026-12-03): ``POST https://auth.openai.com/oauth/token`` with a JSON body of
exactly ``grant_type`` (token exchange), ``subject_token_type`` (jwt or id_token),
``subject_token``, ``identity_provider_id`` and ``service_account_id``. The subject token must
be a JWT "with a kid and supported alg in the header", include ``iss``, ``aud``, ``sub``,
``exp`` and ``iat``, match the provider's issuer and audience and verify under its JWKS;
otherwise "an authentication error". The success body is the OAuth token response; the
reference names no error body beyond that, so errors here are RFC 6749 §5.2 bodies (401 for a
token that fails verification, 400 for a malformed request).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provider_fakes.base import FakeProvider, Refusal

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


class FakeOpenAI(FakeProvider):
    path = "/oauth/token"
    encoding = "json"
    request_id_header = "x-request-id"
    token_prefix = "oai-wif-"

    def __init__(self, *, identity_provider_id: str = "wip_123", service_accounts: tuple[str, ...] = ("sa_1", "sa_2"), **kw: Any) -> None:
        super().__init__(**kw)
        self.identity_provider_id = identity_provider_id
        self.service_accounts = service_accounts

    def check(self, fields: dict[str, str]) -> tuple[str, str]:
        self.expect_fields(fields, {"grant_type": TOKEN_EXCHANGE, "subject_token_type": None, "subject_token": None,
                                    "identity_provider_id": None, "service_account_id": None})
        if fields["subject_token_type"] not in ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"):
            raise Refusal(400, {"error": "invalid_request", "error_description": "unsupported subject_token_type"}, "subject_token_type")
        if fields["identity_provider_id"] != self.identity_provider_id:
            raise self.refusal("unknown identity provider")
        if fields["service_account_id"] not in self.service_accounts:
            raise self.refusal("no service account mapping")
        return fields["service_account_id"], fields["subject_token"]

    def refusal(self, why: str) -> Refusal:
        return Refusal(401, {"error": "invalid_grant", "error_description": "The subject token could not be verified."}, why)

    def success(self, token: str, fields: Mapping[str, str], claims: Mapping[str, Any]) -> dict[str, Any]:
        return {"access_token": token, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer", "expires_in": self.expires_in}
