"""CA certificate files of issuers with a private CA: X.509 certificates (RFC 5280) in PEM's
textual encoding (RFC 7468 §5, ``-----BEGIN CERTIFICATE-----``).

An issuer's ``ca_file`` is read and checked when the configuration loads, so that a file that
cannot work is reported by ``sts config check`` with its location instead of surfacing as TLS
failures of the key refresh: the file must be readable, hold at least one certificate, hold
nothing but certificates (a private key in a CA bundle is a leak waiting to happen, and is
refused outright), and every certificate must parse and be accepted by OpenSSL as a trust
anchor. Problems name the line of the block in the CA file; they never quote the file.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = ["MAX_CA_FILE_BYTES", "read_ca_file"]

MAX_CA_FILE_BYTES: Final = 1024 * 1024
# RFC 7468 §3: a label is printable ASCII without "-"; the blocks are matched by label so that
# "BEGIN CERTIFICATE ... END PRIVATE KEY" is not taken for a certificate.
_BLOCK: Final = re.compile(r"-----BEGIN ([\x21-\x2c\x2e-\x7e ]*)-----(.*?)-----END \1-----", re.DOTALL)
_HINT: Final = " (a relative path starts at the configuration file's directory)"


def read_ca_file(path: Path) -> tuple[str | None, list[str]]:
    """The certificates of the CA file at ``path`` as PEM text, or ``None`` and the problems."""
    try:
        if path.stat().st_size > MAX_CA_FILE_BYTES:
            return None, [f"ca_file is larger than {MAX_CA_FILE_BYTES} bytes"]
        data = path.read_bytes()
    except FileNotFoundError:
        return None, [f"ca_file not found{_HINT}"]
    except OSError as exc:
        return None, [f"ca_file cannot be read ({type(exc).__name__}){_HINT}"]
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None, ["ca_file is not a PEM file (it holds bytes that are not ASCII; DER is not accepted)"]
    problems: list[str] = []
    certificates: list[x509.Certificate] = []
    blocks = list(_BLOCK.finditer(text))
    starts = {b.start() for b in blocks}
    for begin in re.finditer(r"-----BEGIN ", text):
        if begin.start() not in starts and not any(b.start() < begin.start() < b.end() for b in blocks):
            line = text.count("\n", 0, begin.start()) + 1
            problems.append(f"ca_file line {line}: a PEM block without its matching END line")
    for block in blocks:
        line = text.count("\n", 0, block.start()) + 1
        label = block.group(1)
        if label != "CERTIFICATE":
            kind = "a private key" if "PRIVATE KEY" in label else f"a {label!r} block"
            problems.append(f"ca_file line {line}: {kind}, not a certificate; a CA file holds certificates only")
            continue
        try:
            certificates.append(x509.load_pem_x509_certificate(block.group(0).encode("ascii")))
        except ValueError:
            problems.append(f"ca_file line {line}: the certificate does not parse")
    if problems:
        return None, problems
    if not certificates:
        return None, ["ca_file holds no PEM certificate (-----BEGIN CERTIFICATE-----)"]
    pem = "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in certificates)
    try:
        ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=pem)
    except ssl.SSLError as exc:
        return None, [f"ca_file: OpenSSL refuses the certificates as trust anchors ({exc.reason or 'unknown reason'})"]
    return pem, []
