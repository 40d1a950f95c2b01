"""Service settings: how this process runs, as opposed to whom it trusts.

Settings come from ``STS_*`` environment variables (or CLI flags that set them) and are
built once and passed in; nothing reads the environment later. The trust configuration
(issuers, grants, clients) lives in the YAML file named by ``config``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pydantic_settings
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///var/sts.db"
# The one dev KEK location: the file `make run` writes with `sts init var/dev --dev` and passes as
# STS_KEK_FILE. A second default would let a command run without STS_KEK_FILE seal keys under a
# KEK that no broker holds (issue: a stray dev KEK took every replica down).
DEV_KEK_FILE = Path("var/dev/kek")


LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


class SettingsError(Exception):
    """A setting is missing or unusable; the broker refuses to start. ``fix`` (optional) says
    what to change, for the one line the command line prints."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


class Settings(BaseSettings):
    """Process settings. Invariant: outside dev mode a key-encryption key is configured."""

    model_config = SettingsConfigDict(env_prefix="STS_", extra="ignore")

    config: Path = Field(default=Path("sts.yaml"), description="trust configuration file (YAML)")
    database_url: str = DEFAULT_DATABASE_URL
    dev_mode: bool = Field(default=False, description="allow loopback http issuers and a generated KEK")
    kek: SecretStr | None = Field(default=None, description="base64url key-encryption key, 32 bytes")
    kek_file: Path | None = None
    kek_previous: SecretStr | None = Field(default=None, description="the KEK being replaced, during a KEK rotation (opens keys, seals none)")
    kek_previous_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    log_level: str = "info"
    access_log: bool = False

    signing_key_lifetime: int = Field(default=30 * 86400, ge=3600)
    key_refresh_interval: float = Field(default=30.0, gt=0)
    jwks_unknown_kid_cooldown: float = Field(default=30.0, ge=1, description="min seconds between refetches triggered by an unknown kid, per issuer or trust domain")
    config_reload_interval: float = Field(default=10.0, ge=0, description="0 disables polling; SIGHUP still reloads")
    # Kill switches and revocations reach every replica within this plus one read (docs/operations.md#token-lifecycle).
    lifecycle_poll_interval: float = Field(default=1.0, gt=0, le=1.0, description="seconds between two reads of the kill/revocation version (at most 1, for the 2 s bound)")
    # Token Status List `ttl` and HTTP max-age (docs/operations.md#offline-revocation-the-status-list).
    status_list_ttl: int = Field(default=60, ge=1, le=86400, description="seconds the signed status list is cached, by the broker and by relying parties")
    # Just-in-time approvals (docs/approvals.md): pending requests one identity may have.
    approval_max_pending: int = Field(default=10, ge=1, le=1000, description="pending approval requests per identity; beyond it new ones are refused unrecorded")

    # Retention of audit records and issued-token rows (docs/operations.md#retention).
    audit_retention_days: float = Field(default=90.0, ge=0, description="audit records older than this are pruned; 0 keeps them forever")
    issued_token_retention_days: float = Field(default=7.0, ge=0, description="issued-token rows are pruned this long after they expire; 0 keeps them forever")
    prune_interval: float = Field(default=300.0, ge=0, description="seconds between background prune runs; 0 turns the background pruner off")
    prune_batch_size: int = Field(default=200, ge=1, le=10_000, description="rows deleted per short transaction")
    prune_batch_pause: float = Field(default=0.05, ge=0, le=10, description="seconds between two delete batches, so the group-commit writer gets the database")
    # Identical unauthenticated refusals from one peer become one audit record with a count.
    audit_coalesce_window: float = Field(default=60.0, ge=0, le=3600, description="seconds; 0 writes every refusal individually")
    audit_coalesce_max_windows: int = Field(default=1024, ge=1, le=1_000_000, description="refusal windows held in memory per process; beyond it new peers share one window per kind of refusal")

    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or CIDR networks allowed to forward client certificates (x-forwarded-client-cert)",
    )
    # TLS termination by the broker itself (docs/spiffe.md); client certificates are optional.
    tls_cert: Path | None = Field(default=None, description="serve HTTPS with this certificate chain (PEM)")
    tls_key: Path | None = Field(default=None, description="private key (PEM) of tls_cert")
    tls_client_ca: Path | None = Field(default=None, description="extra CAs (PEM) accepted for TLS client certificates")

    # DPoP (RFC 9449; docs/security.md#sender-constrained-tokens).
    dpop_require_nonce: bool = Field(default=False, description="require a server nonce in DPoP proofs (RFC 9449 §8)")
    dpop_nonce_key: SecretStr | None = Field(
        default=None, description="base64url key (16+ bytes) for DPoP nonces; default: derived from the KEK")
    dpop_proof_max_age: int = Field(default=60, ge=5, le=600, description="seconds a DPoP proof's iat may lie in the past")

    # Observability (docs/metrics.md). Metrics are off unless a port is set: the main port is
    # reachable by every workload, and metrics name issuers, grants and targets.
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Prometheus metrics: unset = off; 0 = /metrics on the main port; N = a separate listener on port N",
    )
    metrics_host: str | None = Field(default=None, description="bind address of the separate metrics listener (default: host)")
    metrics_state_interval: float = Field(
        default=5.0, gt=0, le=300,
        description="with several workers: seconds between each worker's publication of its state metrics",
    )
    otel_enabled: bool = Field(default=False, description="OpenTelemetry tracing of the token endpoint (needs the otel extra)")

    # The read-only admin API (docs/admin-api.md): off unless a listen address is set. Its own
    # listener, never the token port; a bearer token from a file and/or pinned client certificates.
    admin_listen: str | None = Field(default=None, description="host:port of the admin API listener (for example 127.0.0.1:9443); unset = off")
    admin_token_file: Path | None = Field(default=None, description="file holding the admin API bearer token (32 to 512 characters)")
    admin_tls_cert: Path | None = Field(default=None, description="serve the admin API over HTTPS with this certificate chain (PEM)")
    admin_tls_key: Path | None = Field(default=None, description="private key (PEM) of admin_tls_cert")
    admin_tls_client_ca: Path | None = Field(default=None, description="CAs (PEM) the TLS handshake accepts admin client certificates from")
    admin_allowed_cert_sha256: list[str] = Field(
        default_factory=list, description="SHA-256 thumbprints (hex) of the client certificates allowed to use the admin API")

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
        if self.metrics_port and self.metrics_port == self.port and (self.metrics_host or self.host) == self.host:
            raise ValueError("metrics_port is the main port: set STS_METRICS_PORT=0 for /metrics on the main port, or another port")
        self._admin_checks()
        return self

    def _admin_checks(self) -> None:
        """The admin API is authenticated or not started; a bearer token crosses no network in clear."""
        if (self.admin_tls_cert is None) != (self.admin_tls_key is None):
            raise ValueError("STS_ADMIN_TLS_CERT and STS_ADMIN_TLS_KEY go together")
        if self.admin_listen is None:
            return
        host, port = admin_address(self.admin_listen)
        if self.admin_token_file is None and not self.admin_allowed_cert_sha256:
            raise ValueError("STS_ADMIN_LISTEN needs STS_ADMIN_TOKEN_FILE or STS_ADMIN_ALLOWED_CERT_SHA256: the admin API never runs unauthenticated")
        if self.admin_allowed_cert_sha256 and (self.admin_tls_cert is None or self.admin_tls_client_ca is None):
            raise ValueError("STS_ADMIN_ALLOWED_CERT_SHA256 needs STS_ADMIN_TLS_CERT, STS_ADMIN_TLS_KEY and STS_ADMIN_TLS_CLIENT_CA")
        if self.admin_tls_cert is None and not is_loopback(host):
            raise ValueError("STS_ADMIN_LISTEN is not a loopback address: serve the admin API over HTTPS (STS_ADMIN_TLS_CERT, STS_ADMIN_TLS_KEY)")
        if port == self.port or (self.metrics_port and port == self.metrics_port):
            raise ValueError("STS_ADMIN_LISTEN must use a port of its own (not the token or metrics port)")

    @field_validator("admin_allowed_cert_sha256")
    @classmethod
    def _thumbprints(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            hexa = value.replace(":", "").strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", hexa):
                raise ValueError("admin_allowed_cert_sha256 must be SHA-256 thumbprints, 64 hex digits each")
            out.append(hexa)
        return out

    @field_validator("admin_listen")
    @classmethod
    def _admin_listen(cls, value: str | None) -> str | None:
        if value is not None:
            admin_address(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, url: str) -> str:
        from sts.store.db import database_url_problem

        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        problem = database_url_problem(url)
        if problem is not None:
            raise ValueError(problem)
        return url

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, level: str) -> str:
        if level.lower() not in LOG_LEVELS:
            raise ValueError("unknown log level")
        return level.lower()


