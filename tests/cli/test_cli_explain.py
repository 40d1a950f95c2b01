"""``sts explain`` on realistic GitHub Actions, GitLab CI and Kubernetes tokens against the
documented example configurations (docs/configuration.md "Complete examples").

Each token carries the claim set its platform documents (GitHub "OpenID Connect reference",
GitLab "ID token authentication", Kubernetes projected service account tokens), signed by a
test key whose public half is given with ``--jwks``, as an operator does offline with the key
set of the real issuer.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_support import Run, assert_one_line_user_error

from sts import jose

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def doc_example(name: str) -> str:
    for block in re.findall(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S):
        if block.startswith(f"# example: {name}\n"):
            return block
    raise AssertionError(f"no example {name!r} in {DOCS}")


KEY = jose.generate_private_key("RS256", "platform-key-1")
OTHER_KEY = jose.generate_private_key("RS256", "platform-key-1")  # same kid, other key


def github_claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())  # at call time: the suite may run long after collection
    claims = {
        "jti": str(uuid.uuid4()), "sub": "repo:octo-org/octo-repo:environment:prod", "environment": "prod",
        "aud": "https://sts.example.com", "ref": "refs/heads/main", "sha": "d6a3c4b1e7f08a9c2b5d4e3f1a0b9c8d7e6f5a4b",
        "repository": "octo-org/octo-repo", "repository_owner": "octo-org", "actor_id": "12", "repository_visibility": "private",
        "repository_id": "74", "repository_owner_id": "65", "run_id": "5120918243", "run_number": "10", "run_attempt": "1",
        "runner_environment": "github-hosted", "actor": "octocat", "workflow": "deploy", "head_ref": "", "base_ref": "",
        "event_name": "push", "ref_type": "branch", "ref_protected": "true", "workflow_ref":
        "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main", "workflow_sha": "d6a3c4b1e7f08a9c2b5d4e3f1a0b9c8d7e6f5a4b",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_sha": "d6a3c4b1e7f08a9c2b5d4e3f1a0b9c8d7e6f5a4b",
        "iss": "https://token.actions.githubusercontent.com", "nbf": now - 5, "iat": now - 5, "exp": now + 295,
    }
    return {**claims, **over}


def gitlab_claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "namespace_id": "72", "namespace_path": "my-group", "project_id": "20", "project_path": "my-group/my-project",
        "user_id": "1", "user_login": "sample-user", "user_email": "sample-user@example.com",
        "user_access_level": "maintainer", "pipeline_id": "574", "pipeline_source": "push", "job_id": "302",
        "ref": "v1.4.0", "ref_type": "tag", "ref_path": "refs/tags/v1.4.0", "ref_protected": "true",
        "environment": "production", "environment_protected": "true", "deployment_tier": "production",
        "runner_id": 1, "runner_environment": "gitlab-hosted", "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "project_visibility": "private", "ci_config_ref_uri": "gitlab.com/my-group/my-project//.gitlab-ci.yml@refs/tags/v1.4.0",
        "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc", "jti": str(uuid.uuid4()),
        "iss": "https://gitlab.com", "sub": "project_path:my-group/my-project:ref_type:tag:ref:v1.4.0",
        "aud": "https://sts.example.com", "iat": now - 5, "nbf": now - 10, "exp": now + 3595,
    }
    return {**claims, **over}


def k8s_claims(namespace: str = "ai", name: str = "agent-gateway", **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "aud": ["https://sts.example.com"], "exp": now + 3595, "iat": now - 5, "nbf": now - 5,
        "iss": "https://oidc.prod.example.com", "jti": str(uuid.uuid4()),
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "ip-10-0-1-17.ec2.internal", "uid": "3c2ab5f2-8c55-4c6f-9d34-8e1f7b0a6c21"},
            "pod": {"name": f"{name}-7d9f8b6c5d-x2k4q", "uid": "9b1c5e0a-2f4d-4e7b-8a6c-1d3f5b7e9a20"},
            "serviceaccount": {"name": name, "uid": "5e8d2c1a-7b4f-4a6e-9c3d-2f1e0b9a8c7d"},
            "warnafter": now + 2875,
        },
        "sub": f"system:serviceaccount:{namespace}:{name}",
    }
    return {**claims, **over}


@pytest.fixture()
def files(cli: Path) -> Callable[..., Path]:
    (cli / "keys.jwks.json").write_text(json.dumps({"keys": [KEY.public_jwk()]}))

    def write(name: str, content: str) -> Path:
        path = cli / name
        path.write_text(content)
        return path

    return write


def sign(claims: dict[str, Any], key: jose.PrivateKey = KEY) -> str:
    return jose.sign(claims, key, typ="JWT")


def explain(run: Callable[..., Run], config: Path, token: Path, *args: str) -> Run:
    return run("explain", "--config", str(config), "--token", str(token), "--jwks", "keys.jwks.json", *args)


def as_json(result: Run) -> dict[str, Any]:
    return json.loads(result.stdout)


# --- GitHub Actions ----------------------------------------------------------------------------


def test_github_deploy_from_main_would_be_issued(cli: Path, run: Callable[..., Run], files: Callable[..., Path]) -> None:
    config = files("sts.yaml", doc_example("github-actions"))
    token = files("job.jwt", sign(github_claims()))
    result = explain(run, config, token, "--audience", "https://vector.example.com", "--scope", "read write")
    assert result.code == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("would issue a token\n")
    assert "issuer: github: the token's iss 'https://token.actions.githubusercontent.com' equals" in out
    assert "key: kid platform-key-1, alg RS256 (RSA)" in out
    assert re.search(r"ok +signature", out) and re.search(r"ok +aud ", out)
    assert "ok     enforce issuers[0].claim_validation_rules[0]: only the octo-org organisation" in out
    assert "identity: github:65/74 (from issuers[0].preset[github-actions].identity)" in out
    assert re.search(r"1\. deploy-prod +WON: target 'https://vector.example.com', scopes 'read write'", out)
    assert re.search(r"2\. org-read +not reached", out)
    assert '"sub": "github:65/74"' in out and '"scope": "read write"' in out
    # Capped by the GitHub token's own remaining life (under 300 s), below the grant's 600.
    lifetime = re.search(r"lifetime (\d+) s", out)
    assert lifetime is not None and 200 < int(lifetime[1]) <= 295
    assert not (cli / "var").exists()  # nothing written: not even a database

    data = as_json(explain(run, config, token, "--audience", "https://vector.example.com", "--scope", "read write", "--json"))
    assert data["outcome"] == "would_issue" and data["decision"]["grant"] == "deploy-prod"
    assert data["token"]["claims"]["aud"] == "https://vector.example.com"
    assert data["tokens"][0]["attributes"]["sub_context"] == "environment:prod"
    assert data["trace_agrees"] is True
    assert data["audit"]["outcome"] == "issued"


def test_github_pull_request_of_another_repository_asking_to_write(cli: Path, run: Callable[..., Run],
                                                                   files: Callable[..., Path]) -> None:
    config = files("sts.yaml", doc_example("github-actions"))
    token = files("pr.jwt", sign(github_claims(
        sub="repo:octo-org/docs:pull_request", repository="octo-org/docs", repository_id="81", environment=None,
        ref="refs/pull/7/merge", event_name="pull_request", runner_environment="self-hosted")))
    result = explain(run, config, token, "--audience", "https://vector.example.com", "--scope", "write")
    assert result.code == 1
    out = result.stdout
    assert out.startswith("would refuse: invalid_scope (scope_not_allowed)\n")
    assert ('the caller would see: HTTP 400 {"error": "invalid_scope", "error_description": '
            '"The requested scope is not allowed."}') in out
    assert re.search(r"1\. deploy-prod +stopped at match: condition is false", out)
    assert re.search(r"2\. org-read +stopped at scope: scope 'write' is outside the target's 'read'", out)
    # The audit-mode rule fails and only adds a note.
    assert "FAILED audit   issuers[0].claim_validation_rules[1]: self-hosted runners are not trusted yet" in out
    assert "identity: github:65/81" in out


def test_github_token_of_another_organisation_fails_a_claim_rule(cli: Path, run: Callable[..., Run],
                                                                 files: Callable[..., Path]) -> None:
    config = files("sts.yaml", doc_example("github-actions"))
    token = files("fork.jwt", sign(github_claims(sub="repo:evil-org/octo-repo:ref:refs/heads/main", repository_owner="evil-org",
                                                 repository_owner_id="99", repository="evil-org/octo-repo")))
    data = as_json(explain(run, config, token, "--audience", "https://vector.example.com", "--json"))
    assert data["outcome"] == "would_refuse"
    assert data["refusal"]["answer"] == {"error": "invalid_request",
                                         "error_description": "The subject token does not satisfy the issuer's claim rules."}
    assert data["refusal"]["reason"] == "mapping_claim_validation_failed"
    rules = {r["rule"]: r["result"] for r in data["tokens"][0]["mapping"]["rules"]}
    assert rules["issuers[0].claim_validation_rules[0]"] == "failed"
    assert rules["issuers[0].claim_validation_rules[1]"] == "not_reached"
    assert data["tokens"][0]["mapping"]["denied"]["message"] == "only the octo-org organisation"
    assert "grants" not in data  # refused before the policy


def test_a_token_signed_by_another_key_and_an_expired_one(cli: Path, run: Callable[..., Run], files: Callable[..., Path]) -> None:
    config = files("sts.yaml", doc_example("github-actions"))
    forged = files("forged.jwt", sign(github_claims(), OTHER_KEY))
    result = explain(run, config, forged, "--audience", "https://vector.example.com")
    assert result.code == 1
    assert "would refuse: invalid_request (bad_signature)" in result.stdout
    assert re.search(r"FAILED signature", result.stdout) and re.search(r"- +aud ", result.stdout)
    assert "(NOT verified: claims below are unverified)" in result.stdout

    now = int(time.time())
    expired = files("old.jwt", sign(github_claims(iat=now - 900, nbf=now - 900, exp=now - 600)))
    result = explain(run, config, expired, "--audience", "https://vector.example.com")
    assert result.code == 1
    assert re.search(r"FAILED not expired +expired: now must be before exp \+ 60 s leeway", result.stdout)
    # The same token explained at a time it was valid (--at).
    result = explain(run, config, expired, "--audience", "https://vector.example.com", "--at", str(now - 700))
    assert result.code == 0, result.stdout


# --- GitLab CI ---------------------------------------------------------------------------------


def test_gitlab_release_from_a_protected_tag(cli: Path, run: Callable[..., Run], files: Callable[..., Path]) -> None:
    config = files("sts.yaml", doc_example("gitlab"))
    token = files("release.jwt", sign(gitlab_claims()))
    data = as_json(explain(run, config, token, "--client-id", "gitlab-runner", "--json"))
    assert data["outcome"] == "would_issue", data.get("refusal")
    assert data["client"] == {"client_id": "gitlab-runner", "may_exchange": True}
    assert data["target"] == "https://artifacts.example.com"  # the grant's default target
    assert data["token"]["algorithm"] == "RS256" and data["token"]["lifetime"] == 300
    assert data["token"]["claims"]["sub"] == "gitlab:72/20"
    assert data["token"]["claims"]["client_id"] == "gitlab-runner"
    assert data["token"]["claims"]["scope"] == "publish"

    # This configuration admits no public client: the server would answer invalid_client.
    result = explain(run, config, token)
    assert result.code == 1
    assert result.stdout.startswith("would refuse: invalid_client (client_authentication_required)")
    assert "HTTP 401" in result.stdout


def test_gitlab_branch_pipeline_on_an_unprotected_branch(cli: Path, run: Callable[..., Run], files: Callable[..., Path]) -> None:
    config = files("sts.yaml", doc_example("gitlab"))
    token = files("branch.jwt", sign(gitlab_claims(
        ref="feature-1", ref_type="branch", ref_path="refs/heads/feature-1", ref_protected="false",
        sub="project_path:my-group/my-project:ref_type:branch:ref:feature-1")))
    result = explain(run, config, token, "--client-id", "gitlab-runner")
    assert result.code == 1
    assert ("FAILED enforce issuers[0].claim_validation_rules[1]: protected branches and tags only") in result.stdout
    assert "mapping refused at issuers[0].claim_validation_rules[1]: protected branches and tags only" in result.stdout


# --- Kubernetes --------------------------------------------------------------------------------


def test_kubernetes_gateway_reaches_an_mcp_tool(cli: Path, run: Callable[..., Run], files: Callable[..., Path]) -> None:
    config = files("sts.yaml", doc_example("kubernetes"))
    token = files("sa.jwt", sign(k8s_claims()))
    result = explain(run, config, token, "--resource", "https://mcp.example.com/tools/search")
    assert result.code == 0, result.stdout
    out = result.stdout
    assert "identity: k8s:ai/agent-gateway" in out
    assert "pod=agent-gateway-7d9f8b6c5d-x2k4q" in out
    assert re.search(r"1\. agent-gateway-tools +WON: target 'https://mcp.example.com/tools/search', scopes 'invoke'", out)
    assert re.search(r"2\. ai-namespace-search \(audit\) +audit mode: would allow", out)


def test_kubernetes_other_workload_of_the_namespace_has_no_enforced_grant(cli: Path, run: Callable[..., Run],
                                                                         files: Callable[..., Path]) -> None:
    config = files("sts.yaml", doc_example("kubernetes"))
    token = files("sa.jwt", sign(k8s_claims(name="indexer")))
    data = as_json(explain(run, config, token, "--resource", "https://mcp.example.com/tools/search", "--json"))
    assert data["outcome"] == "would_refuse" and data["refusal"]["reason"] == "no_grant"
    grants = {g["grant"]: g for g in data["grants"]}
    assert grants["agent-gateway-tools"]["step"] == "match"
    assert grants["agent-gateway-tools"]["why"] == "identity is not 'k8s:ai/agent-gateway'"
    assert grants["ai-namespace-search"]["outcome"] == "audit"
    assert grants["ai-namespace-search"]["why"].startswith("would allow")
    assert any("audit grant 'ai-namespace-search' would allow" in n for n in data["notes"])

    # An actor the audit grant's delegation does not name: its own outcome says so.
    actor = files("actor.jwt", sign(k8s_claims(name="stranger")))
    data = as_json(explain(run, config, token, "--resource", "https://mcp.example.com/tools/search",
                           "--actor-token", str(actor), "--json"))
    assert [t["role"] for t in data["tokens"]] == ["subject", "actor"]
    assert {g["grant"]: g for g in data["grants"]}["ai-namespace-search"]["why"] == "would deny: actor_not_allowed"


def test_kubernetes_token_for_another_audience(cli: Path, run: Callable[..., Run], files: Callable[..., Path]) -> None:
    config = files("sts.yaml", doc_example("kubernetes"))
    token = files("sa.jwt", sign(k8s_claims(aud=["https://kubernetes.default.svc"])))
    data = as_json(explain(run, config, token, "--resource", "https://mcp.example.com/tools/search", "--json"))
    checks = {c["check"]: c for c in data["tokens"][0]["checks"]}
    assert checks["aud"]["result"] == "failed"
    assert "https://kubernetes.default.svc" in checks["aud"]["detail"]
    assert data["refusal"]["reason"] == "aud_mismatch"
    # What the server would record for it: the audiences, and never the token.
    facts = data["audit"]["context"]["explain"]
    assert facts["audiences"] == ["https://kubernetes.default.svc"]
    assert token.read_text() not in json.dumps(data["audit"])


# --- exit codes and user errors ----------------------------------------------------------------


def test_keys_unreachable_is_undecided(cli: Path, run: Callable[..., Run], files: Callable[..., Path]) -> None:
    now = int(time.time())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = files("sts.yaml", f"""
