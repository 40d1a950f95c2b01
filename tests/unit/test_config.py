"""sts.config: schema validation, the loader's all-at-once problem report, compiled output."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sts.config import (
    BrokerConfig,
    ConfigInvalid,
    ConfigProblem,
    LoadedConfig,
    check_config,
    load_config,
    load_config_bytes,
)
from sts.config.models import (
    KeysConfig,
    MatchConfig,
    format_location,
    is_absolute_uri,
    is_loopback_host,
    validate_jwks,
)
from sts.subject.model import VerifiedSubject
from sts.trust import Allow, CompiledTrust

EXAMPLE = Path(__file__).resolve().parents[2] / "sts" / "examples" / "example.yaml"
SECRET_HASH = "ab" * 32
PUBLIC_EC = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    "kid": "k1",
}

BASE: dict[str, Any] = {
    "issuer": "https://sts.example.com",
    "tokens": {"default_lifetime": 600, "max_lifetime": 3600, "algorithm": "ES256"},
    "clients": {
        "allow_public": False,
        "registered": [
            {
                "client_id": "ci-runner",
                "auth_method": "client_secret_basic",
                "secret_sha256": SECRET_HASH,
            },
            {
                "client_id": "agent.gw",
                "auth_method": "private_key_jwt",
                "jwks": {"keys": [PUBLIC_EC]},
            },
        ],
    },
    "issuers": [
        {
            "name": "github",
            "issuer": "https://token.actions.githubusercontent.com",
            "preset": "github-actions",
            "audiences": ["https://sts.example.com"],
            "claim_validation_rules": [
                {
                    "expression": 'claims.repository_owner == "octo-org"',
                    "message": "owner must be octo-org",
                }
            ],
        },
        {
            "name": "cluster",
            "issuer": "https://k8s.example.com",
            "preset": "kubernetes",
            "audiences": ["https://sts.example.com"],
            "keys": {"jwks": {"keys": [PUBLIC_EC]}},
            "require_jti": True,
        },
    ],
    "grants": [
        {
            "name": "deploy",
            "issuers": ["github"],
            "match": {"identity": "github:65/74"},
            "targets": [
                {
                    "audience": "https://vector.example.com",
                    "scopes": ["read", "write"],
                    "default_scopes": ["read"],
                },
                {
                    "resource_prefix": "https://mcp.example.com/tools/",
                    "scopes": ["invoke"],
                    "algorithm": "RS256",
                },
            ],
            "default_target": "https://vector.example.com",
            "lifetime": 900,
            "delegation": {"actors": [{"identity": "k8s:ai/agent-gateway"}]},
        },
        {
            "name": "agents",
            "mode": "audit",
            "match": {"condition": 'attributes.namespace == "ai"'},
            "targets": [{"resource": "https://mcp.example.com/tools/search", "scopes": ["invoke"]}],
        },
    ],
}


def write(tmp_path: Path, data: dict[str, Any] | str, name: str = "sts.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def problems_of(tmp_path: Path, data: dict[str, Any] | str) -> list[ConfigProblem]:
    return check_config(write(tmp_path, data))


def mutate(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    fn(data)
    return data


# --- valid files ----------------------------------------------------------------------------------


def test_valid_file_loads_and_compiles(tmp_path: Path) -> None:
    p = write(tmp_path, BASE)
    loaded = load_config(p)
    assert isinstance(loaded, LoadedConfig)
    assert loaded.version == hashlib.sha256(p.read_bytes()).hexdigest()[:12]
    assert loaded.base_dir == tmp_path.resolve()
    assert loaded.requires_dev_mode() == []
    assert isinstance(loaded.compiled, CompiledTrust)
    assert set(loaded.compiled.mappings) == {"github", "cluster"}
    assert loaded.static_jwks == {"cluster": {"keys": [PUBLIC_EC]}}
    cfg = loaded.config
    assert cfg.clients.registered[0].secret_sha256 == SECRET_HASH
    assert cfg.issuers[0].keys.source == "discovery"
    assert cfg.issuers[0].algorithms == ("RS256", "ES256", "PS256", "EdDSA")
    assert cfg.issuers[1].keys.source == "jwks"
    assert cfg.grants[0].targets[1].kind == "resource_prefix"
    assert check_config(p) == []


def test_defaults() -> None:
    cfg = BrokerConfig.model_validate(
        {
            "issuer": "https://sts.example.com",
            "issuers": [{"name": "a", "issuer": "https://a.example.com", "audiences": ["x"]}],
        }
    )
    assert (cfg.tokens.default_lifetime, cfg.tokens.max_lifetime, cfg.tokens.algorithm) == (
        900,
        3600,
        "ES256",
    )
    assert cfg.tokens.workload_claim == "workload"
    assert cfg.clients.allow_public is True and cfg.clients.registered == ()
    iss = cfg.issuers[0]
    assert (iss.clock_skew, iss.max_token_lifetime, iss.require_jti, iss.expected_typ) == (
        60,
        86400,
        False,
        None,
    )
    assert iss.keys.discovery is True and iss.preset is None
    assert cfg.grants == ()


def test_camel_case_keys_are_accepted(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        issuer: https://sts.example.com
        tokens: {defaultLifetime: 300, maxLifetime: 600, workloadClaim: wl}
        issuers:
          - name: gl
            issuer: https://gitlab.example.com
            preset: gitlab
            audiences: [https://sts.example.com]
            keys: {jwksUri: https://gitlab.example.com/oauth/discovery/keys}
            maxTokenLifetime: 3600
            claimValidationRules:
              - {expression: 'claims.ref_protected == "true"', message: protected refs only, mode: audit}
            claimMappings:
              attributes: {tier: claims.deployment_tier}
        grants:
          - name: g
            match: {identityPattern: '^gitlab:72/.*$'}
            targets: [{resourcePrefix: 'https://api.example.com/', defaultScopes: [], scopes: [a]}]
            capToSubjectLifetime: false
        """
    )
    cfg = load_config(write(tmp_path, text)).config
    assert cfg.tokens.workload_claim == "wl"
    assert cfg.issuers[0].keys.jwks_uri == "https://gitlab.example.com/oauth/discovery/keys"
    assert cfg.issuers[0].claim_validation_rules[0].mode == "audit"
    assert cfg.grants[0].cap_to_subject_lifetime is False


