"""The sanity gate: no "must be refused" case may pass unless the target was seen to accept.

A case that expects a refusal passes vacuously against a target that refuses everything, such as
one that does not trust the kit's issuer. So each negative case belongs to a *gate*, whose
positive twin is a valid request of the same kind: a valid exchange (``exchange``), a valid
JWT-SVID exchange (``spiffe``), a valid delegation (``actor``). The runner runs each twin
first; when it did not pass, every case behind that gate is INCONCLUSIVE, never PASS, and the
run exits with ``EXIT_INCONCLUSIVE``.

The decision is pure: which gate a case sits behind (``gate_of``), and what to tell the user
when a twin failed (``advice``).
"""

from __future__ import annotations

from dataclasses import dataclass

from conformance.profile import Profile

#: Exit code of a run in which some case could not conclude because its gate failed.
EXIT_INCONCLUSIVE = 3


@dataclass(frozen=True)
class Gate:
    name: str
    #: Id of the positive twin: the valid request every case behind the gate forges one defect into.
    twin: str
    #: Gate that must be open before this one's twin can say anything (None: no prerequisite).
    after: str | None = None


GATES: dict[str, Gate] = {
    "exchange": Gate("exchange", "rfc8693.request.valid-exchange"),
    "spiffe": Gate("spiffe", "spiffe.svid.valid"),
    "actor": Gate("actor", "rfc8693.actor.delegation", after="exchange"),
    "jwt_bearer": Gate("jwt_bearer", "rfc7523.grant.valid-assertion", after="exchange"),
}

#: Cases that never send a token exchange (they read the target's published documents), so no
#: gate applies to them.
UNGATED = frozenset({
    "rfc8414.metadata.reachable", "rfc8414.metadata.issuer-matches", "rfc8414.metadata.token-endpoint",
    "rfc8414.metadata.response-types", "rfc8414.metadata.grant-types-token-exchange",
    "rfc8414.metadata.auth-methods", "rfc8414.metadata.jwks-uri", "hardening.jwks.no-private-keys",
    "rfc8414.metadata.grant-types-jwt-bearer",
})


def gate_of(case_id: str) -> str | None:
    """The gate ``case_id`` sits behind (None for twins' own gate and for ungated cases).

    A case nobody classified sits behind ``exchange``: a new case is INCONCLUSIVE rather than
    vacuously passing when the target accepts nothing.
    """
    for gate in GATES.values():
        if case_id == gate.twin:
            return gate.after
    if case_id in UNGATED:
        return None
    if case_id.startswith("spiffe."):
        return "spiffe"
    if case_id.startswith("rfc8693.actor."):
        return "actor"
    if case_id.startswith("rfc7523.grant."):
        return "jwt_bearer"
    return "exchange"


def advice(gate: str, profile: Profile, issuer_url: str, detail: str) -> str:
    """One message naming what the target refused and what to check in its configuration."""
    if gate == "exchange":
        if not profile.mints_subjects:
            return (f"the target refused a valid exchange of a subject token from the profile's subject source"
                    f" ({detail}): is token exchange enabled for client {profile.subject_source.client_id!r}"
                    f" and for the target {profile.primary_target_value()!r}?")
        return (f"the target refused a valid token from the kit's issuer ({detail}): does it trust {issuer_url}"
                f" (keys at {issuer_url}/jwks) for audience {profile.issuer.audience!r}, and grant subject"
                f" {profile.issuer.subject!r} the target {profile.primary_target_value()!r}?")
    if gate == "spiffe":
        p = profile.spiffe
        return (f"the target refused a valid JWT-SVID from the kit's bundle endpoint ({detail}): does it trust"
                f" trust domain {p.trust_domain!r} with the bundle endpoint {p.host}:{p.port} and audience"
                f" {p.audience!r}, and grant {p.spiffe_id!r} the target {profile.primary_target_value()!r}?")
    if gate == "jwt_bearer":
        return (f"the target refused a valid JWT-bearer assertion from the kit's issuer ({detail}): does a grant"
                f" of subject {profile.issuer.subject!r} answer the JWT-bearer grant, and does it accept"
                f" {profile.target.token_endpoint!r} as the assertion's audience?")
    if gate == "actor":
        return (f"the target refused a valid delegation ({detail}): does its policy allow actor"
                f" {profile.actor.subject!r} for subject {profile.issuer.subject!r}?")
    return f"the gate {gate} failed ({detail})"


def inconclusive_message(gate: str) -> str:
    return f"not concluded: its positive twin {GATES[gate].twin} did not pass (sanity gate {gate!r}); see the gate message"
