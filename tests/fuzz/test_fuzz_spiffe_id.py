"""The SPIFFE ID parser accepts exactly the grammar of SPIFFE-ID.md §2 - §2.3.

The oracle below is written from the specification's text, not from the parser:

* §2: "Valid SPIFFE IDs MUST have the scheme set to ``spiffe``, include a non-zero trust domain
  name, and MUST NOT include a query or fragment component."
* §2.1: the trust domain is the ``host``; "userinfo and port ... MUST be empty", "MUST be
  lowercase", "MUST contain only letters, numbers, dots, dashes, and underscores ([a-z0-9.-_])",
  "MUST NOT contain percent-encoded characters".
* §2.2: "MUST NOT include percent-encoded characters", "MUST NOT include segments that are empty
  or are relative path modifiers (i.e. ``.``, ``..``)", "MUST NOT include a trailing ``/``",
  "Individual path segments MUST contain only letters, numbers, dots, dashes, and underscores
  ([a-zA-Z0-9.-_])".
* §2.3: up to 2048 bytes, and "a maximum length of a trust domain name is 255 bytes" (the
  broker refuses longer IDs rather than carry unbounded ones).

§2.4 calls the scheme and trust domain case-insensitive, but §2.1 requires the host to be
lowercase; the broker refuses upper case rather than normalise it (see sts/spiffe/id.py), so the
oracle takes the scheme as the literal ``spiffe``.
"""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from sts.spiffe.id import InvalidSpiffeID, SpiffeID, parse_spiffe_id, parse_trust_domain

TRUST_DOMAIN_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.-_"
SEGMENT_CHARS = TRUST_DOMAIN_CHARS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
REASONS = frozenset({
    "empty", "too_long", "wrong_scheme", "fragment", "query", "empty_trust_domain", "userinfo", "port",
    "percent_encoding", "trust_domain_char", "empty_segment", "dot_segment", "trailing_slash", "path_char",
})

_ID = re.compile(r"spiffe://(?P<td>[a-z0-9._-]+)(?P<path>(?:/[A-Za-z0-9._-]+)*)")


def spec_trust_domain(value: str) -> bool:
    return re.fullmatch(r"[a-z0-9._-]+", value) is not None and len(value.encode()) <= 255


def spec_spiffe_id(value: str) -> tuple[str, str] | None:
    """(trust domain, path) when ``value`` is a SPIFFE ID by the specification, else None."""
    m = _ID.fullmatch(value)
    if m is None or len(value.encode()) > 2048 or not spec_trust_domain(m["td"]):
        return None
    if any(segment in (".", "..") for segment in m["path"].split("/")[1:]):
        return None
    return m["td"], m["path"]


# --- strategies: mostly near the grammar, where the mistakes are --------------------------------------

trust_domains = st.one_of(
    st.text(alphabet=TRUST_DOMAIN_CHARS, min_size=1, max_size=20),
    st.text(alphabet=TRUST_DOMAIN_CHARS, min_size=250, max_size=260),
    st.sampled_from(["example.org", "td", "1.2.3.4", "a_b", "..", "."]),
)
segments = st.one_of(
    st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=12),
    st.sampled_from([".", "..", "...", "", "%41", "a%2Fb"]),
)
paths = st.lists(segments, max_size=5).map(lambda parts: "".join("/" + p for p in parts))
noise = st.sampled_from(list("/?#%@:[]ABZ ~!$&'()*+,;=\x00\n") + ["é", "\u212a", "\ufb00", "//", "%2e"])


@st.composite
def near_valid(draw: st.DrawFn) -> str:
    value = "spiffe://" + draw(trust_domains) + draw(paths)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(value)))
        if draw(st.booleans()):
            value = value[:at] + draw(noise) + value[at:]
        else:
            value = value[:at] + value[at + 1:]
    return value


long_ids = st.builds(lambda td, n: f"spiffe://{td}" + "/abcdefghij" * n, st.sampled_from(["td", "a" * 255]),
                     st.integers(170, 210))
ids = st.one_of(
    near_valid(),
    long_ids,
    st.builds(lambda scheme, rest: scheme + rest, st.sampled_from(["spiffe://", "SPIFFE://", "spiffe:/", "spiffe:", "https://", ""]),
              st.text(max_size=30)),
    st.text(max_size=40),
)


@given(ids)
@example("spiffe://example.org")
@example("spiffe://example.org/")
@example("spiffe://example.org/a//b")
@example("spiffe://example.org/./a")
@example("spiffe://user@example.org/a")
@example("spiffe://example.org:443/a")
@example("spiffe://Example.org/a")
@example("spiffe://example.org/a?x")
@example("spiffe://example.org/a#x")
@example("spiffe://example.org/%41")
@example("spiffe://")
@example("spiffe://" + "a" * 256)
@example("spiffe://td" + "/a" * 1018)  # 2047 bytes
@example("spiffe://td" + "/a" * 1018 + "b")  # 2048 bytes
@example("spiffe://td" + "/a" * 1019)  # 2049 bytes
def test_parser_accepts_exactly_the_specified_grammar(value: str) -> None:
    expected = spec_spiffe_id(value)
    try:
        parsed = parse_spiffe_id(value)
    except InvalidSpiffeID as exc:
        assert expected is None, f"refused a valid SPIFFE ID ({exc.reason}): {value!r}"
        assert exc.reason in REASONS
        # The message never echoes the input (a short input may occur in the fixed text by chance).
        assert len(value) <= 12 or value not in str(exc)
        return
    assert expected is not None, f"accepted an invalid SPIFFE ID: {value!r}"
    assert isinstance(parsed, SpiffeID)
    assert (parsed.trust_domain, parsed.path) == expected
    assert str(parsed) == value
    assert parsed.segments == (tuple(expected[1].split("/")[1:]) if expected[1] else ())


@given(st.one_of(trust_domains, st.text(max_size=20), near_valid().map(lambda v: v.removeprefix("spiffe://"))))
@example("")
@example("example.org:8443")
@example("user@example.org")
@example("Example.org")
def test_trust_domain_parser_accepts_exactly_the_specified_names(value: str) -> None:
    try:
        parsed = parse_trust_domain(value)
    except InvalidSpiffeID as exc:
        assert not spec_trust_domain(value), f"refused a valid trust domain ({exc.reason}): {value!r}"
        assert exc.reason in REASONS
        return
    assert spec_trust_domain(value), f"accepted an invalid trust domain: {value!r}"
    assert parsed == value


@given(st.text(alphabet=TRUST_DOMAIN_CHARS, min_size=1, max_size=30),
       st.lists(st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=12).filter(lambda s: s not in (".", "..")),
                max_size=6))
def test_every_id_built_by_the_grammar_is_accepted(trust_domain: str, parts: list[str]) -> None:
    value = "spiffe://" + trust_domain + "".join("/" + p for p in parts)
    parsed = parse_spiffe_id(value)
    assert parsed.trust_domain == trust_domain and parsed.segments == tuple(parts)