def test_models_are_frozen() -> None:
    cfg = BrokerConfig.model_validate(BASE)
    with pytest.raises(Exception, match="frozen"):
        cfg.issuer = "https://other.example.com"


def test_example_file_loads_with_dev_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(EXAMPLE, tmp_path / "example.yaml")
    # Without the dev key file next to it, the loader says exactly that.
    [problem] = check_config(tmp_path / "example.yaml")
    assert problem.path == "issuers[0].keys.jwks_file" and "not found" in problem.message
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "issuer.jwks.json").write_text(json.dumps({"keys": [PUBLIC_EC]}))
    # Relative paths start at the configuration file's directory, not the working directory.
    monkeypatch.chdir(Path(__file__).parent)
    loaded = load_config(tmp_path / "example.yaml")
    assert loaded.static_jwks == {"local-dev": {"keys": [PUBLIC_EC]}}
    assert (
        loaded.resolve("./dev/issuer.jwks.json") == tmp_path.resolve() / "dev" / "issuer.jwks.json"
    )
    assert loaded.resolve(str(tmp_path)) == tmp_path
    assert loaded.config.issuer == "http://127.0.0.1:8080"
    assert loaded.requires_dev_mode() == [
        "issuer: the broker's issuer URL uses plain http",
        "issuers[0] (local-dev): allow_insecure_http permits plain http",
    ]
    # It works end to end: the dev identity gets the vector store with the default scope.
    ident = (
        loaded.compiled.mapping_for("local-dev")
        .map_identity(
            VerifiedSubject(
                "local-dev", "http://127.0.0.1:8081", "alice", {"sub": "alice"}, 0.0, "00"
            )
        )
        .identity
    )
    assert ident.identity == "local-dev:alice"
    d = loaded.compiled.policy.decide(
        identity=ident,
        claims={"sub": "alice"},
        request_audiences=(),
        request_resources=(),
        requested_scopes=None,
        actor=None,
    )
    assert isinstance(d, Allow)
    assert (d.target, d.scopes) == ("https://vector.example.com", ("read",))


# --- one problem at a time ------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set (or with value=DELETE remove) a dotted path like ``grants.0.match``."""

    def fn(data: dict[str, Any]) -> None:
        parts = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = data
        for p in parts[:-1]:
            node = node[p]
        if value is DELETE:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value

    return fn


class _Delete:
    """Marks a field to remove; a stable repr keeps the test ids the same in every process."""

    def __repr__(self) -> str:
        return "<delete>"


DELETE = _Delete()

