"""Client authentication (RFC 6749 §2.3, RFC 7523 §3), table-driven with real keys."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from sts import jose
from sts.client_auth import ClientAuthenticator, RegisteredClient
from sts.errors import InvalidClient, InvalidRequest, OAuthError
from sts.protocol import CLIENT_ASSERTION_TYPE_JWT_BEARER

NOW = 1_800_000_000.0
ISSUER = "https://sts.example.com"
SECRET = "s3cret-with-enough-entropy"
CLIENT_KEY = jose.generate_private_key("ES256", kid="c1")
OTHER_KEY = jose.generate_private_key("ES256", kid="c1")


class Replay:
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    async def __call__(self, namespace: str, jti: str, expires_at: float) -> bool:
        if (namespace, jti) in self.seen:
            return False
        self.seen.add((namespace, jti))
        return True


def authenticator(*, allow_public: bool = True) -> ClientAuthenticator:
    digest = hashlib.sha256(SECRET.encode()).digest()
    clients = {
        "basic-client": RegisteredClient("basic-client", "client_secret_basic", digest, None, True),
        "post-client": RegisteredClient("post-client", "client_secret_post", digest, None, True),
        "jwt-client": RegisteredClient("jwt-client", "private_key_jwt", None, jose.parse_jwks({"keys": [CLIENT_KEY.public_jwk()]}), True),
    }
    return ClientAuthenticator(
        clients,
        allow_public=allow_public,
        assertion_audiences=frozenset({ISSUER, ISSUER + "/token"}),
        claim_once=Replay(),
        clock=lambda: NOW,
    )


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def assertion(key: jose.PrivateKey = CLIENT_KEY, **overrides: Any) -> str:
    claims: dict[str, Any] = {"iss": "jwt-client", "sub": "jwt-client", "aud": ISSUER + "/token", "iat": int(NOW), "exp": int(NOW) + 60, "jti": "j-1"}
    claims.update(overrides)
    return jose.sign({k: v for k, v in claims.items() if v is not None}, key)


def jwt_form(token: str, **extra: str) -> dict[str, list[str]]:
    form = {"client_assertion_type": [CLIENT_ASSERTION_TYPE_JWT_BEARER], "client_assertion": [token]}
    form.update({k: [v] for k, v in extra.items()})
    return form


@pytest.mark.parametrize(
    ("authorization", "form", "client_id"),
    [
        pytest.param(None, {}, None, id="public"),
        pytest.param(basic("basic-client", SECRET), {}, "basic-client", id="basic"),
        pytest.param(basic("basic-client", SECRET), {"client_id": ["basic-client"]}, "basic-client", id="basic-with-matching-body-id"),
        pytest.param(None, {"client_id": ["post-client"], "client_secret": [SECRET]}, "post-client", id="post"),
        pytest.param(None, jwt_form(assertion()), "jwt-client", id="private-key-jwt"),
        pytest.param(None, jwt_form(assertion(aud=ISSUER)), "jwt-client", id="private-key-jwt-aud-issuer"),
        pytest.param(None, {"client_id": ["unregistered"]}, None, id="unregistered-client-id-is-public"),
    ],
)
async def test_accepted(authorization: str | None, form: dict[str, list[str]], client_id: str | None) -> None:
    client = await authenticator().authenticate(authorization, form)
    assert client.client_id == client_id


@pytest.mark.parametrize(
    ("authorization", "form", "error", "reason"),
    [
        pytest.param(basic("basic-client", "wrong"), {}, InvalidClient, "bad_client_secret", id="basic-wrong-secret"),
        pytest.param(basic("nobody", SECRET), {}, InvalidClient, "unknown_client_or_method", id="basic-unknown"),
        pytest.param(basic("post-client", SECRET), {}, InvalidClient, "unknown_client_or_method", id="basic-for-post-client"),
        pytest.param("Bearer abc", {}, InvalidClient, "unsupported_auth_scheme", id="bearer-scheme"),
        pytest.param("Basic !!!", {}, InvalidClient, "malformed_basic", id="basic-garbage"),
        pytest.param(basic("basic-client", SECRET), {"client_id": ["other"]}, InvalidRequest, "client_id_mismatch", id="basic-body-id-mismatch"),
        pytest.param(basic("basic-client", SECRET), {"client_secret": [SECRET]}, InvalidRequest, "multiple_client_auth", id="two-methods"),
        pytest.param(None, {"client_id": ["basic-client"]}, InvalidClient, "missing_client_credentials", id="registered-without-credentials"),
        pytest.param(None, {"client_id": ["bad id!"], "client_secret": [SECRET]}, InvalidClient, "unknown_client_or_method", id="client-id-charset"),
        pytest.param(None, jwt_form(assertion(OTHER_KEY)), InvalidClient, "assertion_bad_signature", id="jwt-wrong-key"),
        pytest.param(None, jwt_form(assertion(aud="https://elsewhere")), InvalidClient, "assertion_aud_mismatch", id="jwt-wrong-aud"),
        pytest.param(None, jwt_form(assertion(exp=int(NOW) + 7200)), InvalidClient, "assertion_lifetime_too_long", id="jwt-too-long"),
        pytest.param(None, jwt_form(assertion(exp=int(NOW) - 120)), InvalidClient, "assertion_expired", id="jwt-expired"),
        pytest.param(None, jwt_form(assertion(jti=None)), InvalidClient, "assertion_jti_missing", id="jwt-no-jti"),
        pytest.param(None, jwt_form(assertion(iss="someone-else")), InvalidClient, "assertion_iss_sub", id="jwt-iss-not-sub"),
        pytest.param(None, jwt_form(assertion(), client_id="post-client"), InvalidClient, "assertion_client_id_mismatch", id="jwt-body-id-mismatch"),
        pytest.param(None, {"client_assertion_type": ["urn:other"], "client_assertion": [assertion()]}, InvalidClient, "bad_assertion_type", id="jwt-bad-type"),
    ],
)
async def test_refused(authorization: str | None, form: dict[str, list[str]], error: type[OAuthError], reason: str) -> None:
    with pytest.raises(error) as info:
        await authenticator().authenticate(authorization, form)
    assert info.value.reason == reason
    if isinstance(info.value, InvalidClient):
        assert info.value.status == 401
        assert info.value.headers["WWW-Authenticate"].startswith("Basic")
    assert SECRET not in info.value.description


async def test_public_exchange_can_be_disabled() -> None:
    with pytest.raises(InvalidClient) as info:
        await authenticator(allow_public=False).authenticate(None, {})
    assert info.value.reason == "public_exchange_disabled"


async def test_assertion_jti_is_single_use() -> None:
    auth = authenticator()
    token = assertion(jti="once")
    assert (await auth.authenticate(None, jwt_form(token))).client_id == "jwt-client"
    with pytest.raises(InvalidClient) as info:
        await auth.authenticate(None, jwt_form(token))
    assert info.value.reason == "assertion_replayed"



async def test_assertion_guard_outlives_the_leeway() -> None:
    seen: list[float] = []

    async def claim(namespace: str, jti: str, expires_at: float) -> bool:
        seen.append(expires_at)
        return True

    auth = authenticator()
    auth._claim_once = claim  # type: ignore[assignment]
    await auth.authenticate(None, jwt_form(assertion(jti="leeway", exp=int(NOW) + 60)))
    assert seen == [NOW + 60 + 30]
