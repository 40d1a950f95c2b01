"""The ``trust_domains:`` configuration (sts.config.spiffe, loader) and the SPIFFE mapping
(sts.spiffe.mapping): path templates, CEL over ``claims`` and ``spiffe``, identities."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from spiffe_support import TrustDomain, WebCA, pem

from sts.config.loader import ConfigInvalid, load_config
from sts.config.spiffe import TrustDomainConfig
from sts.spiffe.id import parse_spiffe_id
from sts.spiffe.mapping import SpiffeMapping, VerifiedSvid
from sts.trust.mapping import MappingDenied

TD = TrustDomain("example.org")


def _files(tmp_path: Path) -> None:
    (tmp_path / "bundle.json").write_text(json.dumps(TD.bundle()))
    (tmp_path / "ca.pem").write_bytes(pem(WebCA().cert))


def _config(tmp_path: Path, trust_domains: list[dict[str, Any]], **extra: Any) -> Path:
    _files(tmp_path)
    doc: dict[str, Any] = {"issuer": "https://sts.example.com", "trust_domains": trust_domains, **extra}
    path = tmp_path / "sts.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _problems(tmp_path: Path, trust_domains: list[dict[str, Any]], **extra: Any) -> list[tuple[str, str]]:
    try:
        load_config(_config(tmp_path, trust_domains, **extra))
    except ConfigInvalid as exc:
        return [(p.path, p.message) for p in exc.problems]
    return []


GOOD = {"name": "example.org", "bundle_file": "bundle.json", "audiences": ["sts"]}


def test_trust_domains_alone_are_a_valid_configuration(tmp_path: Path) -> None:
    grants = [{"name": "g", "issuers": ["example.org"], "match": {"identity_pattern": "^spiffe://example.org/.*$"},
               "targets": [{"audience": "https://api.example.com"}]}]
    loaded = load_config(_config(tmp_path, [GOOD], grants=grants))
    assert loaded.config.issuers == () and loaded.config.trust_domains[0].name == "example.org"


def test_camel_case_keys(tmp_path: Path) -> None:
    raw = {"name": "example.org", "bundleEndpoint": {"url": "https://spire.example.org/bundle", "profile": "https_spiffe",
                                                     "spiffeId": "spiffe://example.org/spire/server",
                                                     "bootstrapBundleFile": "bundle.json"},
           "pathTemplates": [{"template": "/ns/{namespace}/sa/{service_account}"}]}
    assert _problems(tmp_path, [raw]) == []


def test_no_issuers_and_no_trust_domains(tmp_path: Path) -> None:
    assert ("issuers", "must have at least 1 item") in _problems(tmp_path, [])


PROBLEMS = [
    pytest.param({"name": "Example.org"}, "trust_domains[0].name", "SPIFFE trust domain name", id="uppercase-name"),
    pytest.param({"name": "spiffe://example.org"}, "trust_domains[0].name", "SPIFFE trust domain name", id="name-with-scheme"),
    pytest.param({"bundle_file": None}, "trust_domains[0]", "exactly one of bundle_file, bundle_endpoint", id="no-source"),
    pytest.param({"bundle_endpoint": {"url": "https://a/b", "profile": "https_web"}}, "trust_domains[0]",
                 "exactly one of", id="two-sources"),
    pytest.param({"bundle_file": "missing.json"}, "trust_domains[0].bundle_file", "file not found", id="file-missing"),
    pytest.param({"bundle_file": "ca.pem"}, "trust_domains[0].bundle_file", "not a SPIFFE bundle", id="file-not-bundle"),
    pytest.param({"audiences": ["a", "a"]}, "trust_domains[0].audiences", "duplicate", id="duplicate-audience"),
    pytest.param({"algorithms": ["EdDSA"]}, "trust_domains[0].algorithms", "not a JWT-SVID algorithm", id="eddsa"),
    pytest.param({"algorithms": ["HS256"]}, "trust_domains[0].algorithms", "not a JWT-SVID algorithm", id="hmac"),
    pytest.param({"clock_skew": 301}, "trust_domains[0].clock_skew", "300", id="skew"),
    pytest.param({"unknown": 1}, "trust_domains[0].unknown", "unknown key", id="unknown-key"),
    pytest.param({"path_templates": [{"template": "ns/{a}"}]}, "trust_domains[0].path_templates[0].template",
                 "start with '/'", id="template-relative"),
    pytest.param({"path_templates": [{"template": "/ns/{a}/"}]}, "trust_domains[0].path_templates[0].template",
                 "start with '/'", id="template-trailing-slash"),
    pytest.param({"path_templates": [{"template": "/ns/x{a}"}]}, "trust_domains[0].path_templates[0].template",
                 "whole segment", id="template-partial-placeholder"),
    pytest.param({"path_templates": [{"template": "/ns/{A}"}]}, "trust_domains[0].path_templates[0].template",
                 "whole segment", id="template-bad-name"),
    pytest.param({"path_templates": [{"template": "/{a}/{a}"}]}, "trust_domains[0].path_templates[0].template",
                 "distinct", id="template-duplicate-name"),
    pytest.param({"path_templates": [{"template": "/a/../b"}]}, "trust_domains[0].path_templates[0].template",
                 "valid SPIFFE ID path segments", id="template-dot-dot"),
    pytest.param({"path_templates": [{"template": "/ns/{ns}", "identity": "k8s:{sa}"}]}, "trust_domains[0].path_templates[0]",
                 "does not capture", id="identity-unknown-name"),
    pytest.param({"path_templates": [{"template": "/ns/{ns}", "identity": "k8s:{ns"}]}, "trust_domains[0].path_templates[0]",
                 "braces", id="identity-unbalanced"),
    pytest.param({"claim_mappings": {"identity": "claims.sub + issuer"}}, "trust_domains[0].claim_mappings.identity",
                 "unknown variable", id="cel-unknown-variable"),
    pytest.param({"claim_mappings": {"identity": "frobnicate(claims.sub)"}}, "trust_domains[0].claim_mappings.identity",
                 "unknown function", id="cel-unknown-function"),
    pytest.param({"claim_validation_rules": [{"expression": "spiffe.path.startsWith("}]},
                 "trust_domains[0].claim_validation_rules[0].expression", "syntax error", id="cel-syntax"),
    pytest.param({"claim_mappings": {"attributes": {"Bad": "claims.x"}}}, "trust_domains[0].claim_mappings.attributes",
                 "attribute names", id="attribute-name"),
]


@pytest.mark.parametrize(("change", "path", "fragment"), PROBLEMS)
def test_trust_domain_problems(tmp_path: Path, change: dict[str, Any], path: str, fragment: str) -> None:
    raw = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    problems = _problems(tmp_path, [raw])
    assert any(p == path and fragment in m for p, m in problems), problems


ENDPOINT_PROBLEMS = [
    pytest.param({"url": "http://spire.example.org/bundle", "profile": "https_web"}, "must be an absolute https URL",
                 id="http-url"),
    pytest.param({"url": "https://user:pw@spire.example.org/bundle", "profile": "https_web"}, "user information",
                 id="userinfo"),
    pytest.param({"url": "https://spire.example.org/bundle", "profile": "ftp"}, "https_web", id="unknown-profile"),
    pytest.param({"url": "https://spire.example.org/bundle", "profile": "https_spiffe"}, "needs spiffe_id",
                 id="spiffe-without-id"),
    pytest.param({"url": "https://spire.example.org/bundle", "profile": "https_spiffe", "spiffe_id": "spiffe://example.org/s"},
                 "bootstrap_bundle_file", id="self-serving-without-bootstrap"),
    pytest.param({"url": "https://spire.example.org/bundle", "profile": "https_spiffe", "spiffe_id": "spiffe://x/s/"},
                 "not a valid SPIFFE ID", id="bad-endpoint-id"),
    pytest.param({"url": "https://spire.example.org/bundle", "profile": "https_web", "spiffe_id": "spiffe://x/s"},
                 "belong to the https_spiffe profile", id="web-with-spiffe-id"),
    pytest.param({"url": "https://spire.example.org/bundle", "profile": "https_spiffe", "spiffe_id": "spiffe://other.org/s",
                  "ca_file": "ca.pem"}, "ca_file belongs", id="spiffe-with-ca-file"),
    pytest.param({"url": "https://spire.example.org/bundle", "profile": "https_web", "ca_file": "bundle.json"},
                 "PEM", id="ca-file-not-pem"),
    pytest.param({"url": "https://spire.example.org/bundle", "profile": "https_spiffe", "spiffe_id": "spiffe://example.org/s",
                  "bootstrap_bundle_file": "nope.json"}, "file not found", id="bootstrap-missing"),
]


@pytest.mark.parametrize(("endpoint", "fragment"), ENDPOINT_PROBLEMS)
def test_bundle_endpoint_problems(tmp_path: Path, endpoint: dict[str, Any], fragment: str) -> None:
    raw = {"name": "example.org", "bundle_endpoint": endpoint}
    problems = _problems(tmp_path, [raw])
    assert any(fragment in m for _, m in problems), problems


def test_names_are_shared_with_issuers_and_referenced_by_grants(tmp_path: Path) -> None:
    issuers = [{"name": "prod", "issuer": "https://idp.example.com", "audiences": ["sts"], "keys": {"jwks": {"keys": [
        {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}}}]
    grants = [{"name": "g", "issuers": ["prod", "example.org", "nowhere.org"], "match": {"identity": "x"},
               "targets": [{"audience": "a"}]}]
    problems = _problems(tmp_path, [{**GOOD, "name": "prod"}, GOOD, GOOD], issuers=issuers, grants=grants)
    assert ("trust_domains[0].name", "duplicate name 'prod' (also an issuer or trust domain)") in problems
    assert ("trust_domains[2].name", "duplicate name 'example.org' (also an issuer or trust domain)") in problems
    assert ("grants[0].issuers[2]", "unknown issuer 'nowhere.org'") in problems
    assert not any(p == "grants[0].issuers[1]" for p, _ in problems)


def test_invalid_trust_domain_still_counts_for_grant_references(tmp_path: Path) -> None:
    grants = [{"name": "g", "issuers": ["example.org"], "match": {"identity": "x"}, "targets": [{"audience": "a"}]}]
    problems = _problems(tmp_path, [{**GOOD, "clock_skew": -1}], grants=grants)
    assert [p for p, _ in problems] == ["trust_domains[0].clock_skew"]


# -- the mapping --------------------------------------------------------------------------------


def _mapping(**cfg: Any) -> SpiffeMapping:
    config = TrustDomainConfig.model_validate({"name": "example.org", "bundle_file": "b.json", **cfg})
    return SpiffeMapping(config, location="trust_domains[0]")


def _svid(spiffe_id: str, svid: str = "jwt", **claims: Any) -> VerifiedSvid:
    return VerifiedSvid(issuer_name="example.org", issuer="spiffe://example.org", subject=spiffe_id,
                        claims={"sub": spiffe_id, "exp": 2e9, **claims}, expires_at=2e9, token_sha256="0" * 64,
                        spiffe_id=parse_spiffe_id(spiffe_id), svid=svid)


K8S = [{"template": "/ns/{namespace}/sa/{service_account}", "identity": "k8s:{namespace}/{service_account}"},
       {"template": "/workload/{name}"}]


@pytest.mark.parametrize(
    ("cfg", "spiffe_id", "identity", "attributes"),
    [
        pytest.param({}, "spiffe://example.org/ns/a/sa/b", "spiffe://example.org/ns/a/sa/b", {}, id="default-is-the-spiffe-id"),
        pytest.param({"path_templates": K8S}, "spiffe://example.org/ns/prod/sa/api", "k8s:prod/api",
                     {"namespace": "prod", "service_account": "api"}, id="kubernetes-template"),
        pytest.param({"path_templates": K8S}, "spiffe://example.org/workload/db", "spiffe://example.org/workload/db",
                     {"name": "db"}, id="second-template-no-identity"),
        pytest.param({"path_templates": [{"template": "/a/{x}", "identity": "{trust_domain}|{path}|{spiffe_id}|{x}"}]},
                     "spiffe://example.org/a/1", "example.org|/a/1|spiffe://example.org/a/1|1", {"x": "1"}, id="builtins"),
        pytest.param({"path_templates": K8S, "claim_mappings": {
            "identity": '"mesh:" + spiffe.params.namespace + "/" + spiffe.segments[3]',
            "attributes": {"svid": "spiffe.svid", "namespace": '"overridden"', "team": "claims.team"}}},
            "spiffe://example.org/ns/prod/sa/api", "mesh:prod/api",
            {"namespace": "overridden", "service_account": "api", "svid": "jwt"}, id="cel-overrides-template"),
        pytest.param({"claim_mappings": {"attributes": {"td": "spiffe.trust_domain", "path": "spiffe.path",
                                                        "id": "spiffe.id"}}},
                     "spiffe://example.org/x", "spiffe://example.org/x",
                     {"td": "example.org", "path": "/x", "id": "spiffe://example.org/x"}, id="spiffe-variable"),
    ],
)
def test_mapping(cfg: dict[str, Any], spiffe_id: str, identity: str, attributes: dict[str, Any]) -> None:
    result = _mapping(**cfg).map_identity(_svid(spiffe_id))
    assert result.identity.identity == identity
    assert result.identity.issuer_name == "example.org"
    assert dict(result.identity.attributes) == attributes


@pytest.mark.parametrize(
    ("cfg", "spiffe_id", "reason"),
    [
        pytest.param({"path_templates": K8S}, "spiffe://example.org/ns/a/sa/b/extra", "path_template_mismatch",
                     id="no-template-matches"),
        pytest.param({"path_templates": K8S}, "spiffe://example.org/ns/a", "path_template_mismatch", id="too-short"),
        pytest.param({"claim_validation_rules": [{"expression": 'spiffe.path.startsWith("/ns/")', "message": "ns only"}]},
                     "spiffe://example.org/other", "claim_validation_failed", id="rule-false"),
        pytest.param({"claim_validation_rules": [{"expression": "claims.missing == 1"}]},
                     "spiffe://example.org/x", "claim_validation_error", id="rule-error"),
        pytest.param({}, "spiffe://example.org/" + "a" * 300, "identity_invalid", id="identity-too-long"),
        pytest.param({"claim_mappings": {"identity": "claims.nope"}}, "spiffe://example.org/x", "identity_mapping_error",
                     id="identity-mapping-error"),
        pytest.param({"claim_mappings": {"attributes": {"a": "claims.sub.size() / 0"}}}, "spiffe://example.org/x",
                     "attribute_mapping_error", id="attribute-error"),
        pytest.param({"claim_mappings": {"attributes": {"a": "{'k': 1}"}}}, "spiffe://example.org/x", "attribute_invalid",
                     id="attribute-map-value"),
    ],
)
def test_mapping_denials(cfg: dict[str, Any], spiffe_id: str, reason: str) -> None:
    with pytest.raises(MappingDenied) as info:
        _mapping(**cfg).map_identity(_svid(spiffe_id))
    assert info.value.reason == reason
    assert spiffe_id not in str(info.value)


def test_audit_rules_only_add_notes() -> None:
    mapping = _mapping(claim_validation_rules=[{"expression": 'spiffe.svid == "x509"', "mode": "audit", "message": "x509 only"}])
    result = mapping.map_identity(_svid("spiffe://example.org/x"))
    assert result.audit_notes == ["audit rule trust_domains[0].claim_validation_rules[0] failed: x509 only"]


def test_yaml_example_from_the_docs(tmp_path: Path) -> None:
    _files(tmp_path)
    (tmp_path / "sts.yaml").write_text(textwrap.dedent("""\
        issuer: https://sts.example.com
        trust_domains:
          - name: example.org
            bundle_file: bundle.json
            audiences: [https://sts.example.com]
            path_templates:
              - template: /ns/{namespace}/sa/{service_account}
                identity: "k8s:{namespace}/{service_account}"
        grants:
          - name: payments
            issuers: [example.org]
            match: {identity: "k8s:prod/payments"}
            targets: [{audience: https://ledger.example.com, scopes: [read]}]
        """))
    assert load_config(tmp_path / "sts.yaml").config.trust_domains[0].path_templates[0].identity == "k8s:{namespace}/{service_account}"
