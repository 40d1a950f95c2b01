"""google-auth ``external_account`` credentials (identity pool, file source) against the broker.

google-auth's STS client (``google.oauth2.sts.Client.exchange_token``) speaks RFC 8693 §2.1:
``grant_type`` token-exchange, ``requested_token_type`` access_token, ``audience`` verbatim from
the credential configuration, ``scope`` only when the caller set scopes, and ``options`` only for
workforce pools (``userProject``) or mTLS-bound tokens (``bindCertFingerprint``), neither of
which applies to an identity pool without client certificates. From the RFC 8693 §2.2.1 answer
it reads ``access_token`` and ``expires_in`` only (``expires_in`` is required: it computes
``expiry`` from it).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import google.auth.exceptions
import google.auth.transport.requests
import pytest
import requests
from broker_harness import BrokerServer, decode_issued
from clients_setup import CLIENT_SECRET, CLOUD_PLATFORM, VECTOR
from google.auth import identity_pool

JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def recording_request(sent: list[dict[str, list[str]]]) -> google.auth.transport.requests.Request:
    """google-auth's own requests transport, on a session that records each form it posts."""
    session = requests.Session()

    def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        body = response.request.body
        text = body.decode() if isinstance(body, bytes) else str(body or "")
        sent.append(parse_qs(text, keep_blank_values=True))

    session.hooks["response"].append(record)
    return google.auth.transport.requests.Request(session)


def external_account_info(broker: BrokerServer, token_file: Path, audience: str) -> dict[str, Any]:
    """The JSON a platform team hands out (``gcloud iam workload-identity-pools create-cred-config``
    shape), pointed at the broker instead of sts.googleapis.com."""
    return {
        "type": "external_account",
        "audience": audience,
        "subject_token_type": JWT_TYPE,
        "token_url": f"{broker.url}/token",
        "credential_source": {"file": str(token_file)},
        "universe_domain": "example.com",
    }


@pytest.mark.parametrize(
    ("scopes", "expected_scope"),
    [
        pytest.param(None, "read", id="no-scopes-gets-grant-default"),
        pytest.param(["read"], "read", id="scopes-read"),
        pytest.param(["read", "write"], "read write", id="scopes-read-write"),
        # What application default credentials ask for: ignored by the target (ignore_scopes),
        # so the grant's default scope is granted (docs/jwt-bearer.md#foreign-scopes-google-client-libraries).
        pytest.param([CLOUD_PLATFORM], "read", id="cloud-platform-ignored"),
        pytest.param([CLOUD_PLATFORM, "write"], "write", id="cloud-platform-and-write"),
    ],
)
def test_identity_pool_file_source_refresh(broker: BrokerServer, mint: Callable[..., str], workdir: Path,
                                           scopes: list[str] | None, expected_scope: str) -> None:
    token_file = workdir / "token.jwt"
    # Kubernetes projected tokens and CI token files usually end with a newline; google-auth's
    # "text" format sends the file content as is.
    token_file.write_text(mint("agent-1") + "\n")
    credentials = identity_pool.Credentials.from_info(external_account_info(broker, token_file, VECTOR), scopes=scopes)
    assert not credentials.is_workforce_pool and credentials.universe_domain == "example.com"

    sent: list[dict[str, list[str]]] = []
    before = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    credentials.refresh(recording_request(sent))

    # What went over the wire, one POST to /token: no `options` for an identity pool, `scope`
    # only when scopes were given, and the subject token still carrying the file's newline.
    [form] = sent
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    assert form["requested_token_type"] == ["urn:ietf:params:oauth:token-type:access_token"]
    assert form["audience"] == [VECTOR] and form["subject_token_type"] == [JWT_TYPE]
    assert form["subject_token"][0].endswith("\n")
    assert "options" not in form and "resource" not in form
    assert form.get("scope") == (None if scopes is None else [" ".join(scopes)])

    assert credentials.token and credentials.valid
    assert credentials.expiry is not None
    remaining = (credentials.expiry - before).total_seconds()
    assert 590 <= remaining <= 601, remaining  # the grant's lifetime of 600 s
    header, claims = decode_issued(broker, credentials.token)
    assert header["typ"] == "at+jwt"
    assert claims["aud"] == VECTOR
    assert claims["sub"] == "wl:agent-1"
    assert claims["scope"] == expected_scope
    # No client authentication in the configuration: a public exchange, client_id is the identity.
    assert claims["client_id"] == "wl:agent-1"


def test_identity_pool_with_client_credentials(broker: BrokerServer, mint: Callable[..., str], workdir: Path) -> None:
    # client_id/client_secret in the configuration make google-auth authenticate to the token
    # endpoint with HTTP Basic (google.oauth2.utils.ClientAuthType.basic).
    token_file = workdir / "token.jwt"
    token_file.write_text(mint("agent-2") + "\n")
    info = {**external_account_info(broker, token_file, VECTOR), "client_id": "basic-client", "client_secret": CLIENT_SECRET}
    credentials = identity_pool.Credentials.from_info(info)

    credentials.refresh(google.auth.transport.requests.Request())

    _, claims = decode_issued(broker, credentials.token)
    assert claims["client_id"] == "basic-client" and claims["sub"] == "wl:agent-2" and claims["scope"] == "read"


def test_identity_pool_refused_exchange_raises_oauth_error(broker: BrokerServer, mint: Callable[..., str],
                                                          workdir: Path) -> None:
    token_file = workdir / "token.jwt"
    token_file.write_text(mint("agent-1") + "\n")
    credentials = identity_pool.Credentials.from_info(
        external_account_info(broker, token_file, "https://billing.example.com"))

    with pytest.raises(google.auth.exceptions.OAuthError) as caught:
        credentials.refresh(google.auth.transport.requests.Request())

    # handle_error_response formats the RFC 6749 §5.2 body as "Error code <error>: <description>".
    assert "Error code invalid_target" in str(caught.value)
    assert credentials.token is None
