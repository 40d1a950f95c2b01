"""Token profiles: the JWT the broker issues, shaped the way a model provider documents it (pure).

A target may name a ``profile``. The broker is then the OIDC issuer that the provider's
workload identity federation trusts, and the token we issue for that target is what the
provider validates: the claims it requires, the ``aud`` it matches, the header it reads and
the lifetime it accepts. ``generic`` (or no profile) is the RFC 9068 access token of
``sts.tokens.claims`` unchanged.

Every provider profile issues a compact JWS whose header carries ``alg``, ``kid`` (the
provider finds our key by it in our JWKS) and ``typ: JWT`` (RFC 7519 §5.1: this is an
identity assertion for the provider, not an RFC 9068 ``at+jwt`` access token for a resource
server), and whose claims are the RFC 7519 §4.1 registered claims ``iss``, ``sub``, ``aud``
(one string), ``iat``, ``nbf``, ``exp`` and ``jti``, plus the workload claim (where the
identity came from) for the provider's attribute mappings. ``scope`` and ``client_id`` are
dropped: the provider grants what its own mapping says and reads neither.

What each provider documents (revisions read on 2026-12-03; docs/providers/README.md lists them):

``openai``      OpenAI "Workload identity token exchange" reference: a JWT "with a ``kid`` and
                supported ``alg`` in the header", with ``iss``, ``aud``, ``sub``, ``exp`` and
                ``iat``, matching the Workload Identity Provider's issuer and audience.
``anthropic``   Claude API "WIF reference": an OIDC JWT presented as the RFC 7523 assertion;
                issuer, audience and subject are matched by the federation rule.
``openrouter``  OpenRouter "Workload Identity Federation": the federation policy names the
                token's ``sub`` and ``aud``; access tokens "never longer than the JWT".
``gcp-sts``     Google Security Token Service ``token`` method (v1): header ``kid`` and ``alg``
                (RS256), payload ``iss``, ``iat`` (in the past), ``exp`` ("less than 48 hours
                after iat"), ``sub``, ``aud`` (the provider's allowed audiences, by default its
                full resource name with the ``https:`` prefix).
``entra``       Microsoft Entra workload identity federation (federatedIdentityCredential):
                ``aud`` is ``api://AzureADTokenExchange`` unless the credential says otherwise;
                ``iss`` and ``sub`` match the credential exactly; RS256.

Lifetimes: a profile has a longest lifetime. A grant whose lifetime exceeds the limit of a
profile one of its targets names is refused at configuration load (``sts.config.models``);
we do not silently shorten tokens, so what the configuration says is what is issued.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

ProfileName = Literal["openai", "anthropic", "openrouter", "gcp-sts", "entra", "generic"]
PROFILE_NAMES: Final[tuple[str, ...]] = ("openai", "anthropic", "openrouter", "gcp-sts", "entra", "generic")

# RFC 7519 §5.1: "JWT" for a JWT that is not of a more specific type.
ASSERTION_TYP: Final = "JWT"
ENTRA_DEFAULT_AUDIENCE: Final = "api://AzureADTokenExchange"
_ACCESS_TOKEN_TYP: Final = "at+jwt"  # sts.tokens.claims.ACCESS_TOKEN_TYP (RFC 9068 §2.1)
_GOOGLE_IAM_PREFIX: Final = "//iam.googleapis.com/"

# Claims the provider profiles keep from the RFC 9068 claim set (the workload claim is kept too).
_KEPT: Final = ("iss", "sub", "aud", "iat", "nbf", "exp", "jti")


@dataclass(frozen=True, slots=True)
class Profile:
    """What one provider accepts. Invariant: ``max_lifetime > 0``; ``algorithms`` non-empty."""

    name: str
    max_lifetime: int
    algorithms: frozenset[str]
    default_audience: str | None = None
    # False for ``generic``: the RFC 9068 token passes through unchanged.
    shapes: bool = True
    why_limit: str = ""


PROFILES: Final[Mapping[str, Profile]] = {
    "generic": Profile("generic", max_lifetime=86400, algorithms=frozenset({"ES256", "RS256", "EdDSA"}), shapes=False,
                       why_limit="tokens.max_lifetime applies"),
    # No documented maximum: one hour, the longest lifetime we issue by default.
    "openai": Profile("openai", max_lifetime=3600, algorithms=frozenset({"ES256", "RS256"}),
                      why_limit="no documented maximum; the broker bounds provider assertions at 1 hour"),
    "anthropic": Profile("anthropic", max_lifetime=3600, algorithms=frozenset({"ES256", "RS256"}),
                         why_limit="no documented maximum; the broker bounds provider assertions at 1 hour"),
    "openrouter": Profile("openrouter", max_lifetime=3600, algorithms=frozenset({"ES256", "RS256"}),
                          why_limit="no documented maximum; the broker bounds provider assertions at 1 hour"),
    # "exp ... Must be less than 48 hours after iat"; Google recommends under 6 hours.
    "gcp-sts": Profile("gcp-sts", max_lifetime=6 * 3600, algorithms=frozenset({"RS256"}),
                       why_limit="Google accepts up to 48 hours and recommends less than 6"),
    "entra": Profile("entra", max_lifetime=3600, algorithms=frozenset({"RS256"}), default_audience=ENTRA_DEFAULT_AUDIENCE,
                     why_limit="no documented maximum; the broker bounds provider assertions at 1 hour"),
}


def profile(name: str | None) -> Profile:
    """The profile called ``name`` (``generic`` for None). Raises ``KeyError`` for an unknown name."""
    return PROFILES["generic" if name is None else name]


def google_audience(provider_resource: str) -> str:
    """The ``aud`` Google accepts by default: the workload identity pool provider's full
    resource name with the ``https:`` prefix (``//iam.googleapis.com/projects/...`` ->
    ``https://iam.googleapis.com/projects/...``); an ``https:`` name is returned unchanged."""
    if provider_resource.startswith(_GOOGLE_IAM_PREFIX):
        return "https:" + provider_resource
    return provider_resource


def assertion_audience(name: str | None, target: str, configured: str | None) -> str:
    """The ``aud`` of a token shaped by profile ``name`` for ``target``: the configured value,
    else the profile's documented default (Entra), else the target itself."""
    if configured is not None:
        return configured
    p = profile(name)
    if p.default_audience is not None:
        return p.default_audience
    if p.name == "gcp-sts":
        return google_audience(target)
    return target


def shape_claims(name: str | None, claims: Mapping[str, Any], *, workload_claim: str, audience: str | None = None) -> dict[str, Any]:
    """``claims`` (an RFC 9068 claim set from ``build_access_token_claims``) as profile ``name``
    wants them; ``audience`` replaces ``aud`` (see :func:`assertion_audience`)."""
    p = profile(name)
    if not p.shapes:
        return dict(claims)
    shaped = {k: claims[k] for k in _KEPT if k in claims}
    if audience is not None:
        shaped["aud"] = audience
    if workload_claim in claims:
        shaped[workload_claim] = claims[workload_claim]
    return shaped


def token_typ(name: str | None, default: str) -> str:
    """The JWS ``typ`` header: ``default`` (``at+jwt``) for generic tokens, ``JWT`` otherwise."""
    return default if not profile(name).shapes else ASSERTION_TYP


def lifetime_problem(name: str, lifetime: int) -> str | None:
    """Why ``lifetime`` seconds is too long for profile ``name``, or None."""
    p = profile(name)
    if lifetime > p.max_lifetime:
        return f"lifetime {lifetime} s exceeds profile {name}'s limit of {p.max_lifetime} s ({p.why_limit})"
    return None


def algorithm_problem(name: str, algorithm: str) -> str | None:
    """Why tokens of profile ``name`` cannot be signed with ``algorithm``, or None."""
    p = profile(name)
    if algorithm not in p.algorithms:
        return f"profile {name} needs algorithm {' or '.join(sorted(p.algorithms))}, not {algorithm}"
    return None


def shaped(name: str | None, claims: dict[str, Any], workload_claim: str, audience: str | None) -> tuple[dict[str, Any], str]:
    """The claim building step's call: ``(claims, typ)`` for a token of profile ``name``. No
    profile costs one comparison and returns ``claims`` as they are, with ``at+jwt``."""
    if name is None or name == "generic":
        return claims, _ACCESS_TOKEN_TYP
    return (shape_claims(name, claims, workload_claim=workload_claim,
                         audience=assertion_audience(name, str(claims.get("aud", "")), audience)), ASSERTION_TYP)
