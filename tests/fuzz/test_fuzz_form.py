"""Properties of the token endpoint's form handling (RFC 6749 §3.1, §3.2; RFC 8693 §2.1;
HTML's application/x-www-form-urlencoded parser, which ``urllib.parse.parse_qsl`` implements).

The contract under test is the public one, whatever parser sits behind it:

* body bytes -> ``decode_form`` (sts.http.form, the token endpoint's fast decoder) -> pairs, or
  ``InvalidRequest`` (``bad_form_encoding``); equal, pair for pair, to the ``parse_qsl``
  reference below on every body, and refused exactly where the reference refuses (the
  differential property: any faster parser must keep it);
* pairs -> ``collect_parameters`` -> parameters, or ``InvalidRequest`` (a repeated parameter);
* pairs -> ``parse_exchange_form`` -> an ``ExchangeRequest`` that holds its documented
  invariant, or a 400 refusal with one of the codes a form can earn (``invalid_request``,
  ``unsupported_grant_type``, ``invalid_target``, ``invalid_scope``). Nothing else, ever.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode

from hypothesis import example, given
from hypothesis import strategies as st

from sts.errors import InvalidRequest, OAuthError
from sts.http.form import MAX_FIELDS, decode_form
from sts.protocol import (
    GRANT_TYPE_TOKEN_EXCHANGE,
    ISSUABLE_TOKEN_TYPES,
    MAX_SCOPE_CHARS,
    MAX_TARGET_CHARS,
    MAX_TOKEN_CHARS,
    REPEATABLE_PARAMETERS,
    SINGLE_PARAMETERS,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_ID_TOKEN,
    TOKEN_TYPE_JWT,
    ExchangeRequest,
    collect_parameters,
    is_absolute_uri_without_fragment,
    is_valid_scope_token,
    parse_exchange_form,
)

FORM_ERRORS = frozenset({"invalid_request", "unsupported_grant_type", "invalid_target", "invalid_scope"})


def reference_decode(body: bytes) -> list[tuple[str, str]] | None:
    """The plain reading of an application/x-www-form-urlencoded body, or ``None`` where the
    endpoint must refuse it: not ASCII, a percent-escape that is not UTF-8, or more than
    ``MAX_FIELDS`` fields."""
    try:
        return parse_qsl(body.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict",
                         max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return None


# --- strategies -----------------------------------------------------------------------------------

KNOWN_NAMES = sorted(SINGLE_PARAMETERS | REPEATABLE_PARAMETERS)
TOKEN_TYPES = [TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_ACCESS_TOKEN,
               "urn:ietf:params:oauth:token-type:saml2", "urn:ietf:params:oauth:token-type:refresh_token"]
INTERESTING_VALUES = [
    "", " ", "\n", GRANT_TYPE_TOKEN_EXCHANGE, "client_credentials", *TOKEN_TYPES,
    "a.b.c", " a.b.c\n", "https://api.example.com/v1", "https://api.example.com/#f", "/relative",
    "urn:example:x", "read write", "read  read", 'a"b', "a\\b", "\x00", "\u2028", "é", "%",
    "x" * (MAX_TOKEN_CHARS + 1), "y" * (MAX_TARGET_CHARS + 1), "s" * (MAX_SCOPE_CHARS + 1),
]

names = st.one_of(st.sampled_from(KNOWN_NAMES), st.text(max_size=12))
values = st.one_of(st.sampled_from(INTERESTING_VALUES), st.text(max_size=40),
                   st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40))
pairs_strategy = st.lists(st.tuples(names, values), max_size=16)

# Bodies a client would send: every pair encoded by the standard library.
encoded_bodies = pairs_strategy.map(lambda pairs: urlencode(pairs).encode("ascii"))
# Bodies built from the characters that mean something to a form parser, and percent-escapes
# of arbitrary octets (many of them not UTF-8).
form_chars = st.sampled_from(list("&=+%;a0Z._-~ ") + ["%2", "%zz", "%41", "%C3%A9", "%C3", "%FF", "%00", "%26", "%3D"])
escaped_octets = st.binary(max_size=8).map(lambda b: quote(b, safe=""))
crafted_bodies = st.lists(st.one_of(form_chars, escaped_octets, st.text(max_size=4)), max_size=40).map(
    lambda parts: "".join(parts).encode("utf-8"))
many_fields = st.integers(min_value=MAX_FIELDS - 2, max_value=MAX_FIELDS + 2).map(
    lambda n: "&".join(f"k{i}=v" for i in range(n)).encode())
bodies = st.one_of(encoded_bodies, crafted_bodies, many_fields, st.binary(max_size=200))


# --- decode_form ----------------------------------------------------------------------------------


@given(bodies)
@example(b"")
@example(b"a=%ff")
@example(b"a=\xc3\xa9")
@example(b"&".join([b"k=v"] * (MAX_FIELDS + 1)))
def test_decode_form_agrees_with_the_reference(body: bytes) -> None:
    expected = reference_decode(body)
    try:
        got = decode_form(body)
    except InvalidRequest as exc:
        assert expected is None, f"refused a body the reference reads: {body!r}"
        assert exc.reason == "bad_form_encoding"
        assert exc.status == 400
        return
    assert expected is not None, f"read a body the reference refuses: {body!r}"
    assert got == expected
    assert all(type(k) is str and type(v) is str for k, v in got)


@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=60)), max_size=MAX_FIELDS))
def test_decode_form_round_trips_what_clients_encode(pairs: list[tuple[str, str]]) -> None:
    assert decode_form(urlencode(pairs).encode("ascii")) == pairs


# --- collect_parameters ---------------------------------------------------------------------------


@given(pairs_strategy)
def test_collect_parameters_groups_or_refuses_repeats(pairs: list[tuple[str, str]]) -> None:
    sent = [(k, v) for k, v in pairs if v != ""]
    try:
        params = collect_parameters(pairs)
    except InvalidRequest as exc:
        assert exc.reason == "duplicate_parameter"
        repeated = {k for k in SINGLE_PARAMETERS if sum(1 for name, _ in sent if name == k) > 1}
        assert repeated, "refused a form without a repeated single parameter"
        return
    # RFC 6749 §3.1: an empty value counts as omitted; every other value is kept, in order.
    assert [(k, v) for k, values in params.items() for v in values] == sorted(
        sent, key=lambda kv: list(params).index(kv[0]))
    assert all(len(params[k]) == 1 for k in SINGLE_PARAMETERS if k in params)


@given(bodies)
def test_endpoint_form_stage_refuses_only_with_invalid_request(body: bytes) -> None:
    # decode_form then collect_parameters is what the token endpoint runs before anything else.
    try:
        collect_parameters(decode_form(body))
    except InvalidRequest as exc:
        assert exc.reason in {"bad_form_encoding", "duplicate_parameter"}


# --- parse_exchange_form --------------------------------------------------------------------------


def outcome(pairs: list[tuple[str, str]]) -> ExchangeRequest | tuple[str, str]:
    try:
        return parse_exchange_form(pairs)
    except OAuthError as exc:
        return exc.error, exc.reason


def assert_invariant(req: ExchangeRequest) -> None:
    """ExchangeRequest's documented invariant."""
    assert req.grant_type == GRANT_TYPE_TOKEN_EXCHANGE
    assert req.subject_token and req.subject_token == req.subject_token.strip()
    assert len(req.subject_token) <= MAX_TOKEN_CHARS
    assert req.subject_token_type
    assert (req.actor_token is None) == (req.actor_token_type is None)
    if req.actor_token is not None:
        assert req.actor_token == req.actor_token.strip() and len(req.actor_token) <= MAX_TOKEN_CHARS
    assert req.requested_token_type in ISSUABLE_TOKEN_TYPES
    for target in req.audiences + req.resources:
        assert target and len(target) <= MAX_TARGET_CHARS and target.isprintable()
    assert all(is_absolute_uri_without_fragment(r) for r in req.resources)
    if req.scopes is not None:
        assert all(is_valid_scope_token(s) for s in req.scopes)
        assert len(set(req.scopes)) == len(req.scopes)