def admin_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) of the admin listener; ValueError if malformed."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", value.strip())
    if match is None:
        raise ValueError("admin_listen must be host:port, for example 127.0.0.1:9443 or [::1]:9443")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ValueError("admin_listen needs a port from 1 to 65535")
    return host, port


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# What to write instead, per setting, for the one-line error of the command line.
_FIXES: Final[Mapping[str, str]] = {
    "port": "set it to a port number (0-65535)",
    "workers": "set it to the number of worker processes (1 or more)",
    "database_url": "use sqlite:///path/to/sts.db or postgresql://user@host:5432/dbname",
    "dev_mode": "set it to true or false",
    "access_log": "set it to true or false",
    "log_level": "set it to one of " + ", ".join(LOG_LEVELS),
    "trusted_proxies": 'set it to a JSON list of addresses or networks, for example ["10.0.0.0/8"]',
    "signing_key_lifetime": "set it to a number of seconds (3600 or more)",
    "key_refresh_interval": "set it to a number of seconds above 0",
    "jwks_unknown_kid_cooldown": "set it to a number of seconds (1 or more)",
    "config_reload_interval": "set it to a number of seconds (0 turns polling off)",
    "lifecycle_poll_interval": "set it to a number of seconds above 0 and at most 1",
    "status_list_ttl": "set it to a whole number of seconds from 1 to 86400",
    "approval_max_pending": "set it to a whole number from 1 to 1000",
    "max_body_bytes": "set it to a number of bytes (1024 or more)",
    "dpop_require_nonce": "set it to true or false",
    "dpop_nonce_key": "set it to a base64url key of 16 bytes or more (or unset it to derive one from the KEK)",
    "dpop_proof_max_age": "set it to a number of seconds (5-600)",
    "admin_listen": "set it to host:port, for example 127.0.0.1:9443 (docs/admin-api.md)",
    "admin_allowed_cert_sha256": 'set it to a JSON list of SHA-256 thumbprints in hex, for example ["9f86d0..."]',
}
# Values that may be secret (a KEK, a database password) are never repeated in a message.
_SECRET_FIELDS: Final = frozenset({"kek", "kek_previous", "database_url", "dpop_nonce_key"})
_PYDANTIC_PHRASES: Final = {
    "int_parsing": "value is not a valid integer",
    "int_from_float": "value is not a valid integer",
    "float_parsing": "value is not a valid number",
    "bool_parsing": "value is not true or false",
    "json_invalid": "value is not valid JSON",
    "list_type": "value is not a list",
}


