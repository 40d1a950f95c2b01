"""Pydantic models of the trust configuration file (the schema in docs/configuration.md).

Standards behind the checks:

* RFC 8693 §2.1 ``audience`` / RFC 8707 §2 ``resource``: a resource "MUST be an absolute URI,
  as specified by Section 4.3 of [RFC3986]" and "MUST NOT include a fragment component".
* RFC 6749 §3.3 scope tokens: ``scope-token = 1*( %x21 / %x23-5B / %x5D-7E )``.
* RFC 8725 §3.1 (JWT BCP): algorithms are an explicit allowlist; ``none`` and the HMAC family
  (a shared secret cannot be a public trust anchor) are refused.
* OpenID Connect Discovery 1.0 §3: an issuer is an https URL without query or fragment.

Every model is frozen, forbids unknown keys and accepts snake_case or camelCase keys. Numbers
and booleans are strict (``"900"`` is not a number, ``"yes"`` is not a boolean). Checks that
relate several parts of the file (unique names, references between grants and issuers,
lifetimes against ``tokens.max_lifetime``) live in :func:`cross_reference_problems`, which the
loader also runs over partially valid files so that every problem is reported at once.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from cryptography import x509
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from sts.config.delegation import MAX_DEPTH_LIMIT, ChainsConfig, own_issuer_problems
from sts.config.spiffe import TrustDomainConfig
from sts.subject.fetch import is_loopback_host as fetch_loopback
from sts.trust.authz_details import DETAIL_VARIABLES, check_schema
from sts.config.upstream import UpstreamConfig, profile_and_upstream_problems, upstream_dev_mode_requirements
from sts.trust.cel import (
    CONDITION_VARIABLES,
    MAPPING_VARIABLES,
    ExpressionCompileError,
    compile_expression,
)

ALLOWED_SUBJECT_ALGORITHMS: Final = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
DEFAULT_SUBJECT_ALGORITHMS: Final = ("RS256", "ES256", "PS256", "EdDSA")
TOKEN_ALGORITHMS: Final = ("ES256", "RS256", "EdDSA")
PRESET_NAMES: Final = ("github-actions", "gitlab", "kubernetes")

# Claims the broker itself sets in issued tokens; the workload claim must not shadow them.
_RESERVED_CLAIMS: Final = frozenset(
    {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope", "client_id", "act", "may_act",
     "azp", "cnf", "auth_time", "nonce", "authorization_details"}
)  # fmt: skip

_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# JWK members that hold private or symmetric key material (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
_PRIVATE_JWK_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_PUBLIC_KTY: Final = ("RSA", "EC", "OKP")

Seconds = Annotated[StrictInt, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        # Locations and messages must not echo input values (they may be secrets).
        hide_input_in_errors=True,
    )


# --- Small value checks ------------------------------------------------------------------------


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1): the fetcher's rule
    (:func:`sts.subject.fetch.is_loopback_host`), so that what the configuration admits is what
    the fetcher allows."""
    return bool(host) and fetch_loopback(host)  # type: ignore[arg-type]


def _has_bad_chars(value: str) -> bool:
    return any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def _http_url(value: str, *, what: str, allow_insecure: bool) -> str:
    """Absolute https URL (http only on loopback and only when allowed); no query/fragment."""
    if _has_bad_chars(value):
        raise ValueError(f"{what} must not contain whitespace or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"{what} must be an absolute https URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} must not contain user information")
    if parts.query or parts.fragment or "#" in value or "?" in value:
        raise ValueError(f"{what} must not have a query or fragment")
    if parts.scheme == "http":
        if not is_loopback_host(parts.hostname):
            raise ValueError(f"{what} must use https (plain http is allowed only on loopback)")
        if not allow_insecure:
            raise ValueError(
                f"{what} uses plain http: set allow_insecure_http: true (needs dev mode)"
            )
    return value


def is_absolute_uri(value: str) -> bool:
    """RFC 3986 §4.3 absolute-URI (a scheme, no fragment), without whitespace."""
    if not value or _has_bad_chars(value) or "#" in value:
        return False
    scheme, sep, rest = value.partition(":")
    return bool(sep) and bool(rest) and _SCHEME.fullmatch(scheme) is not None


def validate_jwks(value: object) -> list[str]:
    """Problems of a static JWKS (RFC 7517 §5): public asymmetric keys only.

    Messages name members and indexes, never key material.
    """
    if not isinstance(value, Mapping):
        return ["must be a JSON object with a 'keys' array"]
    keys = value.get("keys")
    if not isinstance(keys, list):
        return ["must have a 'keys' array"]
    if not keys:
        return ["'keys' must not be empty"]
    problems: list[str] = []
    for i, key in enumerate(keys):
        if not isinstance(key, Mapping):
            problems.append(f"keys[{i}] must be a JSON object")
            continue
        kty = key.get("kty")
        if kty not in _PUBLIC_KTY:
            problems.append(f"keys[{i}].kty must be one of {', '.join(_PUBLIC_KTY)}")
        private = [m for m in _PRIVATE_JWK_MEMBERS if m in key]
        if private:
            problems.append(
                f"keys[{i}] holds private or symmetric key material ({', '.join(private)});"
                " configure public keys only"
            )
        if "use" in key and key["use"] != "sig":
            problems.append(f"keys[{i}].use must be 'sig'")
        if "alg" in key and key["alg"] not in ALLOWED_SUBJECT_ALGORITHMS:
            problems.append(f"keys[{i}].alg is not an allowed signature algorithm")
        if "kid" in key and not isinstance(key["kid"], str):
            problems.append(f"keys[{i}].kid must be a string")
    return problems