INVALID = [
    # broker issuer
    ("issuer", "http://sts.example.com", "issuer", "plain http is allowed only on loopback"),
    ("issuer", "sts.example.com", "issuer", "absolute https URL"),
    ("issuer", "https://sts.example.com/?x=1", "issuer", "query or fragment"),
    ("issuer", "https://sts.example.com/#f", "issuer", "query or fragment"),
    ("issuer", "https://user:pw@sts.example.com", "issuer", "user information"),
    ("issuer", "https://sts.example.com/ x", "issuer", "whitespace"),
    # tokens
    ("tokens.default_lifetime", 0, "tokens.default_lifetime", "greater than 0"),
    ("tokens.default_lifetime", "900", "tokens.default_lifetime", "valid integer"),
    ("tokens.default_lifetime", 7200, "tokens", "default_lifetime must not exceed max_lifetime"),
    ("tokens.max_lifetime", -5, "tokens.max_lifetime", "greater than 0"),
    ("tokens.algorithm", "PS256", "tokens.algorithm", "'ES256', 'RS256' or 'EdDSA'"),
    ("tokens.workload_claim", "sub", "tokens.workload_claim", "broker sets itself"),
    ("tokens.workload_claim", "has space", "tokens.workload_claim", "claim name"),
    ("tokens.lifetime", 5, "tokens.lifetime", "unknown key"),
    # clients
    ("clients.allow_public", "yes", "clients.allow_public", "valid boolean"),
    (
        "clients.registered.0.client_id",
        "bad id",
        "clients.registered[0].client_id",
        "should match pattern",
    ),
    (
        "clients.registered.0.client_id",
        "x" * 129,
        "clients.registered[0].client_id",
        "should match pattern",
    ),
    (
        "clients.registered.1.client_id",
        "ci-runner",
        "clients.registered[1].client_id",
        "duplicate client_id 'ci-runner' (also clients.registered[0])",
    ),
    (
        "clients.registered.0.secret_sha256",
        "ab" * 31,
        "clients.registered[0].secret_sha256",
        "should match pattern",
    ),
    ("clients.registered.0.secret_sha256", DELETE, "clients.registered[0]", "needs secret_sha256"),
    (
        "clients.registered.0.jwks",
        {"keys": [PUBLIC_EC]},
        "clients.registered[0]",
        "takes secret_sha256, not jwks",
    ),
    ("clients.registered.1.jwks", DELETE, "clients.registered[1]", "private_key_jwt needs jwks"),
    (
        "clients.registered.1.secret_sha256",
        SECRET_HASH,
        "clients.registered[1]",
        "takes jwks, not secret_sha256",
    ),
    (
        "clients.registered.1.auth_method",
        "client_secret_jwt",
        "clients.registered[1].auth_method",
        "Input should be",
    ),
    # issuers
    (
        "issuers.1.name",
        "github",
        "issuers[1].name",
        "duplicate issuer name 'github' (also issuers[0])",
    ),
    ("issuers.1.name", "Cluster_1", "issuers[1].name", "should match pattern"),
    (
        "issuers.1.issuer",
        "https://token.actions.githubusercontent.com",
        "issuers[1].issuer",
        "duplicate issuer URL",
    ),
    ("issuers.0.issuer", "http://127.0.0.1:9000", "issuers[0]", "set allow_insecure_http: true"),
    ("issuers.0.issuer", "http://idp.example.com", "issuers[0]", "only on loopback"),
    ("issuers.0.audiences", [], "issuers[0].audiences", "at least 1 item"),
    ("issuers.0.audiences", DELETE, "issuers[0].audiences", "required key is missing"),
    ("issuers.0.audiences", ["a", "a"], "issuers[0].audiences", "duplicate audience"),
    ("issuers.0.audiences", [""], "issuers[0].audiences", "non-empty"),
    ("issuers.0.algorithms", ["none"], "issuers[0].algorithms", "'none' and HMAC algorithms"),
    (
        "issuers.0.algorithms",
        ["RS256", "HS256"],
        "issuers[0].algorithms",
        "'none' and HMAC algorithms",
    ),
    ("issuers.0.algorithms", ["ES256K"], "issuers[0].algorithms", "not supported"),
    ("issuers.0.algorithms", ["ES256", "ES256"], "issuers[0].algorithms", "duplicate algorithm"),
    ("issuers.0.algorithms", [], "issuers[0].algorithms", "at least 1 item"),
    ("issuers.0.keys", {}, "issuers[0].keys", "exactly one of"),
    ("issuers.0.keys", {"discovery": False}, "issuers[0].keys", "exactly one of"),
    (
        "issuers.0.keys",
        {"discovery": True, "jwks_uri": "https://x.example.com/k"},
        "issuers[0].keys",
        "exactly one of",
    ),
    ("issuers.0.keys", {"jwks_uri": "http://keys.example.com/k"}, "issuers[0]", "only on loopback"),
    ("issuers.0.keys", {"jwks": {"keys": []}}, "issuers[0].keys.jwks", "must not be empty"),
    (
        "issuers.0.keys",
        {"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
        "issuers[0].keys.jwks",
        "kty must be",
    ),
    ("issuers.0.keys", {"jwks_file": " "}, "issuers[0].keys", "must not be empty"),
    ("issuers.0.preset", "jenkins", "issuers[0].preset", "Input should be"),
    ("issuers.0.clock_skew", 301, "issuers[0].clock_skew", "less than or equal to 300"),
    ("issuers.0.max_token_lifetime", 0, "issuers[0].max_token_lifetime", "greater than 0"),
    ("issuers.0.require_jti", "true", "issuers[0].require_jti", "valid boolean"),
    ("issuers.0.expected_typ", "", "issuers[0].expected_typ", "non-empty media type"),
    (
        "issuers.0.claim_validation_rules.0.expression",
        "claims.x ==",
        "issuers[0].claim_validation_rules[0].expression",
        "CEL: syntax error at expression line 1, column 12",
    ),
    (
        "issuers.0.claim_validation_rules.0.mode",
        "warn",
        "issuers[0].claim_validation_rules[0].mode",
        "Input should be",
    ),
    (
        "issuers.0.claim_mappings",
        {"identity": "identity"},
        "issuers[0].claim_mappings.identity",
        "unknown variable 'identity'",
    ),
    (
        "issuers.0.claim_mappings",
        {"attributes": {"Bad-Name": "claims.x"}},
        "issuers[0].claim_mappings.attributes",
        "attribute names must match",
    ),
    (
        "issuers.0.claim_mappings",
        {"attributes": {"x": "claims.x.nope()"}},
        "issuers[0].claim_mappings.attributes.x",
        "unknown function 'nope'",
    ),
    # grants
    ("grants.1.name", "deploy", "grants[1].name", "duplicate grant name 'deploy' (also grants[0])"),
    ("grants.0.name", "-bad", "grants[0].name", "should match pattern"),
    ("grants.0.mode", "dry-run", "grants[0].mode", "Input should be"),
    ("grants.0.issuers", ["gh"], "grants[0].issuers[0]", "unknown issuer 'gh'"),
    ("grants.0.issuers", [], "grants[0].issuers", "omit it to admit every issuer"),
    ("grants.0.issuers", ["github", "github"], "grants[0].issuers", "duplicate issuer"),
    (
        "grants.0.match",
        {},
        "grants[0].match",
        "exactly one of identity, identity_pattern, condition",
    ),
    ("grants.0.match", {"identity": "a", "condition": "true"}, "grants[0].match", "exactly one of"),
    ("grants.0.match", {"identity": ""}, "grants[0].match.identity", "must not be empty"),
    (
        "grants.0.match",
        {"identity_pattern": "github:.*"},
        "grants[0].match.identity_pattern",
        "anchored",
    ),
    (
        "grants.0.match",
        {"identity_pattern": "^github:.*"},
        "grants[0].match.identity_pattern",
        "anchored",
    ),
    (
        "grants.0.match",
        {"identity_pattern": "^(github$"},
        "grants[0].match.identity_pattern",
        "not a valid regular",
    ),
    (
        "grants.0.match",
        {"condition": "claims.x +"},
        "grants[0].match.condition",
        "CEL: syntax error",
    ),
    (
        "grants.0.match",
        {"condition": "subject == 1"},
        "grants[0].match.condition",
        "unknown variable 'subject'",
    ),
    ("grants.0.targets", [], "grants[0].targets", "at least 1 item"),
    (
        "grants.0.targets.0.resource",
        "https://x.example.com",
        "grants[0].targets[0]",
        "exactly one of audience",
    ),
    ("grants.0.targets.1", {"resource": "/relative"}, "grants[0].targets[1]", "absolute URI"),
    (
        "grants.0.targets.1",
        {"resource": "https://x.example.com/a#frag"},
        "grants[0].targets[1]",
        "without fragment",
    ),
    (
        "grants.0.targets.1",
        {"resource_prefix": "https://x.example.com/a"},
        "grants[0].targets[1]",
        "end with '/'",
    ),
    (
        "grants.0.targets.1",
        {"resource_prefix": "https://x.example.com/?a/"},
        "grants[0].targets[1]",
        "no query",
    ),
    ("grants.0.targets.1", {"resource_prefix": "urn:x:"}, "grants[0].targets[1]", "hierarchical"),
    (
        "grants.0.targets.1",
        {"audience": "https://vector.example.com"},
        "grants[0]",
        "duplicate target",
    ),
    ("grants.0.targets.1", {"audience": "a b"}, "grants[0].targets[1]", "without whitespace"),
    ("grants.0.targets.0.default_scopes", ["admin"], "grants[0].targets[0]", "subset of scopes"),
    ("grants.0.targets.0.scopes", ["read", "read"], "grants[0].targets[0]", "duplicate scope"),
    (
        "grants.0.targets.0.scopes",
        ["has space"],
        "grants[0].targets[0].scopes[0]",
        "RFC 6749 scope token",
    ),
    (
        "grants.0.targets.0.scopes",
        ['quo"te'],
        "grants[0].targets[0].scopes[0]",
        "RFC 6749 scope token",
    ),
    ("grants.0.targets.0.scopes", [""], "grants[0].targets[0].scopes[0]", "RFC 6749 scope token"),
    ("grants.0.targets.0.algorithm", "HS256", "grants[0].targets[0].algorithm", "Input should be"),
    (
        "grants.0.default_target",
        "https://mcp.example.com/tools/",
        "grants[0]",
        "default_target must equal",
    ),
    (
        "grants.0.default_target",
        "https://elsewhere.example.com",
        "grants[0]",
        "default_target must equal",
    ),
    ("grants.0.lifetime", 0, "grants[0].lifetime", "greater than 0"),
    ("grants.0.lifetime", 3601, "grants[0].lifetime", "exceeds tokens.max_lifetime (3600)"),
    ("grants.0.delegation", {"actors": []}, "grants[0].delegation", "delegation needs actors or clients"),
    ("grants.0.delegation", {"clients": ["c"]}, "grants[0].delegation", "it needs chain: true"),
    ("grants.0.delegation", {"actors": [{"identity": "a"}], "max_depth": 17}, "grants[0].delegation.max_depth",
     "less than or equal to 16"),
    ("chains", {"max_depth": 0}, "chains.max_depth", "greater than or equal to 1"),
    ("chains", {"presenters": [{"audience": "a"}]}, "chains.presenters[0]", "needs identities or clients"),
    ("chains", {"presenters": [{"audience": "a", "clients": ["x"]}, {"audience": "a", "clients": ["y"]}]},
     "chains.presenters", "duplicate presenters audience"),
    (
        "grants.0.delegation",
        {"actors": [{"condition": "nope"}]},
        "grants[0].delegation.actors[0].condition",
        "unknown variable 'nope'",
    ),
    ("grants.0.extra", 1, "grants[0].extra", "unknown key"),
]


@pytest.mark.parametrize(
    ("path", "value", "location", "message"),
    [pytest.param(*row, id=f"{row[0]}={str(row[1])[:30]}") for row in INVALID],
)
def test_invalid(tmp_path: Path, path: str, value: Any, location: str, message: str) -> None:
    problems = problems_of(tmp_path, mutate(_set(path, value)))
    assert [p.path for p in problems] == [location], problems
    assert message in problems[0].message
    assert problems[0].line is not None
    assert (
        problems[0].location
        == f"{location} at line {problems[0].line}, column {problems[0].column}"
    )


@pytest.mark.parametrize(
    ("issuer_url", "allowed"),
    [
        pytest.param("http://127.0.0.1:8081", True, id="ipv4-loopback"),
        pytest.param("http://127.9.9.9", True, id="loopback-net"),
        pytest.param("http://[::1]:8081/path", True, id="ipv6-loopback"),
        pytest.param("http://localhost:8081", True, id="localhost"),
        pytest.param("http://10.0.0.1", False, id="private-net"),
        pytest.param("http://localhost.example.com", False, id="lookalike"),
    ],
)
def test_http_issuer_only_on_loopback_with_flag(
    tmp_path: Path, issuer_url: str, allowed: bool
) -> None:
    data = mutate(_set("issuers.0.issuer", issuer_url))
    data["issuers"][0]["allow_insecure_http"] = True
    problems = problems_of(tmp_path, data)
    if allowed:
        assert problems == []
        cfg = load_config(tmp_path / "sts.yaml").config
        assert cfg.requires_dev_mode() == [
            "issuers[0] (github): allow_insecure_http permits plain http"
        ]
    else:
        assert [p.path for p in problems] == ["issuers[0]"]


def test_broker_http_loopback_issuer_needs_dev_mode(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, mutate(_set("issuer", "http://localhost:8080")))).config
    assert cfg.requires_dev_mode() == ["issuer: the broker's issuer URL uses plain http"]


