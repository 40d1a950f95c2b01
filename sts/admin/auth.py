"""Authentication of admin API callers: a bearer token from a file, or a pinned client certificate.

* Bearer token (RFC 6750 §2.1, ``Authorization: Bearer <token>``; the scheme is matched without
  regard to case, RFC 9110 §11.1). The expected token is read from ``STS_ADMIN_TOKEN_FILE`` and
  read again whenever the file changes, so it can be rotated without a restart. The comparison
  is of the SHA-256 digests of both values with :func:`hmac.compare_digest`, so neither the
  content nor the length of the token leaks through timing. A file that becomes unreadable or
  malformed authenticates nobody (fail closed) until it is fixed.
* Client certificate: the leaf certificate of the TLS connection (broker-terminated TLS only;
  a forwarded-certificate header is never accepted on this listener) whose SHA-256 thumbprint
  over its DER encoding (its ``x5t#S256``, RFC 8705 §3.1) is in ``STS_ADMIN_ALLOWED_CERT_SHA256``.

Either credential suffices. Failures are a stable reason code for the audit record; the caller
only learns that authentication failed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

log = logging.getLogger("sts.admin")

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_TOKEN_CHARS: Final = 32
MAX_TOKEN_CHARS: Final = 512


class AdminSetupError(Exception):
    """The admin API cannot start as configured; ``fix`` says what to change."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


@dataclass(frozen=True, slots=True)
class Principal:
    """Who an authenticated admin request came from: ``token``, or ``certificate`` with the
    thumbprint of the certificate (public; it names the certificate, it proves nothing)."""

    method: str
    thumbprint: str | None = None

    def describe(self) -> str:
        return "bearer token" if self.method == "token" else f"client certificate sha256:{self.thumbprint}"


class AdminUnauthenticated(Exception):
    """Authentication failed; ``reason`` is for the audit record only."""

    def __init__(self, reason: str, *, bad_token: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.bad_token = bad_token


def _token_problem(text: str) -> str | None:
    if not MIN_TOKEN_CHARS <= len(text) <= MAX_TOKEN_CHARS:
        return f"it must hold {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} characters"
    if not _B64TOKEN.fullmatch(text):
        return "it must be one RFC 6750 b64token: letters, digits and - . _ ~ + / (then = padding)"
    return None


class TokenFile:
    """The expected bearer token, as the SHA-256 of the file's content without surrounding
    whitespace. Invariant: ``digest()`` is None whenever the current file is unreadable or holds
    no valid token, so a broken file authenticates nobody."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._digest: bytes | None = None
        self._problem: str | None = None
        self._refresh()
        if self._digest is None:
            raise AdminSetupError(f"the admin token file {path} is unusable: {self._problem}",
                                  "write a random token to it, for example: openssl rand -hex 32 > FILE")

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._set(None, None, f"cannot read it ({exc.strerror})")
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            self._set(stamp, None, f"cannot read it as ASCII text ({type(exc).__name__})")
            return
        problem = _token_problem(text)
        self._set(stamp, None if problem else hashlib.sha256(text.encode("ascii")).digest(), problem)

    def _set(self, stamp: tuple[int, int, int] | None, digest: bytes | None, problem: str | None) -> None:
        changed = problem != self._problem or (digest is not None and digest != self._digest)
        if changed and self._stamp is not None:
            if problem is None:
                log.info("admin token file read again", extra={"path": str(self.path)})
            else:
                log.error("admin token file unusable: bearer tokens are refused until it is fixed",
                          extra={"path": str(self.path), "problem": problem})
        self._stamp, self._digest, self._problem = stamp, digest, problem

    def digest(self) -> bytes | None:
        self._refresh()
        return self._digest


def thumbprint_of_pem(pem: str) -> str | None:
    """The SHA-256 (hex) of a PEM certificate's DER encoding, or None if it is not one."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem)
    except (ValueError, TypeError):
        return None
    return hashlib.sha256(der).hexdigest()


class AdminAuth:
    """Decides whether a request may use the admin API. Invariant: with no token file and no
    allowed thumbprint nothing is accepted (settings refuse that configuration anyway)."""

    def __init__(self, *, token_file: TokenFile | None, allowed_thumbprints: Iterable[str]) -> None:
        self._token = token_file
        self._allowed = frozenset(t.lower() for t in allowed_thumbprints)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m, on in (("token", self._token is not None), ("certificate", bool(self._allowed))) if on)

    def authenticate(self, authorization: str | None, scope: Mapping[str, Any]) -> Principal:
        thumbprint = _client_thumbprint(scope)
        if thumbprint is not None and thumbprint in self._allowed:
            return Principal("certificate", thumbprint)
        if authorization is None:
            if thumbprint is not None:
                raise AdminUnauthenticated("admin_certificate_not_allowed" if self._allowed else "admin_certificates_not_accepted")
            raise AdminUnauthenticated("admin_credentials_missing")
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise AdminUnauthenticated("admin_authorization_not_bearer", bad_token=True)
        if self._token is None:
            raise AdminUnauthenticated("admin_tokens_not_accepted", bad_token=True)
        expected = self._token.digest()
        offered = hashlib.sha256(presented.strip().encode("utf-8", "surrogateescape")).digest()
        # Always compared, even with no usable token file, so the time taken says nothing.
        matched = hmac.compare_digest(offered, expected if expected is not None else bytes(32))
        if expected is None:
            raise AdminUnauthenticated("admin_token_file_unusable", bad_token=True)
        if not matched:
            raise AdminUnauthenticated("admin_token_invalid", bad_token=True)
        return Principal("token")


def _client_thumbprint(scope: Mapping[str, Any]) -> str | None:
    chain = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain") or []
    return thumbprint_of_pem(chain[0]) if chain else None
