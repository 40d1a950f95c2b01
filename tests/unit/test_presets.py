"""sts.trust.presets with full, realistic claim sets (shapes from the platforms' docs)."""

from __future__ import annotations

from typing import Any

import pytest

from sts.config.models import IssuerConfig
from sts.subject.model import VerifiedSubject
from sts.trust.mapping import CompiledIssuerMapping, MappingDenied
from sts.trust.presets import (
    GITHUB_ACTIONS,
    GITLAB,
    KUBERNETES,
    PRESETS,
    get_preset,
    parse_github_subject,
    parse_k8s_subject,
)


def github_claims(**overrides: Any) -> dict[str, Any]:
    """A GitHub Actions OIDC token payload (docs.github.com, "OpenID Connect reference")."""
    claims: dict[str, Any] = {
        "jti": "example-id",
        "sub": "repo:octo-org/octo-repo:environment:prod",
        "environment": "prod",
        "aud": "https://sts.example.com",
        "ref": "refs/heads/main",
        "sha": "example-sha",
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "actor_id": "12",
        "repository_visibility": "private",
        "repository_id": "74",
        "repository_owner_id": "65",
        "run_id": "example-run-id",
        "run_number": "10",
        "run_attempt": "2",
        "runner_environment": "github-hosted",
        "actor": "octocat",
        "workflow": "example-workflow",
        "head_ref": "",
        "base_ref": "",
        "event_name": "workflow_dispatch",
        "ref_type": "branch",
        "ref_protected": "true",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "workflow_sha": "example-workflow-sha",
        "job_workflow_ref": "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main",
        "job_workflow_sha": "example-job-workflow-sha",
        "enterprise": "octo-enterprise",
        "enterprise_id": "2",
        "iss": "https://token.actions.githubusercontent.com",
        "nbf": 1632492967,
        "exp": 1632493867,
        "iat": 1632493567,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def gitlab_claims(**overrides: Any) -> dict[str, Any]:
    """A GitLab CI/CD ID token payload (docs.gitlab.com, "ID token authentication")."""
    claims: dict[str, Any] = {
        "namespace_id": "72",
        "namespace_path": "my-group",
        "project_id": "20",
        "project_path": "my-group/my-project",
        "user_id": "1",
        "user_login": "sample-user",
        "user_email": "sample-user@example.com",
        "user_identities": [{"provider": "github", "extern_uid": "2435223452345"}],
        "pipeline_id": "574",
        "pipeline_source": "push",
        "job_id": "302",
        "ref": "feature-branch-1",
        "ref_type": "branch",
        "ref_path": "refs/heads/feature-branch-1",
        "ref_protected": "false",
        "groups_direct": ["mygroup/mysubgroup", "myothergroup/myothersubgroup"],
        "environment": "test-environment2",
        "environment_protected": "false",
        "deployment_tier": "testing",
        "environment_action": "start",
        "runner_id": 1,
        "runner_environment": "self-hosted",
        "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "project_visibility": "public",
        "ci_config_ref_uri": "gitlab.example.com/my-group/my-project//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "jti": "235b3a54-b797-45c7-ae9a-f72d7bc6ef5b",
        "iss": "https://gitlab.example.com",
        "iat": 1681395193,
        "nbf": 1681395188,
        "exp": 1681398793,
        "sub": "project_path:my-group/my-project:ref_type:branch:ref:feature-branch-1",
        "aud": "https://sts.example.com",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def k8s_claims(**overrides: Any) -> dict[str, Any]:
    """A projected service account token payload (kubernetes.io, "Service account tokens")."""
    claims: dict[str, Any] = {
        "aud": ["https://sts.example.com"],
        "exp": 1731613413,
        "iat": 1700077413,
        "iss": "https://kubernetes.default.svc.cluster.local",
        "jti": "ea28ed49-2e11-4280-9ec5-bc3d1d84661a",
        "kubernetes.io": {
            "namespace": "ai",
            "node": {"name": "127.0.0.1", "uid": "58456cb0-dd00-45ed-b797-5578fdceaced"},
            "pod": {
                "name": "agent-gateway-69cbfb9798-jv9gn",
                "uid": "778a530c-b3f4-47c0-9cd5-ab018fb64f33",
            },
            "serviceaccount": {
                "name": "agent-gateway",
                "uid": "a087d5a0-e1dd-43ec-93ac-f13d89cd13af",
            },
            "warnafter": 1700081020,
        },
        "nbf": 1700077413,
        "sub": "system:serviceaccount:ai:agent-gateway",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def mapping(preset: str, **issuer: Any) -> CompiledIssuerMapping:
    cfg = IssuerConfig.model_validate(
        {
            "name": "p",
            "issuer": "https://issuer.example.com",
            "audiences": ["sts"],
            "preset": preset,
            **issuer,
        }
    )
    return CompiledIssuerMapping.from_config(cfg, location="issuers[0]")


def subject(claims: dict[str, Any]) -> VerifiedSubject:
    return VerifiedSubject(
        "p", "https://issuer.example.com", str(claims.get("sub")), claims, 0.0, "00"
    )


# --- GitHub Actions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sub", "context"),
    [
        pytest.param(
            "repo:octo-org/octo-repo:environment:prod", "environment:prod", id="legacy-env"
        ),
        pytest.param(
            "repo:octo-org/octo-repo:ref:refs/heads/main", "ref:refs/heads/main", id="legacy-ref"
        ),
        pytest.param("repo:octo-org/octo-repo:pull_request", "pull_request", id="legacy-pr"),
        pytest.param(
            "repo:octo-org@65/octo-repo@74:ref:refs/heads/main",
            "ref:refs/heads/main",
            id="immutable-ref",
        ),
        pytest.param(
            "repo:octo-org@65/octo-repo@74:environment:prod", "environment:prod", id="immutable-env"
        ),
        pytest.param(
            "repo:octo-org@65/octo-repo@74:pull_request", "pull_request", id="immutable-pr"
        ),
        pytest.param(
            "repo:octo-org/octo-repo:ref:refs/tags/v1:x",
            "ref:refs/tags/v1:x",
            id="context-keeps-colons",
        ),
    ],
)
def test_github_both_subject_grammars(sub: str, context: str) -> None:
    result = mapping("github-actions").map_identity(subject(github_claims(sub=sub)))
    ident = result.identity
    assert ident.identity == "github:65/74"
    assert ident.attributes["sub_context"] == context
    assert ident.attributes["sub"] == sub


def test_github_attributes_full_set() -> None:
    attrs = mapping("github-actions").map_identity(subject(github_claims())).identity.attributes
    assert attrs == {
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "repository_id": "74",
        "repository_owner_id": "65",
        "ref": "refs/heads/main",
        "ref_type": "branch",
        "sha": "example-sha",
        "workflow": "example-workflow",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_ref": "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main",
        "environment": "prod",
        "event_name": "workflow_dispatch",
        "actor": "octocat",
        "run_id": "example-run-id",
        "sub": "repo:octo-org/octo-repo:environment:prod",
        "sub_context": "environment:prod",
    }


def test_github_identity_survives_rename() -> None:
    m = mapping("github-actions")
    before = m.map_identity(subject(github_claims()))
    renamed = m.map_identity(
        subject(
            github_claims(
                sub="repo:new-org@65/new-name@74:environment:prod",
                repository="new-org/new-name",
                repository_owner="new-org",
            )
        )
    )
    assert before.identity.identity == renamed.identity.identity == "github:65/74"


def test_github_without_environment_and_custom_subject() -> None:
    # A customised subject template: no `repo:` grammar, so no sub_context.
    claims = github_claims(environment=None, sub="repository_owner_id:65:repository_id:74")
    attrs = mapping("github-actions").map_identity(subject(claims)).identity.attributes
    assert "environment" not in attrs
    assert "sub_context" not in attrs


@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        pytest.param({"repository_id": None}, "repository_id", id="repo-id-missing"),
        pytest.param({"repository_id": 74}, "repository_id", id="repo-id-int"),
        pytest.param({"repository_id": "7a"}, "repository_id", id="repo-id-not-numeric"),
        pytest.param({"repository_owner_id": None}, "repository_owner_id", id="owner-id-missing"),
        pytest.param(
            {"repository_owner_id": "1" * 21}, "repository_owner_id", id="owner-id-too-long"
        ),
        pytest.param(
            {"sub": "repo:octo-org@66/octo-repo@74:ref:refs/heads/main"},
            "sub_ids",
            id="owner-id-differs",
        ),
        pytest.param(
            {"sub": "repo:octo-org@65/octo-repo@75:ref:refs/heads/main"},
            "sub_ids",
            id="repo-id-differs",
        ),
        pytest.param(
            {"sub": "repo:octo-org@65/octo-repo:ref:refs/heads/main"},
            "sub_ids",
            id="half-immutable",
        ),
        pytest.param(
            {"sub": "repo:octo-org@x/octo-repo@74:pull_request"}, "sub_ids", id="id-not-numeric"
        ),
        pytest.param({"sub": "repo:octo-org@/octo-repo@:pull_request"}, "sub_ids", id="ids-empty"),
        pytest.param({"sub": None}, "sub_ids", id="sub-missing"),
    ],
)
def test_github_rules(overrides: dict[str, Any], rule: str) -> None:
    with pytest.raises(MappingDenied) as info:
        mapping("github-actions").map_identity(subject(github_claims(**overrides)))
    assert info.value.reason == "claim_validation_failed"
    assert info.value.rule_location == f"issuers[0].preset[github-actions].{rule}"


