"""An assertion as an authorization grant (RFC 7521 §4.1, RFC 7523 §2.1 and §3, MCP SEP-1933,
draft-ietf-oauth-identity-assertion-authz-grant-04 §3.1, §4.4.1 and §8.6.1.2).

Pure: everything here runs after the assertion's signature and registered claims were verified
(``sts.subject.oidc`` with ``AssertionTerms``: the broker as audience, a required ``jti``).

* RFC 7521 §4.1.1 / RFC 7523 §3.1: an assertion that is not valid is refused with
  ``invalid_grant``. The pipeline's refusals of a subject token are ``invalid_request``
  (RFC 8693 §2.2.2); ``as_invalid_grant`` turns them into the code this grant's RFC names,
  keeping the audit reason.
* An assertion carrying ``act`` (RFC 8693 §4.1) is refused: the grant has no actor token that
  could continue the chain, and the ID-JAG draft defines no processing of ``act`` (§8.5).
* ID-JAG, §4.4.1: "The aud claim MAY be a string containing a single issuer identifier, or an
  array containing a single issuer identifier. If the aud claim is an array, it MUST contain
  exactly one element"; "The Resource Authorization Server MUST validate that the client_id
  claim in the ID-JAG matches the authenticated client making the request. If they do not
  match, the Resource Authorization Server MUST reject the request with an invalid_grant
  error." §3.1 makes ``client_id``, ``jti``, ``exp`` and ``iat`` REQUIRED.
* ID-JAG ``resource`` and ``scope`` (§4.4.1: processed by RFC 8707 §2 and RFC 6749 §3.3, the
  granted ones "MAY be a subset"): they bound the request. A request naming no target or no
  scope asks for the assertion's; one naming others than the assertion holds is refused
  (``invalid_target``, ``invalid_scope``). The policy then decides as for any request.
* ID-JAG ``cnf`` (§8.6.1.2.1-2): with a ``jkt``, a DPoP proof whose key has that thumbprint is
  required, else ``invalid_grant``. Other confirmation methods are refused (fail closed).
* ID-JAG ``authorization_details`` (§4.4.1: the server "MUST parse it ... and process each
  authorization detail object according to [RFC9396]"): this grant does not process them yet, so
  an ID-JAG carrying them is refused rather than honoured without the limits they set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sts.errors import InvalidGrant, InvalidRequest, InvalidScope, InvalidTarget
from sts.protocol import (
    MAX_TARGET_CHARS,
    ExchangeRequest,
    is_absolute_uri_without_fragment,
    parse_scope,
)
from sts.subject.model import VerifiedIdJag, VerifiedSubject

_GRANT_TEXT = "The assertion is not an acceptable grant."
_CLIENT_TEXT = "The assertion was issued to another client."
_POP_TEXT = "Proof of possession is required for this authorization grant."


def as_invalid_grant(exc: InvalidRequest) -> InvalidGrant:
    """The ``invalid_grant`` a refused assertion answers with (RFC 7521 §4.1.1), with the same
    audit reason, detail and notes; the public text speaks of the assertion."""
    text = exc.description.replace("subject token", "assertion").replace("exchange this token", "use this assertion")
    return InvalidGrant(text, reason=exc.reason, detail=exc.detail, headers=exc.headers, notes=exc.notes)


def admit_assertion(request: ExchangeRequest, subject: VerifiedSubject, *, client_id: str | None,
                    dpop_jkt: str | None, issuer: str) -> tuple[ExchangeRequest, dict[str, Any]]:
    """The request as the assertion bounds it, and the facts for the audit record (``context``
    key ``assertion``). Raises ``InvalidGrant``, ``InvalidTarget`` or ``InvalidScope``."""
    claims = subject.claims
    if "act" in claims:
        raise InvalidGrant(_GRANT_TEXT, reason="assertion_delegated")
    if not isinstance(subject, VerifiedIdJag):
        return request, {"profile": "jwt-bearer"}

    _check_id_jag(claims, client_id=client_id, dpop_jkt=dpop_jkt, issuer=issuer)
    resources = _resource_claim(claims.get("resource"))
    scopes = _scope_claim(claims.get("scope"))
    if resources is not None:
        if not request.targets:
            request = replace(request, resources=resources)
        elif any(t not in resources for t in request.targets):
            raise InvalidTarget("The requested target is not allowed.", reason="idjag_target_beyond_assertion")
    if scopes is not None:
        if request.scopes is None:
            request = replace(request, scopes=scopes)
        elif any(s not in scopes for s in request.scopes):
            raise InvalidScope("The requested scope is not allowed.", reason="idjag_scope_beyond_assertion")
    facts: dict[str, Any] = {"profile": "id-jag", "client_id": client_id}
    if resources is not None:
        facts["resource"] = list(resources)
    if scopes is not None:
        facts["scope"] = list(scopes)
    return request, facts


def _check_id_jag(claims: Mapping[str, Any], *, client_id: str | None, dpop_jkt: str | None, issuer: str) -> None:
    aud = claims.get("aud")
    if not (aud == issuer or (isinstance(aud, list) and aud == [issuer])):
        raise InvalidGrant(_GRANT_TEXT, reason="idjag_aud_not_exact")
    if "iat" not in claims:
        raise InvalidGrant(_GRANT_TEXT, reason="idjag_iat_missing")
    asserted = claims.get("client_id")
    if not isinstance(asserted, str) or not asserted:
        raise InvalidGrant(_GRANT_TEXT, reason="idjag_client_id_missing")
    # §8.1: the grant is for confidential clients; §4.4.1 compares with the authenticated one.
    if client_id is None:
        raise InvalidGrant(_CLIENT_TEXT, reason="idjag_client_not_authenticated")
    if asserted != client_id:
        raise InvalidGrant(_CLIENT_TEXT, reason="idjag_client_mismatch", detail=asserted[:128])
    if "authorization_details" in claims:
        raise InvalidGrant(_GRANT_TEXT, reason="idjag_authorization_details_unsupported")
    if "cnf" in claims:
        cnf = claims["cnf"]
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        if not isinstance(jkt, str) or not jkt:
            raise InvalidGrant(_GRANT_TEXT, reason="idjag_cnf_unsupported")
        if dpop_jkt is None:
            raise InvalidGrant(_POP_TEXT, reason="idjag_dpop_required")
        if dpop_jkt != jkt:
            raise InvalidGrant(_POP_TEXT, reason="idjag_dpop_key_mismatch")


def _resource_claim(value: Any) -> tuple[str, ...] | None:
    """§3.1 ``resource``: "either a single URI or an array of URIs" (RFC 8707 §2 resources)."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(
        isinstance(v, str) and len(v) <= MAX_TARGET_CHARS and is_absolute_uri_without_fragment(v) for v in values
    ):
        raise InvalidGrant(_GRANT_TEXT, reason="idjag_resource_malformed")
    return tuple(dict.fromkeys(values))


def _scope_claim(value: Any) -> tuple[str, ...] | None:
    """§3.1 ``scope``: "a JSON string containing a space-separated list of scopes"."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidGrant(_GRANT_TEXT, reason="idjag_scope_malformed")
    try:
        return parse_scope(value)
    except InvalidScope:
        raise InvalidGrant(_GRANT_TEXT, reason="idjag_scope_malformed") from None
