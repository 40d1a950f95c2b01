"""The errors a caller sees when a request needs approval (docs/approvals.md#what-a-client-sees).

``approval_required`` is an extension error code (RFC 6749 §8.5: "In cases where protocol
extensions ... require additional error codes to be used with ... the token error response
(Section 5.2) ..., such error codes MAY be defined"). The registered codes were considered and
each means something else to a client that knows it:

* ``authorization_pending`` (RFC 8628 §3.5, OpenID CIBA §11) tells a client to poll the token
  endpoint with the same ``device_code`` / ``auth_req_id`` at a given ``interval``; here the
  client repeats its whole token exchange, so a device-flow library would do the wrong thing;
* ``insufficient_user_authentication`` (RFC 9470 §3) asks for a stronger user authentication
  (``acr_values``, ``max_age``) at a resource server; no authentication can satisfy an approval;
* ``invalid_scope`` (RFC 6749 §5.2) says the scope is not allowed at all, and a client would
  not retry; ``consent_required`` (OpenID Connect Core §3.1.2.6) is an authorization-endpoint
  error answering ``prompt=none``.

A denied request is answered ``access_denied``, the code RFC 8628 §3.5 uses at the token
endpoint for "The authorization request was denied". Both carry the approval request id in
the ``X-Approval-Request`` header and at the end of ``error_description``; both are 400
(RFC 6749 §5.2).
"""

from __future__ import annotations

from typing import Final

from sts.errors import OAuthError

APPROVAL_HEADER: Final = "X-Approval-Request"
REQUIRED_TEXT: Final = "Approval is required for the requested scopes. Approval request: {id}."
DENIED_TEXT: Final = "The approval request was denied. Approval request: {id}."
LIMIT_TEXT: Final = "Approval is required for the requested scopes, and too many approval requests are pending."


class ApprovalRequired(OAuthError):
    """``approval_required``: the request asks for something a target marks as needing
    approval, and no approval for exactly this request is in its window. ``approval_id``
    names the (new or pending) approval request; None when none could be recorded because
    the identity has too many pending."""

    error = "approval_required"
    default_description = "Approval is required for the requested scopes."

    def __init__(self, approval_id: str | None, **kw: object) -> None:
        if approval_id is not None:
            text = REQUIRED_TEXT.format(id=approval_id)
        else:
            text = LIMIT_TEXT if kw.get("reason") == "approval_pending_limit" else self.default_description
        super().__init__(text, **kw)  # type: ignore[arg-type]
        self.approval_id = approval_id
        if approval_id is not None:
            self.headers[APPROVAL_HEADER] = approval_id


class ApprovalDenied(OAuthError):
    """``access_denied`` (RFC 8628 §3.5's use at the token endpoint): an approver denied
    exactly this request, and the denial still holds."""

    error = "access_denied"
    default_description = "The approval request was denied."

    def __init__(self, approval_id: str, **kw: object) -> None:
        super().__init__(DENIED_TEXT.format(id=approval_id), **kw)  # type: ignore[arg-type]
        self.approval_id = approval_id
        self.headers[APPROVAL_HEADER] = approval_id
