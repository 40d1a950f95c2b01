"""Built-in claim mappings for common workload issuers.

A preset supplies default claim validation rules, an identity mapping and attributes for one
platform's ID tokens. Identities are built from the platform's IMMUTABLE numeric ids where it
has them, so a rename, a transfer or a recycled name never changes or steals an identity:

* ``github-actions`` -> ``github:{repository_owner_id}/{repository_id}``
* ``gitlab``         -> ``gitlab:{namespace_id}/{project_id}``
* ``kubernetes``     -> ``k8s:{namespace}/{service_account}``

Presets are plain Python (no CEL) because they parse ``sub`` grammars that CEL's standard
library cannot express cheaply; they are pure functions of the claims. Configured rules are
added after a preset's rules (a preset rule can never be switched off by configuration) and
configured mappings override the preset's identity or attributes of the same name.

Claim shapes follow the platforms' documentation: GitHub "OpenID Connect reference" (including
the immutable subject ``repo:OWNER@OWNER_ID/REPO@REPO_ID:...``), GitLab "OpenID Connect (OIDC)
Authentication Using ID Tokens", Kubernetes "Service account tokens" (projected tokens carry a
``kubernetes.io`` claim).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

Claims = Mapping[str, Any]

# Numeric ids are decimal strings in GitHub and GitLab tokens; 20 digits bound the length so
# that the identity built from two of them can never exceed 255 characters.
_NUMERIC_ID = re.compile(r"[0-9]{1,20}")


class PresetError(Exception):
    """A preset could not build an identity from claims its rules accepted (a bug guard)."""


@dataclass(frozen=True)
class PresetRule:
    """A named, always-enforced check of a preset. ``message`` never holds claim values."""

    name: str
    message: str
    check: Callable[[Claims], bool]


@dataclass(frozen=True)
class Preset:
    """One platform's default rules, identity and attributes.

    Invariant: ``identity`` only runs on claims that passed every rule, and then returns a
    string of at most 255 characters; ``attributes`` returns JSON scalars (present claims only).
    """

    name: str
    rules: tuple[PresetRule, ...]
    identity: Callable[[Claims], str]
    attributes: Callable[[Claims], dict[str, Any]]
    # The platform's hosted issuer exactly as its tokens spell `iss` (OIDC Discovery §3 and
    # RFC 7519 §4.1.1 compare it as a string); empty where every installation has its own.
    well_known_issuers: tuple[str, ...] = ()


def _numeric(claims: Claims, key: str) -> bool:
    value = claims.get(key)
    return isinstance(value, str) and _NUMERIC_ID.fullmatch(value) is not None


def _copy(claims: Claims, keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: claims[k] for k in keys if k in claims}


# --- GitHub Actions -------------------------------------------------------------------------

# `repo:OWNER/REPO[:context]` (name form) or `repo:OWNER@OWNER_ID/REPO@REPO_ID[:context]`
# (immutable form). Names cannot contain ':', '/' or '@', so the split is unambiguous.
_GITHUB_REPO_SUB = re.compile(
    r"repo:(?P<owner>[^:/@]+)(?:@(?P<owner_id>[^:/@]*))?"
    r"/(?P<repo>[^:/@]+)(?:@(?P<repo_id>[^:/@]*))?(?::(?P<context>.*))?",
    re.DOTALL,
)

_GITHUB_ATTRIBUTES: Final = (
    "repository", "repository_owner", "repository_id", "repository_owner_id", "ref",
    "ref_type", "sha", "workflow", "workflow_ref", "job_workflow_ref", "environment",
    "event_name", "actor", "run_id", "sub",
)  # fmt: skip


def parse_github_subject(sub: str) -> dict[str, str | None] | None:
    """Split a GitHub ``sub`` of the ``repo:`` grammars; ``None`` for other (custom) forms."""
    m = _GITHUB_REPO_SUB.fullmatch(sub)
    return None if m is None else m.groupdict()


def _github_sub_ids_consistent(claims: Claims) -> bool:
    sub = claims.get("sub")
    if not isinstance(sub, str):
        return False
    parts = parse_github_subject(sub)
    if parts is None:
        # A customised subject template (e.g. `repository_owner_id:..:repository_id:..`):
        # nothing to cross-check, the identity comes from the id claims anyway.
        return True
    owner_id, repo_id = parts["owner_id"], parts["repo_id"]
    if owner_id is None and repo_id is None:
        return True  # the name-only (legacy) grammar carries no ids
    # The immutable grammar: both ids, numeric, equal to the id claims.
    return (
        owner_id is not None
        and repo_id is not None
        and _NUMERIC_ID.fullmatch(owner_id) is not None
        and _NUMERIC_ID.fullmatch(repo_id) is not None
        and owner_id == claims.get("repository_owner_id")
        and repo_id == claims.get("repository_id")
    )


def _github_identity(claims: Claims) -> str:
    return f"github:{claims['repository_owner_id']}/{claims['repository_id']}"


def _github_attributes(claims: Claims) -> dict[str, Any]:
    attrs = _copy(claims, _GITHUB_ATTRIBUTES)
    sub = claims.get("sub")
    parts = parse_github_subject(sub) if isinstance(sub, str) else None
    if parts is not None and parts["context"] is not None:
        attrs["sub_context"] = parts["context"]
    return attrs


GITHUB_ACTIONS: Final = Preset(
    name="github-actions",
    rules=(
        PresetRule(
            "repository_id",
            "repository_id must be present and a numeric string",
            lambda c: _numeric(c, "repository_id"),
        ),
        PresetRule(
            "repository_owner_id",
            "repository_owner_id must be present and a numeric string",
            lambda c: _numeric(c, "repository_owner_id"),
        ),
        PresetRule(
            "sub_ids",
            "the ids in an immutable-form sub must equal repository_owner_id and repository_id",
            _github_sub_ids_consistent,
        ),
    ),
    identity=_github_identity,
    attributes=_github_attributes,
    well_known_issuers=("https://token.actions.githubusercontent.com",),
)


# --- GitLab CI --------------------------------------------------------------------------------

_GITLAB_ATTRIBUTES: Final = (
    "namespace_id", "namespace_path", "project_id", "project_path", "ref", "ref_type",
    "ref_protected", "pipeline_source", "environment", "user_login", "job_id", "sub",
)  # fmt: skip


def _gitlab_sub_consistent(claims: Claims) -> bool:
    sub = claims.get("sub")
    if not isinstance(sub, str):
        return False
    # Default grammar `project_path:GROUP/PROJECT:ref_type:TYPE:ref:REF`; paths have no ':'.
    if not sub.startswith("project_path:"):
        return True
    path = sub[len("project_path:") :].split(":", 1)[0]
    return path == claims.get("project_path")


def _gitlab_identity(claims: Claims) -> str:
    return f"gitlab:{claims['namespace_id']}/{claims['project_id']}"


GITLAB: Final = Preset(
    name="gitlab",
    rules=(
        PresetRule(
            "namespace_id",
            "namespace_id must be present and a numeric string",
            lambda c: _numeric(c, "namespace_id"),
        ),
        PresetRule(
            "project_id",
            "project_id must be present and a numeric string",
            lambda c: _numeric(c, "project_id"),
        ),
        PresetRule(
            "sub_project_path",
            "the project path in sub must equal project_path",
            _gitlab_sub_consistent,
        ),
    ),
    identity=_gitlab_identity,
    attributes=lambda c: _copy(c, _GITLAB_ATTRIBUTES),
    well_known_issuers=("https://gitlab.com",),
)


# --- Kubernetes service accounts --------------------------------------------------------------

# Namespace: an RFC 1123 label (<= 63); service account name: an RFC 1123 subdomain (<= 253).
_K8S_SUB = re.compile(
    r"system:serviceaccount:(?P<ns>[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)"
    r":(?P<name>[a-z0-9](?:[-.a-z0-9]{0,251}[a-z0-9])?)"
)
_K8S_PREFIX_LEN: Final = len("k8s:") + len("/")


def parse_k8s_subject(sub: object) -> tuple[str, str] | None:
    """``(namespace, name)`` of ``system:serviceaccount:NS:NAME``, else ``None``."""
    if not isinstance(sub, str):
        return None
    m = _K8S_SUB.fullmatch(sub)
    return None if m is None else (m["ns"], m["name"])


def _k8s_claims_consistent(claims: Claims) -> bool:
    parsed = parse_k8s_subject(claims.get("sub"))
    if parsed is None:
        return False
    if "kubernetes.io" not in claims:
        return True
    k8s = claims["kubernetes.io"]
    if not isinstance(k8s, Mapping):
        return False
    ns, name = parsed
    if "namespace" in k8s and k8s["namespace"] != ns:
        return False
    if "serviceaccount" in k8s:
        sa = k8s["serviceaccount"]
        if not isinstance(sa, Mapping) or sa.get("name") != name:
            return False
    return True


def _k8s_identity_fits(claims: Claims) -> bool:
    parsed = parse_k8s_subject(claims.get("sub"))
    return parsed is not None and _K8S_PREFIX_LEN + len(parsed[0]) + len(parsed[1]) <= 255


def _k8s_identity(claims: Claims) -> str:
    parsed = parse_k8s_subject(claims.get("sub"))
    if parsed is None:
        raise PresetError("sub is not a service account subject")
    return f"k8s:{parsed[0]}/{parsed[1]}"


def _k8s_attributes(claims: Claims) -> dict[str, Any]:
    parsed = parse_k8s_subject(claims.get("sub"))
    if parsed is None:
        return {}
    attrs: dict[str, Any] = {"namespace": parsed[0], "service_account": parsed[1]}
    k8s = claims.get("kubernetes.io")
    if isinstance(k8s, Mapping):
        sa = k8s.get("serviceaccount")
        if isinstance(sa, Mapping) and isinstance(sa.get("uid"), str):
            attrs["service_account_uid"] = sa["uid"]
        pod = k8s.get("pod")
        if isinstance(pod, Mapping) and isinstance(pod.get("name"), str):
            attrs["pod"] = pod["name"]
    return attrs


KUBERNETES: Final = Preset(
    name="kubernetes",
    rules=(
        PresetRule(
            "sub_shape",
            "sub must be system:serviceaccount:NAMESPACE:NAME and agree with the"
            " kubernetes.io claims",
            _k8s_claims_consistent,
        ),
        PresetRule(
            "identity_length",
            "namespace and service account name are too long for a 255-character identity",
            _k8s_identity_fits,
        ),
    ),
    identity=_k8s_identity,
    attributes=_k8s_attributes,
)


PRESETS: Final[Mapping[str, Preset]] = {p.name: p for p in (GITHUB_ACTIONS, GITLAB, KUBERNETES)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``KeyError`` for an unknown name (the schema prevents it)."""
    return PRESETS[name]
