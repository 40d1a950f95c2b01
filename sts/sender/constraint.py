"""Which binding an issued token gets, from the policy's ``sender_constraint`` and what the
caller presented (RFC 9449 §5, §6.1; RFC 8705 §3). Pure.

* ``none`` (default): a valid DPoP proof binds the token (``cnf.jkt``); RFC 9449 §5 has the
  client ask for a bound token by sending the proof, so we honour it. A TLS client
  certificate alone does not bind: it may be presented for other reasons (an X.509-SVID
  subject token), and a bound token is useless to a resource server reached without mTLS.
* ``dpop``: a DPoP proof is required (``cnf.jkt``).
* ``mtls``: a TLS client certificate is required (``cnf.x5t#S256``); a DPoP proof sent as well
  adds ``cnf.jkt`` (both methods then apply).
* ``required``: a DPoP proof or a client certificate (each that is present binds); a plain
  bearer request is refused.

RFC 9449 §5: "A token_type of DPoP MUST be included in the access token response to signal to
the client that the access token was bound to its DPoP key"; a certificate-bound token stays
``Bearer`` (RFC 8705 §3 keeps the token type).
"""

from __future__ import annotations

from dataclasses import dataclass

from sts.sender.binding import confirmation
from sts.sender.dpop import DpopProof

__all__ = ["Binding", "ConstraintUnmet", "bind", "SENDER_CONSTRAINTS"]

SENDER_CONSTRAINTS = ("none", "dpop", "mtls", "required")


class ConstraintUnmet(Exception):
    """The request cannot be bound as the policy requires. ``reason`` is a stable audit code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Binding:
    """``cnf`` for the token (``None``: bearer) and the ``token_type`` to answer."""

    cnf: dict[str, str] | None
    token_type: str


BEARER = Binding(None, "Bearer")


def bind(constraint: str, proof: DpopProof | None, certificate_sha256: bytes | None) -> Binding:
    jkt = proof.jkt if proof is not None else None
    if constraint == "none":
        cert = None
    elif constraint == "dpop":
        if proof is None:
            raise ConstraintUnmet("dpop_required")
        cert = None
    elif constraint == "mtls":
        if certificate_sha256 is None:
            raise ConstraintUnmet("mtls_required")
        cert = certificate_sha256
    elif constraint == "required":
        if proof is None and certificate_sha256 is None:
            raise ConstraintUnmet("sender_constraint_required")
        cert = certificate_sha256
    else:  # the config model admits only the four values
        raise ValueError(f"unknown sender constraint {constraint!r}")
    if jkt is None and cert is None:
        return BEARER
    return Binding(confirmation(jkt=jkt, certificate_sha256=cert), "DPoP" if jkt is not None else "Bearer")
