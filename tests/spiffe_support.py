"""Test material for SPIFFE: a trust domain PKI made with ``cryptography``, JWT-SVID minting,
SPIFFE bundle documents, and HTTPS bundle endpoints on loopback (``https_web`` with a test CA,
``https_spiffe`` serving with an X.509-SVID).

Everything is real: EC P-256 keys (fast to generate), X.509 certificates with the extensions of
X509-SVID.md, compact JWS signatures. Nothing here is used by the broker itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sts.jose import b64url_encode

NOW = dt.datetime.now(dt.UTC)

# Every kind of invalid SPIFFE ID of SPIFFE-ID.md §2 as (value, reason code, test id); used by
# the ID parser's tests and, as JWT-SVID subjects and X.509-SVID URI SANs, by the verifiers'.
INVALID_SPIFFE_IDS: list[tuple[str, str, str]] = [
    ("", "empty", "empty"),
    ("example.org/workload", "wrong_scheme", "no-scheme"),
    ("https://example.org/workload", "wrong_scheme", "http-scheme"),
    ("SPIFFE://example.org/workload", "wrong_scheme", "uppercase-scheme-not-normalised"),
    ("spiffe:example.org/workload", "wrong_scheme", "no-authority-slashes"),
    ("spiffe:///workload", "empty_trust_domain", "empty-trust-domain"),
    ("spiffe://", "empty_trust_domain", "scheme-only"),
    ("spiffe://Example.org/workload", "trust_domain_char", "uppercase-trust-domain"),
    ("spiffe://exa mple.org/workload", "trust_domain_char", "space-in-trust-domain"),
    ("spiffe://exämple.org/workload", "trust_domain_char", "non-ascii-trust-domain"),
    ("spiffe://[::1]/workload", "port", "ipv6-trust-domain"),
    ("spiffe://example.org:8443/workload", "port", "port"),
    ("spiffe://example.org:/workload", "port", "empty-port"),
    ("spiffe://user@example.org/workload", "userinfo", "userinfo"),
    ("spiffe://user:pw@example.org/workload", "userinfo", "userinfo-password"),
    ("spiffe://exa%6Dple.org/workload", "percent_encoding", "percent-encoded-trust-domain"),
    ("spiffe://example.org/work%20load", "percent_encoding", "percent-encoded-path"),
    ("spiffe://example.org/workload?x=1", "query", "query"),
    ("spiffe://example.org?x=1", "query", "query-without-path"),
    ("spiffe://example.org/workload#frag", "fragment", "fragment"),
    ("spiffe://example.org/", "trailing_slash", "root-path-slash"),
    ("spiffe://example.org/workload/", "trailing_slash", "trailing-slash"),
    ("spiffe://example.org//workload", "empty_segment", "empty-segment"),
    ("spiffe://example.org/a//b", "empty_segment", "empty-middle-segment"),
    ("spiffe://example.org/./workload", "dot_segment", "dot-segment"),
    ("spiffe://example.org/a/../b", "dot_segment", "dot-dot-segment"),
    ("spiffe://example.org/..", "dot_segment", "dot-dot-last"),
    ("spiffe://example.org/work load", "path_char", "space-in-path"),
    ("spiffe://example.org/wörk", "path_char", "non-ascii-path"),
    ("spiffe://example.org/a:b", "path_char", "colon-in-path"),
    ("spiffe://example.org/a@b", "path_char", "at-in-path"),
    ("spiffe://example.org/a\\b", "path_char", "backslash-in-path"),
    ("spiffe://" + "a" * 256 + "/x", "too_long", "trust-domain-over-255"),
    ("spiffe://example.org/" + "a" * 2040, "too_long", "id-over-2048"),
]
CLIENT_SERVER = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str | None) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])


def _usage(*, digital_signature: bool = False, cert_sign: bool = False, crl_sign: bool = False,
           key_agreement: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=key_agreement, key_cert_sign=cert_sign, crl_sign=crl_sign, encipher_only=False, decipher_only=False,
    )


def certificate(
    key: Any,
    *,
    issuer: tuple[x509.Certificate, Any] | None = None,
    cn: str | None = None,
    uris: Sequence[str] = (),
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    ca: bool | None = False,
    key_usage: x509.KeyUsage | None | str = "default",
    eku: Sequence[x509.ObjectIdentifier] | None = None,
    san_critical: bool | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    extra: Iterable[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """A certificate for ``key``; self-signed unless ``issuer=(cert, key)``. Defaults follow
    X509-SVID.md: CAs have cA and keyCertSign+cRLSign, leaves have digitalSignature."""
    subject = _name(cn)
    issuer_name = issuer[0].subject if issuer else subject
    signing_key = issuer[1] if issuer else key
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(minutes=5))
        .not_valid_after(not_after or NOW + dt.timedelta(hours=2))
    )
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if key_usage == "default":
        key_usage = _usage(cert_sign=True, crl_sign=True) if ca else _usage(digital_signature=True)
    if key_usage is not None:
        assert isinstance(key_usage, x509.KeyUsage)
        b = b.add_extension(key_usage, critical=True)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=san_critical if san_critical is not None else not cn)
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if issuer:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False)
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    return b.sign(signing_key, hashes.SHA256())


def der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def chain_token(*certs: x509.Certificate) -> str:
    """The ``mtls`` subject token: a JSON array of base64 DER certificates, leaf first."""
    return json.dumps([der_b64(c) for c in certs])


# -- JWKs and bundles --------------------------------------------------------------------------


def public_jwk(key: Any, **members: Any) -> dict[str, Any]:
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        n = pub.public_numbers()
        jwk = {"kty": "RSA", "n": _b64_int(n.n), "e": _b64_int(n.e)}
    else:
        n = pub.public_numbers()
        size = (pub.curve.key_size + 7) // 8
        crv = {256: "P-256", 384: "P-384", 521: "P-521"}[pub.curve.key_size]
        jwk = {"kty": "EC", "crv": crv, "x": b64url_encode(n.x.to_bytes(size, "big")),
               "y": b64url_encode(n.y.to_bytes(size, "big"))}
    jwk.update(members)
    return jwk


def _b64_int(i: int) -> str:
    return b64url_encode(i.to_bytes(max(1, (i.bit_length() + 7) // 8), "big"))


def jwt_entry(key: Any, kid: str) -> dict[str, Any]:
    return public_jwk(key, use="jwt-svid", kid=kid)


def x509_entry(cert: x509.Certificate, key: Any) -> dict[str, Any]:
    return public_jwk(key, use="x509-svid", x5c=[der_b64(cert)])


def bundle_doc(*, jwt: Sequence[tuple[str, Any]] = (), authorities: Sequence[tuple[x509.Certificate, Any]] = (),
               sequence: int | None = 1, refresh_hint: int | None = 300, extra_keys: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    doc: dict[str, Any] = {"keys": [jwt_entry(k, kid) for kid, k in jwt] + [x509_entry(c, k) for c, k in authorities] + list(extra_keys)}
    if sequence is not None:
        doc["spiffe_sequence"] = sequence
    if refresh_hint is not None:
        doc["spiffe_refresh_hint"] = refresh_hint
    return doc


# -- JWT-SVIDs ----------------------------------------------------------------------------------


def sign_jws(header: dict[str, Any], claims: dict[str, Any], key: Any) -> str:
    """A compact JWS with exactly ``header`` (ES256/384 or RS256/PS256 by ``header["alg"]``)."""
    h = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    p = b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    data = f"{h}.{p}".encode()
    alg = header.get("alg")
    if alg in ("ES256", "ES384"):
        size = 32 if alg == "ES256" else 48
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256() if alg == "ES256" else hashes.SHA384())))
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg == "RS256":
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "PS256":
        sig = key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
    else:  # "none", HS256 and friends: a signature that cannot verify
        sig = b"\x00" * 32
    return f"{h}.{p}.{b64url_encode(sig)}"


def jwt_svid(key: Any, kid: str | None, sub: str, aud: str | list[str], *, lifetime: int = 300,
             header: dict[str, Any] | None = None, drop: Sequence[str] = (), **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"sub": sub, "aud": aud, "iat": now, "exp": now + lifetime, **claims}
    for name in drop:
        body.pop(name, None)
    head: dict[str, Any] = {"alg": "ES256", "typ": "JWT"}
    if kid is not None:
        head["kid"] = kid
    head.update(header or {})
    head = {k: v for k, v in head.items() if v is not None}
    return sign_jws(head, body, key)


# -- a trust domain -----------------------------------------------------------------------------


class TrustDomain:
    """A SPIFFE trust domain: root CA, intermediate CA, JWT signing keys, and issuance."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.root_key = ec_key()
        self.root = certificate(self.root_key, cn=f"{name} root", uris=[f"spiffe://{name}"], ca=True)
        self.inter_key = ec_key()
        self.inter = certificate(self.inter_key, issuer=(self.root, self.root_key), cn=f"{name} intermediate",
                                 uris=[f"spiffe://{name}"], ca=True)
        self.jwt_keys: list[tuple[str, Any]] = [(f"{name}-jwt-1", ec_key())]
        self.sequence = 1

    def svid(self, path: str, **kw: Any) -> tuple[x509.Certificate, Any]:
        """An X.509-SVID for ``spiffe://<td><path>`` issued by the intermediate."""
        key = ec_key()
        kw.setdefault("uris", [f"spiffe://{self.name}{path}"])
        kw.setdefault("eku", CLIENT_SERVER)
        return certificate(key, issuer=(self.inter, self.inter_key), **kw), key

    def bundle(self, **kw: Any) -> dict[str, Any]:
        kw.setdefault("jwt", self.jwt_keys)
        kw.setdefault("authorities", [(self.root, self.root_key)])
        kw.setdefault("sequence", self.sequence)
        return bundle_doc(**kw)

    def mint(self, path: str, aud: str | list[str], *, kid: str | None = "default", key: Any = None, **kw: Any) -> str:
        default_kid, default_key = self.jwt_keys[0]
        return jwt_svid(key or default_key, default_kid if kid == "default" else kid,
                        f"spiffe://{self.name}{path}", aud, **kw)

    def rotate_jwt(self) -> str:
        kid = f"{self.name}-jwt-{len(self.jwt_keys) + 1}"
        self.jwt_keys.insert(0, (kid, ec_key()))
        self.sequence += 1
        return kid


