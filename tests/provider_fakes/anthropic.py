"""Anthropic's (Claude API) token endpoint for workload identity federation.

Follows the Claude API "WIF reference" (platform.claude.com/docs/en/manage-claude/wif-reference,
read 2026-12-03): ``POST /v1/oauth/token`` with a JSON body using the RFC 7523 ``jwt-bearer``
grant: ``grant_type`` (always ``urn:ietf:params:oauth:grant-type:jwt-bearer``), ``assertion``
(the OIDC JWT), ``federation_rule_id`` (``fdrl_...``), ``organization_id`` (UUID),
``service_account_id`` (``svac_...``), and ``workspace_id`` (``wrkspc_...`` or ``default``)
when the rule is enabled for more than one workspace. The success body is RFC 6749 §5.1:
``access_token`` (prefixed ``sk-ant-oat01-``), ``token_type`` Bearer, ``expires_in``,
``scope`` (granted by the matched rule). Errors are RFC 6749 §5.2 / RFC 7521 §4.1 bodies
(``invalid_grant`` for an assertion the rule does not accept). The ``anthropic-beta`` flags
are those of Anthropic's official Python SDK (2.16): ``oauth-2025-04-20`` and
``oidc-federation-2026-04-01`` on the exchange, ``oauth-2025-04-20`` on API calls with a
federated token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provider_fakes.base import FakeProvider, Refusal

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class FakeAnthropic(FakeProvider):
    path = "/v1/oauth/token"
    encoding = "json"
    request_id_header = "request-id"
    token_prefix = "sk-ant-oat01-"

    def __init__(self, *, federation_rule_id: str = "fdrl_01", organization_id: str = "6f1c1c3e-0c5e-4a53-9b0e-2b6f3c0a9d11",
                 service_accounts: tuple[str, ...] = ("svac_1", "svac_2"), **kw: Any) -> None:
        super().__init__(**kw)
        self.federation_rule_id = federation_rule_id
        self.organization_id = organization_id
        self.service_accounts = service_accounts

    def check(self, fields: dict[str, str]) -> tuple[str, str]:
        # The official SDK sends these beta flags on the jwt-bearer exchange.
        flags = {f.strip() for f in self.last_request_headers.get("anthropic-beta", "").split(",")}
        if not {"oauth-2025-04-20", "oidc-federation-2026-04-01"} <= flags:
            raise Refusal(400, {"error": "invalid_request", "error_description": "missing beta flags"}, "anthropic-beta")
        self.expect_fields(fields, {"grant_type": JWT_BEARER, "assertion": None, "federation_rule_id": None,
                                    "organization_id": None, "service_account_id": None}, {"workspace_id": None})
        if fields["federation_rule_id"] != self.federation_rule_id or fields["organization_id"] != self.organization_id:
            raise self.refusal("unknown federation rule")
        if fields["service_account_id"] not in self.service_accounts:
            raise self.refusal("service account not allowed by the rule")
        return fields["service_account_id"], fields["assertion"]

    def api_problem(self, method: str, path: str, headers: Mapping[str, str]) -> str | None:
        if "oauth-2025-04-20" not in headers.get("anthropic-beta", ""):
            return "a federated token needs the anthropic-beta flag oauth-2025-04-20"
        return None

    def api_body(self, path: str) -> Any:
        return {"data": [{"type": "model", "id": "claude-test", "display_name": "Claude Test", "created_at": "2026-01-01T00:00:00Z"}],
                "has_more": False, "first_id": "claude-test", "last_id": "claude-test"}

    def refusal(self, why: str) -> Refusal:
        return Refusal(400, {"error": "invalid_grant", "error_description": "The assertion was not accepted."}, why)

    def success(self, token: str, fields: Mapping[str, str], claims: Mapping[str, Any]) -> dict[str, Any]:
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in, "scope": "user:inference"}
