"""Authlib's OAuth 2.0 client doing an RFC 8693 token-exchange grant against the broker, and its
``AssertionSession`` doing the RFC 7523 §2.1 JWT-bearer grant (docs/jwt-bearer.md).

Authlib has no token-exchange helper: ``fetch_token`` with an explicit ``grant_type`` puts every
extra keyword in the form (RFC 6749 §4.5 extension grants). Client authentication is Authlib's
own: ``client_secret_basic`` (RFC 6749 §2.3.1) and ``private_key_jwt`` (RFC 7523 §2.2, with the
assertion's ``aud`` set to the token endpoint URL, signed by joserfc).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import AssertionSession, OAuth2Session
from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from broker_harness import BrokerServer, decode_issued
from clients_setup import ASSERTION_ISSUER, ASSERTION_KEY, CLIENT_KEYS, CLIENT_SECRET, VECTOR

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@contextmanager
def session(**kwargs: Any) -> Iterator[OAuth2Session]:
    # Authlib's httpx integration is deprecated in favour of httpx2 (it warns on import), so
    # the requests integration is the one exercised here.
    client = OAuth2Session(**kwargs)
    try:
        yield client
    finally:
        client.close()


def exchange(client: OAuth2Session, broker: BrokerServer, subject_token: str, **extra: Any) -> dict[str, Any]:
    return dict(client.fetch_token(
        f"{broker.url}/token",
        grant_type=TOKEN_EXCHANGE,
        subject_token=subject_token,
        subject_token_type=JWT_TYPE,
        audience=VECTOR,
        **extra,
    ))


def assert_issued(broker: BrokerServer, token: dict[str, Any], *, client_id: str, scope: str) -> None:
    assert token["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert token["token_type"] == "Bearer" and token["scope"] == scope
    # Authlib turns expires_in into an absolute expires_at.
    assert 590 <= token["expires_in"] <= 600 and token["expires_at"] > 0
    _, claims = decode_issued(broker, token["access_token"])
    assert claims["client_id"] == client_id
    assert claims["sub"] == "wl:agent-1" and claims["aud"] == VECTOR and claims["scope"] == scope


def test_client_secret_basic(broker: BrokerServer, mint: Callable[..., str]) -> None:
    with session(client_id="basic-client", client_secret=CLIENT_SECRET,
                 token_endpoint_auth_method="client_secret_basic") as client:
        token = exchange(client, broker, mint("agent-1"), scope="read write")
    assert_issued(broker, token, client_id="basic-client", scope="read write")


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_private_key_jwt(broker: BrokerServer, mint: Callable[..., str], alg: str) -> None:
    key = CLIENT_KEYS[alg]
    with session(client_id="jwt-client", client_secret=key, token_endpoint_auth_method="private_key_jwt") as client:
        # The kid names which of the client's registered keys signed (RFC 7515 §4.1.4).
        client.register_client_auth_method(PrivateKeyJWT(f"{broker.url}/token", headers={"kid": key.kid}, alg=alg))
        token = exchange(client, broker, mint("agent-1"))
        # Each assertion carries a fresh jti, so a second exchange is not a replay (RFC 7523 §3).
        again = exchange(client, broker, mint("agent-1"))
    assert_issued(broker, token, client_id="jwt-client", scope="read")
    assert again["access_token"] != token["access_token"]


def test_wrong_secret_is_invalid_client(broker: BrokerServer, mint: Callable[..., str]) -> None:
    with session(client_id="basic-client", client_secret=CLIENT_SECRET + "x",
                 token_endpoint_auth_method="client_secret_basic") as client, pytest.raises(OAuthError) as caught:
        exchange(client, broker, mint("agent-1"))
    assert caught.value.error == "invalid_client"
    assert client.token is None


def test_assertion_session_uses_the_jwt_bearer_grant(broker: BrokerServer) -> None:
    # Authlib signs each assertion itself (iss, sub, aud = the token endpoint, a fresh jti) and
    # sends only grant_type, assertion and scope: the grant's default target applies.
    client = AssertionSession(token_endpoint=f"{broker.url}/token", issuer=ASSERTION_ISSUER, subject="agent-9",
                              key=ASSERTION_KEY, header={"alg": "ES256", "kid": ASSERTION_KEY.kid}, scope="read")
    try:
        token = dict(client.refresh_token())
        again = dict(client.refresh_token())
    finally:
        client.close()
    assert token["token_type"] == "Bearer" and token["scope"] == "read"
    _, claims = decode_issued(broker, token["access_token"])
    assert (claims["sub"], claims["aud"], claims["scope"]) == ("workloads:agent-9", VECTOR, "read")
    assert again["access_token"] != token["access_token"]


def test_assertion_session_refused_assertion_is_invalid_grant(broker: BrokerServer) -> None:
    # The same client with an unregistered subject: RFC 7521 §4.1.1 answers invalid_grant.
    client = AssertionSession(token_endpoint=f"{broker.url}/token", issuer=ASSERTION_ISSUER, subject="intruder",
                              key=ASSERTION_KEY, header={"alg": "ES256", "kid": ASSERTION_KEY.kid})
    try:
        with pytest.raises(OAuth2Error) as caught:
            client.refresh_token()
    finally:
        client.close()
    assert caught.value.error == "invalid_grant"