@given(pairs_strategy)
def test_parse_exchange_form_answers_a_request_or_a_form_error(pairs: list[tuple[str, str]]) -> None:
    try:
        req = parse_exchange_form(pairs)
    except OAuthError as exc:
        assert exc.error in FORM_ERRORS and exc.status == 400, exc
        return
    assert_invariant(req)


def valid_pairs() -> st.SearchStrategy[list[tuple[str, str]]]:
    """Forms that are valid by RFC 8693 §2.1 and the broker's limits, in any order."""
    token = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80)
    scope_token = st.text(alphabet=st.characters(codec="ascii", min_codepoint=0x21, max_codepoint=0x7E,
                                                 exclude_characters='"\\'), min_size=1, max_size=10)
    resource = st.builds(lambda host, path: f"https://{host}.example.com/{path}",
                         st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
                         st.from_regex(r"[A-Za-z0-9._~/-]{0,20}", fullmatch=True))
    audience = st.one_of(resource, st.from_regex(r"[A-Za-z0-9:._-]{1,30}", fullmatch=True))

    @st.composite
    def build(draw: st.DrawFn) -> list[tuple[str, str]]:
        pairs = [("grant_type", GRANT_TYPE_TOKEN_EXCHANGE), ("subject_token", draw(token)),
                 ("subject_token_type", draw(st.sampled_from(TOKEN_TYPES[:3])))]
        if draw(st.booleans()):
            pairs += [("actor_token", draw(token)), ("actor_token_type", draw(st.sampled_from(TOKEN_TYPES[:3])))]
        if draw(st.booleans()):
            pairs.append(("requested_token_type", draw(st.sampled_from(sorted(ISSUABLE_TOKEN_TYPES)))))
        pairs += [("audience", a) for a in draw(st.lists(audience, max_size=3))]
        pairs += [("resource", r) for r in draw(st.lists(resource, max_size=3))]
        if draw(st.booleans()):
            pairs.append(("scope", " ".join(draw(st.lists(scope_token, min_size=1, max_size=4)))))
        pairs += draw(st.lists(st.tuples(st.text(max_size=8).filter(lambda n: n not in KNOWN_NAMES), values),
                               max_size=3))
        return draw(st.permutations(pairs))

    return build()