# --- every problem at once, with lines -----------------------------------------------------------

MANY_PROBLEMS = """\
issuer: https://sts.example.com
tokens:
  default_lifetime: 300
  max_lifetime: 600
issuers:
  - name: gh
    issuer: https://token.actions.githubusercontent.com
    audiences: []
    algorithms: [HS256]
  - name: gh
    issuer: https://k8s.example.com
    audiences: [sts]
    keys:
      jwks_file: ./missing.json
grants:
  - name: a
    issuers: [gitlab]
    match:
      condition: 'attributes.x =='
    targets:
      - audience: https://api.example.com
        scopes: [read]
        default_scopes: [write]
    lifetime: 900
  - name: a
    match: {identity: x}
    targets: [{audience: t}]
"""


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MANY_PROBLEMS)
    got = {(p.path, p.line) for p in problems}
    assert got == {
        ("issuers[0].audiences", 8),
        ("issuers[0].algorithms", 9),
        ("issuers[1].name", 10),
        ("issuers[1].keys.jwks_file", 14),
        ("grants[0].issuers[0]", 17),
        ("grants[0].match.condition", 19),
        ("grants[0].targets[0]", 21),
        # grants[0] is invalid, but its lifetime is valid on its own and above the cap: the
        # other errors of the grant do not hide it.
        ("grants[0].lifetime", 24),
        ("grants[1].name", 25),
    }
    cond = next(p for p in problems if p.path == "grants[0].match.condition")
    assert cond.column == 7
    assert cond.location == "grants[0].match.condition at line 19, column 7"
    assert str(cond).startswith("grants[0].match.condition at line 19, column 7: CEL: syntax error")
    with pytest.raises(ConfigInvalid) as info:
        load_config(tmp_path / "sts.yaml")
    assert len(info.value.problems) == len(problems)
    assert "and 4 more" in str(info.value)


