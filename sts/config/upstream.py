"""The ``upstreams`` section: model providers the broker exchanges its own assertions with.

An upstream names one provider identity (an OpenAI service account, an Anthropic service
account under a federation rule, an OpenRouter federation policy, a Google workload identity
pool provider, an Entra application) and how to reach its token endpoint. A grant's target
names the upstream; policy then decides which workloads get that provider identity.

No upstream takes a secret: the broker's signed assertion is the credential every provider
federates on (docs/providers/README.md). Parameters are identifiers, not secrets.

Checks across sections (a target naming an unknown upstream, a profile's lifetime or
algorithm) are in :func:`profile_and_upstream_problems`, run by ``BrokerConfig``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from sts.subject.fetch import is_loopback_host
from sts.tokens.profiles import ENTRA_DEFAULT_AUDIENCE, algorithm_problem, google_audience, lifetime_problem

ProviderName = Literal["openai", "anthropic", "openrouter", "gcp-sts", "entra"]

# Documented token endpoints (docs/providers/*.md name the page and revision).
DEFAULT_ENDPOINTS: Final = {
    "openai": "https://auth.openai.com/oauth/token",
    "anthropic": "https://api.anthropic.com/v1/oauth/token",
    "openrouter": "https://openrouter.ai/api/v1/oauth/token",
    "gcp-sts": "https://sts.googleapis.com/v1/token",
    "entra": "https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token",
}

# Provider parameters: which are required, which allowed, per provider.
_PARAMETERS: Final = ("identity_provider_id", "service_account_id", "federation_rule_id", "organization_id", "workspace_id",
                      "federation_policy_id", "audience", "tenant_id", "client_id", "scope")
_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "openai": ("identity_provider_id", "service_account_id", "assertion_audience"),
    "anthropic": ("federation_rule_id", "organization_id", "service_account_id", "assertion_audience"),
    "openrouter": ("federation_policy_id", "assertion_audience"),
    "gcp-sts": ("audience",),
    "entra": ("tenant_id", "client_id", "scope"),
}
_OPTIONAL: Final[dict[str, tuple[str, ...]]] = {
    "openai": (),
    "anthropic": ("workspace_id",),
    "openrouter": ("scope",),
    "gcp-sts": ("scope",),
    "entra": (),
}
_ID = re.compile(r"[A-Za-z0-9._:/@+=-]{1,256}")
_SCOPE = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+( [\x21\x23-\x5B\x5D-\x7E]+)*")
_GOOGLE_PROVIDER = re.compile(r"//iam\.googleapis\.com/projects/[0-9]+/locations/global/workloadIdentityPools/[a-z0-9-]+/providers/[a-z0-9-]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class UpstreamConfig(BaseModel):
    """One provider identity the broker may obtain tokens for.

    Invariant: the provider's required parameters are set and no other provider's are; the
    token endpoint is https (http only on loopback with ``allow_insecure_http``, dev mode);
    ``assertion_lifetime`` fits the provider's profile.
    """

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True,
                              hide_input_in_errors=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")]
    provider: ProviderName
    token_endpoint: str | None = None
    # Our assertion to the provider: its `aud` and `sub`, its lifetime and signing algorithm.
    assertion_audience: str | None = None
    assertion_subject: str | None = None
    assertion_lifetime: Annotated[StrictInt, Field(ge=60, le=3600)] = 600
    algorithm: Literal["ES256", "RS256"] = "RS256"
    # Outbound fetch limits (each attempt), bounded retries with jitter on transient failures.
    timeout: Annotated[float, Field(gt=0, le=30)] = 5.0
    retries: Annotated[StrictInt, Field(ge=0, le=5)] = 2
    allow_insecure_http: StrictBool = False
    # Provider parameters (identifiers, never secrets).
    identity_provider_id: str | None = None
    service_account_id: str | None = None
    federation_rule_id: str | None = None
    organization_id: str | None = None
    workspace_id: str | None = None
    federation_policy_id: str | None = None
    audience: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    scope: str | None = None

    @model_validator(mode="after")
    def _check(self) -> UpstreamConfig:
        required = _REQUIRED[self.provider]
        allowed = set(required) | set(_OPTIONAL[self.provider])
        missing = [p for p in required if getattr(self, p) is None]
        if missing:
            raise ValueError(f"provider {self.provider} needs {', '.join(missing)}")
        extra = [p for p in _PARAMETERS if getattr(self, p) is not None and p not in allowed]
        if extra:
            raise ValueError(f"provider {self.provider} takes no {', '.join(extra)}")
        for p in _PARAMETERS:
            value = getattr(self, p)
            if value is None or p == "scope":
                continue
            if _ID.fullmatch(value) is None:
                raise ValueError(f"{p} must be an identifier of 1-256 characters without spaces")
        if self.scope is not None and _SCOPE.fullmatch(self.scope) is None:
            raise ValueError("scope must be space-separated RFC 6749 scope tokens")
        if self.provider == "gcp-sts" and _GOOGLE_PROVIDER.fullmatch(self.audience or "") is None:
            raise ValueError("audience must be the workload identity pool provider's full resource name, "
                             "//iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER")
        if self.provider in ("anthropic",) and _UUID.fullmatch(self.organization_id or "") is None:
            raise ValueError("organization_id must be the organization's UUID")
        if self.provider == "entra" and _UUID.fullmatch(self.client_id or "") is None:
            raise ValueError("client_id must be the application (client) ID, a UUID")
        for what, value in (("assertion_audience", self.assertion_audience), ("assertion_subject", self.assertion_subject)):
            if value is not None and (not value or len(value) > 512 or any(c.isspace() or ord(c) < 0x20 for c in value)):
                raise ValueError(f"{what} must be 1-512 characters without whitespace")
        self._check_url(self.endpoint)
        problem = lifetime_problem(self.provider, self.assertion_lifetime) or algorithm_problem(self.provider, self.algorithm)
        if problem:
            raise ValueError(problem)
        return self

    def _check_url(self, url: str) -> None:
        if any(c.isspace() or ord(c) < 0x20 for c in url):
            raise ValueError("token_endpoint must not contain whitespace")
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.username or parts.password or parts.fragment:
            raise ValueError("token_endpoint must be an absolute https URL without user information or fragment")
        if parts.scheme == "http":
            if not (parts.hostname and is_loopback_host(parts.hostname)):
                raise ValueError("token_endpoint must use https (plain http is allowed only on loopback)")
            if not self.allow_insecure_http:
                raise ValueError("token_endpoint uses plain http: set allow_insecure_http: true (needs dev mode)")

    @property
    def endpoint(self) -> str:
        if self.token_endpoint is not None:
            return self.token_endpoint
        return DEFAULT_ENDPOINTS[self.provider].format(tenant_id=self.tenant_id or "")

    @property
    def subject(self) -> str:
        """The ``sub`` of our assertions: the provider identity is the upstream, not a workload
        (its tokens are cached and handed to every workload policy allows for it)."""
        return self.assertion_subject or f"upstream:{self.name}"

    @property
    def audience_claim(self) -> str:
        if self.assertion_audience is not None:
            return self.assertion_audience
        if self.provider == "entra":
            return ENTRA_DEFAULT_AUDIENCE
        assert self.audience is not None  # gcp-sts: required by _check
        return google_audience(self.audience)

    @property
    def identity(self) -> str:
        """The provider identity this upstream obtains, as a stable string (the cache key's)."""
        parts = [self.provider, self.endpoint, self.subject, self.audience_claim]
        parts += [f"{p}={getattr(self, p)}" for p in _PARAMETERS if p != "scope" and getattr(self, p) is not None]
        return "|".join(parts)


def profile_and_upstream_problems(*, default_lifetime: int, max_lifetime: int, algorithm: str, grants: Iterable[Any],
                                  upstreams: Sequence[UpstreamConfig]) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems between targets, their profiles and the upstreams they name (a valid file)."""
    return _problems(default_lifetime=default_lifetime, max_lifetime=max_lifetime, algorithm=algorithm,
                     grants=list(enumerate(grants)), upstreams=list(enumerate(upstreams)), names=None)


def partial_profile_and_upstream_problems(raw: Mapping[str, Any], tokens: Any, grant_model: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """The same problems over the parts of an invalid file that are valid on their own
    (``sts config check`` reports every problem at once). An upstream that is invalid but
    named still counts as known, so its own error is not repeated at every target naming it."""
    if tokens is None:
        return []
    upstreams: list[tuple[int, UpstreamConfig]] = []
    names: set[str] = set()
    raw_upstreams = raw.get("upstreams")
    for i, item in enumerate(raw_upstreams if isinstance(raw_upstreams, list) else []):
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            names.add(item["name"])
        try:
            upstreams.append((i, UpstreamConfig.model_validate(item)))
        except ValidationError:
            continue
    grants: list[tuple[int, Any]] = []
    raw_grants = raw.get("grants")
    for i, item in enumerate(raw_grants if isinstance(raw_grants, list) else []):
        try:
            grants.append((i, grant_model.model_validate(item)))
        except ValidationError:
            continue
    return _problems(default_lifetime=tokens.default_lifetime, max_lifetime=tokens.max_lifetime, algorithm=tokens.algorithm,
                     grants=grants, upstreams=upstreams, names=names)


def _problems(*, default_lifetime: int, max_lifetime: int, algorithm: str, grants: Sequence[tuple[int, Any]],
              upstreams: Sequence[tuple[int, UpstreamConfig]], names: set[str] | None) -> list[tuple[tuple[str | int, ...], str]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    seen: dict[str, int] = {}
    for i, u in upstreams:
        if u.name in seen:
            problems.append((("upstreams", i, "name"), f"duplicate upstream name {u.name!r} (also upstreams[{seen[u.name]}])"))
        seen.setdefault(u.name, i)
    by_name = {u.name: u for _, u in upstreams}
    known = set(by_name) | (names or set())
    for g_index, g in grants:
        lifetime = min(g.lifetime or default_lifetime, max_lifetime)
        for t_index, t in enumerate(g.targets):
            loc: tuple[str | int, ...] = ("grants", g_index, "targets", t_index)
            upstream = by_name.get(t.upstream) if t.upstream is not None else None
            if t.upstream is not None and t.upstream not in known:
                problems.append(((*loc, "upstream"), f"unknown upstream {t.upstream!r}"))
            if t.upstream is not None and t.kind == "resource_prefix":
                problems.append(((*loc, "upstream"), "an upstream needs an exact audience or resource target"))
            if t.upstream is not None and (t.sender_constraint or g.sender_constraint) != "none":
                # The provider's token cannot carry our cnf: answering with it would drop a
                # binding policy asks for (RFC 9449, RFC 8705), so the combination is refused.
                problems.append(((*loc, "upstream"), "a provider's token cannot be sender-constrained; "
                                 "set sender_constraint: none for this target"))
            if t.upstream is not None and (g.status_list if t.status_list is None else t.status_list):
                problems.append(((*loc, "upstream"), "a provider's token carries no status claim; set status_list: false for this target"))
            if t.upstream is not None and getattr(t, "authorization_details", ()):
                problems.append(((*loc, "upstream"), "a provider's token carries no authorization_details; "
                                 "remove them from this target"))
            if upstream is not None and t.profile is not None and t.profile != upstream.provider:
                problems.append(((*loc, "profile"), f"the upstream is a {upstream.provider} provider; omit profile or set it to {upstream.provider}"))
            if t.profile is None or t.profile == "generic" or t.upstream is not None:
                continue
            # The workload itself presents this token to the provider: its lifetime and
            # algorithm must be ones the provider accepts (refused here, never shortened).
            problem = lifetime_problem(t.profile, lifetime)
            if problem:
                problems.append(((*loc, "profile"), problem + "; lower the grant's lifetime"))
            problem = algorithm_problem(t.profile, t.algorithm or algorithm)
            if problem:
                problems.append(((*loc, "profile"), problem + "; set the target's algorithm"))
    return problems


def upstream_dev_mode_requirements(upstreams: Sequence[UpstreamConfig]) -> list[str]:
    return [f"upstreams[{i}] ({u.name}): allow_insecure_http permits plain http" for i, u in enumerate(upstreams)
            if u.allow_insecure_http]
