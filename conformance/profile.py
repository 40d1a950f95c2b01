"""The target profile: what the kit needs to know about a token service to test it.

A profile is a TOML or YAML file. It says where the service is, how it was configured to trust
the kit's issuer, what it should allow and refuse, and which of the choices RFC 8693 leaves
open (RFC 8693 §2.1 ``audience``/``resource``/``scope`` policy, RFC 6749 §3.3 scope handling,
lifetimes) the service made. String values may use ``${NAME}`` or ``${NAME:-default}`` to read
the environment, so one profile serves a laptop and a CI job.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ProfileError(ValueError):
    """The profile file cannot be read or does not describe a testable target."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Section):
    """Where the service under test is."""

    token_endpoint: str
    #: RFC 8414 metadata URL (``/.well-known/oauth-authorization-server...``) or an OIDC
    #: discovery URL. Omit when the service publishes none: the RFC 8414 cases are skipped.
    metadata_url: str | None = None
    #: JWK Set of the keys the service signs issued tokens with; discovered from metadata if omitted.
    jwks_uri: str | None = None
    #: Expected ``iss`` of issued tokens; taken from metadata if omitted.
    issuer: str | None = None
    timeout: float = Field(default=10.0, gt=0)
    #: PEM CA certificates that verify the service's https certificate (a private CA); the
    #: system trust store when omitted.
    ca_file: str | None = None


