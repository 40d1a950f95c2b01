"""sts.config.diff: one case for each kind of widening, narrowing and the pattern relations."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from sts.config.diff import diff_configs, relate
from sts.config.models import BrokerConfig, MatchConfig

BASE: dict[str, Any] = {
    "issuer": "https://sts.example.com",
    "tokens": {"default_lifetime": 900, "max_lifetime": 3600},
    "clients": {
        "allow_public": False,
        "registered": [{"client_id": "ci", "auth_method": "client_secret_basic", "secret_sha256": "a" * 64}],
    },
    "issuers": [
        {
            "name": "github",
            "issuer": "https://token.actions.githubusercontent.com",
            "audiences": ["https://sts.example.com"],
            "algorithms": ["RS256"],
            "expected_typ": "JWT",
            "require_jti": True,
            "claim_validation_rules": [{"expression": 'claims.repository_owner == "acme"'}],
        }
    ],
    "grants": [
        {
            "name": "deploy",
            "issuers": ["github"],
            "match": {"identity": "github:acme/app"},
            "targets": [{"audience": "vault", "scopes": ["read"], "default_scopes": ["read"]}],
            "lifetime": 600,
            "sender_constraint": "dpop",
            "status_list": True,
        }
    ],
}

Edit = Callable[[dict[str, Any]], None]


def _grant(d: dict[str, Any]) -> dict[str, Any]:
    g: dict[str, Any] = d["grants"][0]
    return g


def _issuer(d: dict[str, Any]) -> dict[str, Any]:
    i: dict[str, Any] = d["issuers"][0]
    return i


def _set(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        getter(d)[key] = value
    return edit


def _del(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        getter(d).pop(key)
    return edit


def _append(getter: Callable[[dict[str, Any]], Any], item: Any) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        getter(d).append(item)
    return edit


def _target(d: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = d["grants"][0]["targets"][0]
    return t


def _apply(edit: Edit, base: dict[str, Any] | None = None) -> BrokerConfig:
    d = copy.deepcopy(base or BASE)
    edit(d)
    return BrokerConfig.model_validate(d)


OLD = BrokerConfig.model_validate(BASE)

# (id, edit, effect of the first change, where it is, words in its summary)
WIDENINGS: list[tuple[str, Edit, str, str, str]] = [
    ("grant added", _append(lambda d: d["grants"], {"name": "read-all", "match": {"identity": "github:acme/x"},
                                                    "targets": [{"audience": "db"}]}), "widens", "grant read-all", "added"),
    ("issuer added", _append(lambda d: d["issuers"], {"name": "gitlab", "issuer": "https://gitlab.com",
                                                      "audiences": ["https://sts.example.com"]}), "widens", "issuer gitlab", "added"),
    ("client added", _append(lambda d: d["clients"]["registered"], {"client_id": "ci2", "auth_method": "client_secret_post",
                                                                   "secret_sha256": "b" * 64}), "widens", "client ci2", "added"),
    ("trust domain added", _set(lambda d: d, "trust_domains", [{"name": "example.org", "bundle_file": "bundle.json"}]),
     "widens", "trust domain example.org", "added"),
    ("target added", _append(lambda d: _grant(d)["targets"], {"audience": "db"}), "widens", "grant deploy targets[audience=db]", "target added"),
    ("more scopes", _set(_target, "scopes", ["read", "write"]), "widens", "grant deploy targets[audience=vault].scopes", "scopes added: write"),
    ("more default scopes", lambda d: _target(d).update(scopes=["read", "write"], default_scopes=["read", "write"]),
     "widens", "grant deploy targets[audience=vault]", "added: write"),
    ("longer grant lifetime", _set(_grant, "lifetime", 1800), "widens", "grant deploy lifetime", "longer: 600 -> 1800"),
    ("longer tokens.max_lifetime", lambda d: d["tokens"].update(max_lifetime=7200), "widens", "tokens max_lifetime", "longer"),
    ("audit grant turned to enforce", None, "widens", "grant deploy mode", "audit -> enforce"),  # type: ignore[list-item]
    ("literal to pattern", _set(_grant, "match", {"identity_pattern": "^github:acme/.*$"}), "widens", "grant deploy match",
     "matches more identities"),
    ("anchored prefix relaxed", None, "widens", "grant deploy match", "matches more identities"),  # type: ignore[list-item]
    ("new alternative", None, "widens", "grant deploy match", "matches more identities"),  # type: ignore[list-item]
    ("other literal", _set(_grant, "match", {"identity": "github:acme/other"}), "widens", "grant deploy match",
     "matches other identities"),
    ("pattern rewritten (undecidable)", None, "may_widen", "grant deploy match", "cannot prove"),  # type: ignore[list-item]
    ("condition rewritten", None, "may_widen", "grant deploy match", "cannot prove"),  # type: ignore[list-item]
    ("issuers widened to every issuer", _del(_grant, "issuers"), "widens", "grant deploy issuers", "every issuer"),
    ("enforced claim rule removed", _set(_issuer, "claim_validation_rules", []), "widens", "issuer github claim_validation_rules",
     "enforced rule removed"),
    ("claim rule turned to audit", _set(_issuer, "claim_validation_rules",
                                        [{"expression": 'claims.repository_owner == "acme"', "mode": "audit"}]),
     "widens", "issuer github claim_validation_rules", "turned to audit"),
    ("delegation allowed", _set(_grant, "delegation", {"actors": [{"identity": "github:acme/agent"}]}), "widens",
     "grant deploy delegation", "delegation allowed"),
    ("more actors", None, "widens", "grant deploy delegation.actors", "matches more actors"),  # type: ignore[list-item]
    ("sender constraint dropped", _set(_grant, "sender_constraint", "none"), "widens",
     "grant deploy targets[audience=vault].sender_constraint", "dropped"),
    ("status list dropped", _set(_grant, "status_list", False), "widens", "grant deploy targets[audience=vault].status_list", "true -> false"),
    ("more audiences accepted", _set(_issuer, "audiences", ["https://sts.example.com", "sts"]), "widens", "issuer github audiences",
     "added: sts"),
    ("more algorithms", _set(_issuer, "algorithms", ["RS256", "ES256"]), "widens", "issuer github algorithms", "added: ES256"),
    ("longer clock skew", _set(_issuer, "clock_skew", 120), "widens", "issuer github clock_skew", "larger"),
    ("jti no longer required", _set(_issuer, "require_jti", False), "widens", "issuer github require_jti", "true -> false"),
    ("expected typ dropped", _del(_issuer, "expected_typ"), "widens", "issuer github expected_typ", "no longer required"),
    ("identity mapping changed", _set(_issuer, "claim_mappings", {"identity": '"gh:" + claims.sub'}), "may_widen",
     "issuer github claim_mappings.identity", "identity mapping changed"),
    ("issuer URL changed", _set(_issuer, "issuer", "https://evil.example.com"), "may_widen", "issuer github issuer", "issuer URL"),
    ("public clients allowed", lambda d: d["clients"].update(allow_public=True), "widens", "clients allow_public", "false -> true"),
    ("client may introspect", lambda d: d["clients"]["registered"][0].update(introspection=True), "widens",
     "client ci introspection", "false -> true"),
    ("cap to subject lifetime off", _set(_grant, "cap_to_subject_lifetime", False), "widens", "grant deploy cap_to_subject_lifetime",
     "true -> false"),
    ("default target set", _set(_grant, "default_target", "vault"), "widens", "grant deploy default_target", "default target set"),
    ("grants reordered", None, "may_widen", "grant order", "grants reordered: b, deploy"),  # type: ignore[list-item]
    ("approval dropped", None, "widens", "grant deploy targets[audience=vault].approval", "approval no longer required"),  # type: ignore[list-item]
    ("scope no longer needs approval", None, "widens", "grant deploy targets[audience=vault].approval.scopes",
     "scopes needing approval removed: write"),  # type: ignore[list-item]
    ("authorization detail type added", lambda d: _target(d).update(authorization_details=[_MCP]), "widens",
     "grant deploy targets[audience=vault].authorization_details[mcp_tool]", "type added: mcp_tool"),
    ("authorization detail type changed", None, "may_widen",  # type: ignore[list-item]
     "grant deploy targets[audience=vault].authorization_details[mcp_tool]", "cannot prove"),
    ("transaction tokens allowed", None, "widens", "transaction_tokens", "configured"),  # type: ignore[list-item]
    ("transaction token scope added", None, "widens", "grant deploy transaction_tokens.scopes", "added: trade"),  # type: ignore[list-item]
    ("transaction tokens for every client", None, "widens", "grant deploy transaction_tokens.clients", "every client"),  # type: ignore[list-item]
    ("longer transaction token lifetime", None, "widens", "transaction_tokens lifetime", "longer: 300 -> 600"),  # type: ignore[list-item]
    ("longer approval window", None, "widens", "grant deploy targets[audience=vault].approval.max_window", "larger"),  # type: ignore[list-item]
]


def _pattern_base(pattern: str) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["grants"][0]["match"] = {"identity_pattern": pattern}
    return d


# Cases whose old configuration differs from BASE: (id -> (old config, edit)).
_REFUND = {"type": "payment", "field": "action", "values": ["refund"]}
_MCP = {"type": "mcp_tool", "schema": {"type": "object", "properties": {"tools": {"type": "array", "items": {"type": "string"}}}},
        "fields": {"tools": {"values": ["search"]}}}


def _txn_base() -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["transaction_tokens"] = {"trust_domain": "trading.example.com"}
    d["grants"][0]["transaction_tokens"] = {"scopes": ["quote"], "clients": ["ci"]}
    return d


def _apply_dict(d: dict[str, Any], edit: Edit) -> dict[str, Any]:
    edit(d)
    return d


def _approval_base() -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["grants"][0]["targets"][0].update(scopes=["read", "write"], approval={"scopes": ["write"], "max_window": 3600})
    return d


SPECIAL: dict[str, tuple[dict[str, Any], Edit]] = {
    "approval dropped": (_approval_base(), lambda d: _target(d).pop("approval")),
    "scope no longer needs approval": (
        _apply_dict(_approval_base(), lambda d: _target(d)["approval"].update(authorization_details=[_REFUND])),
        lambda d: _target(d)["approval"].update(scopes=[])),
    "authorization detail type changed": (
        _apply_dict(copy.deepcopy(BASE), lambda d: _target(d).update(authorization_details=[_MCP])),
        lambda d: _target(d)["authorization_details"][0]["fields"]["tools"].update(values=["search", "delete"])),
    "transaction tokens allowed": (BASE, lambda d: _apply_dict(d, lambda x: x.update(_txn_base()))),
    "transaction token scope added": (_txn_base(), lambda d: _grant(d)["transaction_tokens"].update(scopes=["quote", "trade"])),
    "transaction tokens for every client": (_txn_base(), lambda d: _grant(d)["transaction_tokens"].pop("clients")),
    "longer transaction token lifetime": (_txn_base(), lambda d: d["transaction_tokens"].update(lifetime=600)),
    "longer approval window": (_approval_base(), lambda d: _target(d)["approval"].update(max_window=7200)),
    "grants reordered": (
        {**copy.deepcopy(BASE), "grants": [BASE["grants"][0], {**BASE["grants"][0], "name": "b"}]},
        lambda d: d.update(grants=d["grants"][::-1])),
    "audit grant turned to enforce": (
        {**copy.deepcopy(BASE), "grants": [{**BASE["grants"][0], "mode": "audit"}]}, _set(_grant, "mode", "enforce")),
    "anchored prefix relaxed": (
        _pattern_base("^github:acme/app-.*$"), _set(_grant, "match", {"identity_pattern": "^github:acme/.*$"})),
    "new alternative": (
        _pattern_base("^github:acme/(app|api)$"), _set(_grant, "match", {"identity_pattern": "^github:acme/(app|api|web)$"})),
    "pattern rewritten (undecidable)": (
        _pattern_base("^github:acme/[a-z]+$"), _set(_grant, "match", {"identity_pattern": "^github:acme/[a-z0-9]+$"})),
    "condition rewritten": (
        {**copy.deepcopy(BASE), "grants": [{**BASE["grants"][0], "match": {"condition": 'attributes.repo == "a"'}}]},
        _set(_grant, "match", {"condition": 'attributes.repo != "b"'})),
    "more actors": (
        {**copy.deepcopy(BASE), "grants": [{**BASE["grants"][0], "delegation": {"actors": [{"identity": "github:acme/agent"}]}}]},
        _set(_grant, "delegation", {"actors": [{"identity": "github:acme/agent"}, {"identity_pattern": "^github:acme/bots-.*$"}]})),
}


@pytest.mark.parametrize(("edit", "effect", "where", "words"),
                         [pytest.param(e, eff, w, words, id=i) for i, e, eff, w, words in WIDENINGS])
def test_each_kind_of_widening(request: pytest.FixtureRequest, edit: Edit | None, effect: str, where: str, words: str) -> None:
    case = request.node.callspec.id
    if case in SPECIAL:
        base, edit = SPECIAL[case]
        old = BrokerConfig.model_validate(base)
        new = _apply(edit, base)
    else:
        assert edit is not None
        old, new = OLD, _apply(edit)
    diff = diff_configs(old, new)
    assert diff.widens
    first = diff.changes[0]
    assert first.effect == effect, diff.changes
    assert first.where().startswith(where), first.where()
    assert words in first.summary, first.summary
    # Every widening comes before any other change.
    effects = [c.effect for c in diff.changes]
    assert effects == sorted(effects, key=["widens", "may_widen", "narrows", "neutral"].index)
    # Reversed, a certain widening is a narrowing and nothing widens for sure.
    if effect == "widens" and case not in ("other literal",):
        back = diff_configs(new, old)
        assert not any(c.effect == "widens" for c in back.changes), back.changes


NARROWINGS: list[tuple[str, Edit, str]] = [
    ("grant removed", lambda d: d.update(grants=[]), "grant deploy"),
    ("scope removed", lambda d: _target(d).update(scopes=[], default_scopes=[]), "grant deploy targets[audience=vault].scopes"),
    ("shorter lifetime", _set(_grant, "lifetime", 300), "grant deploy lifetime"),
    ("grant to audit", _set(_grant, "mode", "audit"), "grant deploy mode"),
    ("pattern to literal inside it", None, "grant deploy match"),  # type: ignore[list-item]
    ("rule added", _append(lambda d: _issuer(d)["claim_validation_rules"], {"expression": 'claims.ref == "refs/heads/main"'}),
     "issuer github claim_validation_rules"),
    ("sender constraint strengthened", _set(_grant, "sender_constraint", "mtls"), None),  # type: ignore[list-item]
]


def test_narrowings_do_not_widen() -> None:
    for case, edit, where in NARROWINGS:
        if case == "pattern to literal inside it":
            old = BrokerConfig.model_validate(_pattern_base("^github:acme/.*$"))
            new = _apply(_set(_grant, "match", {"identity": "github:acme/app"}))
        else:
            old, new = OLD, _apply(edit)
        diff = diff_configs(old, new)
        assert diff.changes, case
        if case == "sender constraint strengthened":
            # dpop -> mtls: another proof of possession, neither wider nor narrower.
            assert [c.effect for c in diff.changes] == ["neutral"], diff.changes
            continue
        assert not diff.widens, (case, diff.changes)
        assert diff.changes[0].effect == "narrows" and diff.changes[0].where().startswith(where), (case, diff.changes)


def test_identical_configurations_have_no_changes() -> None:
    diff = diff_configs(OLD, BrokerConfig.model_validate(copy.deepcopy(BASE)))
    assert diff.changes == () and not diff.widens
    assert diff.as_dict() == {"widens": False, "counts": {"widens": 0, "may_widen": 0, "narrows": 0, "neutral": 0}, "changes": []}


def test_rotated_client_secret_is_neutral_and_never_shown() -> None:
    diff = diff_configs(OLD, _apply(lambda d: d["clients"]["registered"][0].update(secret_sha256="c" * 64)))
    assert [(c.effect, c.summary) for c in diff.changes] == [("neutral", "client secret rotated")]
    assert "c" * 64 not in repr(diff.as_dict()) and "a" * 64 not in repr(diff.as_dict())
    added = diff_configs(OLD, _apply(_append(lambda d: d["clients"]["registered"],
                                             {"client_id": "x", "auth_method": "client_secret_post", "secret_sha256": "d" * 64})))
    assert "d" * 64 not in repr(added.as_dict())


def test_weaker_client_authentication_widens() -> None:
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                      "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}
    strong = copy.deepcopy(BASE)
    strong["clients"]["registered"][0] = {"client_id": "ci", "auth_method": "private_key_jwt", "jwks": jwks}
    diff = diff_configs(BrokerConfig.model_validate(strong), OLD)
    assert diff.changes[0].effect == "widens" and "private_key_jwt -> client_secret_basic" in diff.changes[0].summary
    post = diff_configs(OLD, _apply(lambda d: d["clients"]["registered"][0].update(auth_method="client_secret_post")))
    assert [c.effect for c in post.changes] == ["neutral"]
    pinned = copy.deepcopy(BASE)
    pinned["clients"]["registered"][0] = {"client_id": "ci", "auth_method": "self_signed_tls_client_auth",
                                          "certificates_sha256": ["1" * 64]}
    more = copy.deepcopy(pinned)
    more["clients"]["registered"][0]["certificates_sha256"] = ["1" * 64, "2" * 64]
    added = diff_configs(BrokerConfig.model_validate(pinned), BrokerConfig.model_validate(more))
    assert [(c.effect, c.path) for c in added.changes] == [("widens", "certificates_sha256")]
    switched = diff_configs(BrokerConfig.model_validate(strong), BrokerConfig.model_validate(pinned))
    assert ("may_widen", "auth_method") in [(c.effect, c.path) for c in switched.changes]
    assert ("widens", "certificates_sha256") in [(c.effect, c.path) for c in switched.changes]


def test_unknown_fields_fail_closed() -> None:
    """A field this module has no rule for (added to the schema later) may widen."""
    from sts.config import diff as module

    old = OLD
    new = _apply(_set(_grant, "lifetime", 600))
    ctx = module._Ctx("grant", "deploy")
    module._compare_model(ctx, "", old.grants[0], new.grants[0].model_copy(update={"cap_to_subject_lifetime": False}), {})
    assert [c.effect for c in ctx.out] == ["may_widen"]


def test_signing_algorithm_change_is_neutral() -> None:
    diff = diff_configs(OLD, _apply(lambda d: d["tokens"].update(algorithm="RS256")))
    assert [c.effect for c in diff.changes] == ["neutral"]


@pytest.mark.parametrize(("old", "new", "relation"), [
    pytest.param({"identity": "a"}, {"identity_pattern": "^a.*$"}, "wider", id="literal-to-matching-pattern"),
    pytest.param({"identity": "a"}, {"identity_pattern": "^b.*$"}, "widens_other", id="literal-to-other-prefix"),
    pytest.param({"identity": "a"}, {"identity": "b"}, "widens_other", id="other-literal"),
    pytest.param({"identity_pattern": "^a\\.b$"}, {"identity": "a.b"}, "equal", id="escaped-literal-pattern"),
    pytest.param({"identity_pattern": "^x/app-.*$"}, {"identity_pattern": "^x/.*$"}, "wider", id="prefix-shortened"),
    pytest.param({"identity_pattern": "^x/.*$"}, {"identity_pattern": "^x/app-.*$"}, "narrower", id="prefix-lengthened"),
    pytest.param({"identity_pattern": "^x/.+$"}, {"identity_pattern": "^x/.*$"}, "wider", id="plus-to-star"),
    pytest.param({"identity_pattern": "^x/.*$"}, {"identity_pattern": "^x/.+$"}, "narrower", id="star-to-plus"),
    pytest.param({"identity_pattern": "^(a|b)$"}, {"identity_pattern": "^(a|b|c)$"}, "wider", id="alternative-added"),
    pytest.param({"identity_pattern": "^x/(a|b)$"}, {"identity_pattern": "^x/(?:a|b|c)$"}, "wider", id="inner-alternative-added"),
    pytest.param({"identity_pattern": "^x/(a|b)$"}, {"identity_pattern": "^x/(a|b)+$"}, "wider", id="quantified-holds-literals"),
    pytest.param({"identity_pattern": "^x/(a|b)+$"}, {"identity_pattern": "^x/(a|c)+$"}, "unknown", id="quantified-changed"),
    pytest.param({"identity_pattern": "^a$|^b$"}, {"identity_pattern": "^(?:b|a)$"}, "equal", id="alternatives-reordered"),
    pytest.param({"identity_pattern": "^[a-z]+$"}, {"identity_pattern": "^([a-z]+|x1)$"}, "wider", id="opaque-kept-plus-literal"),
    pytest.param({"identity_pattern": "^[a-z]+$"}, {"identity_pattern": "^[a-z0-9]+$"}, "unknown", id="class-widened-undecidable"),
    pytest.param({"identity_pattern": "^[a-z]+$"}, {"identity_pattern": "^[a-z]$"}, "unknown", id="quantifier-changed"),
    pytest.param({"identity_pattern": "^(a)\\1|x$"}, {"identity_pattern": "^(c+)|(a)\\1|x$"}, "unknown",
                 id="backreference-renumbered"),
    pytest.param({"condition": 'identity == "a"'}, {"condition": 'identity == "b"'}, "unknown", id="condition"),
    pytest.param({"condition": 'identity == "a"'}, {"identity": "a"}, "unknown", id="condition-to-literal"),
])
def test_pattern_relations(old: dict[str, str], new: dict[str, str], relation: str) -> None:
    assert relate([MatchConfig(**old)], [MatchConfig(**new)]) == relation


def test_audit_grants_issue_nothing_so_their_changes_are_neutral() -> None:
    audit_grant = {**BASE["grants"][0], "name": "trial", "mode": "audit"}
    added = diff_configs(OLD, _apply(_append(lambda d: d["grants"], audit_grant)))
    assert [(c.effect, c.action, c.name) for c in added.changes] == [("neutral", "added", "trial")]
    assert not added.widens and "audit mode: issues nothing" in added.changes[0].summary

    with_trial = copy.deepcopy(BASE)
    with_trial["grants"].append(audit_grant)
    wider_trial = diff_configs(BrokerConfig.model_validate(with_trial),
                               _apply(lambda d: d["grants"][1]["targets"][0].update(scopes=["read", "admin"]), with_trial))
    assert [c.effect for c in wider_trial.changes] == ["neutral"] and not wider_trial.widens

    removed = diff_configs(BrokerConfig.model_validate(with_trial), OLD)
    assert [(c.effect, c.action) for c in removed.changes] == [("neutral", "removed")]

    # Turned to audit while widened: the mode narrows, the rest issues nothing.
    to_audit = diff_configs(OLD, _apply(lambda d: (_grant(d).update(mode="audit"), _target(d).update(scopes=["read", "admin"]))))
    assert [(c.effect, c.path) for c in to_audit.changes] == [
        ("narrows", "mode"), ("neutral", "targets[audience=vault].scopes")]

    # Only enforced grants compete in file order.
    two = copy.deepcopy(BASE)
    two["grants"] = [audit_grant, BASE["grants"][0]]
    reordered = diff_configs(BrokerConfig.model_validate(two), _apply(lambda d: d.update(grants=d["grants"][::-1]), two))
    assert reordered.changes == ()
