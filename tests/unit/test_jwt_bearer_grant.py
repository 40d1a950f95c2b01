"""The JWT-bearer grant's pure parts: parsing (RFC 7523 §2.1), the assertion-as-grant checks
(sts.assertion, ID-JAG draft -04 §4.4.1), grant types and ignored scopes in the policy, the
answer's scope, and the configuration."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from sts.assertion.grant import admit_assertion, as_invalid_grant
from sts.config.models import BrokerConfig
from sts.errors import InvalidGrant, InvalidRequest, InvalidScope, InvalidTarget
from sts.exchange import TokenResponse
from sts.protocol import (
    GRANT_TYPE_JWT_BEARER,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_JWT,
    parse_exchange_form,
)
from sts.subject.model import VerifiedIdJag, VerifiedSubject, WorkloadIdentity
from sts.subject.oidc import is_id_jag
from sts.trust.policy import Allow, CompiledPolicy, Deny

ISSUER = "https://sts.example.com"
CHAT = "https://chat.example.com/"


# --- parsing ----------------------------------------------------------------------------------------

def test_jwt_bearer_parses_into_the_exchange_request() -> None:
    req = parse_exchange_form([("grant_type", GRANT_TYPE_JWT_BEARER), ("assertion", " a.b.c\n"),
                               ("resource", CHAT), ("audience", "aud-1"), ("scope", "x y x")])
    assert req.grant_type == GRANT_TYPE_JWT_BEARER
    assert (req.subject_token, req.subject_token_type) == ("a.b.c", TOKEN_TYPE_JWT)
    assert req.actor_token is None and req.requested_token_type == TOKEN_TYPE_ACCESS_TOKEN
    assert req.resources == (CHAT,) and req.audiences == ("aud-1",) and req.scopes == ("x", "y")


def test_token_exchange_parameters_mean_nothing_to_the_jwt_bearer_grant() -> None:
    # RFC 6749 §3.2: parameters the grant does not define are ignored.
    req = parse_exchange_form([("grant_type", GRANT_TYPE_JWT_BEARER), ("assertion", "a.b.c"),
                               ("subject_token", "other.token.here"), ("actor_token", "x.y.z"),
                               ("requested_token_type", "urn:ietf:params:oauth:token-type:saml2")])
    assert req.subject_token == "a.b.c" and req.actor_token is None


@pytest.mark.parametrize(("pairs", "error", "reason"), [
    pytest.param([("grant_type", GRANT_TYPE_JWT_BEARER)], InvalidRequest, "missing_assertion", id="missing"),
    pytest.param([("grant_type", GRANT_TYPE_JWT_BEARER), ("assertion", "  ")], InvalidRequest, "missing_assertion", id="blank"),
    pytest.param([("grant_type", GRANT_TYPE_JWT_BEARER), ("assertion", "a.b.c"), ("assertion", "d.e.f")],
                 InvalidRequest, "duplicate_parameter", id="twice"),
    pytest.param([("grant_type", GRANT_TYPE_JWT_BEARER), ("assertion", "a" * 20000)], InvalidRequest, "token_too_large", id="large"),
    pytest.param([("grant_type", GRANT_TYPE_JWT_BEARER), ("assertion", "a.b.c"), ("resource", "/rel")],
                 InvalidTarget, "resource_malformed", id="relative-resource"),
    pytest.param([("grant_type", GRANT_TYPE_JWT_BEARER), ("assertion", "a.b.c"), ("scope", 'a"b')],
                 InvalidScope, "scope_malformed", id="bad-scope"),
])
def test_jwt_bearer_parse_errors(pairs: list[tuple[str, str]], error: type[Exception], reason: str) -> None:
    with pytest.raises(error) as info:
        parse_exchange_form(pairs)
    assert info.value.reason == reason  # type: ignore[attr-defined]


@pytest.mark.parametrize(("typ", "expected"), [
    ("oauth-id-jag+jwt", True), ("application/oauth-id-jag+jwt", True), ("OAuth-ID-JAG+JWT", True),
    ("JWT", False), ("at+jwt", False), (None, False), (7, False), ("oauth-id-jag", False),
])
def test_is_id_jag(typ: object, expected: bool) -> None:
    assert is_id_jag(typ) is expected


# --- the assertion as a grant ------------------------------------------------------------------------

REQUEST = parse_exchange_form([("grant_type", GRANT_TYPE_JWT_BEARER), ("assertion", "a.b.c")])


def subject(cls: type[VerifiedSubject] = VerifiedIdJag, **claims: Any) -> VerifiedSubject:
    base: dict[str, Any] = {"iss": "https://idp.example.com", "sub": "alice", "aud": ISSUER, "client_id": "app",
                            "iat": 1, "exp": 2, "jti": "j"}
    for name, value in claims.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return cls(issuer_name="idp", issuer=base["iss"], subject="alice", claims=base, expires_at=2.0, token_sha256="0" * 64)


def admit(s: VerifiedSubject, request: Any = REQUEST, client_id: str | None = "app", dpop_jkt: str | None = None) -> Any:
    return admit_assertion(request, s, client_id=client_id, dpop_jkt=dpop_jkt, issuer=ISSUER)


def test_plain_assertion_is_passed_through() -> None:
    request, facts = admit(subject(VerifiedSubject, client_id=None), client_id=None)
    assert request is REQUEST and facts == {"profile": "jwt-bearer"}


@pytest.mark.parametrize(("claims", "client_id", "dpop_jkt", "reason"), [
    pytest.param({"act": {"sub": "x"}}, "app", None, "assertion_delegated", id="act"),
    pytest.param({"aud": ISSUER + "/token"}, "app", None, "idjag_aud_not_exact", id="aud-token-endpoint"),
    pytest.param({"aud": [ISSUER, "https://other"]}, "app", None, "idjag_aud_not_exact", id="aud-two"),
    pytest.param({"aud": []}, "app", None, "idjag_aud_not_exact", id="aud-empty"),
    pytest.param({"iat": None}, "app", None, "idjag_iat_missing", id="no-iat"),
    pytest.param({"client_id": None}, "app", None, "idjag_client_id_missing", id="no-client-id"),
    pytest.param({"client_id": 7}, "app", None, "idjag_client_id_missing", id="client-id-type"),
    pytest.param({}, None, None, "idjag_client_not_authenticated", id="public"),
    pytest.param({}, "other", None, "idjag_client_mismatch", id="mismatch"),
    pytest.param({"authorization_details": [{"type": "chat_read"}]}, "app", None,
                 "idjag_authorization_details_unsupported", id="authorization-details"),
    pytest.param({"cnf": {"x5t#S256": "abc"}}, "app", None, "idjag_cnf_unsupported", id="cnf-mtls"),
    pytest.param({"cnf": "jkt"}, "app", None, "idjag_cnf_unsupported", id="cnf-type"),
    pytest.param({"cnf": {"jkt": "k1"}}, "app", None, "idjag_dpop_required", id="cnf-no-proof"),
    pytest.param({"cnf": {"jkt": "k1"}}, "app", "k2", "idjag_dpop_key_mismatch", id="cnf-other-key"),
    pytest.param({"resource": "/relative"}, "app", None, "idjag_resource_malformed", id="resource-relative"),
    pytest.param({"resource": []}, "app", None, "idjag_resource_malformed", id="resource-empty"),
    pytest.param({"resource": [CHAT, 3]}, "app", None, "idjag_resource_malformed", id="resource-type"),
    pytest.param({"scope": ["a"]}, "app", None, "idjag_scope_malformed", id="scope-array"),
    pytest.param({"scope": 'a"b'}, "app", None, "idjag_scope_malformed", id="scope-syntax"),
])
def test_id_jag_refusals_are_invalid_grant(claims: dict[str, Any], client_id: str | None, dpop_jkt: str | None, reason: str) -> None:
    with pytest.raises(InvalidGrant) as info:
        admit(subject(**claims), client_id=client_id, dpop_jkt=dpop_jkt)
    assert info.value.reason == reason
    assert info.value.error == "invalid_grant"


def test_id_jag_supplies_targets_and_scopes_the_request_left_out() -> None:
    request, facts = admit(subject(resource=CHAT, scope="chat.read chat.history", cnf={"jkt": "k1"}), dpop_jkt="k1")
    assert request.resources == (CHAT,) and request.scopes == ("chat.read", "chat.history")
    assert facts == {"profile": "id-jag", "client_id": "app", "resource": [CHAT], "scope": ["chat.read", "chat.history"]}


def test_id_jag_bounds_what_the_request_names() -> None:
    narrowed = replace(REQUEST, resources=(CHAT,), scopes=("chat.read",))
    request, _ = admit(subject(resource=[CHAT, "https://b.example.com/"], scope="chat.read chat.history"), narrowed)
    assert request is narrowed
    with pytest.raises(InvalidTarget) as target:
        admit(subject(resource=CHAT), replace(REQUEST, audiences=("https://other",)))
    assert target.value.reason == "idjag_target_beyond_assertion"
    with pytest.raises(InvalidScope) as scope:
        admit(subject(scope="chat.read"), replace(REQUEST, scopes=("chat.write",)))
    assert scope.value.reason == "idjag_scope_beyond_assertion"


def test_without_resource_or_scope_claims_the_request_stands() -> None:
    request, facts = admit(subject(aud=[ISSUER]))
    assert request is REQUEST and facts == {"profile": "id-jag", "client_id": "app"}


def test_as_invalid_grant_keeps_the_audit_facts_and_speaks_of_the_assertion() -> None:
    exc = InvalidRequest("The subject token's signature is invalid.", reason="bad_signature", detail="d", notes=("n",))
    out = as_invalid_grant(exc)
    assert (out.error, out.status, out.reason, out.detail, out.notes) == ("invalid_grant", 400, "bad_signature", "d", ("n",))
    assert out.description == "The assertion's signature is invalid."
    assert as_invalid_grant(InvalidRequest("The subject is not allowed to exchange this token.")).description == \
        "The subject is not allowed to use this assertion."


# --- the answer's scope -------------------------------------------------------------------------------

@pytest.mark.parametrize(("scope", "present"), [("read", True), ("", False)])
def test_answer_never_carries_an_empty_scope(scope: str, present: bool) -> None:
    body = TokenResponse(access_token="t", issued_token_type=TOKEN_TYPE_ACCESS_TOKEN, expires_in=60, scope=scope).body()
    assert ("scope" in body) is present
    if present:
        assert body["scope"] == scope


# --- policy: grant types and ignored scopes ---------------------------------------------------------

GOOGLE = "https://www.googleapis.com/auth/cloud-platform"

POLICY_CONFIG: dict[str, Any] = {
    "issuer": ISSUER,
    "issuers": [{"name": "k8s", "issuer": "https://k8s.example.com", "audiences": [ISSUER]}],
    "grants": [
        {"name": "both", "match": {"identity": "k8s:a"}, "grant_types": ["token_exchange", "jwt_bearer"],
         "targets": [{"audience": "vertex", "scopes": ["predict", "tune"], "default_scopes": ["predict"], "ignore_scopes": [GOOGLE]},
                     {"audience": "bare", "scopes": ["x"], "ignore_scopes": [GOOGLE]}]},
        {"name": "exchange-only", "match": {"identity": "k8s:b"},
         "targets": [{"audience": "vertex", "scopes": ["predict"]}]},
        {"name": "shadow", "mode": "audit", "match": {"identity": "k8s:b"},
         "targets": [{"audience": "vertex", "scopes": ["predict"]}]},
    ],
}


def decide(identity: str, audience: str, scopes: tuple[str, ...] | None, grant_type: str = "token_exchange") -> Allow | Deny:
    policy = CompiledPolicy.from_config(BrokerConfig.model_validate(POLICY_CONFIG))
    return policy.decide(identity=WorkloadIdentity(identity, "k8s", {}), claims={}, request_audiences=(audience,),
                         request_resources=(), requested_scopes=scopes, actor=None, grant_type=grant_type)


@pytest.mark.parametrize(("identity", "grant_type", "expected"), [
    ("k8s:a", "jwt_bearer", "allow"),
    ("k8s:a", "token_exchange", "allow"),
    ("k8s:b", "token_exchange", "allow"),
    ("k8s:b", "jwt_bearer", "grant_type_not_allowed"),
    ("k8s:c", "jwt_bearer", "no_grant"),
])
def test_grants_answer_only_their_grant_types(identity: str, grant_type: str, expected: str) -> None:
    d = decide(identity, "vertex", None, grant_type)
    if expected == "allow":
        assert isinstance(d, Allow)
    else:
        assert isinstance(d, Deny) and (d.error, d.reason) == ("invalid_request", expected)


def test_audit_grant_notes_a_grant_type_it_does_not_answer() -> None:
    d = decide("k8s:b", "vertex", None, "jwt_bearer")
    assert "audit grant 'shadow' would deny: grant_type_not_allowed" in d.audit_notes


@pytest.mark.parametrize(("audience", "requested", "granted", "ignored"), [
    ("vertex", (GOOGLE,), ("predict",), (GOOGLE,)),  # nothing left: the defaults (RFC 6749 §3.3)
    ("vertex", (GOOGLE, "tune"), ("tune",), (GOOGLE,)),
    ("vertex", ("tune",), ("tune",), ()),
    ("vertex", None, ("predict",), ()),
    ("bare", (GOOGLE,), (), (GOOGLE,)),  # no defaults: nothing granted, the answer omits scope
])
def test_ignored_scopes(audience: str, requested: tuple[str, ...] | None, granted: tuple[str, ...], ignored: tuple[str, ...]) -> None:
    d = decide("k8s:a", audience, requested)
    assert isinstance(d, Allow)
    assert (d.scopes, d.ignored_scopes) == (granted, ignored)


def test_ignored_scope_does_not_excuse_other_unknown_scopes() -> None:
    d = decide("k8s:a", "vertex", (GOOGLE, "admin"))
    assert isinstance(d, Deny) and d.reason == "scope_not_allowed"


def test_ignored_scopes_elsewhere_still_refuse() -> None:
    d = decide("k8s:b", "vertex", (GOOGLE,))
    assert isinstance(d, Deny) and d.reason == "scope_not_allowed"


# --- configuration -----------------------------------------------------------------------------------

def _with(grant: dict[str, Any] | None = None, target: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"issuer": ISSUER, "issuers": [{"name": "k8s", "issuer": "https://k8s.example.com", "audiences": [ISSUER]}],
            "grants": [{"name": "g", "match": {"identity": "a"},
                        "targets": [{"audience": "x", "scopes": ["read"], **(target or {})}], **(grant or {})}]}


@pytest.mark.parametrize(("grant", "target"), [
    pytest.param({"grant_types": []}, None, id="no-grant-types"),
    pytest.param({"grant_types": ["client_credentials"]}, None, id="unknown-grant-type"),
    pytest.param({"grant_types": ["jwt_bearer", "jwt_bearer"]}, None, id="duplicate-grant-type"),
    pytest.param(None, {"ignore_scopes": ["read"]}, id="ignore-a-granted-scope"),
    pytest.param(None, {"ignore_scopes": ["a b"]}, id="ignore-bad-token"),
    pytest.param(None, {"ignore_scopes": ["z", "z"]}, id="ignore-twice"),
])
def test_config_refuses(grant: dict[str, Any] | None, target: dict[str, Any] | None) -> None:
    with pytest.raises(ValidationError):
        BrokerConfig.model_validate(_with(grant, target))


def test_config_defaults_deny_the_new_grant() -> None:
    cfg = BrokerConfig.model_validate({**_with(), "clients": {"registered": [
        {"client_id": "c", "auth_method": "client_secret_basic", "secret_sha256": "0" * 64}]}})
    assert cfg.grants[0].grant_types == ("token_exchange",)
    assert cfg.clients.registered[0].jwt_bearer is False
    assert cfg.issuers[0].id_jag is False
    assert cfg.grants[0].targets[0].ignore_scopes == ()


# --- the documentation's configurations -----------------------------------------------------------

def _doc_configs() -> list[str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "jwt-bearer.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    return [b for b in blocks if b.startswith("issuer:")]


def test_docs_configurations_load_and_decide_as_described() -> None:
    import yaml

    workload, enterprise = (BrokerConfig.model_validate(yaml.safe_load(b)) for b in _doc_configs())
    assert workload.grants[0].grant_types == ("jwt_bearer",)
    policy = CompiledPolicy.from_config(workload)
    d = policy.decide(identity=WorkloadIdentity("k8s:agents/router", "prod-cluster", {}), claims={},
                      request_audiences=(), request_resources=("https://mcp.example.com/",), requested_scopes=None,
                      actor=None, grant_type="jwt_bearer")
    assert isinstance(d, Allow) and d.scopes == ("mcp:read",)
    assert enterprise.issuers[0].id_jag and enterprise.clients.registered[0].jwt_bearer
    policy = CompiledPolicy.from_config(enterprise)
    for client, allowed in (("chat-agent", True), ("other-app", False)):
        d = policy.decide(identity=WorkloadIdentity("user:alice", "corp-idp", {}), claims={"client_id": client},
                          request_audiences=(), request_resources=("https://chat.example.com/mcp",),
                          requested_scopes=("chat.read", "chat.history"), actor=None, grant_type="jwt_bearer")
        assert isinstance(d, Allow) is allowed


@pytest.mark.parametrize(("identity", "audience", "scopes", "grant_type"), [
    ("k8s:a", "vertex", (GOOGLE,), "jwt_bearer"),
    ("k8s:a", "vertex", (GOOGLE, "tune"), "token_exchange"),
    ("k8s:a", "bare", (GOOGLE,), "jwt_bearer"),
    ("k8s:a", "vertex", (GOOGLE, "admin"), "jwt_bearer"),
    ("k8s:b", "vertex", None, "jwt_bearer"),
    ("k8s:b", "vertex", None, "token_exchange"),
    ("k8s:c", "vertex", None, "jwt_bearer"),
])
def test_explain_trace_reaches_decides_decision(identity: str, audience: str, scopes: tuple[str, ...] | None,
                                                grant_type: str) -> None:
    # sts explain and refusal audit records must tell the server's story for both grant types.
    from sts.trust.explain import explain_decision

    policy = CompiledPolicy.from_config(BrokerConfig.model_validate(POLICY_CONFIG))
    kwargs: dict[str, Any] = {"identity": WorkloadIdentity(identity, "k8s", {}), "claims": {},
                              "request_audiences": (audience,), "request_resources": (), "requested_scopes": scopes,
                              "actor": None, "grant_type": grant_type}
    t = explain_decision(policy, **kwargs)
    assert t.decision == policy.decide(**kwargs)
    if identity == "k8s:b" and grant_type == "jwt_bearer":
        assert {g.name: g.step for g in t.grants}["exchange-only"] == "grant_type"


def test_jwt_bearer_reads_authorization_details_as_token_exchange_does() -> None:
    details = '[{"type": "chat_read", "actions": ["read"]}]'
    jb = parse_exchange_form([("grant_type", GRANT_TYPE_JWT_BEARER), ("assertion", "a.b.c"),
                              ("authorization_details", details)])
    te = parse_exchange_form([("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                              ("subject_token", "a.b.c"), ("subject_token_type", TOKEN_TYPE_JWT),
                              ("authorization_details", details)])
    assert jb.authorization_details is not None and jb.authorization_details == te.authorization_details
    # Transaction-token parameters belong to token exchange: ignored here.
    ignored = parse_exchange_form([("grant_type", GRANT_TYPE_JWT_BEARER), ("assertion", "a.b.c"),
                                   ("request_context", "not json")])
    assert ignored.request_context is None


# --- sts config diff: opening the grant is a widening ---------------------------------------------

@pytest.mark.parametrize(("path", "value", "where", "words"), [
    (("grants", 0, "grant_types"), ["token_exchange", "jwt_bearer"], "grant g grant_types", "grant types added: jwt_bearer"),
    (("grants", 0, "targets", 0, "ignore_scopes"), [GOOGLE], "grant g targets", "ignored scopes added"),
    (("issuers", 0, "id_jag"), True, "issuer k8s id_jag", "false -> true"),
    (("clients", "registered", 0, "jwt_bearer"), True, "client c jwt_bearer", "false -> true"),
])
def test_config_diff_sees_the_grant_opened(path: tuple[Any, ...], value: Any, where: str, words: str) -> None:
    import copy

    from sts.config.diff import diff_configs

    base = {**_with(), "clients": {"registered": [
        {"client_id": "c", "auth_method": "client_secret_basic", "secret_sha256": "0" * 64}]}}
    new = copy.deepcopy(base)
    node: Any = new
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    diff = diff_configs(BrokerConfig.model_validate(base), BrokerConfig.model_validate(new))
    assert diff.widens
    [change] = diff.changes
    assert change.effect == "widens" and change.where().startswith(where) and words in change.summary, change
    back = diff_configs(BrokerConfig.model_validate(new), BrokerConfig.model_validate(base))
    assert not back.widens
