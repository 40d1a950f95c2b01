"""What of a target's error answer a published report may show (RFC 6749 §5.2).

A failure message carries the target's status, ``error`` and ``error_description``, because
"refused, but why?" is what a user debugging a target needs first. A description may echo the
token it refuses, so anything that looks like a token is replaced before it reaches a report:
a compact JWS/JWE (``eyJ...`` segments joined by dots) and any long base64url or hex run (an
opaque token, a secret). Descriptions are also cut to a readable length.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"
MAX_DESCRIPTION = 200

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){1,4}")
_LONG_OPAQUE = re.compile(r"[A-Za-z0-9_\-+/=]{32,}")


def redact(text: str) -> str:
    """``text`` with every token-like substring replaced by ``[redacted]``."""
    return _LONG_OPAQUE.sub(REDACTED, _JWT.sub(REDACTED, text))


def describe_error(status: int, error: str | None, description: object) -> str:
    """``HTTP 400 error=invalid_request error_description="..."``, redacted and bounded."""
    out = f"HTTP {status}" + (f" error={error}" if error else "")
    if isinstance(description, str) and description:
        text = redact(" ".join(description.split()))
        if len(text) > MAX_DESCRIPTION:
            text = text[:MAX_DESCRIPTION] + "..."
        out += f' error_description="{text}"'
    return out
