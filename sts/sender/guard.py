"""The token endpoint's side of DPoP and certificate binding: turns the ``DPoP`` header into a
validated, not-replayed :class:`~sts.sender.dpop.DpopProof`, and the policy's
``sender_constraint`` into the token's binding, raising the RFC 9449 errors.

Replay (RFC 9449 §11.1): each proof's ``jti`` is claimed once in the replay guard shared by all
replicas (the group-commit writer's ``claim_once``), in the namespace ``dpop:<jkt>`` so that
one key's proofs never collide with another's, until the proof's ``iat`` falls out of the
acceptance window.

Errors (RFC 9449 §5, §8): a bad proof is ``invalid_dpop_proof`` (400) with fixed text, the
check that failed goes to the audit record; a missing or stale server nonce is
``use_dpop_nonce`` (400) with a fresh ``DPoP-Nonce`` header.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sts.errors import InvalidDpopProof, InvalidRequest, OAuthError, UseDpopNonce
from sts.jose import b64url_decode
from sts.sender.constraint import Binding, ConstraintUnmet, bind
from sts.sender.dpop import (
    DEFAULT_FUTURE_SKEW,
    DEFAULT_MAX_AGE,
    DPOP_ALGORITHMS,
    DpopProof,
    NonceRequired,
    ProofRejected,
    normalize_htu,
    replay_expiry,
    validate_proof,
)
from sts.sender.nonce import NonceIssuer, derive_nonce_key

if TYPE_CHECKING:
    from sts.settings import Settings

__all__ = ["DpopGuard", "dpop_guard", "sender_binding", "token_endpoint_url"]

ClaimOnce = Callable[[str, str, float], Awaitable[bool]]

_PROOF_TEXT = "The DPoP proof is invalid."
_REPLAY_TEXT = "The DPoP proof was already used."
_MISSING_TEXT = "This target requires a DPoP proof."
_UNBOUND_TEXT = "This target requires a sender-constrained token: send a DPoP proof or use a TLS client certificate."
_MTLS_TEXT = "This target requires a TLS client certificate."


def token_endpoint_url(issuer: str) -> str:
    """The URL a proof's ``htu`` must name: the token endpoint advertised in our metadata."""
    return normalize_htu(issuer.rstrip("/") + "/token")


class DpopGuard:
    """Validates DPoP headers for one broker. ``nonces`` is set when server nonces are
    required (``STS_DPOP_REQUIRE_NONCE``)."""

    def __init__(self, *, claim_once: ClaimOnce, clock: Callable[[], float], nonces: NonceIssuer | None = None,
                 algorithms: tuple[str, ...] = DPOP_ALGORITHMS, max_age: int = DEFAULT_MAX_AGE,
                 future_skew: int = DEFAULT_FUTURE_SKEW) -> None:
        self._claim_once = claim_once
        self._clock = clock
        self._nonces = nonces
        self.algorithms = algorithms
        self._max_age = max_age
        self._future_skew = future_skew
        self._url_for: tuple[str, str] = ("", "")

    def _url(self, issuer: str) -> str:
        cached_issuer, url = self._url_for
        if cached_issuer != issuer:
            url = token_endpoint_url(issuer)
            self._url_for = (issuer, url)
        return url

    async def check(self, header: bytes | None, *, repeated: bool, method: str, issuer: str) -> DpopProof | None:
        """The validated proof of this request, ``None`` when it sent no ``DPoP`` header."""
        if header is None:
            return None
        if repeated:
            # RFC 9449 §4.3 step 1: not more than one DPoP header field.
            raise InvalidDpopProof(_PROOF_TEXT, reason="dpop_multiple_headers")
        now = self._clock()
        nonces = self._nonces
        try:
            proof = validate_proof(
                header.decode("latin-1"), method=method, url=self._url(issuer), now=now, algorithms=self.algorithms,
                nonce_valid=nonces.valid if nonces is not None else None,
                max_age=self._max_age, future_skew=self._future_skew,
            )
        except ProofRejected as exc:
            raise InvalidDpopProof(_PROOF_TEXT, reason=f"dpop_{exc.reason}", detail=exc.detail) from None
        except NonceRequired as exc:
            assert nonces is not None
            raise UseDpopNonce(nonces.current(), reason=f"dpop_{exc.reason}") from None
        expires = replay_expiry(proof, now=now, max_age=self._max_age, future_skew=self._future_skew)
        if not await self._claim_once(f"dpop:{proof.jkt}", proof.jti, expires):
            raise InvalidDpopProof(_REPLAY_TEXT, reason="dpop_replayed")
        return proof

    def fresh_nonce(self) -> str | None:
        """A nonce to offer on a successful answer (RFC 9449 §8 allows it), when required."""
        return self._nonces.current() if self._nonces is not None else None


def sender_binding(constraint: str, proof: DpopProof | None, certificate_sha256: bytes | None) -> Binding:
    """:func:`sts.sender.constraint.bind`, refusing with the caller-facing error."""
    try:
        return bind(constraint, proof, certificate_sha256)
    except ConstraintUnmet as exc:
        error: OAuthError
        if exc.reason == "dpop_required":
            error = InvalidDpopProof(_MISSING_TEXT, reason=exc.reason)
        elif exc.reason == "mtls_required":
            error = InvalidRequest(_MTLS_TEXT, reason=exc.reason)
        else:
            error = InvalidRequest(_UNBOUND_TEXT, reason=exc.reason)
        raise error from None


def dpop_guard(settings: Settings, kek: bytes, claim_once: ClaimOnce, clock: Callable[[], float]) -> DpopGuard:
    """The guard for a broker's settings; ``ValueError`` for an unusable ``STS_DPOP_NONCE_KEY``."""
    nonces = None
    if settings.dpop_require_nonce:
        if settings.dpop_nonce_key is not None:
            key = b64url_decode(settings.dpop_nonce_key.get_secret_value().strip())
        else:
            key = derive_nonce_key(kek)
        nonces = NonceIssuer(key, clock=clock)
    return DpopGuard(claim_once=claim_once, clock=clock, nonces=nonces, max_age=settings.dpop_proof_max_age)
