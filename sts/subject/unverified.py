"""What an audit record may say about a token that failed verification (RFC 8725 §3.1, §3.8).

When a subject or actor token is refused, an operator explaining the refusal later needs to
know which token it was and whom it claimed to be, but the audit record must never hold the
token (it is a bearer credential) and must not present unverified claims as facts. So it holds:

* the token's SHA-256 (the same digest ``VerifiedSubject.token_sha256`` and issued-token rows
  carry, so a refused and a later accepted use of one token can be matched);
* its ``iss`` and ``sub`` as read by ``jose.unsafe_decode``, truncated, under a ``verified``
  flag that says whether the signature had been checked when the refusal happened;
* for an audience mismatch (RFC 7519 §4.1.3), the audiences the token carried, truncated.

Called only on refusal paths: an accepted token costs nothing here.
"""

from __future__ import annotations

from typing import Any, Final

from sts import jose
from sts.subject.oidc import token_sha256

MAX_CLAIM_CHARS: Final = 128
MAX_AUDIENCES: Final = 8

# Kinds of SubjectRejected raised after the signature verified (sts.subject.oidc): claims read
# then are the issuer's word, not the caller's.
_VERIFIED_KINDS: Final = frozenset({"claims", "replayed", "mapping"})


def _short(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= MAX_CLAIM_CHARS else text[: MAX_CLAIM_CHARS - 1] + "…"


def rejected_token_facts(token: str, *, kind: str, reason: str, actor: bool = False) -> dict[str, Any]:
    """The ``explain`` audit context of a refused token: digest, unverified ``iss``/``sub``
    (truncated) and, for an audience mismatch, the token's audiences. Never the token."""
    facts: dict[str, Any] = {
        "token": "actor" if actor else "subject",
        "token_sha256": token_sha256(token),
        "check": kind,
        "verified": kind in _VERIFIED_KINDS,
    }
    try:
        claims = jose.unsafe_decode(token).claims
    except jose.JOSEError:
        return facts
    for name in ("iss", "sub"):
        if name in claims:
            facts[name] = _short(claims[name])
    if reason.endswith("aud_mismatch"):
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        facts["audiences"] = [_short(a) for a in auds[:MAX_AUDIENCES]]
        if len(auds) > MAX_AUDIENCES:
            facts["audiences_omitted"] = len(auds) - MAX_AUDIENCES
    return facts
