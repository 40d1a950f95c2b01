"""OAuth 2.0 error values (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707 §2, RFC 6750 §3).

Every refusal the broker sends is one of these classes. The public part (``error``,
``description``, ``status``) is fixed text chosen by the class and the *kind* of check that
failed; it never carries the token, its claims, a configured pattern or a stack trace. The
private part (``reason`` and ``detail``) is for the audit record only.
"""

from __future__ import annotations

from typing import ClassVar


class OAuthError(Exception):
    """An error response of RFC 6749 §5.2.

    Invariant: ``description`` is chosen by the broker from fixed text and is safe to show to
    the caller; ``detail`` may hold anything and is only ever written to the audit record.
    """

    error: ClassVar[str] = "server_error"
    status: ClassVar[int] = 400
    default_description: ClassVar[str] = "The request was refused."

    def __init__(
        self,
        description: str | None = None,
        *,
        reason: str | None = None,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        self.description = description or self.default_description
        # Audit-mode findings gathered before the refusal, for the audit record only.
        self.notes = tuple(notes)
        # A short, stable, machine-readable code for audit records and metrics.
        self.reason = reason or self.error
        self.detail = detail
        self.headers = dict(headers or {})
        super().__init__(f"{self.error}: {self.description}")

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class InvalidRequest(OAuthError):
    """RFC 6749 §5.2 ``invalid_request``; RFC 8693 §2.2.2 also uses it for a subject or actor
    token that is invalid for any reason, or unacceptable under policy."""

    error = "invalid_request"
    default_description = "The request is malformed."


class InvalidGrant(OAuthError):
    """RFC 6749 §5.2 ``invalid_grant``: the authorization grant is invalid, expired, revoked or
    was issued to another client. RFC 7521 §4.1.1: for an assertion grant "The value of the
    error parameter MUST be the "invalid_grant" error code"; RFC 7523 §3.1 repeats it for a JWT
    whose checks fail. Token exchange keeps ``invalid_request`` (RFC 8693 §2.2.2)."""

    error = "invalid_grant"
    default_description = "The authorization grant is invalid."


class InvalidClient(OAuthError):
    """RFC 6749 §5.2 ``invalid_client``: client authentication failed. Sent with 401 and a
    ``WWW-Authenticate`` challenge (RFC 6749 §5.2, RFC 7235 §4.1)."""

    error = "invalid_client"
    status = 401
    default_description = "Client authentication failed."

    def __init__(self, description: str | None = None, *, scheme: str = "Basic", **kw: object) -> None:
        super().__init__(description, **kw)  # type: ignore[arg-type]
        self.headers.setdefault("WWW-Authenticate", f'{scheme} realm="token", charset="UTF-8"')


class UnauthorizedClient(OAuthError):
    """RFC 6749 §5.2 ``unauthorized_client``: the client may not use this grant type."""

    error = "unauthorized_client"
    default_description = "The client is not allowed to use this grant type."


class UnsupportedGrantType(OAuthError):
    """RFC 6749 §5.2 ``unsupported_grant_type``."""

    error = "unsupported_grant_type"
    default_description = "The grant type is not supported."


class InvalidScope(OAuthError):
    """RFC 6749 §5.2 ``invalid_scope``: a requested scope exceeds what the grant allows."""

    error = "invalid_scope"
    default_description = "The requested scope is not allowed."


class InvalidTarget(OAuthError):
    """RFC 8707 §2 / RFC 8693 §2.2.2 ``invalid_target``: the requested audience or resource is
    unknown, not allowed, or more than one was named."""

    error = "invalid_target"
    default_description = "The requested target is not allowed."


class TemporarilyUnavailable(OAuthError):
    """RFC 6749 §4.1.2.1 ``temporarily_unavailable``, used here as a 503 on the token endpoint
    when an issuer's keys cannot be fetched and none are cached, or when the database cannot be
    reached (sts.availability); both are documented choices."""

    error = "temporarily_unavailable"
    status = 503
    default_description = "The service is temporarily unable to verify the token; retry later."

    def __init__(self, description: str | None = None, *, retry_after: int = 5, **kw: object) -> None:
        super().__init__(description, **kw)  # type: ignore[arg-type]
        self.headers.setdefault("Retry-After", str(retry_after))


class ServerError(OAuthError):
    """RFC 6749 §4.1.2.1 ``server_error``: a bug, a database or signer failure. Generic text."""

    error = "server_error"
    status = 500
    default_description = "The server encountered an internal error."


class MethodNotAllowed(OAuthError):
    """Not an RFC 6749 code path; the token endpoint only accepts POST (RFC 6749 §3.2)."""

    error = "invalid_request"
    status = 405
    default_description = "The token endpoint accepts only POST."


class InvalidDpopProof(OAuthError):
    """RFC 9449 §5 ``invalid_dpop_proof``: the DPoP proof sent to the token endpoint is
    missing where required, malformed, or fails a check of §4.3."""

    error = "invalid_dpop_proof"
    default_description = "The DPoP proof is invalid."


class UseDpopNonce(OAuthError):
    """RFC 9449 §8 ``use_dpop_nonce``: the proof must carry the server nonce sent in the
    ``DPoP-Nonce`` header of this answer."""

    error = "use_dpop_nonce"
    default_description = "Authorization server requires nonce in DPoP proof."

    def __init__(self, nonce: str, description: str | None = None, **kw: object) -> None:
        super().__init__(description, **kw)  # type: ignore[arg-type]
        self.headers["DPoP-Nonce"] = nonce


class InvalidAuthorizationDetails(OAuthError):
    """RFC 9396 §5 ``invalid_authorization_details``: an authorization details object has an
    unknown type, unknown fields, fields of the wrong type or with values not allowed, or
    misses a required field."""

    error = "invalid_authorization_details"
    default_description = "The requested authorization details are not allowed."
