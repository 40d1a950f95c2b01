"""Deliberately broken variants of the reference target: one known vulnerability class each.

Each variant re-introduces exactly one flaw that real JWT libraries, token services or
authorization servers have shipped, so that the kit's own suite can prove it catches the class
in isolation (the reference target with that one flaw switched on). ``caught_by`` names the
cases that must fail against the variant; ``fails_run`` says whether one of them fails the run
under the default ``--fail-on must`` (a MUST case, or a HARDENING case that is a security
property, see ``conformance.verdict``), so that the exit code is 1. Classes, with the public record that motivates them:

- ``alg: none`` accepted: CVE-2022-23540 (node jsonwebtoken), CVE-2020-15957 (DP-3T backend);
  RFC 8725 §2.1.
- HS256 keyed with the RSA public key: CVE-2015-9235 (node jsonwebtoken), CVE-2016-10555
  (jwt-simple), CVE-2016-5431 (php-jose),
  CVE-2022-29217 (PyJWT); RFC 8725 §2.1, §3.1.
- keys taken from the token itself: ``jwk`` (CVE-2018-0114, node-jose / Cisco), ``jku``
  (SSRF and key injection; RFC 8725 §3.10).
- keys taken from a certificate in the token: ``x5c`` (a certificate in the header trusted
  without a path to a trust anchor) and ``x5u`` (fetched: SSRF and key injection); RFC 8725
  §3.10, RFC 7515 §4.1.5-§4.1.6.
- JWT-SVIDs checked loosely: any trust domain's SPIFFE ID accepted under one trust domain's bundle,
  the audience not checked, an ``x509-svid`` bundle key used to verify a JWT-SVID (SPIFFE JWT-SVID
  §3-§4, Trust Domain and Bundle §4.2.1).
- ``kid`` used as a file path / SQL key: jwt_tool "kid injection" playbook; RFC 8725 §3.10.
- critical header parameters ignored: RFC 7515 §4.1.11.
- exp/nbf/iat ignored or only checked when numeric: RFC 7519 §4.1.4-§4.1.6; RFC 8725 §3.1.
- ``iss``/``aud`` compared loosely (prefix, substring, case, trailing slash): RFC 7519 §2
  (StringOrURI compared case-sensitively, no canonicalisation), OIDC Core §3.1.3.7, RFC 8725
  §3.8-§3.9.
- signature stripping (empty signature accepted): CVE-2020-28042 (ServiceStack).
- psychic signatures, ECDSA r = s = 0: CVE-2022-21449 (Java 15-18).
- duplicate claim names resolved to the first one (parser differential): RFC 7519 §4, RFC 8259 §4.
- token type confusion (a DPoP proof or logout token taken as a subject token): RFC 8725 §2.8,
  §3.11-§3.12.
- replay keyed by the token text with lenient base64: RFC 7515 §2 (no padding), malleable
  encodings re-used as fresh tokens.
- DPoP proofs not checked against the request (``htm``/``htu``) or replayable: RFC 9449 §4.3,
  §11.1.
- DPoP declared required but a request without a proof answered with a bearer token (a downgrade):
  RFC 9449 §5.2.
- mTLS client authentication that checks too little: any certificate accepted, the subject name
  compared instead of the registered certificate (a certificate with the client's name from any
  key or CA), or ``client_id`` accepted without a certificate; RFC 8705 §2.1-§2.2.
- key cache misbehaviour: a removed key trusted forever, a JWKS refetch for every unknown kid
  (amplification), failing open when the issuer is unreachable, hanging with a hanging issuer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flaws:
    """What a variant gets wrong; the reference gets nothing wrong."""

    accept_alg_none: bool = False
    skip_audience_check: bool = False
    ignore_exp: bool = False
    no_scope_narrowing: bool = False
    copy_any_audience: bool = False
    leak_token_in_error: bool = False
    no_cache_control: bool = False
    confidential: bool = False
    #: Not a flaw: the profile declares DPoP (``client.dpop``) and the kit sends proofs.
    dpop: bool = False
    #: Not a flaw: the client authenticates with its TLS certificate (RFC 8705 §2.2,
    #: self_signed_tls_client_auth) on the reference's https listener.
    mtls: bool = False
    #: Not a flaw: the target requires DPoP (``client.dpop_required``).
    dpop_required: bool = False
    # signature and key selection
    hmac_with_public_key: bool = False
    trust_embedded_jwk: bool = False
    trust_jku: bool = False
    trust_x5c: bool = False
    trust_x5u: bool = False
    kid_as_path: bool = False
    ignore_crit: bool = False
    accept_empty_signature: bool = False
    accept_zero_ecdsa: bool = False
    # claims
    ignore_nbf: bool = False
    exp_checked_only_when_numeric: bool = False
    issuer_prefix_match: bool = False
    issuer_normalised: bool = False
    audience_substring_match: bool = False
    audience_normalised: bool = False
    first_duplicate_wins: bool = False
    ignore_typ: bool = False
    ignore_iat: bool = False
    no_lifetime_cap: bool = False
    # replay
    no_replay_check: bool = False
    replay_by_token_text: bool = False
    # key cache
    cache_keys_forever: bool = False
    refetch_every_unknown_kid: bool = False
    fail_open_when_issuer_down: bool = False
    no_fetch_timeout: bool = False
    # DPoP proofs (RFC 9449 §4.3, §11.1)
    dpop_ignore_htm_htu: bool = False
    dpop_no_replay_check: bool = False
    dpop_required_bearer_fallback: bool = False
    # JWT-SVIDs (SPIFFE JWT-SVID §3-§4, Trust Domain and Bundle §4.2.1)
    spiffe_any_trust_domain: bool = False
    spiffe_no_audience_check: bool = False
    spiffe_any_key_use: bool = False
    # mTLS client authentication (RFC 8705 §2)
    mtls_any_certificate: bool = False
    mtls_subject_only: bool = False
    mtls_client_id_alone: bool = False

    @property
    def touches_key_cache(self) -> bool:
        return (self.cache_keys_forever or self.refetch_every_unknown_kid or self.fail_open_when_issuer_down
                or self.no_fetch_timeout)


@dataclass(frozen=True)
class BrokenVariant:
    flaws: Flaws
    #: The vulnerability class, as named in the docs table.
    vulnerability: str
    #: Cases that must fail against this variant (others may fail too).
    caught_by: frozenset[str]
    #: True when one of ``caught_by`` fails the run under ``--fail-on must`` (exit code 1).
    fails_run: bool = True


def _v(vulnerability: str, *caught_by: str, fails_run: bool = True, **flaws: bool) -> BrokenVariant:
    return BrokenVariant(Flaws(**flaws), vulnerability, frozenset(caught_by), fails_run)


#: The teeth catalogue: variant name -> the one flaw and the cases that catch it.
BROKEN: dict[str, BrokenVariant] = {
    "hs256-public-key": _v("alg confusion: HS256 keyed with the RSA public key",
                           "rfc8725.alg.hs256-with-public-key", hmac_with_public_key=True),
    "embedded-jwk": _v("key injection: jwk header trusted", "rfc8725.header.embedded-jwk", trust_embedded_jwk=True),
    "jku-trusted": _v("key injection: jku header fetched and trusted", "rfc8725.header.jku",
                      "hardening.header.urls-not-fetched", trust_jku=True),
    "x5c-trusted": _v("key injection: certificate in the x5c header trusted", "rfc8725.header.x5c", trust_x5c=True),
    "x5u-trusted": _v("key injection: x5u header fetched and its certificate trusted", "rfc8725.header.x5u",
                      "hardening.header.urls-not-fetched", trust_x5u=True),
    "spiffe-any-trust-domain": _v("JWT-SVID: a SPIFFE ID of any trust domain accepted", "spiffe.svid.foreign-trust-domain",
                                  spiffe_any_trust_domain=True),
    "spiffe-no-audience": _v("JWT-SVID: audience not checked", "spiffe.svid.wrong-audience", spiffe_no_audience_check=True),
    "spiffe-x509-key-for-jwt": _v("JWT-SVID verified with a bundle key meant for X.509-SVIDs",
                                  "spiffe.bundle.x509-key-not-for-jwt", fails_run=False, spiffe_any_key_use=True),
    "kid-path": _v("kid path traversal: kid read as a key file", "rfc8725.header.kid-path-traversal",
                   "hardening.header.kid-injection", kid_as_path=True),
    "ignores-crit": _v("critical header parameters ignored", "rfc7515.header.crit-unknown", ignore_crit=True),
    "stripped-signature": _v("signature stripping: empty signature accepted", "rfc7515.signature.stripped",
                             accept_empty_signature=True),
    "psychic-ecdsa": _v("psychic signature: ECDSA r = s = 0 accepted (CVE-2022-21449)",
                        "rfc7518.ecdsa.zero-signature", accept_zero_ecdsa=True),
    "ignores-nbf": _v("nbf ignored", "rfc7519.claims.nbf-future", ignore_nbf=True),
    "exp-type-loose": _v("exp checked only when it is a number", "rfc7519.claims.exp-not-numeric",
                         exp_checked_only_when_numeric=True),
    "issuer-prefix": _v("iss compared as a prefix", "rfc7519.claims.issuer-exact", issuer_prefix_match=True),
    "issuer-normalised": _v("iss compared after lower-casing and trimming a trailing slash",
                            "rfc7519.claims.issuer-exact", issuer_normalised=True),
    "audience-substring": _v("aud compared as a substring", "rfc7519.claims.audience-exact",
                             audience_substring_match=True),
    "audience-normalised": _v("aud compared after lower-casing and trimming a trailing slash",
                              "rfc7519.claims.audience-exact", audience_normalised=True),
    "duplicate-claims": _v("duplicate claim names: the first one wins", "rfc7519.claims.duplicate-names",
                           first_duplicate_wins=True),
    "type-confusion": _v("token type confusion: any typ accepted as a subject token",
                         "rfc8725.typ.other-jwt-kinds", fails_run=False, ignore_typ=True),
    "ignores-iat": _v("iat in the future accepted", "hardening.claims.iat-future", fails_run=False,
                       ignore_iat=True),
    "no-lifetime-cap": _v("overlong subject token lifetimes accepted", "hardening.claims.overlong-lifetime",
                          no_lifetime_cap=True),
    "no-replay-check": _v("replay: the same subject token exchanged twice", "hardening.replay.refused",
                          "hardening.replay.re-encoded", no_replay_check=True),
    "replay-by-text": _v("replay keyed by the token text, base64 decoded leniently",
                         "hardening.replay.re-encoded", replay_by_token_text=True),
    "keys-cached-forever": _v("key cache: a key removed from the issuer's JWKS stays trusted",
                              "policy.keys.removed-key-refused", cache_keys_forever=True),
    "refetch-storm": _v("key cache: a JWKS fetch for every unknown kid",
                        "policy.keys.refetch-interval", refetch_every_unknown_kid=True),
    "fail-open": _v("key cache: signature not checked when the issuer is unreachable",
                    "rfc8725.keys.issuer-down-fail-closed", fail_open_when_issuer_down=True),
    "hangs-with-issuer": _v("key cache: no timeout when the issuer hangs", "policy.keys.fail-fast",
                            no_fetch_timeout=True),
    "dpop-any-request": _v("DPoP proof not checked against the request: htm and htu ignored",
                           "rfc9449.proof.other-url", "rfc9449.proof.other-method", dpop=True,
                           dpop_ignore_htm_htu=True),
    "dpop-replay": _v("DPoP proof replay: the same proof accepted twice", "hardening.dpop.proof-replay-refused",
                      dpop=True, dpop_no_replay_check=True),
    "dpop-bearer-fallback": _v("DPoP required, yet a request without a proof gets a bearer token",
                               "rfc9449.token.required-without-proof", dpop=True, dpop_required=True,
                               confidential=True, dpop_required_bearer_fallback=True),
    "mtls-any-certificate": _v("mTLS client authentication: any client certificate accepted",
                               "rfc6749.client.wrong-secret", mtls=True, mtls_any_certificate=True),
    "mtls-subject-only": _v("mTLS client authentication: the subject name compared, not the registered certificate",
                            "rfc6749.client.wrong-secret", mtls=True, mtls_subject_only=True),
    "mtls-client-id-alone": _v("mTLS client authentication: client_id accepted without a certificate",
                               "rfc6749.client.missing-credentials", mtls=True, mtls_client_id_alone=True),
}

__all__ = ["BROKEN", "BrokenVariant", "Flaws"]