class Issuer(_Section):
    """How the service was configured to trust the kit's ``LocalIssuer``."""

    host: str = "127.0.0.1"
    #: Port the kit binds its issuer to; the service's configuration points to http://host:port.
    port: int = Field(default=0, ge=0, le=65535)
    #: ``aud`` the service accepts in subject tokens.
    audience: str = "conformance"
    #: ``sub`` of the subject tokens the kit mints; the service must grant it the allowed targets.
    subject: str = "workload-1"
    #: Extra claims put in every subject token (e.g. claims the service's mapping needs).
    claims: dict[str, Any] = Field(default_factory=dict)
    #: Algorithms the service accepts from this issuer. The kit also publishes one key of an
    #: algorithm *not* listed here, to check it is refused.
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    subject_token_type: str = JWT_TYPE
    clock_skew: int = Field(default=60, ge=0)
    #: How the service gets the issuer's keys: ``discovery`` or ``jwks_uri`` (fetched, so key
    #: rotation can be tested) or ``static`` (a file written by the kit before the service starts).
    keys: Literal["discovery", "jwks_uri", "static"] = "discovery"
    #: Public JWK Set file to write for ``static`` deployments.
    jwks_file: str | None = None
    #: Private key file so the kit's keys survive restarts (needed with ``static``).
    private_keys_file: str | None = None
    #: The service refuses subject tokens whose lifetime (exp - iat) exceeds this.
    max_token_lifetime: int | None = Field(default=None, gt=0)
    #: Seconds the kit waits for a rotated key to be accepted (JWKS caches, refresh cooldowns).
    rotation_wait: float = Field(default=15.0, ge=0)
    #: Path of the issuer URL, like real issuers' (``/realms/x``): the issuer is then
    #: ``http(s)://host:port/realms/x`` and its discovery document lives under that path.
    path: str = ""
    #: Serve the issuer over https with this PEM certificate chain (leaf first) and key. With
    #: ``tls_ca_file`` too, the kit creates the three files (a throwaway CA and a certificate
    #: for ``host``) when they do not exist yet; configure the target to trust ``tls_ca_file``.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_ca_file: str | None = None

    @field_validator("path")
    @classmethod
    def _issuer_path(cls, value: str) -> str:
        if value and (not value.startswith("/") or value.endswith("/") or "?" in value or "#" in value):
            raise ValueError("issuer.path must start with / and end without / (e.g. /realms/conformance)")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Issuer:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("issuer.tls_cert_file and issuer.tls_key_file go together")
        if self.tls_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("issuer.tls_ca_file needs issuer.tls_cert_file and issuer.tls_key_file")
        return self

    @property
    def url(self) -> str:
        """The issuer URL (``iss``) the target must trust."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls_cert_file else 'http'}://{host}:{self.port}{self.path}"

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from conformance.jose import ASYMMETRIC_ALGORITHMS

        unknown = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if unknown or not value:
            raise ValueError(f"algorithms must be a non-empty subset of {ASYMMETRIC_ALGORITHMS}")
        return value


class SubjectSource(_Section):
    """Where valid subject tokens come from.

    ``local_issuer`` (default): the kit mints them. Otherwise the kit obtains them from a token
    endpoint (``client_credentials`` or ``password`` grant): for services that only exchange
    their own tokens, such as Keycloak's standard token exchange. Cases that need a validly
    signed but otherwise broken subject token are then skipped.
    """

    kind: Literal["local_issuer", "client_credentials", "password"] = "local_issuer"
    token_endpoint: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    username: str | None = None
    password: str | None = None
    scope: str | None = None
    #: JWK Set of the subject tokens' issuer (for forging look-alikes); defaults to the target's.
    jwks_uri: str | None = None
    subject_token_type: str = ACCESS_TOKEN_TYPE

    @model_validator(mode="after")
    def _complete(self) -> SubjectSource:
        if self.kind != "local_issuer" and not self.client_id:
            raise ValueError(f"subject_source.kind={self.kind} needs client_id")
        if self.kind == "password" and not (self.username and self.password):
            raise ValueError("subject_source.kind=password needs username and password")
        return self


class Client(_Section):
    """How the kit authenticates to the token endpoint (RFC 6749 §2.3.1, RFC 7523 §2.2)."""

    auth: Literal["none", "client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth",
                  "self_signed_tls_client_auth"] = "none"
    id: str | None = None
    secret: str | None = None
    #: The service refuses requests without client authentication.
    required: bool = True
    #: ``private_key_jwt``: private JWK Set of the client's key, created by the kit if missing.
    private_key_file: str | None = None
    #: ``private_key_jwt``: where the kit writes the public JWK Set for the client's registration.
    jwks_file: str | None = None
    #: ``private_key_jwt``: algorithm of the client's key and assertions.
    assertion_alg: str = "RS256"
    #: ``private_key_jwt``: ``aud`` of the client assertions; the token endpoint if omitted.
    assertion_audience: str | None = None
    #: mTLS (RFC 8705 §2): the kit's client certificate and key, created (self-signed,
    #: ``CN=<id>``) if missing; the target registers its thumbprint or subject DN.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: mTLS: a certificate with the same subject and another key, which the target must not
    #: accept for the client; created if missing (default: next to tls_cert_file).
    tls_impostor_cert_file: str | None = None
    tls_impostor_key_file: str | None = None
    #: Send a DPoP proof (RFC 9449) with every token request; the target declares DPoP support.
    dpop: bool = False
    #: The target requires DPoP for the kit's client: a token request without a proof must be
    #: refused (RFC 9449 §5.2, ``dpop_bound_access_tokens``). Implies ``dpop``.
    dpop_required: bool = False
    #: Algorithm of the kit's DPoP key (a fresh key per run).
    dpop_alg: str = "ES256"

    @model_validator(mode="after")
    def _complete(self) -> Client:
        if self.dpop_required and not self.dpop:
            raise ValueError("client.dpop_required needs client.dpop = true")
        if self.dpop:
            from conformance.jose import ASYMMETRIC_ALGORITHMS

            if self.dpop_alg not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"client.dpop_alg must be one of {ASYMMETRIC_ALGORITHMS}")
        if self.auth in ("tls_client_auth", "self_signed_tls_client_auth"):
            if not (self.id and self.tls_cert_file and self.tls_key_file):
                raise ValueError(f"client.auth={self.auth} needs id, tls_cert_file and tls_key_file")
        elif self.auth == "private_key_jwt":
            if not (self.id and self.private_key_file):
                raise ValueError("client.auth=private_key_jwt needs id and private_key_file")
            from conformance.jose import ASYMMETRIC_ALGORITHMS

            if self.assertion_alg not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"client.assertion_alg must be one of {ASYMMETRIC_ALGORITHMS}")
        elif self.auth != "none" and not (self.id and self.secret):
            raise ValueError(f"client.auth={self.auth} needs id and secret")
        return self

    def impostor_files(self) -> tuple[str, str]:
        """The impostor certificate's files (mTLS methods only)."""
        from conformance.client_tls import impostor_paths

        assert self.tls_cert_file is not None
        default_cert, default_key = impostor_paths(self.tls_cert_file)
        return self.tls_impostor_cert_file or default_cert, self.tls_impostor_key_file or default_key


class Allowed(_Section):
    """Targets and scopes the service grants to the kit's subject."""

    audiences: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    #: Scopes grantable on the first allowed target (the primary target of every case).
    scopes: tuple[str, ...] = ()


class Forbidden(_Section):
    """Targets, scopes and subjects the service must refuse."""

    audiences: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    #: Scopes not grantable on the primary target.
    scopes: tuple[str, ...] = ()
    #: Subject (``sub``) values the service grants nothing to.
    subjects: tuple[str, ...] = ()