@pytest.mark.parametrize(
    ("sub", "parts"),
    [
        pytest.param(
            "repo:o/r:ref:refs/heads/main",
            {
                "owner": "o",
                "owner_id": None,
                "repo": "r",
                "repo_id": None,
                "context": "ref:refs/heads/main",
            },
            id="legacy",
        ),
        pytest.param(
            "repo:o@1/r@2",
            {"owner": "o", "owner_id": "1", "repo": "r", "repo_id": "2", "context": None},
            id="no-context",
        ),
        pytest.param("project_path:g/p:ref_type:branch:ref:main", None, id="other-grammar"),
        pytest.param("repo:o:ref:x", None, id="no-slash"),
    ],
)
def test_parse_github_subject(sub: str, parts: dict[str, str | None] | None) -> None:
    assert parse_github_subject(sub) == parts


# --- GitLab ---------------------------------------------------------------------------------------


def test_gitlab_identity_and_attributes() -> None:
    ident = mapping("gitlab").map_identity(subject(gitlab_claims())).identity
    assert ident.identity == "gitlab:72/20"
    assert ident.attributes == {
        "namespace_id": "72",
        "namespace_path": "my-group",
        "project_id": "20",
        "project_path": "my-group/my-project",
        "ref": "feature-branch-1",
        "ref_type": "branch",
        "ref_protected": "false",
        "pipeline_source": "push",
        "environment": "test-environment2",
        "user_login": "sample-user",
        "job_id": "302",
        "sub": "project_path:my-group/my-project:ref_type:branch:ref:feature-branch-1",
    }


