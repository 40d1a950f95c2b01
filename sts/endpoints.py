"""HTTP handlers other than the token endpoint: metadata (RFC 8414 §3), JWKS (RFC 7517 §5),
the SPIFFE bundle, health. The token endpoint is a raw ASGI handler (``sts.http.token``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sts.availability import READINESS_DATABASE_SECONDS
from sts.protocol import GRANT_PROFILE_ID_JAG, GRANT_TYPE_JWT_BEARER, GRANT_TYPE_TOKEN_EXCHANGE
from sts.spiffe.bundle import bundle_document
from sts.protocol import TOKEN_TYPE_TXN_TOKEN
from sts.spiffe.mtls import TOKEN_TYPE_MTLS

if TYPE_CHECKING:
    from sts.app import Broker


def authorization_server_metadata(broker: Broker) -> dict[str, Any]:
    rt = broker.runtime()
    issuer = rt.issuer.rstrip("/")
    auth_methods = list(rt.client_auth_methods)
    metadata: dict[str, Any] = {
        "issuer": rt.issuer,
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
        # RFC 7523 §2.1 is listed once a grant answers it (MCP SEP-1933 requires it then).
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE] + ([GRANT_TYPE_JWT_BEARER] if rt.jwt_bearer_enabled else []),
        # No authorization endpoint: this server issues tokens only by exchange.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
        "scopes_supported": sorted(rt.scopes_supported),
        "subject_token_types_supported": [
            "urn:ietf:params:oauth:token-type:jwt",
            "urn:ietf:params:oauth:token-type:id_token",
            "urn:ietf:params:oauth:token-type:access_token",
        ] + ([TOKEN_TYPE_MTLS] if rt.spiffe is not None else [])
          + ([TOKEN_TYPE_TXN_TOKEN] if rt.txn is not None and rt.txn.replacement_clients else []),
        "issued_token_types_supported": [
            "urn:ietf:params:oauth:token-type:access_token",
            "urn:ietf:params:oauth:token-type:jwt",
        ] + ([TOKEN_TYPE_TXN_TOKEN] if rt.txn is not None else []),
        "id_token_signing_alg_values_supported": sorted(rt.signing_algorithms),
        # OpenID Connect Discovery 1.0 §3 (REQUIRED): model providers that federate with the
        # broker as an OIDC issuer read this document (docs/providers).
        "subject_types_supported": ["public"],
        # RFC 9449 §5.1: the algorithms accepted in DPoP proofs.
        "dpop_signing_alg_values_supported": list(broker.dpop.algorithms),
        # RFC 8705 §3.3: certificate-bound tokens where the policy asks (sender_constraint).
        "tls_client_certificate_bound_access_tokens": True,
        # RFC 8414 §2: introspection (RFC 7662) and revocation (RFC 7009) take the same client
        # authentication as the token endpoint, never none.
        "introspection_endpoint": f"{issuer}/introspect",
        "introspection_endpoint_auth_methods_supported": [m for m in auth_methods if m != "none"],
        "revocation_endpoint": f"{issuer}/revoke",
        "revocation_endpoint_auth_methods_supported": [m for m in auth_methods if m != "none"],
        # RFC 9396 §10: the authorization details types some target accepts.
        **({"authorization_details_types_supported": sorted(rt.authorization_details_types)}
           if rt.authorization_details_types else {}),
    }
    # draft-ietf-oauth-identity-assertion-authz-grant-04 §7: the profile, never which issuers
    # are trusted for it (§8.4). No `authorization_response_iss_parameter_supported` (RFC 9207
    # §3): with no authorization endpoint there is no authorization response to carry `iss`.
    if rt.jwt_bearer_enabled and rt.id_jag_enabled:
        metadata["authorization_grant_profiles_supported"] = [GRANT_PROFILE_ID_JAG]
    return metadata


async def metadata_endpoint(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    return JSONResponse(authorization_server_metadata(broker), headers={"Cache-Control": "public, max-age=300"})


async def jwks_endpoint(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    return JSONResponse(
        broker.keyring.jwks(),
        media_type="application/jwk-set+json",
        headers={"Cache-Control": "public, max-age=300"},
    )


async def spiffe_bundle_endpoint(request: Request) -> Response:
    """The broker's signing keys as a SPIFFE bundle (JWT-SVID §6.1: ``use`` ``jwt-svid``, ``kid``
    set), for SPIFFE-aware relying parties that federate with the broker as a trust domain.
    No ``spiffe_sequence``: replicas derive the key set from the database at their own refresh
    moments, and a sequence that could step back between replicas would break monotonicity
    (Trust Domain and Bundle §4.1.1 makes it a SHOULD; Federation §4.2 then takes the latest)."""
    broker: Broker = request.app.state.broker
    from sts import jose

    keys = jose.parse_jwks(broker.keyring.jwks())
    return JSONResponse(
        bundle_document(keys.keys, refresh_hint=300),
        headers={"Cache-Control": "public, max-age=300"},
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    broker: Broker = request.app.state.broker
    from sts.store.db import database_ok

    try:
        # Bounded: a probe must get an answer even when the database does not (sts.availability).
        db_ok = await asyncio.wait_for(asyncio.to_thread(database_ok, broker.engine), READINESS_DATABASE_SECONDS)
    except TimeoutError:
        db_ok = False
    if not db_ok:
        broker.metrics.database_error("readiness")
    algorithms = broker.runtime().signing_algorithms
    keys_ok = broker.keyring.ready(algorithms)
    # A fallback key signing while the active key cannot be used is degraded, not down: still
    # ready (200), and visible here, in the logs and in the metrics.
    keys_degraded = keys_ok and bool(broker.keyring.degraded(algorithms))
    ready = db_ok and keys_ok
    # Probes need a yes or no; issuer and trust-domain names, key counts and the configuration
    # version are for operators (the `sts` CLI and logs), not for anyone who can reach the port.
    status = ("degraded" if keys_degraded else "ready") if ready else "not_ready"
    body = {"status": status, "database": db_ok, "signing_keys": keys_ok, "signing_keys_degraded": keys_degraded}
    return JSONResponse(body, status_code=200 if ready else 503, headers={"Cache-Control": "no-store"})
