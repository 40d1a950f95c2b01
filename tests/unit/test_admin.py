"""The admin API's pure parts: settings checks, authentication, query bounds, redaction, the
rotation time, and the published OpenAPI document (docs/admin-api.md)."""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from sts import jose
from sts.admin.app import AdminRefusal, Param, parse_query
from sts.admin.auth import AdminAuth, AdminSetupError, AdminUnauthenticated, TokenFile
from sts.admin.endpoints import explain_input, openapi_yaml
from sts.admin.views import REDACTED, redact
from sts.settings import Settings, admin_address, is_loopback
from sts.store.records import SigningKeyRow
from sts.tokens.keyring import rotation_due_at

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "Zm9vYmFyLXRva2VuLWZvci10aGUtYWRtaW4tYXBp"


# --- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1:9443", ("127.0.0.1", 9443)),
    ("[::1]:9443", ("::1", 9443)),
    ("localhost:1", ("localhost", 1)),
    ("admin.internal:443", ("admin.internal", 443)),
], ids=["v4", "v6", "localhost", "name"])
def test_admin_address(value: str, expected: tuple[str, int]) -> None:
    assert admin_address(value) == expected


@pytest.mark.parametrize("value", ["9443", "127.0.0.1", "::1:9443", "127.0.0.1:0", "127.0.0.1:70000", "a b:1", ""])
def test_bad_admin_addresses(value: str) -> None:
    with pytest.raises(ValueError):
        admin_address(value)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
                                                ("0.0.0.0", False), ("10.0.0.1", False), ("::", False), ("admin.local", False)])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_admin_is_off_by_default() -> None:
    settings = Settings(dev_mode=True)
    assert settings.admin_listen is None and settings.admin_token_file is None and settings.admin_allowed_cert_sha256 == []


@pytest.mark.parametrize(("values", "fragment"), [
    ({"admin_listen": "127.0.0.1:9443"}, "never runs unauthenticated"),
    ({"admin_listen": "0.0.0.0:9443", "admin_token_file": "t"}, "not a loopback address"),
    ({"admin_listen": "127.0.0.1:9443", "admin_allowed_cert_sha256": ["ab" * 32]}, "STS_ADMIN_TLS_CLIENT_CA"),
    ({"admin_listen": "127.0.0.1:8080", "admin_token_file": "t"}, "a port of its own"),
    ({"admin_listen": "127.0.0.1:9100", "admin_token_file": "t", "metrics_port": 9100}, "a port of its own"),
    ({"admin_tls_cert": "c"}, "go together"),
    ({"admin_allowed_cert_sha256": ["abc"]}, "64 hex digits"),
], ids=["no-auth", "public-plain-http", "certs-without-ca", "token-port", "metrics-port", "half-tls", "bad-thumbprint"])
def test_admin_settings_refused(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Settings(dev_mode=True, **values)


def test_admin_settings_accepted() -> None:
    thumb = ":".join(["AB"] * 32)
    s = Settings(dev_mode=True, admin_listen="0.0.0.0:9443", admin_tls_cert="c", admin_tls_key="k", admin_tls_client_ca="ca",
                 admin_allowed_cert_sha256=[thumb])
    assert s.admin_allowed_cert_sha256 == ["ab" * 32]
    assert Settings(dev_mode=True, admin_listen="[::1]:9443", admin_token_file="t").admin_listen == "[::1]:9443"


# --- authentication ---------------------------------------------------------------------------------
def _token_file(tmp_path: Path, text: str = TOKEN + "\n") -> TokenFile:
    path = tmp_path / "token"
    path.write_text(text)
    return TokenFile(path)


@pytest.mark.parametrize("text", ["short", "x" * 513, "has space in it 0123456789abcdefghij", "", "ümlaut" * 10],
                         ids=["short", "long", "space", "empty", "non-ascii"])
def test_unusable_token_files_refuse_start(tmp_path: Path, text: str) -> None:
    with pytest.raises(AdminSetupError):
        _token_file(tmp_path, text)
    with pytest.raises(AdminSetupError, match="cannot read"):
        TokenFile(tmp_path / "absent")


def test_bearer_token(tmp_path: Path) -> None:
    auth = AdminAuth(token_file=_token_file(tmp_path), allowed_thumbprints=[])
    assert auth.authenticate(f"Bearer {TOKEN}", {}).method == "token"
    assert auth.authenticate(f"bearer   {TOKEN}  ", {}).method == "token"
    for header, reason in [(None, "admin_credentials_missing"), (f"Bearer {TOKEN}x", "admin_token_invalid"),
                           (f"Bearer {TOKEN[:-1]}", "admin_token_invalid"), (f"Basic {TOKEN}", "admin_authorization_not_bearer"),
                           ("Bearer ", "admin_authorization_not_bearer"), (TOKEN, "admin_authorization_not_bearer")]:
        with pytest.raises(AdminUnauthenticated) as info:
            auth.authenticate(header, {})
        assert info.value.reason == reason


def test_a_rewritten_token_file_takes_effect_and_a_broken_one_fails_closed(tmp_path: Path) -> None:
    tokens = _token_file(tmp_path)
    auth = AdminAuth(token_file=tokens, allowed_thumbprints=[])
    new = "n" * 40
    (tmp_path / "token").write_text(new)
    os.utime(tmp_path / "token", ns=(1, 1))  # a different stamp even within the clock's resolution
    assert auth.authenticate(f"Bearer {new}", {}).method == "token"
    with pytest.raises(AdminUnauthenticated):
        auth.authenticate(f"Bearer {TOKEN}", {})
    (tmp_path / "token").unlink()
    with pytest.raises(AdminUnauthenticated) as info:
        auth.authenticate(f"Bearer {new}", {})
    assert info.value.reason == "admin_token_file_unusable"


def _cert_pem() -> tuple[str, str]:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "op")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(hours=1))
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    return ssl.DER_cert_to_PEM_cert(der), hashlib.sha256(der).hexdigest()