def _jwks(value: dict[str, Any]) -> dict[str, Any]:
    problems = validate_jwks(value)
    if problems:
        raise ValueError("JWKS " + "; ".join(problems))
    return value


def _expression(variables: frozenset[str], expect: type | None) -> AfterValidator:
    def check(value: str) -> str:
        try:
            compile_expression(value, location="", expect=expect, variables=variables)
        except ExpressionCompileError as exc:
            raise ValueError(f"CEL: {exc.message}") from None
        return value

    return AfterValidator(check)


JwksDocument = Annotated[dict[str, Any], AfterValidator(_jwks)]
MappingBoolExpression = Annotated[str, _expression(MAPPING_VARIABLES, bool)]
MappingStrExpression = Annotated[str, _expression(MAPPING_VARIABLES, str)]
MappingValueExpression = Annotated[str, _expression(MAPPING_VARIABLES, None)]
ConditionExpression = Annotated[str, _expression(CONDITION_VARIABLES, bool)]


def _scope_token(value: str) -> str:
    if _SCOPE_TOKEN.fullmatch(value) is None:
        raise ValueError(
            'scope must be a non-empty RFC 6749 scope token (printable ASCII, no space, no " or \\)'
        )
    return value


ScopeToken = Annotated[str, AfterValidator(_scope_token)]


def _unique(values: Sequence[Any], what: str) -> None:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate {what} {v!r}")
        seen.add(v)


# --- tokens / clients ----------------------------------------------------------------------------


class TokensConfig(_Model):
    """Defaults for issued tokens. Invariant: ``default_lifetime <= max_lifetime``."""

    default_lifetime: Seconds = 900
    max_lifetime: Seconds = 3600
    algorithm: Literal["ES256", "RS256", "EdDSA"] = "ES256"
    workload_claim: str = "workload"

    @field_validator("workload_claim")
    @classmethod
    def _claim_name(cls, v: str) -> str:
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}", v) is None:
            raise ValueError("workload_claim must be a claim name of 1-64 characters")
        if v in _RESERVED_CLAIMS:
            raise ValueError("workload_claim must not be a claim the broker sets itself")
        return v

    @model_validator(mode="after")
    def _lifetimes(self) -> TokensConfig:
        if self.default_lifetime > self.max_lifetime:
            raise ValueError("default_lifetime must not exceed max_lifetime")
        return self