def test_cross_references_reported_when_other_parts_are_invalid(tmp_path: Path) -> None:
    data = mutate(_set("grants.0.issuers", ["nope"]))
    data["grants"][1]["targets"] = []
    data["tokens"]["algorithm"] = "PS256"
    paths = sorted(p.path for p in problems_of(tmp_path, data))
    assert paths == ["grants[0].issuers[0]", "grants[1].targets", "tokens.algorithm"]


def test_no_issuers_at_all(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, mutate(_set("issuers", [])))
    assert [(p.path, p.message) for p in problems] == [
        ("issuers", "must have at least 1 item"),
        ("grants[0].issuers[0]", "unknown issuer 'github'"),
    ]


def test_reference_to_an_invalid_issuer_is_not_misreported(tmp_path: Path) -> None:
    data = mutate(_set("issuers.0.audiences", []))
    assert [p.path for p in problems_of(tmp_path, data)] == ["issuers[0].audiences"]


def test_camel_case_locations_resolve_to_lines(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        issuer: https://sts.example.com
        issuers:
          - name: a
            issuer: https://a.example.com
            audiences: [x]
            claimMappings:
              identity: 'claims.sub +'
        """
    )
    [problem] = problems_of(tmp_path, text)
    assert problem.path == "issuers[0].claimMappings.identity"
    assert (problem.line, problem.column) == (7, 7)


@pytest.mark.parametrize(
    ("text", "path", "line", "needle"),
    [
        pytest.param("issuer: [unclosed\n", "(file)", 2, "YAML syntax error", id="yaml-syntax"),
        pytest.param("- a\n- b\n", "(file)", None, "must be a YAML mapping", id="top-level-list"),
        pytest.param("", "(file)", None, "must be a YAML mapping", id="empty"),
        pytest.param("a: 1\n---\nb: 2\n", "(file)", 2, "YAML syntax error", id="two-documents"),
    ],
)
def test_file_level_problems(
    tmp_path: Path, text: str, path: str, line: int | None, needle: str
) -> None:
    [problem] = problems_of(tmp_path, text)
    assert problem.path == path or problem.location == path
    assert problem.line == line
    assert needle in problem.message


def test_duplicate_yaml_keys_are_problems(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        issuer: https://sts.example.com
        issuers:
          - name: a
            issuer: https://a.example.com
            audiences: [x]
        grants:
          - name: g
            match: {identity: alice}
            match: {identity_pattern: '^.*$'}
            targets: [{audience: t}]
        """
    )
    [problem] = problems_of(tmp_path, text)
    assert (problem.path, problem.line) == ("grants[0].match", 9)
    assert "duplicate key" in problem.message


