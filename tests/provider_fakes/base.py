"""What every provider fake shares: the loopback server, request parsing, assertion checks."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet


class Refusal(Exception):
    """The provider refuses: ``status`` and the documented error ``body``."""

    def __init__(self, status: int, body: Mapping[str, Any], why: str) -> None:
        super().__init__(why)
        self.status = status
        self.body = dict(body)
        self.why = why


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length)
        status, headers, payload = self.server.owner.handle(self.command, self.path, dict(self.headers.items()), body)
        self._send(status, headers, payload)

    def do_GET(self) -> None:  # noqa: N802
        self._send(*self.server.owner.api(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))

    def _send(self, status: int, headers: Mapping[str, str], payload: bytes) -> None:
        if status == 0:  # drop the connection without an answer
            self.close_connection = True
            return
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: FakeProvider) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)


class FakeProvider:
    """A provider's token endpoint. Subclasses define ``path``, ``encoding``, :meth:`check`
    (the documented request shape, returning the provider identity asked for and the
    assertion) and :meth:`success` (the documented success body).

    Modes: ``ok``; ``down`` (HTTP 503); ``slow`` (answers after ``slow_seconds``); ``drop``
    (closes the connection); ``refuse`` (the provider's documented refusal)."""

    path = "/oauth/token"
    encoding = "json"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    max_assertion_lifetime = 24 * 3600
    request_id_header: str | None = "x-request-id"
    token_prefix = "tok-"

    def __init__(self, *, issuer: str = "", audience: str = "", subject: str = "", jwks_url: str = "",
                 expires_in: int = 3600) -> None:
        # What the provider's trust configuration says (set once the broker is known).
        self.issuer = issuer
        self.audience = audience
        self.subject = subject
        self.jwks_url = jwks_url
        self.expires_in = expires_in
        self.mode = "ok"
        self.slow_seconds = 3.0
        self.calls = 0  # token requests that reached the handler
        self.issued: list[str] = []
        self.refusals: list[str] = []
        self.last_fields: dict[str, str] = {}
        self.last_claims: dict[str, Any] = {}
        self.last_header: dict[str, Any] = {}
        self.last_request_headers: dict[str, str] = {}
        self.api_tokens: list[str] = []
        self._lock = threading.Lock()
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def __enter__(self) -> FakeProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.calls = 0
            self.api_calls = 0
            self.api_tokens.clear()
            self.mode = "ok"
            self.issued.clear()
            self.refusals.clear()

    # -- request handling ---------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path.split("?", 1)[0] != self.path:
            return self.api(method, path, {k.lower(): v for k, v in headers.items()})
        with self._lock:
            self.calls += 1
            mode = self.mode
        if mode == "down":
            return 503, {"Content-Type": "text/html", "Retry-After": "1"}, b"<html>upstream connect error: secret-internal-host</html>"
        if mode == "drop":
            return 0, {}, b""
        if mode == "slow":
            time.sleep(self.slow_seconds)
        lowered = {k.lower(): v for k, v in headers.items()}
        self.last_request_headers = lowered
        try:
            if method != "POST" or path != self.path:
                raise Refusal(404, {"error": "not_found"}, f"{method} {path}")
            if "authorization" in lowered:
                raise self.refusal("an Authorization header was sent")
            fields = self.parse(lowered.get("content-type", ""), body)
            identity, assertion = self.check(fields)
            header, claims = self.verify(assertion)
            if mode == "refuse":
                raise self.refusal("refused by test")
        except Refusal as exc:
            with self._lock:
                self.refusals.append(exc.why)
            return exc.status, self._headers(), json.dumps(exc.body).encode()
        token = f"{self.token_prefix}{identity}-{secrets.token_urlsafe(12)}"
        with self._lock:
            self.last_fields, self.last_header, self.last_claims = fields, header, claims
            self.issued.append(token)
        return 200, self._headers(), json.dumps(self.success(token, fields, claims)).encode()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
        if self.request_id_header:
            headers[self.request_id_header] = "req_" + secrets.token_hex(8)
        return headers

    def parse(self, content_type: str, body: bytes) -> dict[str, str]:
        media = content_type.split(";")[0].strip().lower()
        if self.encoding == "json":
            if media != "application/json":
                raise self.refusal(f"content type {media!r}, not application/json")
            try:
                doc = json.loads(body)
            except ValueError:
                raise self.refusal("body is not JSON") from None
            if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
                raise self.refusal("body is not an object of strings")
            return doc
        if media != "application/x-www-form-urlencoded":
            raise self.refusal(f"content type {media!r}, not form encoded")
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        names = [k for k, _ in pairs]
        if len(names) != len(set(names)):
            raise self.refusal("a parameter was sent twice")  # RFC 6749 §3.2
        return dict(pairs)

    def expect_fields(self, fields: Mapping[str, str], required: Mapping[str, str | None], optional: Mapping[str, str | None] = {}) -> None:
        """Exactly ``required`` (value or None for any non-empty value) plus ``optional``."""
        missing = [k for k in required if not fields.get(k)]
        if missing:
            raise self.refusal(f"missing {missing}")
        unknown = [k for k in fields if k not in required and k not in optional]
        if unknown:
            raise self.refusal(f"unknown parameters {unknown}")
        for name, want in {**required, **optional}.items():
            if want is not None and name in fields and fields[name] != want:
                raise self.refusal(f"{name}={fields[name]!r}, expected {want!r}")

    def verify(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Signature against the issuer's published JWKS, then the registered claims."""
        keys = KeySet.import_key_set(httpx.get(self.jwks_url, timeout=5).json())
        try:
            token = jwt.decode(assertion, keys, algorithms=list(self.algorithms))
        except (JoseError, ValueError) as exc:
            raise self.refusal(f"signature or header: {exc}") from None
        header, claims = dict(token.header), dict(token.claims)
        if not header.get("kid"):
            raise self.refusal("no kid in the header")
        now = time.time()
        for name in ("iss", "sub", "aud", "exp", "iat"):
            if name not in claims:
                raise self.refusal(f"claim {name} missing")
        if claims["iss"] != self.issuer:
            raise self.refusal("issuer does not match")
        if claims["aud"] != self.audience and not (isinstance(claims["aud"], list) and self.audience in claims["aud"]):
            raise self.refusal("audience does not match")
        if self.subject and claims["sub"] != self.subject:
            raise self.refusal("subject does not match")
        if not (claims["iat"] <= now + 60 and claims["exp"] > now):
            raise self.refusal("expired or not yet valid")
        if claims["exp"] - claims["iat"] > self.max_assertion_lifetime:
            raise self.refusal("assertion lives too long")
        return header, claims

    # -- the provider's API, as far as an SDK call needs it ------------------------------------
    api_calls: int = 0

    def api(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        """An API call: 200 with :meth:`api_body` for a bearer token this fake issued, else 401."""
        auth = headers.get("authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        with self._lock:
            known = token in self.issued
        problem = None if known else "unknown bearer token"
        problem = problem or self.api_problem(method, path.split("?", 1)[0], headers)
        if problem is not None:
            return 401, {"Content-Type": "application/json"}, json.dumps({"error": {"message": problem}}).encode()
        with self._lock:
            self.api_calls += 1
            self.api_tokens.append(token)
        return 200, {"Content-Type": "application/json"}, json.dumps(self.api_body(path)).encode()

    def api_problem(self, method: str, path: str, headers: Mapping[str, str]) -> str | None:
        return None

    def api_body(self, path: str) -> Any:
        return {"object": "list", "data": [{"id": "test-model", "object": "model", "created": 0, "owned_by": "test"}]}

    # -- per provider -------------------------------------------------------------------------
    def check(self, fields: dict[str, str]) -> tuple[str, str]:
        raise NotImplementedError

    def refusal(self, why: str) -> Refusal:
        return Refusal(400, {"error": "invalid_grant", "error_description": why}, why)

    def success(self, token: str, fields: Mapping[str, str], claims: Mapping[str, Any]) -> dict[str, Any]:
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}


def configure(fake: FakeProvider, **values: Any) -> Callable[[], None]:
    """Set trust attributes; returns an undo."""
    before = {k: getattr(fake, k) for k in values}
    for k, v in values.items():
        setattr(fake, k, v)
    return lambda: [setattr(fake, k, v) for k, v in before.items()] and None
