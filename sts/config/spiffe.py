"""Pydantic models of the ``trust_domains:`` section (SPIFFE trust domains, docs/spiffe.md).

Standards behind the checks:

* SPIFFE-ID.md §2.1: the trust domain ``name`` is a lowercase ``[a-z0-9._-]`` host of at most
  255 bytes, configured here and never inferred from an SVID (Trust Domain and Bundle §3).
* SPIFFE Federation §5.1: a bundle endpoint is configured with its URL, its profile and the
  trust domain name; §5.2.1.1 / §5.2.2.1: the URL "MUST have the scheme set to ``https`` and
  MUST NOT include userinfo"; §5.2.2.2: ``https_spiffe`` also needs the endpoint's SPIFFE ID
  and, for a self-serving endpoint, a bootstrap bundle.
* JWT-SVID §3.2: JWT-SVIDs are accepted only when ``audiences`` are configured ("Users should
  configure at least one acceptable value in advance", Appendix A); §2.1: the algorithm
  allowlist is a subset of RS/ES/PS 256/384/512.

Mappings use the same CEL vocabulary as issuers, with one more variable, ``spiffe``
(``id``, ``trust_domain``, ``path``, ``segments``, ``svid`` and the ``params`` captured by a
path template). Every model is frozen, forbids unknown keys and accepts camelCase aliases, like
the rest of the file (``sts.config.models``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
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
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from sts.spiffe.bundle import MAX_BUNDLE_BYTES, BundleError, parse_bundle_bytes
from sts.spiffe.id import InvalidSpiffeID, parse_spiffe_id, parse_trust_domain
from sts.spiffe.jwtsvid import JWT_SVID_ALGORITHMS
from sts.trust.cel import ExpressionCompileError, compile_expression

__all__ = [
    "SPIFFE_MAPPING_VARIABLES",
    "BundleEndpointConfig",
    "PathTemplateConfig",
    "SpiffeClaimMappings",
    "SpiffeClaimRule",
    "TrustDomainConfig",
    "partial_trust_domains",
    "template_names",
    "trust_domain_file_problems",
]

SPIFFE_MAPPING_VARIABLES: Final = frozenset({"claims", "spiffe"})
"""Variables of a trust domain's claim validation rules and claim mappings."""

_PLACEHOLDER: Final = re.compile(r"\{([a-z][a-z0-9_]{0,63})\}")
_SEGMENT: Final = re.compile(r"[A-Za-z0-9._-]+")
_ATTRIBUTE_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Names a template may use in its identity format besides its own placeholders.
IDENTITY_BUILTINS: Final = frozenset({"trust_domain", "spiffe_id", "path"})


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        hide_input_in_errors=True,
    )


def _expression(expect: type | None) -> AfterValidator:
    def check(value: str) -> str:
        try:
            compile_expression(
                value, location="", expect=expect, variables=SPIFFE_MAPPING_VARIABLES
            )
        except ExpressionCompileError as exc:
            raise ValueError(f"CEL: {exc.message}") from None
        return value

    return AfterValidator(check)


SpiffeBoolExpression = Annotated[str, _expression(bool)]
SpiffeStrExpression = Annotated[str, _expression(str)]
SpiffeValueExpression = Annotated[str, _expression(None)]


def _has_bad_chars(value: str) -> bool:
    return any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def template_names(template: str) -> tuple[str, ...]:
    """The placeholder names of a path template, in order."""
    return tuple(_PLACEHOLDER.findall(template))


class PathTemplateConfig(_Model):
    """A SPIFFE ID path pattern such as ``/ns/{namespace}/sa/{service_account}``.

    Invariant: ``template`` is ``/``-separated segments, each a literal SPIFFE path segment or
    exactly one ``{name}`` placeholder (one whole segment), names distinct and valid attribute
    names; ``identity`` (optional) uses only those names and ``trust_domain``, ``spiffe_id``,
    ``path``.
    """

    template: str
    identity: str | None = None

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        if not v.startswith("/") or v == "/" or v.endswith("/"):
            raise ValueError("template must start with '/' and not end with '/'")
        names: list[str] = []
        for segment in v.split("/")[1:]:
            placeholder = _PLACEHOLDER.fullmatch(segment)
            if placeholder is not None:
                names.append(placeholder.group(1))
                continue
            if "{" in segment or "}" in segment:
                raise ValueError(
                    "a placeholder must be a whole segment: {name} with name [a-z][a-z0-9_]*"
                )
            if _SEGMENT.fullmatch(segment) is None or segment in (".", ".."):
                raise ValueError(
                    "literal segments must be valid SPIFFE ID path segments ([A-Za-z0-9._-])"
                )
        if len(set(names)) != len(names):
            raise ValueError("placeholder names must be distinct")
        return v

    @model_validator(mode="after")
    def _identity(self) -> PathTemplateConfig:
        if self.identity is None:
            return self
        if not self.identity or _has_bad_chars(self.identity):
            raise ValueError("identity must be a non-empty format without whitespace")
        stripped = _PLACEHOLDER.sub("", self.identity)
        if "{" in stripped or "}" in stripped:
            raise ValueError("identity may contain braces only around placeholder names")
        known = set(template_names(self.template)) | IDENTITY_BUILTINS
        unknown = [n for n in template_names(self.identity) if n not in known]
        if unknown:
            raise ValueError(f"identity uses {unknown[0]!r}, which the template does not capture")
        return self


