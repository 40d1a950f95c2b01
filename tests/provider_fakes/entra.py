"""Microsoft Entra ID's v2.0 token endpoint, client credentials with a federated assertion.

Follows the Microsoft identity platform "OAuth 2.0 client credentials flow" (second case:
access token request with a certificate / federated credential) and "Workload identity
federation" with the Graph ``federatedIdentityCredential`` resource (learn.microsoft.com,
read 2026-12-03): ``POST https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token``, form
encoded: ``client_id``, ``scope`` (``{resource}/.default``), ``grant_type``
``client_credentials``, ``client_assertion_type``
``urn:ietf:params:oauth:client-assertion-type:jwt-bearer``, ``client_assertion`` (the external
token, whose ``iss`` and ``sub`` match the federated credential exactly and whose ``aud`` is
``api://AzureADTokenExchange``; RS256). Success: ``token_type`` Bearer, ``expires_in``,
``ext_expires_in``, ``access_token``. Errors: ``error``, ``error_description`` (``AADSTS...``),
``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id``; for example AADSTS70021 "No
matching federated identity record found for presented assertion" with ``invalid_client``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from provider_fakes.base import FakeProvider, Refusal

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class FakeEntra(FakeProvider):
    encoding = "form"
    algorithms = ("RS256",)
    request_id_header = "x-ms-request-id"
    token_prefix = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.entra-"

    def __init__(self, *, tenant: str = "contoso.onmicrosoft.com", client_ids: tuple[str, ...] = ("11111111-2222-3333-4444-555555555555",), **kw: Any) -> None:
        kw.setdefault("audience", "api://AzureADTokenExchange")
        super().__init__(**kw)
        self.tenant = tenant
        self.path = f"/{tenant}/oauth2/v2.0/token"
        self.client_ids = client_ids

    def check(self, fields: dict[str, str]) -> tuple[str, str]:
        self.expect_fields(fields, {"client_id": None, "scope": None, "grant_type": "client_credentials",
                                    "client_assertion_type": ASSERTION_TYPE, "client_assertion": None})
        if not fields["scope"].endswith("/.default"):
            raise Refusal(400, self._error("invalid_scope", 1002012, "The provided value for scope is not valid."), "scope")
        if fields["client_id"] not in self.client_ids:
            raise Refusal(400, self._error("unauthorized_client", 700016, "Application not found in the directory."), "client_id")
        return fields["client_id"][:8], fields["client_assertion"]

    def refusal(self, why: str) -> Refusal:
        return Refusal(400, self._error("invalid_client", 70021, "No matching federated identity record found for presented assertion."), why)

    @staticmethod
    def _error(error: str, code: int, text: str) -> dict[str, Any]:
        return {"error": error, "error_description": f"AADSTS{code}: {text}", "error_codes": [code],
                "timestamp": "2026-12-03 10:00:00Z", "trace_id": secrets.token_hex(8), "correlation_id": secrets.token_hex(8)}

    def success(self, token: str, fields: Mapping[str, str], claims: Mapping[str, Any]) -> dict[str, Any]:
        return {"token_type": "Bearer", "expires_in": self.expires_in, "ext_expires_in": self.expires_in, "access_token": token}
