"""The checks a subject token went through, in the order the verifier runs them (for ``explain``).

``sts explain`` runs the real verifier (``sts.subject.oidc``) and observes its answer: the
verified subject, or the ``SubjectRejected`` with the kind and reason of the first check that
failed. This module turns that answer into the list of every check, in the verifier's order,
each ``ok``, ``failed`` or ``not_checked`` (after the failure), with what it compared. It decides
nothing itself: the result of each check comes from the verifier's answer, so the list cannot
disagree with the server; ``tests/unit/test_explain_subject.py`` pins the order against
``OIDCVerifier.verify`` and ``validate_claims``.

Order: RFC 7515 §5.2 / RFC 8725 §3.1 (structure, then an allowed ``alg``), RFC 8725 §3.8 (the
issuer picked by the exact ``iss``), §3.11 (``typ``), the key by ``kid``, the signature, then
the registered claims of RFC 7519 §4.1 in ``validate_claims``'s order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sts.subject.claims import ClaimRules

# The verifier's checks before the claims, in its order.
TOKEN_CHECKS: Final = ("structure", "issuer", "header", "key", "signature")
_KEY_REASONS: Final = frozenset({"unknown_kid", "issuer_keys_unavailable"})

CLAIM_CHECKS: Final[tuple[tuple[str, frozenset[str]], ...]] = (
    ("iss", frozenset({"iss_mismatch", "claim_type:iss"})),
    ("exp present", frozenset({"exp_missing", "exp_invalid"})),
    ("nbf type", frozenset({"claim_type:nbf"})),
    ("iat type", frozenset({"claim_type:iat"})),
    ("not expired", frozenset({"expired"})),
    ("not before", frozenset({"not_yet_valid"})),
    ("issued in the past", frozenset({"iat_in_future"})),
    ("lifetime", frozenset({"lifetime_too_long"})),
    ("aud", frozenset({"aud_mismatch", "claim_type:aud"})),
    ("sub", frozenset({"sub_missing", "claim_type:sub"})),
    ("jti", frozenset({"jti_missing", "claim_type:jti"})),
)


@dataclass(frozen=True)
class Check:
    name: str
    result: str  # ok | failed | not_checked
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"check": self.name, "result": self.result}
        if self.detail is not None:
            out["detail"] = self.detail
        return out


def _when(t: Any, now: float) -> str:
    if type(t) not in (int, float):
        return repr(t)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    delta = int(t - now)
    return f"{stamp} ({'in ' + str(delta) + ' s' if delta >= 0 else str(-delta) + ' s ago'})"


def claim_details(claims: Mapping[str, Any], rules: ClaimRules, now: float) -> dict[str, str]:
    """What each claim check compares (values of the token the operator handed to explain)."""
    aud = claims.get("aud")
    return {
        "iss": f"{claims.get('iss')!r} must equal {rules.issuer!r}",
        "exp present": "exp must be a NumericDate" + (f": {_when(claims['exp'], now)}" if "exp" in claims else " (missing)"),
        "nbf type": "absent" if "nbf" not in claims else f"nbf {_when(claims['nbf'], now)}",
        "iat type": "absent" if "iat" not in claims else f"iat {_when(claims['iat'], now)}",
        "not expired": f"now must be before exp + {rules.leeway} s leeway",
        "not before": "absent" if "nbf" not in claims else f"nbf must be before now + {rules.leeway} s",
        "issued in the past": "absent" if "iat" not in claims else f"iat must be before now + {rules.leeway} s",
        "lifetime": "no limit" if rules.max_lifetime is None else f"exp - iat and exp - now at most {rules.max_lifetime} s",
        "aud": f"{aud!r} must contain one of {sorted(rules.audiences)!r}",
        "sub": "required" if rules.require_sub else "optional",
        "jti": "required (one-time)" if rules.require_jti else "optional",
    }


def failed_token_check(kind: str | None, reason: str | None) -> str | None:
    """Which of ``TOKEN_CHECKS`` a refusal of ``kind``/``reason`` failed (None: all passed)."""
    return {
        "malformed": "structure",
        "untrusted_issuer": "issuer",
        "header": "header",
        "signature": "key" if reason in _KEY_REASONS else "signature",
    }.get(kind or "")


def token_checks(kind: str | None, reason: str | None, details: Mapping[str, str]) -> list[Check]:
    """The verifier's checks before the claims; ``kind``/``reason``: the refusal, if any."""
    failing = failed_token_check(kind, reason)
    out: list[Check] = []
    failed = False
    for name in TOKEN_CHECKS:
        if failed:
            out.append(Check(name, "not_checked", details.get(name)))
        elif name == failing:
            out.append(Check(name, "failed", f"{reason}" + (f": {details[name]}" if details.get(name) else "")))
            failed = True
        else:
            out.append(Check(name, "ok", details.get(name)))
    return out


def claim_checks(reason: str | None, details: Mapping[str, str], *, reached: bool = True) -> list[Check]:
    """Every registered-claim check in ``validate_claims``'s order: ``reason`` is the
    ``ClaimError`` reason of the refusal (``claim_type:NAME`` for a mistyped claim) or None."""
    out: list[Check] = []
    failed = not reached
    for name, reasons in CLAIM_CHECKS:
        if failed:
            out.append(Check(name, "not_checked", details.get(name)))
        elif reason is not None and reason in reasons:
            out.append(Check(name, "failed", f"{reason}: {details.get(name, '')}".rstrip(": ")))
            failed = True
        else:
            out.append(Check(name, "ok", details.get(name)))
    return out