class SpiffeClaimRule(_Model):
    """A CEL predicate over ``claims`` and ``spiffe``."""

    expression: SpiffeBoolExpression
    message: str | None = None
    mode: Literal["enforce", "audit"] = "enforce"


class SpiffeClaimMappings(_Model):
    """CEL mappings to the identity and attributes (variables ``claims`` and ``spiffe``)."""

    identity: SpiffeStrExpression | None = None
    attributes: dict[str, SpiffeValueExpression] = Field(default_factory=dict)

    @field_validator("attributes")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if _ATTRIBUTE_NAME.fullmatch(name) is None:
                raise ValueError("attribute names must match [a-z][a-z0-9_]{0,63}")
        return v


def _https_url(value: str, what: str) -> str:
    if _has_bad_chars(value):
        raise ValueError(f"{what} must not contain whitespace or control characters")
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{what} must be an absolute https URL (SPIFFE Federation §5.2)")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} must not contain user information")
    if parts.fragment or "#" in value:
        raise ValueError(f"{what} must not have a fragment")
    return value


class BundleEndpointConfig(_Model):
    """A SPIFFE bundle endpoint (Federation §5.1). Invariant: ``https_spiffe`` names the
    endpoint's SPIFFE ID; ``ca_file`` only with ``https_web``."""

    url: str
    profile: Literal["https_web", "https_spiffe"]
    ca_file: str | None = None
    spiffe_id: str | None = None
    bootstrap_bundle_file: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _https_url(v, "url")

    @field_validator("spiffe_id")
    @classmethod
    def _spiffe_id(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parse_spiffe_id(v)
        except InvalidSpiffeID as exc:
            raise ValueError(f"spiffe_id is not a valid SPIFFE ID ({exc.reason})") from None
        return v

    @model_validator(mode="after")
    def _profile(self) -> BundleEndpointConfig:
        for name in ("ca_file", "bootstrap_bundle_file"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"{name} must not be empty")
        if self.profile == "https_web":
            if self.spiffe_id is not None or self.bootstrap_bundle_file is not None:
                raise ValueError(
                    "spiffe_id and bootstrap_bundle_file belong to the https_spiffe profile"
                )
        else:
            if self.spiffe_id is None:
                raise ValueError(
                    "the https_spiffe profile needs spiffe_id (the endpoint server's SPIFFE ID)"
                )
            if self.ca_file is not None:
                raise ValueError(
                    "ca_file belongs to the https_web profile; https_spiffe trusts the bundle"
                )
        return self


class TrustDomainConfig(_Model):
    """A trusted SPIFFE trust domain.

    Invariant: ``name`` is a valid trust domain name; exactly one bundle source; JWT-SVIDs are
    accepted only with ``audiences``; algorithms are JWT-SVID algorithms.
    """

    name: str
    bundle_file: str | None = None
    bundle_endpoint: BundleEndpointConfig | None = None
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = Field(default=JWT_SVID_ALGORITHMS, min_length=1)
    clock_skew: Annotated[StrictInt, Field(ge=0, le=300)] = 60
    max_token_lifetime: Annotated[StrictInt, Field(gt=0)] = 86400
    require_jti: StrictBool = False
    x509_svid: StrictBool = True
    path_templates: tuple[PathTemplateConfig, ...] = ()
    claim_validation_rules: tuple[SpiffeClaimRule, ...] = ()
    claim_mappings: SpiffeClaimMappings = Field(default_factory=SpiffeClaimMappings)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return parse_trust_domain(v)
        except InvalidSpiffeID:
            raise ValueError(
                "name must be a SPIFFE trust domain name: lowercase letters, digits, '.', '-', '_'"
                " (at most 255), without scheme, port or path"
            ) from None

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            if not a or _has_bad_chars(a):
                raise ValueError("audiences must be non-empty strings without whitespace")
        if len(set(v)) != len(v):
            raise ValueError("duplicate audience")
        return v

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for alg in v:
            if alg not in JWT_SVID_ALGORITHMS:
                raise ValueError(
                    f"algorithm {alg!r} is not a JWT-SVID algorithm; choose from "
                    + ", ".join(JWT_SVID_ALGORITHMS)
                )
        if len(set(v)) != len(v):
            raise ValueError("duplicate algorithm")
        return v

    @model_validator(mode="after")
    def _source(self) -> TrustDomainConfig:
        if (self.bundle_file is None) == (self.bundle_endpoint is None):
            raise ValueError("a trust domain needs exactly one of bundle_file, bundle_endpoint")
        if self.bundle_file is not None and not self.bundle_file.strip():
            raise ValueError("bundle_file must not be empty")
        endpoint = self.bundle_endpoint
        if (
            endpoint is not None
            and endpoint.profile == "https_spiffe"
            and endpoint.spiffe_id is not None
        ):
            self_serving = parse_spiffe_id(endpoint.spiffe_id).trust_domain == self.name
            if self_serving and endpoint.bootstrap_bundle_file is None:
                raise ValueError(
                    "a self-serving https_spiffe endpoint needs bootstrap_bundle_file (Federation §5.2.2.2)"
                )
        return self

    @property
    def accepts_jwt_svids(self) -> bool:
        return bool(self.audiences)

    def files(self) -> list[tuple[tuple[str, ...], str, str]]:
        """``(location, kind, path)`` of every file this entry names (kind: bundle or ca)."""
        out: list[tuple[tuple[str, ...], str, str]] = []
        if self.bundle_file is not None:
            out.append((("bundle_file",), "bundle", self.bundle_file))
        endpoint = self.bundle_endpoint
        if endpoint is not None:
            if endpoint.ca_file is not None:
                out.append((("bundle_endpoint", "ca_file"), "ca", endpoint.ca_file))
            if endpoint.bootstrap_bundle_file is not None:
                out.append(
                    (
                        ("bundle_endpoint", "bootstrap_bundle_file"),
                        "bundle",
                        endpoint.bootstrap_bundle_file,
                    )
                )
        return out


def partial_trust_domains(raw: Mapping[str, Any]) -> list[tuple[int, TrustDomainConfig]]:
    """The entries of a raw ``trust_domains`` section that validate on their own, plus the
    names of those that do not (so that grants referring to them are not misreported)."""
    out: list[tuple[int, TrustDomainConfig]] = []
    items = raw.get("trust_domains", raw.get("trustDomains"))
    if not isinstance(items, list):
        return out
    for i, item in enumerate(items):
        try:
            out.append((i, TrustDomainConfig.model_validate(item)))
        except ValidationError:
            name = item.get("name") if isinstance(item, Mapping) else None
            if isinstance(name, str):
                out.append((i, TrustDomainConfig.model_construct(name=name)))
    return out


def _file_problem(base_dir: Path, rel: str, kind: str, trust_domain: str) -> str | None:
    path = Path(rel) if Path(rel).is_absolute() else base_dir / rel
    hint = " (a relative path starts at the configuration file's directory)"
    try:
        if path.stat().st_size > MAX_BUNDLE_BYTES:
            return f"file is larger than {MAX_BUNDLE_BYTES} bytes"
        data = path.read_bytes()
    except FileNotFoundError:
        return f"file not found{hint}"
    except OSError as exc:
        return f"file cannot be read ({type(exc).__name__}){hint}"
    if kind == "ca":
        try:
            if not x509.load_pem_x509_certificates(data):
                return "CA file holds no PEM certificate"
        except ValueError:
            return "CA file is not a list of PEM certificates"
        return None
    try:
        parse_bundle_bytes(data, trust_domain)
    except BundleError as exc:
        return f"not a SPIFFE bundle ({exc.reason})"
    return None


def trust_domain_file_problems(raw: Mapping[str, Any], base_dir: Path) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems of the files named by valid trust domain entries: bundle files and bootstrap
    bundles must be SPIFFE bundles, CA files PEM certificates. Checked at load so that
    ``sts config check`` reports them; the broker reads bundle files again on every refresh."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for i, td in partial_trust_domains(raw):
        if "bundle_file" not in td.model_fields_set and "bundle_endpoint" not in td.model_fields_set:
            continue  # an invalid entry, reported by the schema
        for loc, kind, rel in td.files():
            problem = _file_problem(base_dir, rel, kind, td.name)
            if problem is not None:
                problems.append((("trust_domains", i, *loc), problem))
    return problems