@given(valid_pairs())
def test_every_valid_form_is_accepted_as_sent(pairs: list[tuple[str, str]]) -> None:
    req = parse_exchange_form(pairs)
    assert_invariant(req)
    sent = dict(pairs)  # single parameters: one value each
    assert req.subject_token == sent["subject_token"].strip()
    assert req.subject_token_type == sent["subject_token_type"]
    assert req.actor_token == (sent["actor_token"].strip() if "actor_token" in sent else None)
    assert req.requested_token_type == sent.get("requested_token_type", TOKEN_TYPE_ACCESS_TOKEN)
    assert req.audiences == tuple(v for k, v in pairs if k == "audience")
    assert req.resources == tuple(v for k, v in pairs if k == "resource")
    if "scope" in sent:
        assert req.scopes == tuple(dict.fromkeys(sent["scope"].split()))
    else:
        assert req.scopes is None


@given(pairs_strategy, st.lists(st.sampled_from(KNOWN_NAMES), max_size=4), st.data())
def test_empty_values_count_as_omitted(pairs: list[tuple[str, str]], empty: list[str], data: st.DataObject) -> None:
    # RFC 6749 §3.1: "Parameters sent without a value MUST be treated as if they were omitted".
    with_empty = list(pairs)
    for name in empty:
        with_empty.insert(data.draw(st.integers(0, len(with_empty))), (name, ""))
    assert outcome(with_empty) == outcome(pairs)


@given(pairs_strategy, st.lists(st.tuples(st.text(max_size=12), values), max_size=4), st.data())
def test_unknown_parameters_are_ignored(pairs: list[tuple[str, str]], extra: list[tuple[str, str]],
                                        data: st.DataObject) -> None:
    # RFC 6749 §3.2 (by way of §4.1.3 and friends): "The authorization server MUST ignore
    # unrecognized request parameters."
    with_extra = list(pairs)
    for name, value in extra:
        if name in KNOWN_NAMES:
            continue
        with_extra.insert(data.draw(st.integers(0, len(with_extra))), (name, value))
    assert outcome(with_extra) == outcome(pairs)


@given(valid_pairs(), st.sampled_from(sorted(SINGLE_PARAMETERS)), st.text(min_size=1, max_size=20))
def test_a_repeated_single_parameter_is_always_refused(pairs: list[tuple[str, str]], name: str, value: str) -> None:
    # RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once."
    result = outcome([*pairs, (name, value), (name, value)])
    assert result == ("invalid_request", "duplicate_parameter")
