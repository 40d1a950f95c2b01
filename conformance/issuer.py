"""The parties the kit runs on loopback: an OIDC issuer and a SPIFFE bundle endpoint.

``LocalIssuer`` publishes OpenID Connect Discovery 1.0 §4 metadata (``issuer``, ``jwks_uri``) and
a JWK Set (RFC 7517 §5) with RSA and EC keys, and mints subject and actor tokens (RFC 7519),
valid or deliberately broken. ``SpiffeBundleServer`` serves a SPIFFE trust bundle (SPIFFE Trust
Domain and Bundle §4: JWK Set with ``use: jwt-svid`` / ``x509-svid`` entries, ``spiffe_sequence``
and ``spiffe_refresh_hint``) and mints JWT-SVIDs (SPIFFE JWT-SVID §3).

Both run ``http.server`` in a daemon thread: no event loop, so they can be started from
synchronous code, from pytest fixtures and next to an asyncio server in the same process.
Other parts of the project (integration tests, benchmarks) reuse ``LocalIssuer``; its public
API is a contract.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import json
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conformance import jose
from conformance.issuer_faults import FaultSwitch

_Route = Callable[[], tuple[int, dict[str, str], bytes]]


class _Handler(BaseHTTPRequestHandler):
    server: _LoopbackServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path = self.path.split("?", 1)[0]
        self.server.owner._count(path)
        route = self.server.owner._routes.get(path)
        if route is None:
            status, headers, body = 404, {"Content-Type": "application/json"}, b'{"error":"not_found"}'
        else:
            status, headers, body = self.server.owner._answer(path, route)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        # One request per connection: a kept-alive connection would outlive stop() and keep
        # serving a stopped issuer's keys to a client that reconnects to a new one on the port.
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - inherited name
        # Request logs would drown the kit's report; the hit counter is the record.
        return


class _LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    # A fixed port (the one a target's configuration points to) must be reusable right away
    # when runs follow each other.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: _JsonServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        # A client that gave up (a target's fetch timeout while the issuer hangs) is expected.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class _JsonServer:
    """A tiny GET-only JSON server on a background thread, counting hits per path."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None = None, path: str = "") -> None:
        self._host = host
        self._port = port
        self._tls = tls
        #: Path prefix of every document, like a real issuer's (``/realms/x``); "" for the root.
        self._prefix = path.rstrip("/")
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()
        self._server: _LoopbackServer | None = None
        self._thread: threading.Thread | None = None
        self.hits: collections.Counter[str] = collections.Counter()

    def _answer(self, path: str, route: _Route) -> tuple[int, dict[str, str], bytes]:
        return route()

    def _count(self, path: str) -> None:
        with self._lock:
            self.hits[path] += 1

    def _bind(self) -> None:
        self._server = _LoopbackServer((self._host, self._port), self)
        if self._tls is not None:
            # The handshake then runs in accept(); a failed one is an OSError the server skips.
            self._server.socket = self._tls.wrap_socket(self._server.socket, server_side=True)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self).__name__}:{self._port}", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def origin(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https' if self._tls is not None else 'http'}://{host}:{self._port}"

    @property
    def url(self) -> str:
        return self.origin + self._prefix

    def publish(self, path: str, document: Any, *, content_type: str = "application/json",
                headers: Mapping[str, str] | None = None) -> str:
        """Serve ``document`` (JSON-encoded unless bytes) at ``path``; returns its URL.

        Cases use it to host attacker material (a ``jku`` JWK Set, an ``x5u`` certificate) and
        then check through ``hits`` that the target never fetched it.
        """
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        extra = {"Content-Type": content_type, **dict(headers or {})}
        self._routes[self._prefix + path] = lambda: (200, extra, body)
        return self.url + path


