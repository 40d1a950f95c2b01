"""Which failed cases fail the run: ``--fail-on must|should|hardening``, and the exit codes.

``must`` (the default) counts MUST failures and the HARDENING cases that are security properties
(``SECURITY_PROPERTIES``): a replayed subject token accepted, a token echoed in an error, a
lifetime cap ignored, a DPoP proof accepted twice. Those that depend on a choice of the target run only when the profile
declares that choice (``replay_protection``, ``caps_to_subject_lifetime``,
``issuer.max_token_lifetime``), so a skipped case never counts. ``should`` adds SHOULD failures;
``hardening`` counts every failure.

Exit codes: 0 conformant, 1 a counted failure, 2 a usage or profile error (the CLI's),
3 INCONCLUSIVE (a sanity gate failed: see ``conformance.gate``). INCONCLUSIVE wins over 1,
because the verdict is incomplete until the target accepts the kit's valid requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Protocol

from conformance.gate import EXIT_INCONCLUSIVE

FailOn = Literal["must", "should", "hardening"]
FAIL_ON_CHOICES: tuple[FailOn, ...] = ("must", "should", "hardening")

EXIT_OK = 0
EXIT_FAILED = 1

#: HARDENING cases that check a security property rather than good manners.
SECURITY_PROPERTIES = frozenset({
    "hardening.replay.refused", "hardening.replay.jti-required", "hardening.replay.re-encoded",
    "hardening.error.no-token-echo",
    "hardening.lifetime.capped-to-subject", "hardening.claims.overlong-lifetime",
    "hardening.alg.none-case-variants", "hardening.header.urls-not-fetched",
    "hardening.jwks.no-private-keys", "hardening.dpop.proof-replay-refused",
})

_LEVELS_COUNTED: dict[FailOn, frozenset[str]] = {
    "must": frozenset({"MUST"}),
    "should": frozenset({"MUST", "SHOULD"}),
    "hardening": frozenset({"MUST", "SHOULD", "MAY", "HARDENING"}),
}


class _Result(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def outcome(self) -> str: ...


def counted(result: _Result, fail_on: FailOn) -> bool:
    """True when ``result`` is a failure (or error) that fails the run under ``fail_on``."""
    if result.outcome not in ("fail", "error"):
        return False
    return result.level in _LEVELS_COUNTED[fail_on] or result.id in SECURITY_PROPERTIES


def exit_code(results: Iterable[_Result], fail_on: FailOn) -> int:
    results = list(results)
    if any(r.outcome == "inconclusive" for r in results):
        return EXIT_INCONCLUSIVE
    return EXIT_FAILED if any(counted(r, fail_on) for r in results) else EXIT_OK
