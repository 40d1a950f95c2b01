"""RFC 8693 §2.1 request parsing, table-driven."""

from __future__ import annotations

import pytest

from sts.errors import InvalidAuthorizationDetails, InvalidRequest, InvalidScope, InvalidTarget, OAuthError, UnsupportedGrantType
from sts.protocol import (
    GRANT_TYPE_TOKEN_EXCHANGE,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_JWT,
    is_absolute_uri_without_fragment,
    is_valid_scope_token,
    parse_exchange_form,
)

BASE = [
    ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
    ("subject_token", "a.b.c"),
    ("subject_token_type", TOKEN_TYPE_JWT),
]


def form(*extra: tuple[str, str], drop: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    return [p for p in BASE if p[0] not in drop] + list(extra)


def test_minimal_request_defaults() -> None:
    req = parse_exchange_form(form())
    assert req.subject_token == "a.b.c"
    assert req.requested_token_type == TOKEN_TYPE_ACCESS_TOKEN
    assert req.scopes is None
    assert req.audiences == () and req.resources == ()
    assert req.actor_token is None and req.actor_token_type is None


@pytest.mark.parametrize(
    ("pairs", "error", "reason"),
    [
        pytest.param(form(drop=("grant_type",)), InvalidRequest, "missing_grant_type", id="missing-grant-type"),
        pytest.param([("grant_type", "client_credentials")] + BASE[1:], UnsupportedGrantType, "unsupported_grant_type", id="other-grant"),
        pytest.param(form(drop=("subject_token",)), InvalidRequest, "missing_subject_token", id="missing-subject-token"),
        pytest.param(form(("subject_token", "x.y.z")), InvalidRequest, "duplicate_parameter", id="duplicate-subject-token"),
        pytest.param(form(("scope", "a"), ("scope", "b")), InvalidRequest, "duplicate_parameter", id="duplicate-scope"),
        pytest.param(form(("grant_type", GRANT_TYPE_TOKEN_EXCHANGE)), InvalidRequest, "duplicate_parameter", id="duplicate-grant-type"),
        pytest.param(form(drop=("subject_token_type",)), InvalidRequest, "missing_subject_token_type", id="missing-subject-token-type"),
        pytest.param(form(("actor_token", "a.b.c")), InvalidRequest, "missing_actor_token_type", id="actor-without-type"),
        pytest.param(form(("actor_token_type", TOKEN_TYPE_JWT)), InvalidRequest, "unexpected_actor_token_type", id="actor-type-without-token"),
        pytest.param(form(("requested_token_type", "urn:ietf:params:oauth:token-type:saml2")), InvalidRequest, "unsupported_requested_token_type", id="saml-requested"),
        pytest.param(form(("resource", "/relative")), InvalidTarget, "resource_malformed", id="relative-resource"),
        pytest.param(form(("resource", "https://api.example.com/#frag")), InvalidTarget, "resource_malformed", id="resource-fragment"),
        pytest.param(form(("resource", "https://api.example.com/a b")), InvalidTarget, "resource_malformed", id="resource-space"),
        pytest.param(form(("scope", "read\\x")), InvalidScope, "scope_malformed", id="scope-backslash"),
        pytest.param(form(("scope", 'a"b')), InvalidScope, "scope_malformed", id="scope-quote"),
        pytest.param(form(("subject_token", "x" * 20000), drop=("subject_token",)), InvalidRequest, "token_too_large", id="token-too-large"),
        pytest.param(form(("subject_token", "   \n"), drop=("subject_token",)), InvalidRequest, "missing_subject_token", id="blank-token"),
        pytest.param(form(("authorization_details", "[{\"type\":\"a\"}]"), ("authorization_details", "[{\"type\":\"b\"}]")),
                     InvalidRequest, "duplicate_parameter", id="duplicate-authorization-details"),
        pytest.param(form(("authorization_details", "[{")), InvalidRequest, "authorization_details_malformed", id="details-not-json"),
        pytest.param(form(("authorization_details", "[1]")), InvalidAuthorizationDetails, "authorization_details_no_type",
                     id="details-item-not-object"),
        pytest.param(form(("request_context", "[]")), InvalidRequest, "request_context_not_object", id="context-not-object"),
        pytest.param(form(("request_details", "{\"a\":1,\"a\":2}")), InvalidRequest, "request_details_malformed",
                     id="details-duplicate-member"),
        pytest.param(form(("request_details", "{\"a\":\"" + "x" * 5000 + "\"}")), InvalidRequest, "request_details_too_large",
                     id="details-too-large"),
    ],
)
def test_refusals(pairs: list[tuple[str, str]], error: type[OAuthError], reason: str) -> None:
    with pytest.raises(error) as info:
        parse_exchange_form(pairs)
    assert info.value.reason == reason
    # The public text never echoes the request.
    assert "a.b.c" not in info.value.description


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        pytest.param([("subject_token", "  a.b.c\n")], lambda r: r.subject_token == "a.b.c", id="token-trimmed"),
        pytest.param([("audience", "x"), ("audience", "y")], lambda r: r.audiences == ("x", "y"), id="audience-repeats"),
        pytest.param([("resource", "https://a.example/"), ("resource", "urn:example:api")], lambda r: len(r.resources) == 2, id="resource-repeats"),
        pytest.param([("audience", "x"), ("resource", "https://a.example/")], lambda r: r.targets == ("x", "https://a.example/"), id="targets"),
        pytest.param([("audience", "https://a.example/"), ("resource", "https://a.example/")], lambda r: r.targets == ("https://a.example/",), id="targets-dedup"),
        pytest.param([("scope", "read  write read")], lambda r: r.scopes == ("read", "write"), id="scope-split-dedup"),
        pytest.param([("scope", "")], lambda r: r.scopes is None, id="empty-scope-is-omitted"),
        pytest.param([("unknown", "1"), ("unknown", "2")], lambda r: True, id="unknown-ignored-even-if-repeated"),
        pytest.param([("requested_token_type", TOKEN_TYPE_JWT)], lambda r: r.requested_token_type == TOKEN_TYPE_JWT, id="jwt-requested"),
        pytest.param([("actor_token", "d.e.f"), ("actor_token_type", TOKEN_TYPE_JWT)], lambda r: r.actor_token == "d.e.f", id="actor"),
        pytest.param([("authorization_details", '[{"type":"mcp_tool","tools":["search"]}]')],
                     lambda r: r.authorization_details == ({"type": "mcp_tool", "tools": ["search"]},), id="authorization-details"),
        pytest.param([("requested_token_type", "urn:ietf:params:oauth:token-type:txn_token"),
                      ("request_context", '{"req_ip":"10.0.0.1"}'), ("request_details", '{"action":"BUY"}')],
                     lambda r: (r.request_context, r.request_details) == ({"req_ip": "10.0.0.1"}, {"action": "BUY"}), id="txn"),
        pytest.param([], lambda r: (r.authorization_details, r.request_context, r.request_details) == (None, None, None),
                     id="json-parameters-absent"),
    ],
)
def test_accepted(extra: list[tuple[str, str]], check: object) -> None:
    pairs = [p for p in BASE if p[0] not in {k for k, _ in extra if k == "subject_token"}] + extra
    assert check(parse_exchange_form(pairs))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("value", "ok"),
    [("https://api.example.com/v1", True), ("urn:example:resource", True), ("/path", False), ("api.example.com", False),
     ("https://x/#f", False), ("https://x/\x7f", False), ("", False)],
)
def test_absolute_uri(value: str, ok: bool) -> None:
    assert is_absolute_uri_without_fragment(value) is ok


@pytest.mark.parametrize(("scope", "ok"), [("read", True), ("a:b/c", True), ("!#[]~", True), ("a b", False), ('"', False), ("\\", False), ("é", False), ("", False)])
def test_scope_token(scope: str, ok: bool) -> None:
    assert is_valid_scope_token(scope) is ok