# -- HTTPS bundle endpoints ---------------------------------------------------------------------


class BundleEndpoint:
    """Serves ``document()`` as JSON at ``/bundle`` over HTTPS on 127.0.0.1 with the given
    server certificate; ``status`` can make it fail. Counts requests."""

    def __init__(self, cert: x509.Certificate, key: Any, document: Callable[[], Any], *, workdir: Path,
                 chain: Sequence[x509.Certificate] = ()) -> None:
        self.document = document
        self.status = 200
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner.hits += 1
                body = json.dumps(owner.document()).encode() if owner.status == 200 else b'{"error":"down"}'
                self.send_response(owner.status if self.path == "/bundle" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        cert_file = workdir / f"endpoint-{id(self)}.pem"
        key_file = workdir / f"endpoint-{id(self)}.key"
        cert_file.write_bytes(pem(cert) + b"".join(pem(c) for c in chain))
        key_file.write_bytes(key_pem(key))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}/bundle"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> BundleEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class WebCA:
    """A private Web PKI CA for ``https_web`` endpoints and the broker's own TLS certificate."""

    def __init__(self) -> None:
        self.key = ec_key()
        self.cert = certificate(self.key, cn="test web CA", ca=True)

    def server(self, *, ips: Sequence[str] = ("127.0.0.1",), dns: Sequence[str] = ("localhost",)) -> tuple[x509.Certificate, Any]:
        key = ec_key()
        cert = certificate(key, issuer=(self.cert, self.key), cn="127.0.0.1", ips=ips, dns=dns,
                           eku=[ExtendedKeyUsageOID.SERVER_AUTH], san_critical=False)
        return cert, key

    def write(self, path: Path) -> Path:
        path.write_bytes(pem(self.cert))
        return path