def test_gitlab_custom_subject_is_accepted() -> None:
    ident = mapping("gitlab").map_identity(subject(gitlab_claims(sub="job_302"))).identity
    assert ident.identity == "gitlab:72/20"


@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        pytest.param({"namespace_id": None}, "namespace_id", id="ns-missing"),
        pytest.param({"namespace_id": 72}, "namespace_id", id="ns-int"),
        pytest.param({"project_id": "x20"}, "project_id", id="project-not-numeric"),
        pytest.param(
            {"sub": "project_path:other/proj:ref_type:branch:ref:main"},
            "sub_project_path",
            id="sub-path-differs",
        ),
        pytest.param({"sub": None}, "sub_project_path", id="sub-missing"),
    ],
)
def test_gitlab_rules(overrides: dict[str, Any], rule: str) -> None:
    with pytest.raises(MappingDenied) as info:
        mapping("gitlab").map_identity(subject(gitlab_claims(**overrides)))
    assert info.value.rule_location == f"issuers[0].preset[gitlab].{rule}"


# --- Kubernetes -----------------------------------------------------------------------------------


def test_k8s_identity_and_attributes() -> None:
    ident = mapping("kubernetes").map_identity(subject(k8s_claims())).identity
    assert ident.identity == "k8s:ai/agent-gateway"
    assert ident.attributes == {
        "namespace": "ai",
        "service_account": "agent-gateway",
        "service_account_uid": "a087d5a0-e1dd-43ec-93ac-f13d89cd13af",
        "pod": "agent-gateway-69cbfb9798-jv9gn",
    }


def test_k8s_without_kubernetes_io_claim() -> None:
    claims = k8s_claims()
    del claims["kubernetes.io"]
    ident = mapping("kubernetes").map_identity(subject(claims)).identity
    assert ident.identity == "k8s:ai/agent-gateway"
    assert ident.attributes == {"namespace": "ai", "service_account": "agent-gateway"}


def test_k8s_without_pod_binding() -> None:
    claims = k8s_claims()
    claims["kubernetes.io"] = {
        "namespace": "ai",
        "serviceaccount": {"name": "agent-gateway", "uid": "u"},
    }
    attrs = mapping("kubernetes").map_identity(subject(claims)).identity.attributes
    assert "pod" not in attrs
    assert attrs["service_account_uid"] == "u"


def _k8s_io(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "namespace": "ai",
        "serviceaccount": {"name": "agent-gateway", "uid": "u"},
    }
    base.update(kw)
    return base