issuer: http://127.0.0.1:8080
issuers:
  - name: local
    issuer: http://127.0.0.1:{port}
    allow_insecure_http: true
    audiences: [sts]
grants:
  - name: any
    match: {{identity_pattern: "^local:.*$"}}
    targets: [{{audience: https://a.example.com}}]
""")
    token = files("t.jwt", sign({"iss": f"http://127.0.0.1:{port}", "sub": "x", "aud": "sts", "exp": now + 60}))
    result = run("explain", "--config", str(config), "--token", str(token), "--dev")
    assert result.code == 3, result.stdout + result.stderr
    assert result.stdout.startswith("could not decide (the server would answer 5xx): temporarily_unavailable")


@pytest.mark.parametrize(("args", "fragments"), [
    pytest.param(("--token", "missing.jwt"), ("--token missing.jwt: no such file",), id="missing-token"),
    pytest.param(("--token", "empty.jwt"), ("the file is empty",), id="empty-token"),
    pytest.param(("--token", "job.jwt", "--jwks", "bad.json"), ("--jwks bad.json: not a JSON file",), id="bad-jwks"),
    pytest.param(("--token", "job.jwt", "--at", "yesterday"), ("--at:",), id="bad-time"),
    pytest.param((), ("nothing to explain",), id="nothing"),
    pytest.param(("--token", "-", "--actor-token", "-"), ("cannot both read standard input",), id="two-stdin"),
])
def test_user_errors_are_one_line(cli: Path, run: Callable[..., Run], files: Callable[..., Path], args: tuple[str, ...],
                                  fragments: tuple[str, ...]) -> None:
    config = files("sts.yaml", doc_example("github-actions"))
    files("job.jwt", sign(github_claims()))
    files("empty.jwt", "\n")
    files("bad.json", "{not json")
    assert_one_line_user_error(run("explain", "--config", str(config), *args), *fragments)


def test_invalid_configuration_is_a_user_error(cli: Path, run: Callable[..., Run], files: Callable[..., Path]) -> None:
    config = files("sts.yaml", "issuer: https://sts.example.com\ngrants: 3\n")
    files("job.jwt", sign(github_claims()))
    assert_one_line_user_error(run("explain", "--config", str(config), "--token", "job.jwt"), "sts.yaml")


# --- SPIFFE JWT-SVIDs ----------------------------------------------------------------------------


def test_a_jwt_svid_of_a_trust_domain(cli: Path, run: Callable[..., Run], files: Callable[..., Path]) -> None:
    from spiffe_support import TrustDomain

    td = TrustDomain("example.org")
    files("example.org.bundle.json", json.dumps(td.bundle()))
    config = files("sts.yaml", """
issuer: https://sts.example.com
trust_domains:
  - name: example.org
    bundle_file: example.org.bundle.json
    audiences: [https://sts.example.com]
    path_templates:
      - {template: "/ns/{namespace}/sa/{service_account}", identity: "k8s:{namespace}/{service_account}"}
grants:
  - name: payments
    issuers: [example.org]
    match: {identity: k8s:prod/payments}
    targets: [{audience: https://ledger.example.com, scopes: [post], default_scopes: [post]}]
""")
    files("svid.jwt", td.mint("/ns/prod/sa/payments", "https://sts.example.com"))
    data = json.loads(run("explain", "--config", str(config), "--token", "svid.jwt", "--audience",
                          "https://ledger.example.com", "--json").stdout)
    assert data["outcome"] == "would_issue", data.get("refusal")
    assert data["tokens"][0]["issuer"]["name"] == "example.org"
    assert data["tokens"][0]["identity"] == "k8s:prod/payments"
    assert data["token"]["claims"]["sub"] == "k8s:prod/payments"

    files("other.jwt", td.mint("/ns/prod/sa/payments", "https://sts.example.com", key=TrustDomain("x.org").jwt_keys[0][1]))
    result = run("explain", "--config", str(config), "--token", "other.jwt", "--audience", "https://ledger.example.com")
    assert result.code == 1
    assert "would refuse: invalid_request" in result.stdout

    files("expired.jwt", td.mint("/ns/prod/sa/payments", "https://sts.example.com", lifetime=-600))
    result = run("explain", "--config", str(config), "--token", "expired.jwt", "--audience", "https://ledger.example.com")
    assert result.code == 1
    assert re.search(r"ok +signature", result.stdout) and re.search(r"FAILED claims", result.stdout)


def test_an_elevated_scope_needs_an_approval_and_none_is_recorded(cli: Path, run: Callable[..., Run],
                                                                 files: Callable[..., Path]) -> None:
    config = files("sts.yaml", doc_example("github-actions").replace(
        "        scopes: [read, write]\n        default_scopes: [read]\n",
        "        scopes: [read, write]\n        default_scopes: [read]\n        approval: {scopes: [write]}\n", 1))
    token = files("job.jwt", sign(github_claims()))
    result = explain(run, config, token, "--audience", "https://vector.example.com", "--scope", "read write")
    assert result.code == 1, result.stdout
    assert "would refuse: approval_required (approval_would_be_requested)" in result.stdout
    assert not (cli / "var").exists()
    assert explain(run, config, token, "--audience", "https://vector.example.com", "--scope", "read").code == 0