class Choices(_Section):
    """The choices the RFCs leave to the service."""

    #: A request for scopes beyond the grant: refused with ``invalid_scope``, or narrowed
    #: (issued with fewer scopes and a ``scope`` response parameter, RFC 8693 §2.2.1).
    scope_escalation: Literal["refuse", "narrow"] = "refuse"
    #: A request naming no audience/resource: refused (``requires_target``), or issued for
    #: ``default_audience``; with neither, the kit only checks that a token is issued.
    requires_target: bool = True
    default_audience: str | None = None
    #: Upper bound of issued token lifetimes, seconds.
    max_lifetime: int = Field(default=3600, gt=0)
    #: Issued tokens never outlive the subject token.
    caps_to_subject_lifetime: bool = False
    #: A subject token (by ``jti``) is accepted once.
    replay_protection: bool = False
    supports_actor_token: bool = False
    supports_resource: bool = True
    supports_spiffe: bool = False
    #: The RFC 7523 §2.1 JWT-bearer grant (MCP SEP-1933): the kit's issuer's JWTs, with the
    #: token endpoint as ``aud`` and a ``jti``, are accepted as ``assertion`` for the allowed
    #: targets, and refused with ``invalid_grant`` when invalid (RFC 7521 §4.1.1).
    supports_jwt_bearer: bool = False
    #: ``requested_token_type`` values the service issues (RFC 8693 §3).
    requested_token_types: tuple[str, ...] = (ACCESS_TOKEN_TYPE,)
    #: ``rfc9068``: JWT access tokens of RFC 9068; ``jwt``: some other JWT; ``opaque``: not a JWT.
    issued_token_format: Literal["rfc9068", "jwt", "opaque"] = "rfc9068"
    #: Expected ``sub`` of issued tokens, when the service maps subjects predictably.
    issued_subject: str | None = None


class Actor(_Section):
    """Actor tokens (RFC 8693 §2.1 ``actor_token``), minted by the kit's issuer."""

    subject: str = "agent-1"
    forbidden_subject: str = "intruder-agent"
    token_type: str = JWT_TYPE


class Spiffe(_Section):
    """The kit's SPIFFE bundle endpoint and the JWT-SVIDs the service should accept."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    trust_domain: str = "conformance.test"
    spiffe_id: str = "spiffe://conformance.test/workload"
    audience: str = "conformance"
    subject_token_type: str = JWT_TYPE
    rotation_wait: float = Field(default=15.0, ge=0)
    #: Serve the bundle endpoint over https with this PEM certificate chain (leaf first) and
    #: key. Targets that follow SPIFFE Federation §5.2 fetch bundles over https only; configure
    #: them to trust the chain's CA. Without these the endpoint is plain http on loopback.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> Spiffe:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("spiffe.tls_cert_file and spiffe.tls_key_file go together")
        return self


class KeyCache(_Section):
    """What the service declares about caching the issuer's keys (``[key_cache]``).

    Each bound is checked only when declared; leave one out and its case is skipped. The
    ``policy.keys.*`` cases hold the service to these numbers, so declare what it really does.
    """

    #: At most one JWKS fetch per this many seconds, however many unknown ``kid`` values arrive.
    refetch_interval: float | None = Field(default=None, gt=0)
    #: A key removed from the issuer's JWKS is refused at most this many seconds later.
    cache_lifetime: float | None = Field(default=None, gt=0)
    #: With the issuer hanging or failing, the service still answers within this many seconds.
    fail_fast: float | None = Field(default=None, gt=0)


class Profile(_Section):
    """A whole target profile. Invariant: it names at least one target the kit can request."""

    name: str = "target"
    target: Target
    issuer: Issuer = Issuer()
    subject_source: SubjectSource = SubjectSource()
    client: Client = Client()
    allowed: Allowed = Allowed()
    forbidden: Forbidden = Forbidden()
    choices: Choices = Choices()
    actor: Actor = Actor()
    spiffe: Spiffe = Spiffe()
    key_cache: KeyCache = KeyCache()

    @model_validator(mode="after")
    def _has_target(self) -> Profile:
        if not (self.allowed.audiences or self.allowed.resources or self.choices.default_audience
                or not self.choices.requires_target):
            raise ValueError("allowed.audiences or allowed.resources must name at least one target")
        return self

    @property
    def mints_subjects(self) -> bool:
        """True when the kit's own issuer is trusted for subject tokens."""
        return self.subject_source.kind == "local_issuer"

    def primary_target(self) -> list[tuple[str, str]]:
        """Form parameters naming the target every positive case asks for."""
        if self.allowed.audiences:
            return [("audience", self.allowed.audiences[0])]
        if self.allowed.resources:
            return [("resource", self.allowed.resources[0])]
        return []

    def primary_target_value(self) -> str | None:
        params = self.primary_target()
        return params[0][1] if params else self.choices.default_audience


def _expand(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ProfileError(f"environment variable {name} is not set and has no default")

        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    return value


def parse_profile(data: Mapping[str, Any], *, env: Mapping[str, str] | None = None) -> Profile:
    """Validate a profile mapping (environment references expanded first)."""
    from pydantic import ValidationError

    try:
        return Profile.model_validate(_expand(dict(data), os.environ if env is None else env))
    except ValidationError as exc:
        raise ProfileError(f"invalid profile: {exc}") from exc


def load_profile(path: str | Path, *, env: Mapping[str, str] | None = None) -> Profile:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) profile."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ProfileError(f"profile {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ProfileError(f"cannot parse profile {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"profile {path} is not a mapping")
    return parse_profile(data, env=env)