@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        pytest.param({"sub": "system:serviceaccount:ai"}, "sub_shape", id="too-few-parts"),
        pytest.param(
            {"sub": "system:serviceaccount:ai:agent:extra"}, "sub_shape", id="too-many-parts"
        ),
        pytest.param({"sub": "system:node:worker-1"}, "sub_shape", id="not-a-service-account"),
        pytest.param(
            {"sub": "system:serviceaccount:AI:agent"}, "sub_shape", id="uppercase-namespace"
        ),
        pytest.param({"sub": "system:serviceaccount::agent"}, "sub_shape", id="empty-namespace"),
        pytest.param({"sub": None}, "sub_shape", id="sub-missing"),
        pytest.param(
            {"kubernetes.io": _k8s_io(namespace="other")}, "sub_shape", id="namespace-differs"
        ),
        pytest.param(
            {"kubernetes.io": _k8s_io(serviceaccount={"name": "other", "uid": "u"})},
            "sub_shape",
            id="name-differs",
        ),
        pytest.param(
            {"kubernetes.io": _k8s_io(serviceaccount="agent")}, "sub_shape", id="sa-not-object"
        ),
        pytest.param({"kubernetes.io": "ai"}, "sub_shape", id="k8s-claim-not-object"),
        pytest.param(
            {"sub": "system:serviceaccount:" + "n" * 63 + ":" + "a" * 200, "kubernetes.io": None},
            "identity_length",
            id="identity-too-long",
        ),
    ],
)
def test_k8s_rules(overrides: dict[str, Any], rule: str) -> None:
    with pytest.raises(MappingDenied) as info:
        mapping("kubernetes").map_identity(subject(k8s_claims(**overrides)))
    assert info.value.rule_location == f"issuers[0].preset[kubernetes].{rule}"


def test_k8s_longest_identity_that_fits() -> None:
    ns, name = "n" * 63, "a" * (255 - 5 - 63)
    claims = k8s_claims(sub=f"system:serviceaccount:{ns}:{name}", **{"kubernetes.io": None})
    ident = mapping("kubernetes").map_identity(subject(claims)).identity.identity
    assert len(ident) == 255


@pytest.mark.parametrize(
    ("sub", "parsed"),
    [
        pytest.param("system:serviceaccount:ai:agent-gateway", ("ai", "agent-gateway"), id="ok"),
        pytest.param("system:serviceaccount:ai:agent.v2", ("ai", "agent.v2"), id="dotted-name"),
        pytest.param("system:serviceaccount:ai:-bad", None, id="leading-dash"),
        pytest.param(42, None, id="not-a-string"),
    ],
)
def test_parse_k8s_subject(sub: object, parsed: tuple[str, str] | None) -> None:
    assert parse_k8s_subject(sub) == parsed


# --- presets with configuration ---------------------------------------------------------------


def test_user_rules_add_to_preset_rules_and_mappings_override() -> None:
    m = mapping(
        "github-actions",
        claim_validation_rules=[
            {"expression": 'claims.repository_owner == "octo-org"', "message": "owner"}
        ],
        claim_mappings={
            "attributes": {"repository": '"renamed"', "visibility": "claims.repository_visibility"}
        },
    )
    ident = m.map_identity(subject(github_claims())).identity
    assert ident.identity == "github:65/74"
    assert ident.attributes["repository"] == "renamed"
    assert ident.attributes["visibility"] == "private"
    with pytest.raises(MappingDenied) as info:
        m.map_identity(subject(github_claims(repository_owner="evil-org")))
    assert info.value.rule_location == "issuers[0].claim_validation_rules[0]"
    # Preset rules cannot be configured away and run first.
    with pytest.raises(MappingDenied) as info:
        m.map_identity(subject(github_claims(repository_id=None, repository_owner="evil-org")))
    assert info.value.rule_location == "issuers[0].preset[github-actions].repository_id"


def test_user_identity_overrides_preset_identity() -> None:
    m = mapping("kubernetes", claim_mappings={"identity": '"cluster-a:" + claims.sub'})
    ident = m.map_identity(subject(k8s_claims())).identity
    assert ident.identity == "cluster-a:system:serviceaccount:ai:agent-gateway"
    assert ident.attributes["namespace"] == "ai"


def test_registry() -> None:
    assert set(PRESETS) == {"github-actions", "gitlab", "kubernetes"}
    assert get_preset("gitlab") is GITLAB
    assert PRESETS["github-actions"] is GITHUB_ACTIONS
    assert PRESETS["kubernetes"] is KUBERNETES
    with pytest.raises(KeyError):
        get_preset("jenkins")


def test_k8s_functions_guard_unparsable_subjects() -> None:
    # The rules run first, so these paths only matter if the preset is used on its own.
    from sts.trust.presets import PresetError

    with pytest.raises(PresetError):
        KUBERNETES.identity({"sub": "not-a-service-account"})
    assert KUBERNETES.attributes({"sub": "not-a-service-account"}) == {}