class _KeyRing:
    """Signing keys by kid, with one default per algorithm; retired keys are forgotten."""

    def __init__(self, use: str = "sig") -> None:
        self.use = use
        self.keys: dict[str, tuple[str, jose.PrivateKey]] = {}
        self.default: dict[str, str] = {}
        self.lock = threading.Lock()

    def add(self, alg: str, key: jose.PrivateKey | None = None, kid: str | None = None) -> str:
        key = key if key is not None else jose.generate_key(alg)
        kid = kid or f"{alg.lower()}-{jose.jwk_thumbprint(jose.public_jwk(key))[:12]}"
        with self.lock:
            self.keys[kid] = (alg, key)
            self.default[alg] = kid
        return kid

    def remove(self, kid: str) -> None:
        with self.lock:
            alg, _ = self.keys.pop(kid)
            if self.default.get(alg) == kid:
                remaining = [k for k, (a, _) in self.keys.items() if a == alg]
                if remaining:
                    self.default[alg] = remaining[-1]
                else:
                    del self.default[alg]

    def jwks(self) -> dict[str, Any]:
        with self.lock:
            return {"keys": [jose.public_jwk(key, kid=kid, alg=alg, use=self.use)
                             for kid, (alg, key) in self.keys.items()]}

    def pick(self, alg: str, kid: str | None) -> tuple[str, jose.PrivateKey]:
        with self.lock:
            if kid is None:
                if alg not in self.default:
                    raise KeyError(f"no key for {alg}; start the issuer with it or call rotate({alg!r})")
                kid = self.default[alg]
            _, key = self.keys[kid]
            return kid, key


