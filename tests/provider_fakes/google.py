"""Google Cloud's Security Token Service (``sts.googleapis.com/v1/token``).

Follows the STS REST reference, method ``token`` (cloud.google.com/iam/docs/reference/sts/rest,
read 2026-12-03) and the workload identity pool provider's ``allowedAudiences`` reference:
RFC 8693 fields ``grant_type`` (token exchange), ``audience`` (the provider's full resource
name ``//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/R``),
``scope``, ``requested_token_type`` (access_token), ``subject_token``, ``subject_token_type``
(jwt or id_token); accepted form encoded as Google's client libraries send it. The OIDC
subject token needs ``kid`` and ``alg`` in its header (RS256), ``iss``, ``iat`` (in the past),
``exp`` ("less than 48 hours after iat"), ``sub`` and an ``aud`` among the allowed audiences,
by default the provider's resource name with or without the ``https:`` prefix. Success:
``access_token``, ``issued_token_type``, ``token_type`` Bearer, ``expires_in``. Errors: RFC 6749
§5.2 bodies (``invalid_grant``, ``invalid_request``, ``invalid_target``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provider_fakes.base import FakeProvider, Refusal

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
PROVIDER = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/agents/providers/sts"


class FakeGoogleSts(FakeProvider):
    path = "/v1/token"
    encoding = "form"
    algorithms = ("RS256",)
    max_assertion_lifetime = 48 * 3600
    request_id_header = None
    token_prefix = "ya29.fed-"

    def __init__(self, *, providers: tuple[str, ...] = (PROVIDER,), **kw: Any) -> None:
        super().__init__(**kw)
        self.providers = providers

    def check(self, fields: dict[str, str]) -> tuple[str, str]:
        self.expect_fields(fields, {"grant_type": TOKEN_EXCHANGE, "audience": None, "scope": None,
                                    "requested_token_type": ACCESS_TOKEN, "subject_token": None, "subject_token_type": None})
        if fields["subject_token_type"] not in ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"):
            raise Refusal(400, {"error": "invalid_request", "error_description": "Invalid subject token type."}, "subject_token_type")
        if fields["audience"] not in self.providers:
            raise Refusal(400, {"error": "invalid_target", "error_description": "The target service indicated by the \"audience\" parameters is invalid."}, "audience")
        # The default allowed audiences: the resource name, with or without the https: prefix.
        self.audience = "https:" + fields["audience"]
        return fields["audience"].rsplit("/", 1)[-1], fields["subject_token"]

    def verify(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        header, claims = super().verify(assertion)
        if claims["aud"] not in (self.audience, self.audience.removeprefix("https:")):
            raise self.refusal("aud not allowed")
        return header, claims

    def refusal(self, why: str) -> Refusal:
        return Refusal(400, {"error": "invalid_grant", "error_description": "The audience in ID Token does not match the expected audience."}, why)

    def success(self, token: str, fields: Mapping[str, str], claims: Mapping[str, Any]) -> dict[str, Any]:
        return {"access_token": token, "issued_token_type": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": self.expires_in}