def load_settings(**overrides: Any) -> Settings:
    """``Settings`` from the environment plus ``overrides`` (command-line flags; None means not
    given), with a validation failure turned into one readable :class:`SettingsError` that
    names each setting as the operator spelt it (``STS_PORT`` or ``--port``)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        parts = describe_settings_errors(exc, flags=frozenset(given))
        *earlier, (problem, fix) = parts
        text = "; ".join([f"{p}; {f}" if f else p for p, f in earlier] + [problem])
        raise SettingsError(text, fix or None) from None
    except pydantic_settings.SettingsError as exc:
        # A list setting whose environment value is not JSON fails before validation, and
        # pydantic-settings names the field only inside its message.
        match = re.search(r'field "([a-z_]+)"', str(exc))
        field = match.group(1) if match else ""
        fix = _FIXES.get(field, "see the settings table in docs/quickstart.md")
        raise SettingsError(f"STS_{field.upper()}: value is not valid JSON", fix) from None


def describe_settings_errors(exc: ValidationError, *, flags: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """``(problem, fix)`` per problem, for example ``("STS_PORT: value is not a valid integer
    ('abc')", "set it to a port number (0-65535)")``; the fix is empty for a check across
    settings, whose message already names what goes together."""
    parts: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        if not field:
            parts.append((str(err["msg"]).removeprefix("Value error, "), ""))
            continue
        name = "--" + field.replace("_", "-") if field in flags else "STS_" + field.upper()
        what = _PYDANTIC_PHRASES.get(err["type"]) or str(err["msg"]).removeprefix("Value error, ")
        what = what.replace("Input should be", "must be")
        shown = err.get("input")
        if field not in _SECRET_FIELDS and isinstance(shown, (str, int, float)) and len(str(shown)) <= 80:
            what += f" ({shown!r})"
        parts.append((f"{name}: {what}", _FIXES.get(field, "see the settings table in docs/quickstart.md")))
    return parts


_KEK_FIX: Final = "use the KEK the broker runs with (`sts init DIR` writes a new one to DIR/kek)"


def decode_kek(text: str, variable: str = "the key-encryption key") -> bytes:
    raw = text.strip()
    try:
        key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SettingsError(f"{variable} is not valid base64url", _KEK_FIX) from exc
    if len(key) != 32:
        raise SettingsError(f"{variable} must be 32 bytes (base64url of 32 random bytes)", _KEK_FIX)
    return key


@dataclass(frozen=True)
class KekMaterial:
    """The key-encryption keys this process holds. ``current`` seals and opens; ``previous``
    (during a KEK rotation) only opens. ``origin`` names where ``current`` came from, for
    messages; it never holds key material.

    ``pending_dev_file`` is set when dev mode generated ``current`` just now: the file is written
    by :func:`keep_dev_kek` only once the caller has checked the KEK against the stored keys, so
    a refused command leaves nothing behind."""

    current: bytes
    previous: tuple[bytes, ...] = ()
    origin: str = "STS_KEK"
    pending_dev_file: Path | None = None

    @property
    def all(self) -> tuple[bytes, ...]:
        return (self.current, *self.previous)


def _read_kek_file(path: Path, variable: str) -> bytes:
    try:
        return decode_kek(path.read_text(), f"{variable}={path}")
    except OSError as exc:
        raise SettingsError(f"cannot read the key-encryption key file {variable}={path}: {exc.strerror}",
                            "check the path and its permissions") from exc


def load_keks(settings: Settings) -> KekMaterial:
    """The key-encryption keys for signing keys at rest.

    Outside dev mode a missing KEK is a hard error: the broker must not quietly store private
    keys that anyone who can read the database can use. In dev mode without one, the KEK is
    ``var/dev/kek`` (the file `make run` uses), generated when it does not exist yet."""
    previous: list[bytes] = []
    if settings.kek_previous is not None:
        previous.append(decode_kek(settings.kek_previous.get_secret_value(), "STS_KEK_PREVIOUS"))
    if settings.kek_previous_file is not None:
        previous.append(_read_kek_file(settings.kek_previous_file, "STS_KEK_PREVIOUS_FILE"))
    if settings.kek is not None:
        current, origin, pending = decode_kek(settings.kek.get_secret_value()), "STS_KEK", None
    elif settings.kek_file is not None:
        current, origin, pending = _read_kek_file(settings.kek_file, "STS_KEK_FILE"), f"STS_KEK_FILE={settings.kek_file}", None
    elif not settings.dev_mode:
        raise SettingsError("no key-encryption key", "set STS_KEK or STS_KEK_FILE (dev mode uses var/dev/kek)")
    elif DEV_KEK_FILE.exists():
        current, origin, pending = _read_kek_file(DEV_KEK_FILE, "the dev KEK file"), f"dev KEK {DEV_KEK_FILE}", None
    else:
        current, origin, pending = secrets.token_bytes(32), f"dev KEK {DEV_KEK_FILE} (new)", DEV_KEK_FILE
    unique = tuple(k for k in dict.fromkeys(previous) if k != current)
    return KekMaterial(current=current, previous=unique, origin=origin, pending_dev_file=pending)


def load_kek(settings: Settings) -> bytes:
    """The current key-encryption key (:func:`load_keks`); never writes a file."""
    return load_keks(settings).current


def keep_dev_kek(material: KekMaterial) -> None:
    """Write a KEK that dev mode generated, once the caller has decided to use it."""
    path = material.pending_dev_file
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process (a second worker) generated its own dev KEK first: ours must not be
        # used, or the two would seal keys the other cannot open.
        if _read_kek_file(path, "the dev KEK file") != material.current:
            raise SettingsError(f"another process created the dev KEK {path} at the same time", "start again") from None
        return
    with os.fdopen(fd, "w") as out:
        out.write(encode_kek(material.current) + "\n")


def encode_kek(kek: bytes) -> str:
    return base64.urlsafe_b64encode(kek).decode().rstrip("=")


def kek_id(kek: bytes) -> str:
    """A non-secret name for a KEK, stored beside each ciphertext so a wrong KEK is reported
    as such instead of as a decryption failure."""
    return hashlib.sha256(b"sts-kek-id:" + kek).hexdigest()[:16]