def _claims(defaults: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(defaults)
    for name, value in (overrides or {}).items():
        # A value of None removes the claim: that is how cases build tokens without `exp`, `aud`...
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


class LocalIssuer(_JsonServer):
    """An OIDC issuer on loopback whose ``url`` is exactly the ``iss`` of the tokens it mints.

    Invariant: every key that ``mint`` signs with by default is published at ``jwks_uri`` before
    the token is returned, and a retired key is no longer published.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 algorithms: Sequence[str] = ("RS256", "ES256"), tls: ssl.SSLContext | None = None,
                 path: str = "") -> None:
        # ``tls`` (see server_tls_context) serves https, as an issuer on a private CA does;
        # ``path`` puts the issuer under a path (``/realms/x``), as Keycloak and others do.
        super().__init__(host, port, tls=tls, path=path)
        self.algorithms = tuple(algorithms)
        self._ring = _KeyRing()
        for alg in self.algorithms:
            self._ring.add(alg)
        # OIDC Discovery §4: the configuration lives at the issuer URL, path included, plus
        # /.well-known/openid-configuration.
        self._routes[self._prefix + "/.well-known/openid-configuration"] = self._discovery
        self._routes[self._prefix + "/jwks"] = self._jwks_route
        # Where services that skip discovery look (Auth0-style; authgent-server, for one).
        self._routes[self._prefix + "/.well-known/jwks.json"] = self._jwks_route

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> LocalIssuer:
        if self._server is None:
            self._bind()
        return self

    def stop(self) -> None:
        self.faults.clear()  # a hanging key request must not keep the server from shutting down
        self._stop()

    def __enter__(self) -> LocalIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def jwks_uri(self) -> str:
        return self.url + "/jwks"

    # misbehaviour on demand (see issuer_faults) ----------------------------------------
    @property
    def faults(self) -> FaultSwitch:
        # Created on first use so that __init__ stays as it is for subclasses and callers.
        switch: FaultSwitch | None = self.__dict__.get("_fault_switch")
        if switch is None:
            switch = self.__dict__.setdefault("_fault_switch", FaultSwitch())
        return switch

    def _answer(self, path: str, route: _Route) -> tuple[int, dict[str, str], bytes]:
        return self.faults.answer(path, route)

    # documents -------------------------------------------------------------------------
    def _discovery(self) -> tuple[int, dict[str, str], bytes]:
        doc = {
            "issuer": self.url,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": sorted({a for a, _ in self._ring.keys.values()}),
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()

    def _jwks_route(self) -> tuple[int, dict[str, str], bytes]:
        return (200, {"Content-Type": "application/json", "Cache-Control": "max-age=300"},
                json.dumps(self.jwks()).encode())

    def jwks(self) -> dict[str, Any]:
        return self._ring.jwks()

    def write_jwks(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.jwks(), indent=2) + "\n", encoding="utf-8")

    # keys ------------------------------------------------------------------------------
    def rotate(self, alg: str = "RS256") -> str:
        return self._ring.add(alg)

    def retire(self, kid: str) -> None:
        self._ring.remove(kid)

    def default_kid(self, alg: str = "RS256") -> str:
        return self._ring.pick(alg, None)[0]

    def signing_key(self, kid: str) -> jose.PrivateKey:
        """The private key behind ``kid`` (for building variants the target must refuse)."""
        return self._ring.pick("", kid)[1]

    def public_pem(self, kid: str | None = None, *, pkcs1: bool = False) -> bytes:
        return jose.public_pem(self.signing_key(kid or self.default_kid("RS256")), pkcs1=pkcs1)

    def save_keys(self, path: str | Path) -> None:
        """Persist the private keys (a private JWK Set) so a static-JWKS target can be set up once."""
        with self._ring.lock:
            keys = [jose.private_jwk(key, kid=kid, alg=alg) for kid, (alg, key) in self._ring.keys.items()]
        Path(path).write_text(json.dumps({"keys": keys}, indent=2) + "\n", encoding="utf-8")

    def load_keys(self, path: str | Path) -> None:
        """Replace the keys with those saved by ``save_keys``; the last key of each alg is default."""
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        ring = _KeyRing()
        for jwk in doc["keys"]:
            key = jose.key_from_jwk(jwk)
            ring.add(jwk["alg"], key, jwk["kid"])  # type: ignore[arg-type]
        self._ring = ring

    # minting ---------------------------------------------------------------------------
    def default_claims(self, lifetime: int = 300, now: float | None = None) -> dict[str, Any]:
        issued = int(time.time() if now is None else now)
        return {"iss": self.url, "sub": "workload-1", "aud": "conformance", "iat": issued,
                "nbf": issued, "exp": issued + lifetime, "jti": secrets.token_urlsafe(16)}

    def mint(self, claims: Mapping[str, Any] | None = None, *, alg: str = "RS256", kid: str | None = None,
             lifetime: int = 300, header: Mapping[str, Any] | None = None, sign_with: Any = None) -> str:
        """A signed JWT. ``sign_with`` replaces the issuer's key (the header keeps the issuer's
        ``kid`` unless ``header`` changes it): that is how a forged token is made."""
        payload = _claims(self.default_claims(lifetime), claims)
        if sign_with is None:
            kid, key = self._ring.pick(alg, kid)
        else:
            key = sign_with
            if kid is None and alg in self._ring.default:
                kid = self._ring.default[alg]
        head = _claims({"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}, header)
        return jose.sign_compact(head, payload, key)

    def mint_unsigned(self, claims: Mapping[str, Any] | None = None) -> str:
        return jose.sign_compact({"alg": "none", "typ": "JWT"}, _claims(self.default_claims(), claims), b"")

    def mint_hs256(self, secret: bytes, claims: Mapping[str, Any] | None = None) -> str:
        # Keep the RSA key's kid: the classic key-confusion token points at the public key.
        head: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
        if "RS256" in self._ring.default:
            head["kid"] = self._ring.default["RS256"]
        return jose.sign_compact(head, _claims(self.default_claims(), claims), secret)


def self_signed_certificate(key: jose.PrivateKey, common_name: str, *, uri: str | None = None,
                            days: int = 1) -> x509.Certificate:
    """A throwaway certificate for ``x5c``/``x5u`` headers and ``x509-svid`` bundle entries."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days)))
    if uri:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                                        critical=False)
    algorithm = None if jose.family_of_key(key) == "OKP" else hashes.SHA256()
    return builder.sign(key, algorithm)  # type: ignore[arg-type]


