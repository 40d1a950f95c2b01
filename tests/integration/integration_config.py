"""The broker configuration the integration tests run against."""

from __future__ import annotations

import hashlib
from typing import Any

from conformance.issuer import LocalIssuer
from sts import jose

BROKER_AUDIENCE = "sts-test"
CLIENT_SECRET = "integration-secret-0123456789abcdef"
CLIENT_KEY = jose.generate_private_key("ES256", kid="client-key-1")



def base_config(port: int, issuer: LocalIssuer, replay_issuer: LocalIssuer, dead_port: int) -> dict[str, Any]:
    secret_sha256 = hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()
    return {
        "issuer": f"http://127.0.0.1:{port}",
        "tokens": {"default_lifetime": 900, "max_lifetime": 3600, "algorithm": "ES256"},
        "clients": {
            "allow_public": True,
            "registered": [
                {"client_id": "basic-client", "auth_method": "client_secret_basic", "secret_sha256": secret_sha256},
                {"client_id": "post-client", "auth_method": "client_secret_post", "secret_sha256": secret_sha256},
                {"client_id": "jwt-client", "auth_method": "private_key_jwt", "jwks": {"keys": [CLIENT_KEY.public_jwk()]}},
                {"client_id": "no-exchange", "auth_method": "client_secret_post", "secret_sha256": secret_sha256, "token_exchange": False},
            ],
        },
        "issuers": [
            {
                "name": "local",
                "issuer": issuer.url,
                "audiences": [BROKER_AUDIENCE],
                "keys": {"discovery": True},
                "allow_insecure_http": True,
                "claim_validation_rules": [
                    {"expression": '!has(claims.blocked) || claims.blocked != true', "message": "blocked workloads"},
                    {"expression": 'has(claims.team)', "message": "team claim expected", "mode": "audit"},
                ],
                "claim_mappings": {
                    "identity": '"wl:" + claims.sub',
                    "attributes": {"team": 'has(claims.team) ? claims.team : "none"'},
                },
            },
            {
                "name": "replay-guarded",
                "issuer": replay_issuer.url,
                "audiences": [BROKER_AUDIENCE],
                "keys": {"jwks_uri": replay_issuer.jwks_uri},
                "allow_insecure_http": True,
                "require_jti": True,
            },
            {
                "name": "dead",
                "issuer": f"http://127.0.0.1:{dead_port}",
                "audiences": [BROKER_AUDIENCE],
                "keys": {"discovery": True},
                "allow_insecure_http": True,
            },
        ],
        "grants": [
            {
                "name": "agents",
                "issuers": ["local"],
                "match": {"identity_pattern": "^wl:agent-[a-z0-9-]+$"},
                "targets": [
                    {"audience": "https://vector.example.com", "scopes": ["read", "write"], "default_scopes": ["read"]},
                    {"resource_prefix": "https://mcp.example.com/tools/", "scopes": ["invoke"]},
                    {"audience": "legacy-api", "scopes": ["read"], "algorithm": "RS256"},
                ],
                "default_target": "https://vector.example.com",
                "lifetime": 600,
                "delegation": {"actors": [{"identity": "wl:gateway"}]},
            },
            {
                "name": "gateway",
                "issuers": ["local"],
                "match": {"identity": "wl:gateway"},
                "targets": [{"audience": "https://vector.example.com", "scopes": ["read"]}],
            },
            {
                "name": "replayed",
                "issuers": ["replay-guarded"],
                "match": {"condition": 'identity.startsWith("replay-guarded:")'},
                "targets": [{"audience": "https://vector.example.com", "scopes": ["read"], "default_scopes": ["read"]}],
            },
            {
                "name": "dead-grant",
                "issuers": ["dead"],
                "match": {"identity_pattern": "^dead:.*$"},
                "targets": [{"audience": "https://vector.example.com", "scopes": ["read"]}],
            },
            {
                "name": "shadow",
                "mode": "audit",
                "issuers": ["local"],
                "match": {"identity_pattern": "^wl:.*$"},
                "targets": [{"audience": "https://billing.example.com", "scopes": ["charge"]}],
            },
        ],
    }