class RegisteredClient(_Model):
    """A registered OAuth client (RFC 6749 §2). Invariant: the credential matches the method:
    ``secret_sha256`` for ``client_secret_*``, ``jwks`` for ``private_key_jwt``, a CA file and
    exactly one subject DN or SAN for ``tls_client_auth``, certificate thumbprints for
    ``self_signed_tls_client_auth`` (RFC 8705 §2.1.2, §2.2)."""

    client_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._~-]{1,128}$")]
    auth_method: Literal[
        "client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth", "self_signed_tls_client_auth",
    ]
    secret_sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    jwks: JwksDocument | None = None
    # RFC 8705 §2.1.2 client metadata names; exactly one for tls_client_auth.
    tls_client_auth_subject_dn: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    tls_client_auth_san_dns: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    tls_client_auth_san_uri: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    tls_client_auth_san_ip: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    tls_client_auth_san_email: Annotated[str, Field(min_length=1, max_length=320)] | None = None
    # tls_client_auth: PEM file of the CAs that may issue this client's certificate (relative
    # paths are resolved against the configuration file's directory).
    tls_client_auth_ca_file: Annotated[str, Field(min_length=1)] | None = None
    # self_signed_tls_client_auth: SHA-256 (hex) of each registered DER certificate (x5t#S256).
    certificates_sha256: tuple[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")], ...] = ()
    token_exchange: StrictBool = True
    # May use the RFC 7523 JWT-bearer grant, e.g. with an ID-JAG (docs/jwt-bearer.md); off by default.
    jwt_bearer: StrictBool = False
    # May call /introspect (RFC 7662 §2.1 wants introspection restricted to authorized callers).
    introspection: StrictBool = False

    @field_validator("secret_sha256")
    @classmethod
    def _lower(cls, v: str | None) -> str | None:
        return None if v is None else v.lower()

    def tls_client_auth_san(self) -> tuple[str, str] | None:
        """The registered subject alternative name as (kind, value), if any."""
        for kind in ("dns", "uri", "ip", "email"):
            value = getattr(self, f"tls_client_auth_san_{kind}")
            if value is not None:
                return kind, value
        return None

    @model_validator(mode="after")
    def _credential(self) -> RegisteredClient:
        method = self.auth_method
        tls_names = [n for n in ("subject_dn", "san_dns", "san_uri", "san_ip", "san_email")
                     if getattr(self, f"tls_client_auth_{n}") is not None]
        given = {
            "secret_sha256": self.secret_sha256 is not None,
            "jwks": self.jwks is not None,
            "tls_client_auth_*": bool(tls_names) or self.tls_client_auth_ca_file is not None,
            "certificates_sha256": bool(self.certificates_sha256),
        }
        wanted = {
            "client_secret_basic": "secret_sha256", "client_secret_post": "secret_sha256", "private_key_jwt": "jwks",
            "tls_client_auth": "tls_client_auth_*", "self_signed_tls_client_auth": "certificates_sha256",
        }[method]
        if not given[wanted]:
            raise ValueError(f"{method} needs {wanted}")
        extra = sorted(name for name, present in given.items() if present and name != wanted)
        if extra:
            raise ValueError(f"{method} takes {wanted}, not {', '.join(extra)}")
        if method == "tls_client_auth":
            if len(tls_names) != 1:
                raise ValueError("tls_client_auth takes exactly one of tls_client_auth_subject_dn, "
                                 "tls_client_auth_san_dns, _san_uri, _san_ip, _san_email (RFC 8705 §2.1.2)")
            if self.tls_client_auth_ca_file is None:
                raise ValueError("tls_client_auth needs tls_client_auth_ca_file")
            if self.tls_client_auth_subject_dn is not None:
                try:
                    x509.Name.from_rfc4514_string(self.tls_client_auth_subject_dn)
                except ValueError:
                    raise ValueError("tls_client_auth_subject_dn is not an RFC 4514 distinguished name") from None
            if self.tls_client_auth_san_ip is not None:
                try:
                    ipaddress.ip_address(self.tls_client_auth_san_ip)
                except ValueError:
                    raise ValueError("tls_client_auth_san_ip is not an IP address") from None
        return self


class ClientsConfig(_Model):
    """Client registrations (unique ids are checked by :func:`cross_reference_problems`)."""

    allow_public: StrictBool = True
    registered: tuple[RegisteredClient, ...] = ()


# --- issuers -------------------------------------------------------------------------------------


class KeysConfig(_Model):
    """Where an issuer's verification keys come from. Invariant: exactly one source."""

    discovery: StrictBool | None = None
    jwks_uri: str | None = None
    jwks: JwksDocument | None = None
    jwks_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> KeysConfig:
        sources = [
            self.discovery is True,
            self.jwks_uri is not None,
            self.jwks is not None,
            self.jwks_file is not None,
        ]
        if sum(sources) != 1:
            raise ValueError(
                "keys must set exactly one of discovery: true, jwks_uri, jwks, jwks_file"
            )
        if self.jwks_file is not None and not self.jwks_file.strip():
            raise ValueError("jwks_file must not be empty")
        return self

    @property
    def source(self) -> Literal["discovery", "jwks_uri", "jwks", "jwks_file"]:
        if self.jwks_uri is not None:
            return "jwks_uri"
        if self.jwks is not None:
            return "jwks"
        if self.jwks_file is not None:
            return "jwks_file"
        return "discovery"


class ClaimValidationRule(_Model):
    """A CEL predicate over ``claims`` (Kubernetes ``claimValidationRules``)."""

    expression: MappingBoolExpression
    message: str | None = None
    mode: Literal["enforce", "audit"] = "enforce"


_ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class ClaimMappings(_Model):
    """CEL mappings from ``claims`` to the identity and attributes (Kubernetes
    ``claimMappings``)."""

    identity: MappingStrExpression | None = None
    attributes: dict[str, MappingValueExpression] = Field(default_factory=dict)

    @field_validator("attributes")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if _ATTRIBUTE_NAME.fullmatch(name) is None:
                raise ValueError("attribute names must match [a-z][a-z0-9_]{0,63}")
        return v


class IssuerConfig(_Model):
    """A trusted issuer of subject tokens.

    Invariant: ``issuer`` is https (or http on loopback with ``allow_insecure_http``), every
    algorithm is asymmetric and allowlisted, ``audiences`` is non-empty.
    """

    name: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")]
    issuer: str
    preset: Literal["github-actions", "gitlab", "kubernetes"] | None = None
    audiences: tuple[str, ...] = Field(min_length=1)
    keys: KeysConfig = Field(default_factory=lambda: KeysConfig(discovery=True))
    algorithms: tuple[str, ...] = Field(default=DEFAULT_SUBJECT_ALGORITHMS, min_length=1)
    clock_skew: Annotated[StrictInt, Field(ge=0, le=300)] = 60
    max_token_lifetime: Seconds = 86400
    require_jti: StrictBool = False
    expected_typ: str | None = None
    # Trusted to issue ID-JAGs (typ oauth-id-jag+jwt) for this broker (docs/jwt-bearer.md).
    id_jag: StrictBool = False
    allow_insecure_http: StrictBool = False
    # PEM CA certificates that alone verify this issuer's discovery and JWKS servers (the file
    # itself is read and checked by the loader, sts.config.cafile).
    ca_file: str | None = None
    claim_validation_rules: tuple[ClaimValidationRule, ...] = ()
    claim_mappings: ClaimMappings = Field(default_factory=ClaimMappings)

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            if not a or _has_bad_chars(a):
                raise ValueError("audiences must be non-empty strings without whitespace")
        _unique(v, "audience")
        return v

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for alg in v:
            if alg.lower() == "none" or alg.upper().startswith("HS"):
                raise ValueError(
                    f"algorithm {alg!r} is refused: 'none' and HMAC algorithms cannot verify"
                    " tokens from another party; use asymmetric algorithms"
                )
            if alg not in ALLOWED_SUBJECT_ALGORITHMS:
                raise ValueError(
                    f"algorithm {alg!r} is not supported; choose from "
                    + ", ".join(ALLOWED_SUBJECT_ALGORITHMS)
                )
        _unique(v, "algorithm")
        return v

    @field_validator("expected_typ")
    @classmethod
    def _typ(cls, v: str | None) -> str | None:
        if v is not None and (not v or _has_bad_chars(v)):
            raise ValueError("expected_typ must be a non-empty media type")
        return v

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("ca_file must not be empty")
        return v

    @model_validator(mode="after")
    def _urls(self) -> IssuerConfig:
        if self.ca_file is not None and self.keys.source in ("jwks", "jwks_file"):
            raise ValueError(
                "ca_file applies to keys fetched over HTTPS (discovery or jwks_uri);"
                " static keys are not fetched"
            )
        _http_url(self.issuer, what="issuer", allow_insecure=self.allow_insecure_http)
        if self.keys.jwks_uri is not None:
            _http_url(
                self.keys.jwks_uri, what="keys.jwks_uri", allow_insecure=self.allow_insecure_http
            )
        return self


# --- grants --------------------------------------------------------------------------------------


class MatchConfig(_Model):
    """Which identities a grant (or a delegation) applies to. Invariant: exactly one of a
    literal, an anchored regular expression (full match) or a CEL condition."""

    identity: str | None = None
    identity_pattern: str | None = None
    condition: ConditionExpression | None = None

    @field_validator("identity_pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not (v.startswith("^") and v.endswith("$")) or len(v) < 2:
            raise ValueError("identity_pattern must be anchored: start with ^ and end with $")
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(
                f"identity_pattern is not a valid regular expression: {exc.msg}"
            ) from None
        return v

    @field_validator("identity")
    @classmethod
    def _literal(cls, v: str | None) -> str | None:
        if v is not None and not v:
            raise ValueError("identity must not be empty")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> MatchConfig:
        n = sum(x is not None for x in (self.identity, self.identity_pattern, self.condition))
        if n != 1:
            raise ValueError("match must set exactly one of identity, identity_pattern, condition")
        return self

    @property
    def kind(self) -> Literal["identity", "identity_pattern", "condition"]:
        if self.identity is not None:
            return "identity"
        if self.identity_pattern is not None:
            return "identity_pattern"
        return "condition"


# --- authorization details (RFC 9396) and transaction tokens (docs/authorization-details.md,
# docs/transaction-tokens.md) ------------------------------------------------------------------


def _json_schema(value: dict[str, Any]) -> dict[str, Any]:
    problem = check_schema(value)
    if problem is not None:
        raise ValueError(problem)
    return value


JsonSchema = Annotated[dict[str, Any], AfterValidator(_json_schema)]
DetailExpression = Annotated[str, _expression(DETAIL_VARIABLES, bool)]


def _anchored(patterns: tuple[str, ...]) -> tuple[str, ...]:
    for p in patterns:
        if not (p.startswith("^") and p.endswith("$")) or len(p) < 2:
            raise ValueError("patterns must be anchored: start with ^ and end with $")
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(f"a pattern is not a valid regular expression: {exc.msg}") from None
    return patterns


def _json_values(values: tuple[Any, ...]) -> tuple[Any, ...]:
    for v in values:
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError("values must be JSON values (strings, numbers, booleans, null, lists, objects)") from None
    return values


class DetailValuesConfig(_Model):
    """Literal values (any JSON value, compared exactly) and anchored patterns (strings)."""

    values: Annotated[tuple[Any, ...], AfterValidator(_json_values)] = ()
    patterns: Annotated[tuple[str, ...], AfterValidator(_anchored)] = ()


class DetailFieldConfig(DetailValuesConfig):
    """The values one field of an authorization detail may hold for this target (each element,
    when the field is an array). Invariant: at least one of values, patterns, condition."""

    condition: DetailExpression | None = None

    @model_validator(mode="after")
    def _something(self) -> DetailFieldConfig:
        if not self.values and not self.patterns and self.condition is None:
            raise ValueError("a field must allow something: set values, patterns or condition")
        return self


class AuthorizationDetailTypeConfig(_Model):
    """One RFC 9396 authorization details type a target accepts: its JSON Schema (the shape)
    and the values each field may hold (a field without an entry is refused)."""

    type: Annotated[str, Field(pattern=r"^[\x21-\x7E]{1,256}$")]
    schema_: JsonSchema = Field(alias="schema")
    fields: dict[str, DetailFieldConfig] = Field(default_factory=dict)
    # Drop array elements that are not allowed instead of refusing the request.
    narrow: StrictBool = False

    @field_validator("fields")
    @classmethod
    def _no_type(cls, v: dict[str, DetailFieldConfig]) -> dict[str, DetailFieldConfig]:
        if "type" in v:
            raise ValueError("'type' is not a field rule: it is the type itself")
        return v


class GrantTransactionTokensConfig(_Model):
    """A grant that may issue transaction tokens: the scopes (purposes) it allows, which
    authenticated clients may ask (all registered ones when omitted) and the JSON Schema of
    ``request_details`` (omitted: request_details are refused)."""

    scopes: tuple[ScopeToken, ...] = Field(min_length=1)
    clients: tuple[str, ...] | None = None
    request_details_schema: JsonSchema | None = None


class TransactionTokensConfig(_Model):
    """Transaction tokens (draft-ietf-oauth-transaction-tokens-10): the trust domain they are
    valid in (their ``aud``), their lifetime, who may replace one, and the JSON Schema of
    ``request_context`` (omitted: ``req_ip``, ``authn`` and ``transport`` strings)."""

    trust_domain: Annotated[str, Field(pattern=r"^[\x21-\x7E]{1,256}$")]
    lifetime: Annotated[StrictInt, Field(gt=0, le=3600)] = 300
    replacement_clients: tuple[str, ...] = ()
    request_context_schema: JsonSchema | None = None


def transaction_token_problems(
    *,
    section: TransactionTokensConfig | None,
    section_present: bool,
    grants: Sequence[tuple[int, GrantConfig]],
    client_ids: Collection[str],
) -> list[tuple[Location, str]]:
    """Grants issuing transaction tokens need the top-level section; the clients named must be
    registered (a client that cannot authenticate could never be the requesting workload).
    ``section_present``: the file has the section, valid or not (an invalid one is reported on
    its own, not as missing)."""
    problems: list[tuple[Location, str]] = []
    if section is not None:
        for j, c in enumerate(section.replacement_clients):
            if c not in client_ids:
                problems.append((("transaction_tokens", "replacement_clients", j), f"unknown client {c!r}"))
    for i, g in grants:
        txn = getattr(g, "transaction_tokens", None)  # partially valid grants come from the loader
        if txn is None:
            continue
        if not section_present:
            problems.append((("grants", i, "transaction_tokens"), "needs the top-level transaction_tokens section"))
        for j, c in enumerate(txn.clients or ()):
            if c not in client_ids:
                problems.append((("grants", i, "transaction_tokens", "clients", j), f"unknown client {c!r}"))
    return problems


#: How issued tokens are bound to their holder (docs/configuration.md#sender-constraint):
#: ``none`` binds a token only when the caller sends a DPoP proof; ``dpop`` requires a DPoP
#: proof (RFC 9449); ``mtls`` requires a TLS client certificate (RFC 8705 §3); ``required``
#: requires one of the two. A request that cannot be bound as required is refused.
SenderConstraint = Literal["none", "dpop", "mtls", "required"]

#: The grant types a grant can answer: RFC 8693 token exchange and the RFC 7523 JWT-bearer
#: grant (sts.protocol.GRANT_TYPE_NAMES).
GrantTypeName = Literal["token_exchange", "jwt_bearer"]


class ApprovalDetailRule(_Model):
    """An RFC 9396 ``authorization_details`` value that needs approval: a requested detail of
    ``type`` whose member ``field`` holds (or, for an array, contains) one of ``values``."""

    type: Annotated[str, Field(min_length=1, max_length=128)]
    field: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    values: tuple[Annotated[str, Field(min_length=1, max_length=256)], ...] = Field(min_length=1)


class ApprovalConfig(_Model):
    """Just-in-time approval for a target (docs/approvals.md): a token carrying any of
    ``scopes`` (or an authorization detail matching ``authorization_details``) is issued only
    within an approver's window for exactly that request. Invariant: at least one marker."""

    scopes: tuple[ScopeToken, ...] = ()
    authorization_details: tuple[ApprovalDetailRule, ...] = ()
    # The longest window an approver may grant, and how long a request waits for a decision.
    max_window: Annotated[StrictInt, Field(gt=0, le=30 * 86400)] = 86400
    request_ttl: Annotated[StrictInt, Field(gt=0, le=30 * 86400)] = 86400

    @model_validator(mode="after")
    def _something(self) -> ApprovalConfig:
        if not self.scopes and not self.authorization_details:
            raise ValueError("approval must mark at least one scope or authorization detail")
        _unique(self.scopes, "approval scope")
        return self


class TargetConfig(_Model):
    """An audience or resource a grant may issue tokens for, with its scopes.

    Invariant: exactly one of ``audience`` / ``resource`` / ``resource_prefix``; resources are
    absolute URIs without fragment; a prefix ends with "/"; ``default_scopes ⊆ scopes``.
    """

    audience: str | None = None
    resource: str | None = None
    resource_prefix: str | None = None
    scopes: tuple[ScopeToken, ...] = ()
    default_scopes: tuple[ScopeToken, ...] = ()
    # Scopes some clients always send that mean nothing here (Google's client libraries send
    # cloud-platform): dropped from the request as RFC 6749 §3.3 allows (docs/jwt-bearer.md).
    ignore_scopes: tuple[ScopeToken, ...] = ()
    algorithm: Literal["ES256", "RS256", "EdDSA"] | None = None
    # RFC 9449 / RFC 8705 sender constraint for tokens of this target; None: the grant's.
    sender_constraint: SenderConstraint | None = None
    # Token Status List `status` claim in tokens of this target; None: the grant's.
    status_list: StrictBool | None = None
    # Just-in-time approval of elevated scopes (docs/approvals.md); None: none needed.
    approval: ApprovalConfig | None = None
    # RFC 9396 types this target accepts in `authorization_details` (docs/authorization-details.md).
    authorization_details: tuple[AuthorizationDetailTypeConfig, ...] = ()
    # docs/providers: the issued JWT shaped for a model provider (sts.tokens.profiles), its
    # `aud` when not the target itself, and an upstream that answers with the provider's token.
    profile: Literal["openai", "anthropic", "openrouter", "gcp-sts", "entra", "generic"] | None = None
    profile_audience: str | None = None
    upstream: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TargetConfig:
        _unique([d.type for d in self.authorization_details], "authorization details type")
        n = sum(x is not None for x in (self.audience, self.resource, self.resource_prefix))
        if n != 1:
            raise ValueError("a target must set exactly one of audience, resource, resource_prefix")
        if self.audience is not None and (not self.audience or _has_bad_chars(self.audience)):
            raise ValueError("audience must be a non-empty string without whitespace")
        if self.resource is not None and not is_absolute_uri(self.resource):
            raise ValueError("resource must be an absolute URI without fragment (RFC 8707 §2)")
        if self.resource_prefix is not None:
            p = self.resource_prefix
            if not is_absolute_uri(p) or not urlsplit(p).netloc:
                raise ValueError(
                    "resource_prefix must be an absolute hierarchical URI without fragment"
                )
            if "?" in p or not p.endswith("/"):
                raise ValueError("resource_prefix must end with '/' and have no query")
        if self.profile_audience is not None and (not self.profile_audience or _has_bad_chars(self.profile_audience)):
            raise ValueError("profile_audience must be a non-empty string without whitespace")
        _unique(self.scopes, "scope")
        _unique(self.default_scopes, "default scope")
        extra = [s for s in self.default_scopes if s not in self.scopes]
        if extra:
            raise ValueError("default_scopes must be a subset of scopes")
        if self.approval is not None and any(s not in self.scopes for s in self.approval.scopes):
            raise ValueError("approval.scopes must be a subset of scopes")
        _unique(self.ignore_scopes, "ignored scope")
        if set(self.ignore_scopes) & set(self.scopes):
            raise ValueError("ignore_scopes must not name a scope the target grants")
        return self

    @property
    def kind(self) -> Literal["audience", "resource", "resource_prefix"]:
        if self.audience is not None:
            return "audience"
        if self.resource is not None:
            return "resource"
        return "resource_prefix"

    @property
    def value(self) -> str:
        v = self.audience if self.audience is not None else self.resource
        if v is None:
            v = self.resource_prefix
        assert v is not None  # guaranteed by _check
        return v


class DelegationConfig(_Model):
    """Who may act for a matched identity (RFC 8693 §4.1 ``act``, via ``actor_token``), and
    whether tokens this broker issued are accepted as subject tokens for a further hop
    (``chain``; the rules are in ``sts.trust.delegation``, docs/agents.md).

    Invariant: some actor or client may act."""

    actors: tuple[MatchConfig, ...] = ()
    # Registered clients that may present a chained token with their client authentication
    # alone (no actor token); they become the token's current actor.
    clients: tuple[str, ...] = ()
    chain: StrictBool = False
    max_depth: Annotated[StrictInt, Field(ge=1, le=MAX_DEPTH_LIMIT)] | None = None
    # RFC 8693 §4.4: the subject token must carry `may_act`, and it must name the actor.
    require_may_act: StrictBool = False

    @model_validator(mode="after")
    def _someone(self) -> DelegationConfig:
        if not self.actors and not self.clients:
            raise ValueError("delegation needs actors or clients")
        if self.clients and not self.chain:
            raise ValueError("delegation.clients present chained tokens: it needs chain: true")
        _unique(self.clients, "client")
        return self


class GrantConfig(_Model):
    """Permission for matching identities to obtain tokens for some targets.

    Invariant: at least one target, no duplicate target, ``default_target`` (if set) is one
    of the grant's exact (audience or resource) targets.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    mode: Literal["enforce", "audit"] = "enforce"
    issuers: tuple[str, ...] | None = None
    match: MatchConfig
    # docs/transaction-tokens.md: this grant may issue transaction tokens (deny by default).
    # Declared before `targets`, whose validator reads it (field order is validation order).
    transaction_tokens: GrantTransactionTokensConfig | None = None
    # May be empty only for a grant that issues transaction tokens alone.
    targets: tuple[TargetConfig, ...] = Field(default=(), validate_default=True)
    default_target: str | None = None
    lifetime: Seconds | None = None
    cap_to_subject_lifetime: StrictBool = True
    delegation: DelegationConfig | None = None
    # docs/configuration.md#sender-constraint: none | dpop | mtls | required
    sender_constraint: SenderConstraint = "none"
    # docs/configuration.md#status-list: a `status` claim for offline revocation checks
    status_list: StrictBool = False
    # The grant types this grant answers (docs/jwt-bearer.md); token exchange only by default.
    grant_types: tuple[GrantTypeName, ...] = Field(default=("token_exchange",), min_length=1)

    @field_validator("targets")
    @classmethod
    def _some_target(cls, v: tuple[TargetConfig, ...], info: ValidationInfo) -> tuple[TargetConfig, ...]:
        if not v and info.data.get("transaction_tokens") is None:
            raise ValueError("must have at least 1 item (or transaction_tokens)")
        return v

    @field_validator("issuers")
    @classmethod
    def _issuers(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            if not v:
                raise ValueError("issuers must not be empty; omit it to admit every issuer")
            _unique(v, "issuer")
        return v

    @model_validator(mode="after")
    def _targets(self) -> GrantConfig:
        _unique(self.grant_types, "grant type")
        _unique([(t.kind, t.value) for t in self.targets], "target")
        if self.default_target is not None:
            exact = {t.value for t in self.targets if t.kind != "resource_prefix"}
            if self.default_target not in exact:
                raise ValueError(
                    "default_target must equal one of the grant's audience or resource targets"
                )
        return self


# --- the whole file ------------------------------------------------------------------------------

Location = tuple[str | int, ...]


def cross_reference_problems(
    *,
    tokens: TokensConfig | None,
    issuers: Sequence[tuple[int, IssuerConfig]],
    grants: Sequence[tuple[int, GrantConfig]],
    clients: Sequence[tuple[int, RegisteredClient]] = (),
    trust_domains: Sequence[tuple[int, TrustDomainConfig]] = (),
) -> list[tuple[Location, str]]:
    """Problems between parts of the file, over the parts that are valid on their own.

    ``issuers`` and ``grants`` are ``(index in the file, model)`` pairs, so the loader can pass
    only the items that validated and still get the right locations.
    """
    problems: list[tuple[Location, str]] = []
    client_ids: dict[str, int] = {}
    for i, client in clients:
        if client.client_id in client_ids:
            problems.append(
                (
                    ("clients", "registered", i, "client_id"),
                    f"duplicate client_id {client.client_id!r}"
                    f" (also clients.registered[{client_ids[client.client_id]}])",
                )
            )
        else:
            client_ids[client.client_id] = i
    names: dict[str, int] = {}
    urls: dict[str, int] = {}
    for i, iss in issuers:
        if iss.name in names:
            problems.append(
                (
                    ("issuers", i, "name"),
                    f"duplicate issuer name {iss.name!r} (also issuers[{names[iss.name]}])",
                )
            )
        else:
            names[iss.name] = i
        if iss.issuer in urls:
            # The verifier is chosen by the token's `iss`; two entries would be ambiguous.
            problems.append(
                (
                    ("issuers", i, "issuer"),
                    f"duplicate issuer URL (also issuers[{urls[iss.issuer]}])",
                )
            )
        else:
            urls[iss.issuer] = i
    # SPIFFE trust domains share the namespace of issuer names: grants, audit records and the
    # `issuer` variable of conditions refer to both by name.
    for i, td in trust_domains:
        if td.name in names:
            problems.append(
                (
                    ("trust_domains", i, "name"),
                    f"duplicate name {td.name!r} (also an issuer or trust domain)",
                )
            )
        else:
            names[td.name] = i
    preset_counts: dict[str, int] = {}
    for _, iss in issuers:
        if iss.preset is not None:
            preset_counts[iss.preset] = preset_counts.get(iss.preset, 0) + 1
    shared_presets = {p for p, n in preset_counts.items() if n > 1}
    grant_names: dict[str, int] = {}
    for g_index, g in grants:
        if g.name in grant_names:
            problems.append(
                (
                    ("grants", g_index, "name"),
                    f"duplicate grant name {g.name!r} (also grants[{grant_names[g.name]}])",
                )
            )
        else:
            grant_names[g.name] = g_index
        for j, ref in enumerate(g.issuers or ()):
            if ref not in names:
                problems.append((("grants", g_index, "issuers", j), f"unknown issuer {ref!r}"))
        # Preset identities are only unique per issuer (two clusters both have
        # `k8s:ci/deployer`, github.com and GitHub Enterprise both have `github:1/2`), so when
        # two issuers share a preset, a grant matching identities must name the issuers it
        # trusts or it would match both. A CEL condition sees `issuer` and may decide itself.
        match = getattr(g, "match", None)  # partially valid grants come from the loader
        if g.issuers is None and shared_presets and match is not None and match.condition is None:
            problems.append(
                (
                    ("grants", g_index, "issuers"),
                    "required: several issuers use preset "
                    + ", ".join(sorted(shared_presets))
                    + " and their identities look alike",
                )
            )
        # Without a valid `tokens` section the cap is unknown: say nothing rather than guess.
        if tokens is not None and g.lifetime is not None and g.lifetime > tokens.max_lifetime:
            problems.append(
                (
                    ("grants", g_index, "lifetime"),
                    f"lifetime exceeds tokens.max_lifetime ({tokens.max_lifetime})",
                )
            )
    return problems


class BrokerConfig(_Model):
    """The whole trust configuration.

    Invariant: every part is valid and :func:`cross_reference_problems` finds nothing (unique
    client ids, issuer names, issuer URLs and grant names; known issuer references; lifetimes
    within ``tokens.max_lifetime``).
    """

    issuer: str
    tokens: TokensConfig = Field(default_factory=TokensConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    # Declared before `issuers`, whose validator needs it (field order is validation order).
    trust_domains: tuple[TrustDomainConfig, ...] = ()
    issuers: tuple[IssuerConfig, ...] = Field(default=(), validate_default=True)
    grants: tuple[GrantConfig, ...] = ()
    transaction_tokens: TransactionTokensConfig | None = None
    # docs/providers: model providers the broker exchanges its own assertions with.
    upstreams: tuple[UpstreamConfig, ...] = ()
    # docs/agents.md: delegation chains of our own tokens (sts.config.delegation)
    chains: ChainsConfig = Field(default_factory=ChainsConfig)

    @field_validator("issuers")
    @classmethod
    def _some_subject_source(
        cls, v: tuple[IssuerConfig, ...], info: ValidationInfo
    ) -> tuple[IssuerConfig, ...]:
        # Issuers may be empty only when SPIFFE trust domains provide the subjects; when the
        # trust_domains section itself is invalid it is reported on its own.
        if not v and "trust_domains" in info.data and not info.data["trust_domains"]:
            raise ValueError("must have at least 1 item")
        return v

    @field_validator("issuer")
    @classmethod
    def _own_issuer(cls, v: str) -> str:
        # The broker's own issuer may be plain http on loopback for development; whether dev
        # mode is on is a runtime setting, so it is reported by requires_dev_mode().
        return _http_url(v, what="issuer", allow_insecure=True)

    @model_validator(mode="after")
    def _cross_references(self) -> BrokerConfig:
        problems = cross_reference_problems(
            tokens=self.tokens,
            issuers=list(enumerate(self.issuers)),
            grants=list(enumerate(self.grants)),
            clients=list(enumerate(self.clients.registered)),
            trust_domains=list(enumerate(self.trust_domains)),
        )
        problems += transaction_token_problems(
            section=self.transaction_tokens,
            section_present=self.transaction_tokens is not None,
            grants=list(enumerate(self.grants)),
            client_ids={c.client_id for c in self.clients.registered},
        )
        problems += profile_and_upstream_problems(
            default_lifetime=self.tokens.default_lifetime, max_lifetime=self.tokens.max_lifetime,
            algorithm=self.tokens.algorithm, grants=self.grants, upstreams=self.upstreams)
        problems += own_issuer_problems(self.issuer, [(i, iss.issuer) for i, iss in enumerate(self.issuers)],
                                        any(g.delegation is not None and g.delegation.chain for g in self.grants))
        if problems:
            text = "; ".join(f"{format_location(loc)}: {msg}" for loc, msg in problems)
            raise PydanticCustomError("cross_reference", "{text}", {"text": text})
        return self

    def requires_dev_mode(self) -> list[str]:
        """Why this configuration may only run in dev mode (empty: fine for production)."""
        found = dev_mode_requirements(
            issuer=self.issuer,
            issuers=[(i, iss.name, iss.allow_insecure_http) for i, iss in enumerate(self.issuers)],
        )
        return [f"{label}: {message}" for _, label, message in found] + upstream_dev_mode_requirements(self.upstreams)

    def issuer_by_name(self, name: str) -> IssuerConfig:
        for iss in self.issuers:
            if iss.name == name:
                return iss
        raise KeyError(name)


def dev_mode_requirements(
    *, issuer: object, issuers: Iterable[tuple[int, object, object]]
) -> list[tuple[Location, str, str]]:
    """What only dev mode permits, as ``(location, label, message)``: the broker's own issuer
    on plain http, and issuers with ``allow_insecure_http``. ``issuers`` holds ``(index,
    name, allow_insecure_http)`` so that the checker can pass raw values of a file that does
    not validate and still report these (``sts config check --for-production``)."""
    found: list[tuple[Location, str, str]] = []
    if isinstance(issuer, str) and urlsplit(issuer).scheme == "http":
        found.append((("issuer",), "issuer", "the broker's issuer URL uses plain http"))
    for i, name, insecure in issuers:
        if insecure is True:
            found.append(
                (
                    ("issuers", i, "allow_insecure_http"),
                    f"issuers[{i}] ({name})",
                    "allow_insecure_http permits plain http",
                )
            )
    return found


def format_location(loc: Location) -> str:
    """``('grants', 2, 'match')`` -> ``grants[2].match``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out