def certificate_der_b64(cert: x509.Certificate) -> str:
    import base64

    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def write_loopback_tls_files(directory: str | Path, name: str, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``host`` (an IP address or a DNS name) signed by it, written
    as ``NAME-ca.pem``, ``NAME-server.pem`` and ``NAME-server.key`` in ``directory``; returns
    the three paths. For serving the kit's endpoints over https to a target that trusts the CA."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"conformance kit {name} CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([_san(host)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory = Path(directory)
    paths = directory / f"{name}-ca.pem", directory / f"{name}-server.pem", directory / f"{name}-server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate chain (leaf first) and its private key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class SpiffeBundleServer(_JsonServer):
    """A SPIFFE bundle endpoint (``https_web`` profile) for one trust domain, and a JWT-SVID
    minter whose keys it publishes. It serves plain http on loopback unless given a TLS server
    context: SPIFFE Federation §5.2 has targets fetch bundles over https only, so a target that
    follows it needs ``tls`` (see ``server_tls_context``).

    The bundle also carries one ``x509-svid`` entry: a key that must never verify a JWT-SVID.
    """

    def __init__(self, trust_domain: str = "conformance.test", *, host: str = "127.0.0.1", port: int = 0,
                 algorithm: str = "ES256", refresh_hint: int = 300, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(host, port, tls=tls)
        self.trust_domain = trust_domain
        self.algorithm = algorithm
        self.refresh_hint = refresh_hint
        self.sequence = 1
        self._ring = _KeyRing(use="jwt-svid")
        self._ring.add(algorithm)
        self.x509_key = jose.generate_key("ES256")
        self.x509_kid = "x509-" + jose.jwk_thumbprint(jose.public_jwk(self.x509_key))[:12]
        self._x509_cert = self_signed_certificate(self.x509_key, "conformance CA", uri=f"spiffe://{trust_domain}")
        self._routes["/bundle"] = self._bundle_route

    def start(self) -> SpiffeBundleServer:
        if self._server is None:
            self._bind()
        return self

    def stop(self) -> None:
        self._stop()

    def __enter__(self) -> SpiffeBundleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def bundle_url(self) -> str:
        return self.url + "/bundle"

    def bundle(self) -> dict[str, Any]:
        keys = self._ring.jwks()["keys"]
        x509_entry = jose.public_jwk(self.x509_key, kid=self.x509_kid, use="x509-svid")
        x509_entry["x5c"] = [certificate_der_b64(self._x509_cert)]
        return {"keys": [*keys, x509_entry], "spiffe_sequence": self.sequence,
                "spiffe_refresh_hint": self.refresh_hint}

    def _bundle_route(self) -> tuple[int, dict[str, str], bytes]:
        return (HTTPStatus.OK, {"Content-Type": "application/json", "Cache-Control": "max-age=60"},
                json.dumps(self.bundle()).encode())

    def rotate(self) -> str:
        kid = self._ring.add(self.algorithm)
        self.sequence += 1
        return kid

    def retire(self, kid: str) -> None:
        self._ring.remove(kid)
        self.sequence += 1

    def mint_jwt_svid(self, spiffe_id: str, audience: str | Sequence[str], *, lifetime: int = 300,
                      claims: Mapping[str, Any] | None = None, header: Mapping[str, Any] | None = None,
                      sign_with: Any = None, kid: str | None = None, alg: str | None = None) -> str:
        """A JWT-SVID (SPIFFE JWT-SVID §3): ``sub`` the SPIFFE ID, ``aud``, ``exp``, ``iat``."""
        now = int(time.time())
        aud: Any = audience if isinstance(audience, str) else list(audience)
        payload = _claims({"sub": spiffe_id, "aud": aud, "iat": now, "exp": now + lifetime}, claims)
        alg = alg or self.algorithm
        if sign_with is None:
            kid, key = self._ring.pick(alg, kid)
        else:
            key = sign_with
            kid = kid or self._ring.default.get(alg)
        head = _claims({"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}, header)
        return jose.sign_compact(head, payload, key)