def _scope(pem: str) -> dict[str, Any]:
    return {"extensions": {"tls": {"client_cert_chain": [pem]}}}


def test_client_certificates(tmp_path: Path) -> None:
    allowed, thumb = _cert_pem()
    other, _ = _cert_pem()
    auth = AdminAuth(token_file=_token_file(tmp_path), allowed_thumbprints=[thumb])
    principal = auth.authenticate(None, _scope(allowed))
    assert principal.method == "certificate" and principal.thumbprint == thumb
    with pytest.raises(AdminUnauthenticated) as info:
        auth.authenticate(None, _scope(other))
    assert info.value.reason == "admin_certificate_not_allowed"
    assert auth.authenticate(f"Bearer {TOKEN}", _scope(other)).method == "token"
    only_tokens = AdminAuth(token_file=_token_file(tmp_path), allowed_thumbprints=[])
    with pytest.raises(AdminUnauthenticated) as info:
        only_tokens.authenticate(None, _scope(allowed))
    assert info.value.reason == "admin_certificates_not_accepted"
    only_certs = AdminAuth(token_file=None, allowed_thumbprints=[thumb])
    with pytest.raises(AdminUnauthenticated) as info:
        only_certs.authenticate(f"Bearer {TOKEN}", {})
    assert info.value.reason == "admin_tokens_not_accepted"


# --- query bounds -----------------------------------------------------------------------------------
LIMIT = Param("limit", integer=True, low=1, high=50)
NAME = Param("name", max_chars=8, pattern=r"[a-z]+")


@pytest.mark.parametrize(("query", "expected"), [
    (b"", {}), (b"limit=5", {"limit": 5}), (b"limit=50&name=abc", {"limit": 50, "name": "abc"}),
])
def test_query_accepted(query: bytes, expected: dict[str, Any]) -> None:
    assert parse_query(query, (LIMIT, NAME)) == expected


@pytest.mark.parametrize(("query", "reason"), [
    (b"limit=0", "admin_parameter_invalid"), (b"limit=-1", "admin_parameter_invalid"), (b"limit=5.0", "admin_parameter_invalid"),
    (b"limit=9999999999", "admin_parameter_invalid"), (b"name=ABC", "admin_parameter_invalid"),
    (b"name=abcdefghi", "admin_parameter_invalid"), (b"name=a%00", "admin_parameter_invalid"),
    (b"other=1", "admin_parameter_unknown"), (b"limit=1&limit=1", "admin_parameter_repeated"),
    (b"name=", "admin_parameter_invalid"), (b"name=" + b"a" * 5000, "admin_query_too_long"), (b"name=\xff", "admin_query_malformed"),
])
def test_query_refused(query: bytes, reason: str) -> None:
    with pytest.raises(AdminRefusal) as info:
        parse_query(query, (LIMIT, NAME))
    assert info.value.status == 400 and info.value.reason == reason
    assert "other" not in info.value.description  # caller text is never echoed


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("2w", 1209600),
                                             ("7", None), ("1y", None), ("-1d", None), ("", None)])
