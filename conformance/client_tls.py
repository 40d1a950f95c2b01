"""Mutual-TLS client authentication by the kit (RFC 8705 §2).

With ``client.auth = tls_client_auth`` or ``self_signed_tls_client_auth`` the kit presents a TLS
client certificate on every token request and sends ``client_id`` in the body (RFC 8705 §2: the
certificate alone does not name the client). The certificate is the profile's
``client.tls_cert_file``/``tls_key_file``; when those do not exist the kit creates a self-signed
one with the subject ``CN=<client id>`` and keeps it, so the target can register it once (its
SHA-256 thumbprint, or its subject DN with the certificate as the CA) and trust the kit across runs.

The negative cases need a certificate the target must not accept for the client: the
**impostor**, a self-signed certificate with the same subject DN and another key (created next
to the client certificate, or at ``client.tls_impostor_cert_file``). A target that checks only
the name, or only that some certificate was presented, takes it; a correct one refuses it, either
with ``invalid_client`` or by failing the TLS handshake, which the kit counts as a refusal too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_METHODS = ("tls_client_auth", "self_signed_tls_client_auth")
VALIDITY = dt.timedelta(days=365)


def impostor_paths(cert_file: str) -> tuple[str, str]:
    """Default files of the impostor certificate, next to the client certificate."""
    base = Path(cert_file)
    return str(base.with_name(base.stem + ".impostor.pem")), str(base.with_name(base.stem + ".impostor.key"))


def _self_signed(subject: x509.Name) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write(cert_file: str, key_file: str, cert_pem: bytes, key_pem: bytes) -> None:
    for path, data in ((cert_file, cert_pem), (key_file, key_pem)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    Path(key_file).chmod(0o600)


def ensure_client_certificate(cert_file: str, key_file: str, client_id: str) -> bool:
    """Create a self-signed client certificate (``CN=<client_id>``) when either file is missing.
    Returns True when files were written."""
    if Path(cert_file).exists() and Path(key_file).exists():
        return False
    _write(cert_file, key_file, *_self_signed(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, client_id)])))
    return True


def ensure_impostor(cert_file: str, impostor_cert_file: str, impostor_key_file: str) -> bool:
    """Create the impostor (same subject as ``cert_file``, its own key, self-signed) when missing."""
    if Path(impostor_cert_file).exists() and Path(impostor_key_file).exists():
        return False
    subject = x509.load_pem_x509_certificate(Path(cert_file).read_bytes()).subject
    _write(impostor_cert_file, impostor_key_file, *_self_signed(subject))
    return True


def thumbprint(cert_file: str) -> str:
    """SHA-256 (hex) of the DER certificate: what ``self_signed_tls_client_auth`` registers."""
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def subject_dn(cert_file: str) -> str:
    """The certificate's subject as RFC 4514 text: what ``tls_client_auth`` registers."""
    return x509.load_pem_x509_certificate(Path(cert_file).read_bytes()).subject.rfc4514_string()
