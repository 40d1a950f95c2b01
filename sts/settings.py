"""Service settings: how this process runs, as opposed to whom it trusts.

Settings come from ``STS_*`` environment variables (or CLI flags that set them) and are
built once and passed in; nothing reads the environment later. The trust configuration
(issuers, grants, clients) lives in the YAML file named by ``config``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///var/sts.db"
DEV_KEK_FILE = Path("var/dev.kek")


class SettingsError(Exception):
    """A setting is missing or unusable; the broker refuses to start."""


class Settings(BaseSettings):
    """Process settings. Invariant: outside dev mode a key-encryption key is configured."""

    model_config = SettingsConfigDict(env_prefix="STS_", extra="ignore")

    config: Path = Field(default=Path("sts.yaml"), description="trust configuration file (YAML)")
    database_url: str = DEFAULT_DATABASE_URL
    dev_mode: bool = Field(default=False, description="allow loopback http issuers and a generated KEK")
    kek: SecretStr | None = Field(default=None, description="base64url key-encryption key, 32 bytes")
    kek_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    log_level: str = "info"
    access_log: bool = False

    signing_key_lifetime: int = Field(default=30 * 86400, ge=3600)
    key_refresh_interval: float = Field(default=30.0, gt=0)
    jwks_unknown_kid_cooldown: float = Field(default=30.0, ge=1, description="min seconds between refetches triggered by an unknown kid, per issuer or trust domain")
    config_reload_interval: float = Field(default=10.0, ge=0, description="0 disables polling; SIGHUP still reloads")

    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or CIDR networks allowed to forward client certificates (x-forwarded-client-cert)",
    )
    # TLS termination by the broker itself (docs/spiffe.md); client certificates are optional.
    tls_cert: Path | None = Field(default=None, description="serve HTTPS with this certificate chain (PEM)")
    tls_key: Path | None = Field(default=None, description="private key (PEM) of tls_cert")
    tls_client_ca: Path | None = Field(default=None, description="extra CAs (PEM) accepted for TLS client certificates")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        from sts.spiffe.mtls import parse_proxies

        try:
            parse_proxies(v)
        except ValueError:
            raise ValueError("trusted_proxies must be IP addresses or CIDR networks") from None
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        return self

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, url: str) -> str:
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        return url


def decode_kek(text: str) -> bytes:
    raw = text.strip()
    try:
        key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SettingsError("the key-encryption key is not valid base64url") from exc
    if len(key) != 32:
        raise SettingsError("the key-encryption key must be 32 bytes (base64url of 32 random bytes)")
    return key


def load_kek(settings: Settings) -> bytes:
    """The key-encryption key for signing keys at rest.

    Outside dev mode a missing KEK is a hard error: the broker must not quietly store private
    keys that anyone who can read the database can use. In dev mode a KEK is generated once
    into ``var/dev.kek`` so that ``make run`` works on a fresh machine.
    """
    if settings.kek is not None:
        return decode_kek(settings.kek.get_secret_value())
    if settings.kek_file is not None:
        try:
            return decode_kek(settings.kek_file.read_text())
        except OSError as exc:
            raise SettingsError(f"cannot read the key-encryption key file: {exc.strerror}") from exc
    if not settings.dev_mode:
        raise SettingsError("no key-encryption key: set STS_KEK or STS_KEK_FILE (dev mode generates one)")
    if not DEV_KEK_FILE.exists():
        import secrets

        DEV_KEK_FILE.parent.mkdir(parents=True, exist_ok=True)
        DEV_KEK_FILE.write_text(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="))
        DEV_KEK_FILE.chmod(0o600)
    return decode_kek(DEV_KEK_FILE.read_text())


def kek_id(kek: bytes) -> str:
    """A non-secret name for a KEK, stored beside each ciphertext so a wrong KEK is reported
    as such instead of as a decryption failure."""
    return hashlib.sha256(b"sts-kek-id:" + kek).hexdigest()[:16]