class OIDCDiscoveryProvider:
    """SPIRE's OIDC Discovery Provider, as relying parties see it: a discovery document whose
    ``jwks_uri`` is ``<issuer>/keys``, and a JWK Set whose keys carry no ``use`` (SPIRE
    publishes the trust domain's JWT signing keys there). Plain HTTP on loopback."""

    def __init__(self, domain: TrustDomain) -> None:
        self.domain = domain
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    doc: Any = {
                        "issuer": owner.url,
                        "jwks_uri": owner.url + "/keys",
                        "authorization_endpoint": "",
                        "response_types_supported": ["id_token"],
                        "subject_types_supported": [],
                        "id_token_signing_alg_values_supported": ["RS256", "ES256", "ES384"],
                    }
                elif self.path == "/keys":
                    doc = {"keys": [public_jwk(key, kid=kid) for kid, key in owner.domain.jwt_keys]}
                else:
                    doc = None
                body = json.dumps(doc or {"error": "not found"}).encode()
                self.send_response(200 if doc else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> OIDCDiscoveryProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def client_context(ca_file: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A TLS client context trusting ``ca_file``, presenting ``cert`` (chain file, key file)."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def write_identity(workdir: Path, name: str, cert: x509.Certificate, key: Any,
                   chain: Sequence[x509.Certificate] = ()) -> tuple[Path, Path]:
    cert_file, key_file = workdir / f"{name}.pem", workdir / f"{name}.key"
    cert_file.write_bytes(pem(cert) + b"".join(pem(c) for c in chain))
    key_file.write_bytes(key_pem(key))
    return cert_file, key_file