def test_unreadable_files(tmp_path: Path) -> None:
    [missing] = check_config(tmp_path / "nope.yaml")
    assert "not found" in missing.message
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"issuer: \xff\n")
    [problem] = check_config(bad)
    assert "UTF-8" in problem.message
    # A directory is a configuration directory (docs/trust-changes.md): its files are read.
    [directory] = check_config(tmp_path)
    assert (directory.file, directory.message) == ("latin1.yaml", "the file is not valid UTF-8")
    (tmp_path / "empty").mkdir()
    [empty] = check_config(tmp_path / "empty")
    assert "holds no .yaml" in empty.message


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param(None, "jwks_file not found", id="missing"),
        pytest.param("{not json", "not valid JSON (line 1)", id="bad-json"),
        pytest.param('["keys"]', "JSON object", id="not-object"),
        pytest.param(
            '{"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "d": "PRIVATE-D"}]}',
            "private",
            id="private-key",
        ),
        pytest.param('{"keys": [{"kty": "EC", "use": "enc"}]}', "use must be 'sig'", id="enc-key"),
        pytest.param(
            '{"keys": [{"kty": "EC", "alg": "HS256"}]}', "alg is not an allowed", id="hmac-alg"
        ),
        pytest.param('{"keys": [{"kty": "EC", "kid": 7}]}', "kid must be a string", id="kid-type"),
        pytest.param('{"keys": ["x"]}', "keys[0] must be a JSON object", id="key-not-object"),
        pytest.param('{"keys": {}}', "'keys' array", id="keys-not-list"),
    ],
)
def test_jwks_file_problems(tmp_path: Path, content: str | None, needle: str) -> None:
    data = mutate(_set("issuers.1.keys", {"jwks_file": "keys/cluster.jwks.json"}))
    if content is not None:
        (tmp_path / "keys").mkdir()
        (tmp_path / "keys" / "cluster.jwks.json").write_text(content)
    [problem] = problems_of(tmp_path, data)
    assert problem.path == "issuers[1].keys.jwks_file"
    assert needle in problem.message
    assert "PRIVATE-D" not in problem.message


