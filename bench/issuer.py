"""A local OIDC issuer for the benchmark (OpenID Connect Discovery 1.0 §3-4, RFC 7517 §5).

The broker must find the issuer's keys the way it would in production: through
``{issuer}/.well-known/openid-configuration`` and its ``jwks_uri``. The project's conformance
suite ships ``conformance.issuer.LocalIssuer``; :func:`start_issuer` uses it when it is present and
otherwise this module's :class:`MiniIssuer`, which serves the same two documents on 127.0.0.1.
Both expose ``url``, ``mint(claims, alg=..., lifetime=...)``, ``write_jwks(path)`` and ``stop()``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from bench import jwtutil


class Issuer(Protocol):
    url: str

    def mint(self, claims: dict[str, Any], *, alg: str, lifetime: int) -> str: ...

    def write_jwks(self, path: Path) -> None: ...

    def stop(self) -> None: ...


class MiniIssuer:
    """Discovery and JWKS over plain HTTP on loopback; one signing key per algorithm."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, algorithms: tuple[str, ...] = ("RS256", "ES256")) -> None:
        self._keys = {alg: jwtutil.generate_key(alg) for alg in algorithms}
        self._kids = {alg: f"bench-{alg.lower()}" for alg in algorithms}
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="bench-issuer", daemon=True)
        self.requests = 0

    def start(self) -> MiniIssuer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [jwtutil.public_jwk(key, self._kids[alg], alg) for alg, key in self._keys.items()]}

    def write_jwks(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.jwks()))

    def mint(self, claims: dict[str, Any], *, alg: str = "ES256", lifetime: int = 3600) -> str:
        now = int(time.time())
        body = {"iss": self.url, "iat": now, "nbf": now, "exp": now + lifetime, **claims}
        return jwtutil.encode_jwt(body, self._keys[alg], alg=alg, kid=self._kids[alg])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                issuer.requests += 1
                if self.path == "/.well-known/openid-configuration":
                    doc: dict[str, Any] = {
                        "issuer": issuer.url,
                        "jwks_uri": issuer.url + "/jwks",
                        "response_types_supported": ["id_token"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": sorted(issuer._keys),
                    }
                elif self.path == "/jwks":
                    doc = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                payload = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Cache-Control", "max-age=300")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
                return

        return Handler


def start_issuer(algorithms: tuple[str, ...] = ("RS256", "ES256")) -> Issuer:
    """The conformance suite's issuer when the repository has it, else :class:`MiniIssuer`."""
    try:
        from conformance.issuer import LocalIssuer
    except ImportError:
        return MiniIssuer("127.0.0.1", 0, algorithms).start()
    return _ConformanceIssuer(LocalIssuer(host="127.0.0.1", port=0, algorithms=algorithms).start())


class _ConformanceIssuer:
    """Adapts ``conformance.issuer.LocalIssuer`` to :class:`Issuer`."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.url: str = inner.url

    def mint(self, claims: dict[str, Any], *, alg: str, lifetime: int) -> str:
        return str(self._inner.mint(claims, alg=alg, lifetime=lifetime))

    def write_jwks(self, path: Path) -> None:
        self._inner.write_jwks(path)

    def stop(self) -> None:
        for name in ("stop", "close", "shutdown"):
            method = getattr(self._inner, name, None)
            if callable(method):
                method()
                return
