"""Properties of the JOSE decoder (RFC 7515 §2, §5.2, §7.1; RFC 7517 §4-5; RFC 4648 §5).

Whatever arrives (a token from a caller, a key set from an issuer) the decoder answers with a
value or with its own documented error, never with anything else:

* ``b64url_decode``: bytes, or ``ValueError``; one accepted encoding per byte string.
* ``unsafe_decode``: an ``UnverifiedJWT``, or ``MalformedToken`` (``malformed``, ``too_large``,
  ``jwe_not_supported``).
* ``check_header``: the ``alg`` to verify with, or ``MalformedToken`` / ``AlgorithmNotAllowed`` /
  ``UnsupportedHeader``.
* ``verify_signature``: nothing, or a ``JOSEError``; and no change of a signed token, however
  small, verifies.
* ``parse_jwk`` / ``parse_jwks``: keys, or ``JWKError``.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import assume, example, given
from hypothesis import strategies as st

from sts.jose import (
    SUPPORTED_ALGORITHMS,
    AlgorithmNotAllowed,
    JOSEError,
    JWKError,
    KeySet,
    MalformedToken,
    PublicKey,
    UnsupportedHeader,
    b64url_decode,
    b64url_encode,
    check_header,
    generate_private_key,
    parse_jwk,
    parse_jwks,
    sign,
    unsafe_decode,
    verify_signature,
)

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Keys are made once: generating RSA keys per example would be the whole time budget.
KEYS = {alg: generate_private_key(alg, kid=f"k-{alg}") for alg in ("RS256", "PS256", "ES256", "ES512", "EdDSA")}
TOKENS = {alg: sign({"iss": "https://issuer.example", "sub": "wl", "n": 1}, key, typ="JWT") for alg, key in KEYS.items()}

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
header_names = st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jku", "jwk", "x5u", "x5c", "cty", "zip", "x"])
headers = st.one_of(
    st.dictionaries(header_names, st.one_of(st.sampled_from(sorted(SUPPORTED_ALGORITHMS) + ["none", "HS256"]),
                                            json_values), max_size=5),
    st.dictionaries(st.text(max_size=6), json_values, max_size=4),
)


def segment_of(value: Any) -> str:
    return b64url_encode(json.dumps(value).encode())


segments = st.one_of(
    headers.map(segment_of),
    json_values.map(segment_of),
    st.binary(max_size=40).map(b64url_encode),
    st.text(alphabet=B64URL, max_size=40),
    st.text(max_size=20),
)
tokens = st.one_of(
    st.text(max_size=200),
    st.lists(segments, min_size=1, max_size=6).map(".".join),
    st.builds(lambda h, p, s: f"{h}.{p}.{s}", headers.map(segment_of), json_values.map(segment_of),
              st.binary(max_size=80).map(b64url_encode)),
)


# --- base64url ------------------------------------------------------------------------------------


@given(st.one_of(st.text(max_size=60), st.text(alphabet=B64URL + "=+/ ", max_size=60), st.binary(max_size=60)))
@example("QQ")
@example("QR")  # non-canonical: the unused low bits of the last character are not zero
@example("QQ==")
@example("Q")
def test_b64url_decode_gives_bytes_or_value_error_and_one_encoding_per_value(s: str | bytes) -> None:
    try:
        decoded = b64url_decode(s)
    except ValueError:
        return
    assert type(decoded) is bytes
    text = s if isinstance(s, str) else s.decode("ascii")
    assert b64url_encode(decoded) == text


@given(st.binary(max_size=200))
def test_b64url_round_trip(data: bytes) -> None:
    assert b64url_decode(b64url_encode(data)) == data


# --- unsafe_decode and check_header -----------------------------------------------------------------


@given(tokens)
@example("")
@example("a.b.c.d.e")
@example(segment_of({"alg": "ES256"}) + "." + segment_of({"sub": "x"}) + ".")
@example(segment_of({"alg": "ES256", "alg2": 1}) + "." + b64url_encode(b'{"a":1,"a":2}') + ".")
@example(b64url_encode(b'{"alg":"ES256"}') + "." + b64url_encode(b'{"x":"\\ud800"}') + ".")
@example(b64url_encode(b'{"alg":"ES256"}') + "." + b64url_encode(b"[" * 5000) + ".")  # nesting past the recursion limit
def test_unsafe_decode_gives_a_jwt_or_malformed_token(token: str) -> None:
    try:
        jwt = unsafe_decode(token)
    except MalformedToken as exc:
        assert exc.reason in {"malformed", "too_large", "jwe_not_supported"}
        return
    assert type(jwt.header) is dict and type(jwt.claims) is dict
    assert type(jwt.header["alg"]) is str
    assert jwt.signing_input == token.rsplit(".", 1)[0].encode("ascii")
    # What was decoded encodes back to the very segments received (canonical base64url).
    assert b64url_encode(jwt.signature) == token.rsplit(".", 1)[1]


@given(headers, st.lists(st.sampled_from(sorted(SUPPORTED_ALGORITHMS)), max_size=4),
       st.lists(st.text(max_size=6), max_size=3), st.sampled_from([None, "JWT", "at+jwt"]), st.booleans())
def test_check_header_returns_an_allowed_alg_or_a_header_error(
    header: dict[str, Any], allowed: list[str], crit: list[str], typ: str | None, forbid: bool,
) -> None:
    try:
        alg = check_header(header, allowed_algorithms=allowed, supported_crit=crit, expected_typ=typ,
                           forbid_embedded_keys=forbid)
    except (MalformedToken, AlgorithmNotAllowed, UnsupportedHeader):
        return
    assert alg == header["alg"] and alg in allowed and alg in SUPPORTED_ALGORITHMS


# --- signatures -------------------------------------------------------------------------------------


@given(st.sampled_from(sorted(KEYS)), st.data())
def test_no_single_character_change_of_a_signed_token_verifies(alg: str, data: st.DataObject) -> None:
    token = TOKENS[alg]
    i = data.draw(st.integers(0, len(token) - 1), label="position")
    c = data.draw(st.sampled_from(B64URL + ".=+/ "), label="character")
    assume(token[i] != c)
    tampered = token[:i] + c + token[i + 1:]
    try:
        jwt = unsafe_decode(tampered)
        checked = check_header(jwt.header, allowed_algorithms=SUPPORTED_ALGORITHMS)
        verify_signature(jwt, KEYS[alg].public(), checked)
    except JOSEError:
        return
    raise AssertionError(f"a tampered token verified (position {i}, {token[i]!r} -> {c!r})")


@given(st.sampled_from(sorted(KEYS)), st.binary(max_size=600))
def test_an_arbitrary_signature_is_a_bad_signature(alg: str, signature: bytes) -> None:
    jwt = unsafe_decode(TOKENS[alg].rsplit(".", 1)[0] + "." + b64url_encode(signature))
    try:
        verify_signature(jwt, KEYS[alg].public(), alg)
    except JOSEError as exc:
        assert exc.reason == "bad_signature"
        return
    raise AssertionError("an arbitrary signature verified")


# --- JWK and JWK Sets -------------------------------------------------------------------------------


def b64_int_bytes(n_bytes: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=n_bytes, max_size=n_bytes).map(b64url_encode)


member_values = st.one_of(
    st.binary(max_size=70).map(b64url_encode),
    b64_int_bytes(32), b64_int_bytes(66), b64_int_bytes(256),
    st.text(max_size=10), json_values,
)
jwk_members = st.sampled_from(["kty", "crv", "x", "y", "n", "e", "d", "k", "kid", "alg", "use", "key_ops", "x5c"])
crafted_jwks = st.fixed_dictionaries(
    {"kty": st.one_of(st.sampled_from(["RSA", "EC", "OKP", "oct", "rsa", ""]), json_values)},
    optional={
        "crv": st.one_of(st.sampled_from(["P-256", "P-384", "P-521", "Ed25519", "X25519", "secp256k1"]), json_values),
        "x": member_values, "y": member_values, "n": member_values, "e": member_values,
        "kid": st.one_of(st.text(max_size=8), json_values),
        "alg": st.one_of(st.sampled_from(sorted(SUPPORTED_ALGORITHMS) + ["none", "HS256", "RSA-OAEP"]), json_values),
        "use": st.one_of(st.sampled_from(["sig", "enc"]), json_values),
        "key_ops": st.one_of(st.lists(st.sampled_from(["verify", "sign", "encrypt"]), max_size=3), json_values),
    },
)


@st.composite
def mutated_real_jwks(draw: st.DrawFn) -> dict[str, Any]:
    jwk = dict(KEYS[draw(st.sampled_from(sorted(KEYS)))].public_jwk())
    for _ in range(draw(st.integers(1, 3))):
        name = draw(jwk_members)
        if draw(st.booleans()) and name in jwk:
            del jwk[name]
        else:
            jwk[name] = draw(member_values)
    return jwk


any_jwk = st.one_of(crafted_jwks, mutated_real_jwks(), json_values)


def assert_public_key(key: PublicKey) -> None:
    assert key.algorithms and key.algorithms <= SUPPORTED_ALGORITHMS
    if key.alg is not None:
        assert key.algorithms == {key.alg}
    assert key.use in (None, "sig")


@given(any_jwk)
@example({"kty": "RSA", "n": b64url_encode(b"\x01" * 128), "e": "AQAB"})  # 1024 bits: weak
@example({"kty": "RSA", "n": b64url_encode(b"\xff" * 256), "e": b64url_encode(b"\x01" * 64)})  # huge e
@example({"kty": "EC", "crv": "P-256", "x": b64url_encode(b"\x00" * 32), "y": b64url_encode(b"\x00" * 32)})
def test_parse_jwk_gives_a_public_key_or_jwk_error(jwk: Any) -> None:
    try:
        key = parse_jwk(jwk)
    except JWKError:
        return
    assert_public_key(key)


@given(st.one_of(st.fixed_dictionaries({"keys": st.lists(any_jwk, max_size=5)}), json_values))
def test_parse_jwks_gives_a_key_set_or_jwk_error(doc: Any) -> None:
    try:
        keys = parse_jwks(doc)
    except JWKError:
        assert not (isinstance(doc, dict) and isinstance(doc.get("keys"), list))
        return
    assert isinstance(keys, KeySet)
    assert len(keys.keys) + len(keys.skipped) == len(doc["keys"])
    for key in keys.keys:
        assert_public_key(key)
    # A lookup by (kid, alg) is never ambiguous: the first key wins, others are skipped.
    seen = [(k.kid, a) for k in keys.keys if k.kid is not None for a in k.algorithms]
    assert len(seen) == len(set(seen))