def test_jwks_file_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    [problem] = problems_of(tmp_path, mutate(_set("issuers.1.keys", {"jwks_file": "keys"})))
    assert "cannot be read" in problem.message


@pytest.mark.parametrize(
    ("keys", "source"),
    [
        pytest.param({"discovery": True}, "discovery", id="discovery"),
        pytest.param({"jwks_uri": "https://k.example.com/jwks"}, "jwks_uri", id="jwks-uri"),
        pytest.param({"jwks": {"keys": [PUBLIC_EC]}}, "jwks", id="jwks"),
        pytest.param({"jwks_file": "k.json"}, "jwks_file", id="jwks-file"),
    ],
)
def test_key_source(keys: dict[str, Any], source: str) -> None:
    assert KeysConfig.model_validate(keys).source == source


@pytest.mark.parametrize(
    ("match", "kind"),
    [
        pytest.param({"identity": "a"}, "identity", id="literal"),
        pytest.param({"identity_pattern": "^a$"}, "identity_pattern", id="pattern"),
        pytest.param({"condition": "true"}, "condition", id="condition"),
    ],
)
def test_match_kind(match: dict[str, str], kind: str) -> None:
    assert MatchConfig.model_validate(match).kind == kind


def test_jwks_file_too_large(tmp_path: Path) -> None:
    data = mutate(_set("issuers.1.keys", {"jwks_file": "big.json"}))
    (tmp_path / "big.json").write_text(" " * (1024 * 1024 + 1))
    [problem] = problems_of(tmp_path, data)
    assert "larger than" in problem.message


def test_messages_never_echo_secrets(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["clients"]["registered"][0]["secret_sha256"] = "SECRETVALUE" * 6
    data["clients"]["registered"][1]["jwks"] = {"keys": [dict(PUBLIC_EC, d="PRIVATEKEYMATERIAL")]}
    data["clients"]["registered"].append(
        {
            "client_id": "x",
            "auth_method": "client_secret_post",
            "secret_sha256": SECRET_HASH,
            "extra_secret": "TOPSECRET",
        }
    )
    problems = problems_of(tmp_path, data)
    assert len(problems) == 3
    text = " ".join(str(p) for p in problems)
    for secret in ("SECRETVALUE", "PRIVATEKEYMATERIAL", "TOPSECRET", SECRET_HASH):
        assert secret not in text


def test_load_config_bytes_and_version(tmp_path: Path) -> None:
    raw = yaml.safe_dump(BASE).encode()
    loaded = load_config_bytes(raw, base_dir=tmp_path)
    assert loaded.version == hashlib.sha256(raw).hexdigest()[:12]
    assert loaded.path is None
    other = load_config_bytes(raw + b"\n# comment\n", base_dir=tmp_path)
    assert other.version != loaded.version


# --- helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "text"),
    [
        pytest.param(("grants", 2, "match", "condition"), "grants[2].match.condition", id="nested"),
        pytest.param(("issuers",), "issuers", id="top"),
        pytest.param((), "", id="root"),
    ],
)
def test_format_location(loc: tuple[str | int, ...], text: str) -> None:
    assert format_location(loc) == text


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        pytest.param("https://a.example.com/x?y=1", True, id="https-query"),
        pytest.param("urn:example:resource", True, id="urn"),
        pytest.param("https://a.example.com/#f", False, id="fragment"),
        pytest.param("//a.example.com/x", False, id="no-scheme"),
        pytest.param("1http://a", False, id="bad-scheme"),
        pytest.param("https:", False, id="nothing-after-scheme"),
        pytest.param("", False, id="empty"),
    ],
)
def test_is_absolute_uri(value: str, ok: bool) -> None:
    assert is_absolute_uri(value) is ok


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        pytest.param("LOCALHOST", True, id="localhost-any-case"),
        pytest.param("::1", True, id="ipv6"),
        pytest.param("127.0.0.2", True, id="v4"),
        pytest.param("192.168.1.1", False, id="private"),
        pytest.param(None, False, id="none"),
        pytest.param("example.com", False, id="name"),
    ],
)
def test_is_loopback_host(host: str | None, ok: bool) -> None:
    assert is_loopback_host(host) is ok


def test_validate_jwks_accepts_public_keys() -> None:
    assert (
        validate_jwks(
            {"keys": [PUBLIC_EC, {"kty": "OKP", "crv": "Ed25519", "x": "abc", "use": "sig"}]}
        )
        == []
    )
    assert validate_jwks([]) == ["must be a JSON object with a 'keys' array"]


