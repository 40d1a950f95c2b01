"""The delegation-chain deployment of docs/agents.md, for the tests that run it: the
``# example: agents`` configuration as written, with only the broker's and the identity
provider's URLs pointing at the test's own (sts.trust.delegation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from conformance.issuer import LocalIssuer

DOCS = Path(__file__).resolve().parents[1] / "docs" / "agents.md"
DOC_BROKER = "https://sts.example.com"
DOC_IDP = "https://idp.example.com"
IDP_AUDIENCE = "sts.example.com"
GATEWAY = "https://gateway.example.com"
MCP = "https://mcp.example.com/search"
DOCS_API = "https://docs-api.example.com"
STORAGE = "https://storage.example.com"
ARCHIVE = "https://archive.example.com"
ADMIN_TOOL = "https://mcp.example.com/admin"
CACHE = "https://cache.example.com"
PLANNER = "https://planner.example.com"
TOOLS = "https://mcp.example.com/tools"
# An RFC 9396 type both the planner's and the tools' targets accept (docs/authorization-details.md).
MCP_TOOL_TYPE: dict[str, Any] = {
    "type": "mcp_tool",
    "schema": {"type": "object", "required": ["type", "tools"],
               "properties": {"type": {"const": "mcp_tool"}, "tools": {"type": "array", "items": {"type": "string"}},
                              "actions": {"type": "array", "items": {"type": "string"}}}},
    "fields": {"tools": {"values": ["search", "fetch", "shell"]}, "actions": {"values": ["invoke"]}},
}
TOOL_SECRET = "search-tool-secret-0123456789abcdef"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def documented_config() -> dict[str, Any]:
    """The ``# example: agents`` block of docs/agents.md."""
    for block in DOCS.read_text().split("```yaml\n")[1:]:
        text = block.split("```", 1)[0]
        if text.startswith("# example: agents\n"):
            return yaml.safe_load(text)
    raise AssertionError("docs/agents.md has no '# example: agents' block")


def chain_config(port: int, issuer: LocalIssuer, *, extra_grants: bool = True) -> dict[str, Any]:
    config = documented_config()
    assert config["issuer"] == DOC_BROKER
    config["issuer"] = f"http://127.0.0.1:{port}"
    (idp,) = config["issuers"]
    assert idp["issuer"] == DOC_IDP
    idp.update(issuer=issuer.url, allow_insecure_http=True)
    assert DOC_BROKER not in json.dumps(config) and DOC_IDP not in json.dumps(config)
    if extra_grants:
        # Grants the guide does not need: the depth cap, may_act required, and a grant that
        # would not cap the lifetime by the subject token's.
        config["grants"] += [
            {"name": "apis-to-archive", "issuers": ["cluster"], "match": {"identity": "wl:report-job"},
             "targets": [{"audience": ARCHIVE, "scopes": ["docs.read"], "default_scopes": ["docs.read"]}],
             "delegation": {"chain": True, "actors": [{"identity": "wl:docs-api"}], "max_depth": 2}},
            {"name": "gateway-to-admin", "issuers": ["cluster"], "match": {"identity": "wl:report-job"},
             "targets": [{"audience": ADMIN_TOOL, "scopes": ["docs.read", "docs.write"]}],
             "delegation": {"chain": True, "actors": [{"identity": "wl:gateway"}], "require_may_act": True}},
            {"name": "tools-to-cache", "issuers": ["cluster"], "match": {"identity": "wl:report-job"},
             "targets": [{"audience": CACHE, "scopes": ["docs.read"], "default_scopes": ["docs.read"]}],
             "lifetime": 3600, "cap_to_subject_lifetime": False,
             "delegation": {"chain": True, "actors": [{"identity": "wl:search-tool"}]}},
            # A planner agent whose token carries authorization details, and the tools it calls.
            {"name": "report-to-planner", "issuers": ["cluster"], "match": {"identity": "wl:report-job"},
             "targets": [{"audience": PLANNER, "scopes": ["docs.read"], "default_scopes": ["docs.read"],
                          "authorization_details": [MCP_TOOL_TYPE]}]},
            {"name": "planner-to-tools", "issuers": ["cluster"], "match": {"identity": "wl:report-job"},
             "targets": [{"audience": TOOLS, "scopes": ["docs.read"], "default_scopes": ["docs.read"],
                          "authorization_details": [MCP_TOOL_TYPE]}],
             "delegation": {"chain": True, "actors": [{"identity": "wl:planner"}]}},
        ]
        config["chains"]["presenters"].append({"audience": PLANNER, "identities": ["wl:planner"]})
    return config