def test_durations(text: str, seconds: int | None) -> None:
    from sts.admin.endpoints import duration_seconds

    assert duration_seconds(text) == seconds


def test_moments() -> None:
    from sts.admin.endpoints import moment

    assert moment("since", "2h", 10_000.0) == 2800.0
    assert moment("since", "2026-12-01T00:00:00Z", 0.0) == 1796083200.0
    assert moment("since", "1796083200", 0.0) == 1796083200.0
    for bad in ["yesterday", "2026-13-01", "1e400"]:
        with pytest.raises(AdminRefusal) as info:
            moment("since", bad, 0.0)
        assert info.value.status == 400 and "since" in info.value.description


# --- explain bodies ---------------------------------------------------------------------------------
def test_explain_input() -> None:
    keys = {"keys": [jose.generate_private_key("ES256", kid="k").public_jwk()]}
    req, jwks = explain_input({"subject_token": "t", "audience": "a", "resource": ["r1", "r2"], "scope": "read",
                               "client_id": "c", "jwks": keys})
    assert (req.subject_token, req.audiences, req.resources, req.scope, req.client_id) == ("t", ("a",), ("r1", "r2"), "read", "c")
    assert jwks == keys
    for bad in [{"subject_token": ""}, {"subject_token": "t", "audience": [1]}, {"subject_token": "t", "audience": ["a"] * 17},
                {"subject_token": "t", "jwks": []}, {"subject_token": "t", "jwks": {"keys": []}},
                {"subject_token": "t", "jwks": {"keys": [{"kty": "EC"}]}}, {"subject_token": "t", "jwks": {"keys": [1]}},
                {"subject_token": "t", "scope": ["a"]}, {"subject_token": "t", "x": 1}]:
        with pytest.raises(AdminRefusal):
            explain_input(bad)


# --- redaction --------------------------------------------------------------------------------------
def test_redact_removes_tokens_and_private_keys() -> None:
    key = jose.generate_private_key("ES256", kid="k1")
    token = jose.sign({"sub": "x"}, key, typ="at+jwt")
    pem = jose.private_key_to_pem(key).decode()
    private_jwk = {"kty": "EC", "crv": "P-256", "x": "x", "y": "y", "d": "secret"}
    out = redact({"claims": {"nested": f"Bearer {token}", "list": [token]}, "pem": pem, "jwk": private_jwk,
                  "plain": "eyJ is just text", "n": 3, "none": None})
    text = repr(out)
    assert token not in text and "secret" not in text and "PRIVATE KEY" not in text
    assert out["claims"]["nested"].startswith("Bearer [redacted: sha256 ")
    assert out["pem"] == REDACTED and out["jwk"] == {"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}
    assert out["plain"] == "eyJ is just text" and out["n"] == 3 and out["none"] is None
    jwe = "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d"
    assert redact(jwe).startswith("[redacted: sha256 ")


# --- rotation time ----------------------------------------------------------------------------------
def _row(alg: str, state: str, not_after: float) -> SigningKeyRow:
    return SigningKeyRow(kid=f"{alg}-{state}-{not_after}", alg=alg, state=state, public_jwk={}, private_key_ciphertext=b"",
                         kek_id="k", created_at=0.0, activated_at=None, retired_at=None, not_after=not_after, publish_until=None)


@pytest.mark.parametrize(("rows", "due"), [
    ([_row("ES256", "active", 1000.0)], 1000.0 - 100.0),
    ([_row("ES256", "active", 1000.0), _row("ES256", "active", 1200.0), _row("ES256", "next", 5000.0)], 1200.0 - 100.0),
    ([_row("RS256", "active", 1000.0)], 500.0 - 100.0),  # no active ES256 key: due already
], ids=["one", "newest-active", "none"])
def test_rotation_due_at(rows: list[SigningKeyRow], due: float) -> None:
    assert rotation_due_at(rows, "ES256", 400.0, now=500.0) == due


# --- the OpenAPI document ---------------------------------------------------------------------------
def test_published_openapi_document_is_the_served_one() -> None:
    assert (ROOT / "docs" / "admin-openapi.yaml").read_bytes() == openapi_yaml()


def test_openapi_document_is_valid() -> None:
    import schemathesis

    schema = schemathesis.openapi.from_path(str(ROOT / "docs" / "admin-openapi.yaml"))
    operations = [op for op in schema.get_all_operations()]
    assert len(operations) >= 6