def test_issuer_by_name() -> None:
    cfg = BrokerConfig.model_validate(BASE)
    assert cfg.issuer_by_name("cluster").preset == "kubernetes"
    with pytest.raises(KeyError):
        cfg.issuer_by_name("nope")


# --- the documentation's examples ----------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _doc_examples() -> dict[str, str]:
    blocks = DOCS.read_text().split("```yaml\n")[1:]
    out = {}
    for block in blocks:
        text = block.split("```", 1)[0]
        first = text.splitlines()[0]
        if first.startswith("# example: "):
            out[first.removeprefix("# example: ")] = text
    return out


def test_docs_have_the_three_platform_examples() -> None:
    assert set(_doc_examples()) == {"github-actions", "kubernetes", "gitlab"}


@pytest.mark.parametrize("name", ["github-actions", "kubernetes", "gitlab"])
def test_docs_examples_load(tmp_path: Path, name: str) -> None:
    loaded = load_config(write(tmp_path, _doc_examples()[name]))
    assert loaded.requires_dev_mode() == []
    assert loaded.config.grants


def test_docs_github_example_decides_as_described(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, _doc_examples()["github-actions"]))
    claims = {
        "iss": "https://token.actions.githubusercontent.com",
        "sub": "repo:octo-org/octo-repo:environment:prod",
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "repository_id": "74",
        "repository_owner_id": "65",
        "repository_visibility": "private",
        "runner_environment": "self-hosted",
        "environment": "prod",
        "ref": "refs/heads/main",
    }
    subject = VerifiedSubject("github", claims["iss"], claims["sub"], claims, 0.0, "00")
    result = loaded.compiled.mapping_for("github").map_identity(subject)
    assert result.identity.identity == "github:65/74"
    assert result.identity.attributes["visibility"] == "private"
    assert result.audit_notes == [
        "audit rule issuers[0].claim_validation_rules[1] failed:"
        " self-hosted runners are not trusted yet"
    ]
    d = loaded.compiled.policy.decide(identity=result.identity, claims=claims,
                                      request_audiences=(), request_resources=(),
                                      requested_scopes=("write",), actor=None)
    assert isinstance(d, Allow)
    assert (d.grant, d.target, d.scopes, d.lifetime) == (
        "deploy-prod", "https://vector.example.com", ("write",), 600
    )


@pytest.mark.parametrize(
    ("grant_issuers", "match", "ok"),
    [
        pytest.param(None, {"identity": "k8s:ci/deployer"}, False, id="unfiltered-literal-refused"),
        pytest.param(None, {"identity_pattern": "^k8s:ci/.*$"}, False, id="unfiltered-pattern-refused"),
        pytest.param(["prod"], {"identity": "k8s:ci/deployer"}, True, id="filtered-ok"),
        pytest.param(None, {"condition": 'issuer == "prod"'}, True, id="condition-decides"),
    ],
)
def test_grants_must_name_issuers_when_presets_collide(grant_issuers: list[str] | None, match: dict[str, str], ok: bool) -> None:
    from sts.config.models import BrokerConfig

    doc: dict[str, Any] = {
        "issuer": "https://sts.example.com",
        "issuers": [
            {"name": name, "issuer": f"https://{name}.k8s.example.com", "preset": "kubernetes", "audiences": ["sts"]}
            for name in ("prod", "dev")
        ],
        "grants": [{"name": "g", "match": match, "targets": [{"audience": "https://prod-api", "scopes": ["deploy"]}]}],
    }
    if grant_issuers is not None:
        doc["grants"][0]["issuers"] = grant_issuers
    if ok:
        BrokerConfig.model_validate(doc)
    else:
        with pytest.raises(ValueError, match="several issuers use preset kubernetes"):
            BrokerConfig.model_validate(doc)


def test_chains_refuse_an_issuer_entry_for_the_broker_itself(tmp_path: Path) -> None:
    # With delegation.chain the broker verifies its own tokens with its own keys: an issuers
    # entry for its own URL would silently never be used.
    def change(data: dict[str, Any]) -> None:
        data["issuers"].append({"name": "self", "issuer": "https://sts.example.com", "audiences": ["x"],
                                "keys": {"jwks_uri": "https://sts.example.com/jwks"}})
        data["grants"][0]["delegation"] = {"chain": True, "actors": [{"identity": "wl:gateway"}]}

    problems = problems_of(tmp_path, mutate(change))
    assert [p.path for p in problems] == [f"issuers[{len(BASE['issuers'])}].issuer"]
    assert "broker's own issuer" in problems[0].message
    # Without a chain grant, trusting the broker's own URL as an ordinary issuer stays allowed.
    def no_chain(data: dict[str, Any]) -> None:
        change(data)
        data["grants"][0]["delegation"]["chain"] = False

    assert problems_of(tmp_path, mutate(no_chain)) == []
